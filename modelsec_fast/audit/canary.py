"""One-run canary audit of a DP-SGD run (Steinke, Nasr, Jagielski, NeurIPS 2023).

"Privacy Auditing with One (1) Training Run": m canaries are each included in
the training set by an independent fair coin S_j. After one training run the
auditor guesses "in" for the k+ highest-scoring canaries and "out" for the k-
lowest (r = k+ + k- guesses, abstaining on the rest). If training is
(eps, delta)-DP with respect to the canaries, the paper's Theorem shows that
the number of correct guesses W satisfies

    P[W >= v] <= P[Binomial(r, e^eps / (1 + e^eps)) >= v]
                 + 2 m delta * max_{1<=i<=v} (1/i) P[v > Binomial(r, ...) >= v - i].

So if v correct guesses are observed, every eps whose right-hand side is below
beta is rejected at level beta: :func:`one_run_epsilon_lower_bound` returns the
largest such eps. A correct DP-SGD run gives a bound above its true eps with
probability at most beta; a broken run (noise off, clipping off) gives a bound
above the claimed eps.

White-box Dirac gradient canaries. The model under audit gets an extra bias-free
``Linear(m, 1)`` head whose output z is used only by canary records; canary j's
input is ``scale * e_j`` and its loss is ``-z``, so its per-sample gradient is
exactly ``-scale * e_j`` on that head (a Dirac vector in gradient space, norm
``scale > C``) and zero on every other parameter, while real records have zero
gradient on the head. A correct engine clips each canary gradient to norm C and
adds N(0, sigma^2 C^2) noise per coordinate, so the score of canary j, the
total movement of coordinate j, reveals little; a broken engine reveals a lot.
Canaries go through the engine's real per-sample path, Poisson sampling and
accounting, like any record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import binom
from torch import nn

__all__ = [
    "one_run_p_value",
    "one_run_epsilon_lower_bound",
    "CanaryAuditResult",
    "canary_audit_dp_sgd",
    "claimed_epsilon",
    "FAULTS",
]

# Deliberate faults, to show the audit catches a broken DP-SGD implementation.
FAULTS = (None, "no_noise", "no_clipping")


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of v or more correct guesses out of r (m canaries) under (eps, delta)-DP.

    The right-hand side of the paper's Theorem (see the module doc), capped at 1.
    """
    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= v <= r <= m, got m={m}, r={r}, v={v}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    p_correct = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, p_correct))  # P[Binomial(r, p) >= v]
    if v == 0 or delta == 0:
        return min(1.0, tail)
    # P[v > W >= v - i] for i = 1..v, divided by i, maximised over i.
    window = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, p_correct))
    slack = float(np.max(window / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * slack)


def one_run_epsilon_lower_bound(m: int, r: int, v: int, delta: float,
                                beta: float = 0.05) -> float:
    """Largest eps rejected at level beta after v correct guesses out of r (m canaries).

    Returns 0.0 when no eps >= 0 is rejected. Examples with delta = 0 and all
    guesses correct: about 3.49 for r = 100, 5.80 for r = 1,000, 8.10 for r = 10,000.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if one_run_p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, 2.0 * hi
        if hi > 1e3:
            return math.inf
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if one_run_p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class CanaryAuditResult:
    """Outcome of :func:`canary_audit_dp_sgd`.

    ``epsilon_lower_bound`` holds with probability >= 1 - beta if the run was
    (claimed_epsilon, delta)-DP; ``detected`` says it exceeds the claim.
    """

    m: int
    r: int
    correct: int
    beta: float
    delta: float
    epsilon_lower_bound: float
    claimed_epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    backend: str
    fault: str | None
    scores: np.ndarray = field(repr=False)
    included: np.ndarray = field(repr=False)

    @property
    def detected(self) -> bool:
        return self.epsilon_lower_bound > self.claimed_epsilon

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("scores", "included")} | {
            "detected_violation": self.detected,
            "method": "one-run audit, Steinke-Nasr-Jagielski 2023, white-box Dirac gradient "
                      "canaries",
        }

    def summary(self) -> str:
        verdict = ("VIOLATION: lower bound exceeds the claimed epsilon" if self.detected
                   else "consistent with the claim")
        return (f"canary audit: m={self.m} canaries, r={self.r} guesses, {self.correct} correct, "
                f"beta={self.beta:g}: epsilon >= {self.epsilon_lower_bound:.3f} "
                f"(claimed {self.claimed_epsilon:.3f} at delta={self.delta:g}) -> {verdict}")


class _CanaryModel(nn.Module):
    """Base classifier plus the canary head; input rows are [pixels | canary one-hot]."""

    def __init__(self, base: nn.Module, in_shape: tuple[int, ...], m: int):
        super().__init__()
        self.base = base
        self.in_shape = tuple(in_shape)
        self.pixels = math.prod(self.in_shape)
        self.canary = nn.Linear(m, 1, bias=False)
        nn.init.zeros_(self.canary.weight)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        x = rows[:, :self.pixels].reshape(-1, *self.in_shape)
        return torch.cat([self.base(x), self.canary(rows[:, self.pixels:])], dim=1)


def _row_losses(out: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy for real rows (label < K); -z for canary rows (label == K)."""
    is_canary = y == num_classes
    ce = nn.functional.cross_entropy(out[:, :num_classes], y.clamp(max=num_classes - 1),
                                     reduction="none")
    return torch.where(is_canary, -out[:, num_classes], ce)


def _batch_size_for(n: int, batches: int) -> int:
    """A batch size giving exactly ``batches`` batches, so q = 1/batches is fixed
    whatever the coins decided (q must not depend on the data)."""
    for b in range(max(1, n // batches), n + 1):
        if math.ceil(n / b) == batches:
            return b
    raise ValueError(f"cannot split {n} records into exactly {batches} batches")


def canary_audit_dp_sgd(
    *,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    noise_multiplier: float,
    max_grad_norm: float = 1.0,
    sample_rate: float = 0.05,
    steps: int = 200,
    delta: float = 1e-5,
    m: int = 1000,
    r: int = 200,
    beta: float = 0.05,
    canary_scale: float = 100.0,
    lr: float = 0.5,
    model: str = "mlp",
    model_options: dict | None = None,
    accountant: str = "pld",
    backend: str = "engine",
    fault: str | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> CanaryAuditResult:
    """Train once with DP-SGD on (x, y) plus m coin-flip Dirac canaries, then audit.

    Args:
        x, y: real records, float32 (N, C, H, W) in [0, 1] and int64 (N,).
        noise_multiplier, max_grad_norm, sample_rate, steps, delta: the run's
            claimed DP parameters; ``claimed_epsilon`` is the ``accountant``'s eps.
        m, r, beta: canaries, guesses (r/2 "in" + r/2 "out", r even, r <= m) and
            the audit's significance level.
        canary_scale: norm of each canary gradient in units of ``max_grad_norm``
            (> 1, so a correct engine clips it).
        lr: SGD learning rate per unit of the expected batch (sum loss, divided
            by the expected batch size as DP-SGD's "mean" does).
        backend: "engine" trains with :class:`modelsec_fast.PrivacyEngine`;
            "reference" uses torch.func per-sample gradients and
            ``modelsec_fast.ops._clip_and_noise`` (an independent cross-check).
        fault: None (honest), "no_noise" (sigma really 0) or "no_clipping"
            (per-sample gradients not clipped, noise still sigma*C): the claim
            stays that of the honest run.
        seed: seeds the coins, the initial weights, the Poisson sampling and the noise.
        device: where the run happens ("cpu", "cuda").
    Raises:
        ValueError: bad sizes or parameters, unknown backend or fault.
    """
    from modelsec_fast.models import build_model

    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
    if backend not in ("engine", "reference"):
        raise ValueError(f"backend must be 'engine' or 'reference', got {backend!r}")
    if r < 2 or r % 2 or r > m:
        raise ValueError(f"r must be even with 2 <= r <= m, got r={r}, m={m}")
    if not 0 < sample_rate <= 1 or steps < 1 or noise_multiplier < 0 or max_grad_norm <= 0:
        raise ValueError("need 0 < sample_rate <= 1, steps >= 1, noise_multiplier >= 0, "
                         "max_grad_norm > 0")
    if canary_scale <= 1:
        raise ValueError(f"canary_scale must exceed 1 (canaries must need clipping), "
                         f"got {canary_scale}")
    batches = round(1.0 / sample_rate)
    if abs(batches * sample_rate - 1.0) > 1e-9:
        raise ValueError(f"sample_rate must be 1/integer, got {sample_rate}")

    gen = torch.Generator().manual_seed(seed)
    included = torch.rand(m, generator=gen) < 0.5
    in_shape = tuple(x.shape[1:])
    pixels = math.prod(in_shape)
    n_in = int(included.sum())
    canary_rows = torch.zeros(n_in, pixels + m)
    canary_rows[torch.arange(n_in), pixels + torch.nonzero(included).squeeze(1)] = \
        canary_scale * max_grad_norm
    real_rows = torch.cat([x.reshape(len(x), -1).float(), torch.zeros(len(x), m)], dim=1)
    rows = torch.cat([real_rows, canary_rows])
    labels = torch.cat([y, torch.full((n_in,), num_classes, dtype=torch.long)])

    torch.manual_seed(seed + 1)
    net = _CanaryModel(build_model(model, in_shape, num_classes, **(model_options or {})),
                       in_shape, m)
    # Public: from the expected number of canaries, never from the coins' outcome.
    expected_batch = sample_rate * (len(x) + m / 2)
    eff_norm, eff_sigma = max_grad_norm, noise_multiplier
    if fault == "no_noise":
        eff_sigma = 0.0
    elif fault == "no_clipping":
        eff_norm = 1e9 * max_grad_norm  # clipping never triggers; noise std stays sigma*C
        eff_sigma = noise_multiplier * max_grad_norm / eff_norm
    runner = _train_engine if backend == "engine" else _train_reference
    runner(net.to(device), rows.to(device), labels.to(device), num_classes, eff_sigma, eff_norm,
           batches, steps, lr / expected_batch, seed)

    scores = net.canary.weight.detach().double().reshape(-1).cpu().numpy().copy()
    order = np.argsort(-scores, kind="stable")
    half = r // 2
    guess_in, guess_out = order[:half], order[-half:]
    inc = included.numpy()
    correct = int(inc[guess_in].sum() + (~inc[guess_out]).sum())
    claimed = claimed_epsilon(noise_multiplier, sample_rate, steps, delta, accountant)
    bound = one_run_epsilon_lower_bound(m, r, correct, delta, beta)
    return CanaryAuditResult(m=m, r=r, correct=correct, beta=beta, delta=delta,
                             epsilon_lower_bound=bound, claimed_epsilon=claimed,
                             noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                             steps=steps, max_grad_norm=max_grad_norm, backend=backend,
                             fault=fault, scores=scores, included=inc)


def claimed_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                    accountant: str = "pld") -> float:
    """The accountant's eps for ``steps`` Poisson-subsampled Gaussian steps; inf if sigma is 0."""
    from modelsec_fast.accountants import create_accountant

    if noise_multiplier == 0:
        return math.inf
    acct = create_accountant(accountant)
    acct.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acct.get_epsilon(delta))


def _train_engine(net, rows, labels, num_classes, sigma, max_norm, batches, steps, lr, seed):
    from modelsec_fast.privacy.engine import PrivacyEngine

    dataset = torch.utils.data.TensorDataset(rows, labels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=_batch_size_for(len(rows), batches))
    engine = PrivacyEngine(accountant="rdp")
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    torch.manual_seed(seed + 3)  # the Poisson sampler draws its epochs' base seeds from it
    module, optimizer, loader = engine.make_private(
        module=net, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma,
        max_grad_norm=max_norm, poisson_sampling=True, loss_reduction="sum",
        noise_generator=torch.Generator().manual_seed(seed + 2))
    done = 0
    while done < steps:
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            _row_losses(module(xb), yb, num_classes).sum().backward()
            optimizer.step()
            done += 1
            if done == steps:
                break


def _train_reference(net, rows, labels, num_classes, sigma, max_norm, batches, steps, lr, seed):
    from torch.func import functional_call, grad, vmap

    from modelsec_fast import ops

    sample_gen = torch.Generator().manual_seed(seed + 3)
    noise_gen = torch.Generator().manual_seed(seed + 2)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    q = 1.0 / batches

    def row_loss(params, row, label):
        out = functional_call(net, params, (row.unsqueeze(0),))
        return _row_losses(out, label.unsqueeze(0), num_classes).sum()

    per_sample = vmap(grad(row_loss), in_dims=(None, 0, 0))
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(steps):
        pick = (torch.rand(len(rows), generator=sample_gen) < q).to(rows.device)
        params = {n: p.detach() for n, p in net.named_parameters()}
        if pick.any():
            g = per_sample(params, rows[pick], labels[pick])
            grads = [g[n] for n in names]
        else:
            grads = [params[n].new_zeros(0, *params[n].shape) for n in names]
        summed, _ = ops._clip_and_noise(grads, max_norm, sigma * max_norm, generator=noise_gen)
        for n, p in net.named_parameters():
            p.grad = summed[names.index(n)]
        optimizer.step()
