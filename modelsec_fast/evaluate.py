"""Robust accuracy as the per-sample worst case over a list of attacks (AutoAttack's rule).

    from modelsec_fast.evaluate import robust_accuracy
    result = robust_accuracy(model, (x_test, y_test), attacks="standard", eps=8/255)
    print(result)               # a table: clean, after each attack, warnings
    result.to_json("robust.json")

What it does:

1. checks each chunk of at most ``batch_size`` samples (in [0, 1] pixel space
   after un-normalising), then classifies it; only correctly classified
   samples are attacked;
2. runs each attack in order on the samples still robust, stopping each sample
   as soon as it is broken; attacks with a random start are repeated
   ``restarts`` times on what is left.  Samples stream from stage to stage in
   full batches: an attack runs once ``batch_size`` samples wait for it (the
   rest at the end), so the survivors of several chunks share a batch;
3. checks every returned example (inside the eps ball of the attack's norm,
   in [0, 1] pixel space, no NaN) and re-classifies it in eval mode: only a
   checked, misclassified example counts as broken; an unchecked one is "rejected".

Plain gradient attacks (FGSM, BIM, PGD, PGDL2, ...) run in an
:class:`~modelsec_fast.attacks.gradient.EvaluationPool`: every pass holds
``batch_size`` samples in any step of any restart, a broken sample's place is
taken at once by one waiting, and each sample's restarts follow one another.
The work is then the floor: the survivors' every pass and each broken sample's
passes until it broke.  The result reports the sample-passes spent (counted at
the model's forward) and, for pooled attacks, that floor.

Minimum-norm attacks (CW, DeepFool, HopSkipJump) run first, on every correctly
classified sample: their record carries the distance distribution
(:class:`~modelsec_fast.attacks.MinimumNormResult`, robust accuracy at any eps),
and they break a sample for the worst case when the distance found is within
the threat model's eps (the ``eps`` argument, else the other attacks' common
eps of the same norm, else any distance: then their row is 1 - success rate).

Gradient-masking checks (``check_masking=True``, warnings in the result):
probabilities instead of logits, outputs that change between two identical
calls, zero input gradients at clean points, a gradient-free attack (Square)
lowering the robust accuracy by more than 0.2 percentage points below what
the gradient attacks before it reached (AutoAttack's rule), and (optional,
``eps_sweep``) robust accuracy not falling towards 0 as eps grows (Carlini
et al. 2019).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from ._json import json_text
from .attacks.base import Attack, frozen_parameters
from .attacks.gradient import EvaluationPool, GradientAttack
from .attacks.losses import dlr_loss
from .attacks.minimum_norm import MinimumNormResult, looks_like_probabilities, perturbation_norms
from .validation import (check_choice, check_input_pixels, check_int, check_non_negative,
                         check_normalization, to_pixels)

__all__ = ["robust_accuracy", "RobustAccuracyResult", "AttackRecord", "standard_attacks",
           "valid_examples"]

# Slack of the ball / range checks (fp32 rounding of x + clamp(delta)).
_LINF_SLACK = 1e-5
_L2_REL_SLACK = 1e-4
_RANGE_SLACK = 1e-5
# Outputs differing more than this between two identical calls are "random".
_RANDOM_TOL = 1e-5
# Fraction of the samples a gradient-free attack must break beyond the gradient
# attacks to flag masking: AutoAttack's alpha, so one stray point in a large set is not flagged.
_GRADIENT_FREE_MARGIN = 0.002


@dataclasses.dataclass
class AttackRecord:
    """One attack's line of a :class:`RobustAccuracyResult`.

    Attributes:
        robust_accuracy: fraction in [0, 1] of all samples still robust after
            this attack: the worst case over it and the attacks before it (NaN
            if no samples).
        broken: samples it broke (checked, misclassified examples; for a
            minimum-norm attack also within the threat model's eps).
        rejected: returned examples that failed the validity check (outside
            the eps ball or [0, 1], or not finite): never counted as broken,
            whatever their prediction.
        seconds: wall time.
        gradient_free: the attack reads no gradients (Square); its breaks after
            a gradient attack are the masking check's evidence.
        settings: the attack's arguments, as its ``repr``.
        gradient_passes: sample-passes it spent that built a graph to the input
            (forward + input gradient), counted at the model's forward.
        forward_passes: sample rows of its forward-only model calls (queries,
            re-verification).
        floor_passes: the gradient passes its samples needed (survivors: every
            step of every restart; broken samples: the passes until they broke),
            for attacks run in the pool; None for the others.
        distances: a minimum-norm attack's distance distribution over all the
            samples (:class:`~modelsec_fast.attacks.MinimumNormResult`), else None.
    """

    robust_accuracy: float = math.nan
    broken: int = 0
    rejected: int = 0
    seconds: float = 0.0
    gradient_free: bool = False
    settings: str = ""
    gradient_passes: int = 0
    forward_passes: int = 0
    floor_passes: int | None = None
    distances: MinimumNormResult | None = None


@dataclasses.dataclass
class RobustAccuracyResult:
    """Outcome of :func:`robust_accuracy`.

    Attributes:
        n_samples: number of evaluated samples.
        clean_accuracy, robust_accuracy: fractions in [0, 1] (NaN if no samples).
        per_attack: attack name -> :class:`AttackRecord`, in the order they ran.
        warnings: gradient-masking and validity warnings, one line each.
        eps, norm: the threat model (None when mixed or unknown; eps None and
            a norm: minimum-norm attacks without a budget).
        seconds: total wall time.
        eps_sweep: eps -> robust accuracy of the sanity sweep, if run.
        adversarial: worst-case examples (N, ...) on the CPU if requested, else None.
        restarts: runs of each randomly started attack (the ``restarts`` argument).
        sample_passes: gradient sample-passes the attacks spent (their records' sum).
        forward_passes: forward-only sample rows: the clean pass and the attacks'.
        floor_passes: the gradient passes the attacks needed (sum of the records'
            floors), None when an attack ran outside the pool.
    """

    n_samples: int
    clean_accuracy: float
    robust_accuracy: float
    per_attack: dict[str, AttackRecord]
    warnings: list[str]
    eps: float | None = None
    norm: str | None = None
    seconds: float = 0.0
    eps_sweep: dict | None = None
    adversarial: torch.Tensor | None = dataclasses.field(default=None, repr=False)
    restarts: int = 1
    sample_passes: int = 0
    forward_passes: int = 0
    floor_passes: int | None = None

    def to_dict(self) -> dict:
        """Everything but the adversarial examples, JSON-serialisable."""
        out = dataclasses.asdict(dataclasses.replace(self, adversarial=None))
        out.pop("adversarial")
        if self.eps_sweep is not None:
            out["eps_sweep"] = {str(k): v for k, v in self.eps_sweep.items()}
        for name, rec in self.per_attack.items():
            if rec.distances is not None:
                out["per_attack"][name]["distances"] = rec.distances.to_dict()
        return out

    def to_json(self, path: str | None = None, indent: int = 2) -> str:
        """The :meth:`to_dict` as JSON text; also written to ``path`` if given."""
        return json_text(self.to_dict(), path, indent)

    def __str__(self) -> str:
        if self.eps is not None:
            threat = f"{self.norm} eps={self.eps:.6g}"
        else:
            threat = f"{self.norm}, no eps" if self.norm else "mixed threat models"
        width = max([len("robust (worst case)")] + [len(n) for n in self.per_attack]) + 2
        lines = [f"Robust accuracy on {self.n_samples} samples ({threat}, {self.seconds:.1f} s)",
                 f"{'stage':<{width}}{'accuracy':>10}{'broken':>9}{'rejected':>10}{'seconds':>9}",
                 f"{'clean':<{width}}{100 * self.clean_accuracy:>9.2f}%{'':>9}{'':>10}{'':>9}"]
        for name, rec in self.per_attack.items():
            lines.append(f"{name:<{width}}{100 * rec.robust_accuracy:>9.2f}%"
                         f"{rec.broken:>9d}{rec.rejected:>10d}{rec.seconds:>9.1f}")
        lines.append(f"{'robust (worst case)':<{width}}{100 * self.robust_accuracy:>9.2f}%")
        for rec in self.per_attack.values():
            if rec.distances is not None:
                lines.append(f"distances: {rec.distances}")
        passes = f"sample-passes: {self.sample_passes} gradient, {self.forward_passes} forward-only"
        if self.floor_passes is not None:
            passes += f"; floor {self.floor_passes} gradient"
        lines.append(passes)
        if self.eps_sweep:
            lines.append("eps sweep: " + ", ".join(
                f"{e:.4g}: {100 * a:.1f}%" for e, a in self.eps_sweep.items()))
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------- preset
def standard_attacks(model: nn.Module, eps: float, norm: str = "Linf", n_classes: int = 10,
                     seed: int = 0, normalization=None) -> list[Attack]:
    """AutoAttack's "standard" version: APGD-CE, APGD-T, FAB-T, Square.

    APGD-CE (100 steps), APGD-T (targeted DLR, 100 steps, 9 target classes),
    FAB-T (100 steps, 9 target classes), Square (5000 queries, p_init 0.8),
    each with ``n_restarts=1`` as in AutoAttack's standard version; fewer
    targets when the model has fewer than 10 classes.  Needs >= 4 classes.
    Their random starts come from generators seeded with ``seed``, so
    :func:`robust_accuracy`'s ``restarts`` does not repeat them.
    """
    from .attacks import APGD, APGDT, FAB, Square
    if n_classes < 4:
        raise ValueError(
            f"the standard preset needs >= 4 classes (targeted DLR), the model has {n_classes}; "
            "pass a list of attacks instead")
    targets = min(9, n_classes - 1)
    attacks = [
        APGD(model, norm=norm, eps=eps, steps=100, n_restarts=1, loss="ce", seed=seed),
        APGDT(model, norm=norm, eps=eps, steps=100, n_restarts=1, n_classes=n_classes,
              n_target_classes=targets, seed=seed),
        FAB(model, norm=norm, eps=eps, steps=100, n_restarts=1, multi_targeted=True,
            n_classes=n_classes, n_target_classes=targets, seed=seed),
        Square(model, norm=norm, eps=eps, n_queries=5000, n_restarts=1, seed=seed),
    ]
    if normalization is not None:
        for atk in attacks:
            atk.set_normalization_used(*normalization)
    return attacks


def _attack_name(atk: Attack) -> str:
    name = atk.attack
    if name == "APGD":
        name = f"APGD-{str(getattr(atk, 'loss_name', 'ce')).upper()}"
    elif name == "APGDT":
        name = "APGD-T"
    elif name == "FAB" and getattr(atk, "multi_targeted", False):
        name = "FAB-T"
    return name


# ----------------------------------------------------------------------- data
def _chunks(data, batch_size: int) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int | None]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        if not isinstance(y, torch.Tensor) or y.shape[:1] != x.shape[:1]:
            raise ValueError("data must be (images, labels) with one label per image")

        def gen():
            for i in range(0, x.shape[0], batch_size):
                yield x[i:i + batch_size], y[i:i + batch_size]
        return gen(), x.shape[0]
    if isinstance(data, Iterable):
        total = len(data.dataset) if hasattr(data, "dataset") and hasattr(data.dataset, "__len__") \
            else None

        def gen():
            for batch in data:
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError("each batch of the data loader must be (images, labels)")
                bx, by = batch[0], batch[1]
                for i in range(0, bx.shape[0], batch_size):
                    yield bx[i:i + batch_size], by[i:i + batch_size]
        return gen(), total
    raise TypeError("data must be an (images, labels) pair of tensors or a DataLoader")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in modes:
            m.training = flag


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


# --------------------------------------------------------------------- checks
def _pixels(atk: Attack, t: torch.Tensor) -> torch.Tensor:
    return atk.inverse_normalize(t) if atk.normalization_used is not None else t


def valid_examples(atk: Attack, adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bool (B,): which of ``atk``'s examples ``adv`` count: finite, in [0, 1] and inside
    its eps ball (pixel space, with fp32 slack); an example that fails never counts as broken."""
    if adv.shape != x.shape:
        raise ValueError(f"{atk.attack} returned shape {tuple(adv.shape)} for input {tuple(x.shape)}")
    pa, px = _pixels(atk, adv).flatten(1), _pixels(atk, x).flatten(1)
    ok = torch.isfinite(pa).all(1)
    ok &= (pa >= -_RANGE_SLACK).all(1) & (pa <= 1 + _RANGE_SLACK).all(1)
    eps = getattr(atk, "eps", None)
    if eps is not None:
        delta = (pa - px).nan_to_num(nan=math.inf)
        if getattr(atk, "norm", "Linf") == "L2":
            ok &= delta.norm(dim=1) <= eps * (1 + _L2_REL_SLACK) + _LINF_SLACK
        else:
            ok &= delta.abs().amax(1) <= eps + _LINF_SLACK
    return ok


def _zero_gradient_count(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    with frozen_parameters(model), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg)
        loss = dlr_loss(logits, y) if logits.shape[1] >= 3 else \
            nn.functional.cross_entropy(logits, y, reduction="none")
        grad, = torch.autograd.grad(loss.sum(), xg, allow_unused=True)
    if grad is None:
        return x.shape[0]
    return int((grad.flatten(1).abs().amax(1) == 0).sum())


def _masking_checks(model, x, y, logits) -> list[str]:
    """Warnings about the model itself, from one chunk and its clean ``logits``."""
    warnings = []
    if looks_like_probabilities(logits):
        warnings.append(
            "the model seems to output probabilities (rows in [0, 1] summing to 1): "
            "attacks expect logits; remove the final softmax")
    with torch.no_grad():
        again = model(x)
    scale = max(1.0, float(logits.abs().max())) if logits.numel() else 1.0
    if logits.numel() and float((again - logits).abs().max()) > _RANDOM_TOL * scale:
        warnings.append(
            "the model's outputs differ between two identical calls (randomised defence?): "
            "use EOT (eot_iter in APGD) and treat this evaluation as an upper bound")
    correct = logits.argmax(1) == y
    if bool(correct.any()):
        zeros = _zero_gradient_count(model, x[correct], y[correct])
        if zeros:
            warnings.append(
                f"zero input gradient at {zeros} of {int(correct.sum())} correctly classified "
                "points (gradient masking, e.g. quantisation): gradient attacks cannot progress "
                "there; rely on Square or use BPDA")
    return warnings


def _eps_sweep(model, x, y, eps, norm, normalization) -> tuple[dict, list[str]]:
    """(eps -> robust accuracy of PGD-20 at growing eps, warnings if it does not fall to ~0)."""
    from .attacks import PGD, PGDL2
    if norm == "L2":
        top = math.sqrt(x[0].numel())
        grid = [eps * 2 ** k for k in range(6) if eps * 2 ** k < top] + [top]
    else:
        grid = [eps * 2 ** k for k in range(6) if eps * 2 ** k < 1.0] + [1.0]
    grid = [e for e in grid if e > 0]
    accuracies = {}
    for e in grid:
        atk = (PGDL2(model, eps=e, alpha=e / 4, steps=20) if norm == "L2"
               else PGD(model, eps=e, alpha=e / 4, steps=20))
        if normalization is not None:
            atk.set_normalization_used(*normalization)
        adv = atk.run_for_evaluation(x, y)
        with torch.no_grad():
            accuracies[e] = float((model(adv).argmax(1) == y).float().mean())
    values = list(accuracies.values())
    warnings = []
    if any(b > a + 0.02 for a, b in zip(values, values[1:])):
        warnings.append(f"eps sweep: robust accuracy rises with eps ({values}): attack failure "
                        "or gradient masking")
    if values and values[-1] > 0.05:
        warnings.append(f"eps sweep: robust accuracy {100 * values[-1]:.1f}% at the largest eps "
                        f"{grid[-1]:.3g} (should be ~0): gradient masking suspected")
    return accuracies, warnings


# ------------------------------------------------------------------ arguments
@dataclasses.dataclass
class _Plan:
    """What the arguments settle: the attacks in run order and the threat model.

    ``attacks`` is None for the "standard" preset; ``budgets`` gives, per attack
    in ``attacks``, the eps at which a minimum-norm attack breaks a sample
    (``math.inf``: any distance), None for fixed-eps attacks.
    """

    attacks: list[Attack] | None
    eps: float | None
    norm: str | None
    budgets: list[float | None]


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _check_arguments(attacks, eps, norm, batch_size, restarts) -> _Plan:
    """The checked arguments as a :class:`_Plan`.

    For a list of attacks, eps and norm default to the attacks' own (None where
    they differ); given, they must agree with every attack: an attack's norm with
    ``norm``, a fixed-eps attack's eps with ``eps``.  Minimum-norm attacks go first.
    """
    check_int("batch_size", batch_size, 1)
    check_int("restarts", restarts, 1)
    if norm is not None:
        check_choice("norm", norm, ("Linf", "L2"))
    if eps is not None:
        eps = check_non_negative("eps", eps)
    if isinstance(attacks, str):
        if attacks != "standard":
            raise ValueError(f"unknown preset {attacks!r}: use 'standard' or a list of attacks")
        if eps is None:
            raise ValueError("the 'standard' preset needs eps")
        return _Plan(None, eps, norm or "Linf", [])
    attack_list = list(attacks)
    if not attack_list:
        raise ValueError("attacks must be 'standard' or a non-empty list of attacks")
    for atk in attack_list:
        if not isinstance(atk, Attack):
            raise TypeError(f"attacks must be modelsec_fast attacks, got {type(atk).__name__}")
        if atk.attack_mode == "targeted(label)":
            raise ValueError(f"{atk.attack} is in targeted(label) mode: robust_accuracy passes "
                             "true labels; use another targeted mode or the default")
        if norm is not None and atk.norm != norm:
            raise ValueError(f"{atk.attack} is an {atk.norm} attack but norm={norm!r} was given: "
                             f"an {atk.norm} attack cannot be judged at an {norm} eps")
    minimum = [a for a in attack_list if a.minimum_norm]
    fixed = [a for a in attack_list if not a.minimum_norm]
    norms = {a.norm for a in attack_list}
    if eps is not None:
        if norm is None and len(norms) > 1:
            raise ValueError(f"eps={eps:g} is ambiguous: the attacks mix the "
                             f"{' and '.join(sorted(norms))} norms; pass norm= as well")
        norm = norm or next(iter(norms))
        for atk in fixed:
            own = getattr(atk, "eps", None)
            if own is not None and not _same(own, eps):
                raise ValueError(f"{atk.attack} has eps={own:g} but eps={eps:g} was given: "
                                 "build it with the evaluation's eps")
        return _Plan(minimum + fixed, eps, norm, [eps] * len(minimum) + [None] * len(fixed))
    epss = {getattr(a, "eps", None) for a in fixed}
    fixed_norms = {a.norm for a in fixed}
    common_eps = epss.pop() if len(epss) == 1 else None
    common_norm = fixed_norms.pop() if len(fixed_norms) == 1 else None
    budgets = [common_eps if common_eps is not None and a.norm == common_norm else math.inf
               for a in minimum]
    if any(math.isinf(b) for b in budgets):
        common_eps = None
    return _Plan(minimum + fixed, common_eps, norms.pop() if len(norms) == 1 else None,
                 budgets + [None] * len(fixed))


def _normalization_of(attack_list: list[Attack] | None, normalization):
    """The checked (mean, std) of the data: the argument, else the first attack's."""
    if normalization is None and attack_list and attack_list[0].normalization_used is not None:
        used = attack_list[0].normalization_used
        normalization = (used["mean"], used["std"])
    return check_normalization(normalization)


def _named(attack_list: list[Attack]) -> dict[str, Attack]:
    """Attacks by display name (APGD-CE, FAB-T, ...), a "+" added to repeated names."""
    named: dict[str, Attack] = {}
    for atk in attack_list:
        name = _attack_name(atk)
        while name in named:
            name += "+"
        named[name] = atk
    return named


# ----------------------------------------------------------------- per chunk
def _first_chunk(model, attack_list: list[Attack] | None, x, y, logits, *, eps, norm, seed,
                 normalization, check_masking: bool, eps_sweep: bool
                 ) -> tuple[dict[str, Attack], list[str], dict | None]:
    """What the first chunk settles: the attacks by name (the preset needs the class
    count), the model's masking warnings and the eps sweep (None if not run)."""
    if attack_list is None:
        attack_list = standard_attacks(model, eps, norm, logits.shape[1], seed, normalization)
    warnings = _masking_checks(model, x, y, logits) if check_masking else []
    sweep = None
    if eps_sweep and eps is not None and norm is not None:
        sub = (logits.argmax(1) == y).nonzero().flatten()[:200]
        sweep, sweep_warnings = _eps_sweep(model, x[sub], y[sub], eps, norm, normalization)
        warnings += sweep_warnings
    return _named(attack_list), warnings, sweep


def _clean_pass(model, x, y, device, normalization):
    """(x, y, clean logits) of one chunk on ``device``, checked; None for an empty chunk."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("images and labels must be tensors")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"labels must be integers (int64), got {y.dtype}")
    x, y = x.to(device), y.to(device).long()
    if x.shape[0] == 0:
        return None
    check_input_pixels(to_pixels(x, normalization), unnormalised=normalization is not None,
                       hint="; for normalised images pass normalization=(mean, std) or use "
                            "set_normalization_used")
    with torch.no_grad():
        logits = model(x)
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"the model must return logits (B, K), got {tuple(logits.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
        raise ValueError(f"labels must be in [0, {logits.shape[1]}), found "
                         f"[{int(y.min())}, {int(y.max())}]")
    return x, y, logits


# ---------------------------------------------------------------- stages
class _PassCounter:
    """Sample rows of the model's forwards: those that build a graph to the input, and the rest."""

    def __init__(self, model: nn.Module):
        self.gradient = self.forward = 0
        self._handle = model.register_forward_pre_hook(self._count)

    def _count(self, _module, args) -> None:
        inp = args[0] if args else None
        if isinstance(inp, torch.Tensor):
            rows = inp.shape[0] if inp.dim() else 1
            if torch.is_grad_enabled() and inp.requires_grad:
                self.gradient += rows
            else:
                self.forward += rows

    def now(self) -> tuple[int, int]:
        return self.gradient, self.forward

    def remove(self) -> None:
        self._handle.remove()


class _Queue:
    """Samples waiting for a stage, in arrival order: images, labels, int64 ids."""

    def __init__(self):
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.n = 0

    def push(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
        if x.shape[0]:
            self.parts.append((x, y, idx))
            self.n += x.shape[0]

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first ``n`` samples waiting (all if fewer)."""
        x, y, idx = (torch.cat(col) for col in zip(*self.parts))
        self.parts = [(x[n:], y[n:], idx[n:])] if x.shape[0] > n else []
        self.n = max(0, self.n - n)
        return x[:n], y[:n], idx[:n]


def _poolable(atk: Attack) -> bool:
    """A plain gradient attack (its steps are the base loop's): it can run in the pool."""
    kind = type(atk)
    return isinstance(atk, GradientAttack) and all(
        getattr(kind, name) is getattr(GradientAttack, name)
        for name in ("forward", "_forward_eval", "_iterate", "_iterate_early_stop"))


class _Outcomes:
    """What every stage reports back: broken samples and their examples, if kept."""

    def __init__(self, keep_worst: bool):
        self.keep_worst = keep_worst
        self.examples: list[tuple[torch.Tensor, torch.Tensor]] = []

    def broken(self, idx: torch.Tensor, adv: torch.Tensor) -> None:
        if self.keep_worst and idx.numel():
            self.examples.append((idx.cpu(), adv.detach().cpu()))


def _judge(model, atk: Attack, adv, x, y, record: AttackRecord) -> torch.Tensor:
    """Bool (n,): checked (valid) and misclassified in eval mode; counts rejections."""
    valid = valid_examples(atk, adv, x)
    with torch.no_grad(), _eval_mode(model):
        pred = model(adv).argmax(1)
    # Every invalid example is rejected: a NaN one has no meaningful prediction.
    record.rejected += int((~valid).sum())
    return (pred != y) & valid


class _Stage:
    """One fixed-eps attack over the stream of samples still robust.

    A plain gradient attack runs in an :class:`EvaluationPool`; any other runs
    on batches of ``batch_size`` (the rest when flushed), ``runs`` times on
    what it left.  :meth:`run` returns the samples it could not break.
    """

    def __init__(self, model, atk: Attack, record: AttackRecord, runs: int, batch_size: int,
                 counter: _PassCounter, outcomes: _Outcomes):
        self.model, self.atk, self.record, self.runs = model, atk, record, runs
        self.batch_size, self.counter, self.outcomes = batch_size, counter, outcomes
        self.queue = _Queue()
        self.pool = EvaluationPool(atk, runs, batch_size, self._verify) if _poolable(atk) else None
        if self.pool is not None:
            record.floor_passes = 0

    def _verify(self, adv, x, y) -> torch.Tensor:
        return _judge(self.model, self.atk, adv, x, y, self.record)

    def push(self, x, y, idx) -> None:
        if self.pool is not None:
            self.pool.add(x, y, idx)
        else:
            self.queue.push(x, y, idx)

    def run(self, flush: bool) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        start, (g0, f0) = time.perf_counter(), self.counter.now()
        survivors = self._run_pool(flush) if self.pool is not None else self._run_batches(flush)
        g1, f1 = self.counter.now()
        self.record.gradient_passes += g1 - g0
        self.record.forward_passes += f1 - f0
        self.record.seconds += time.perf_counter() - start
        return survivors

    def _run_pool(self, flush: bool):
        out = self.pool.run(flush)
        if out is None:
            return []
        self.record.broken += int(out.broken.sum())
        self.record.floor_passes += int(out.passes.sum())
        self.outcomes.broken(out.index[out.broken], out.adv[out.broken])
        kept = ~out.broken
        # Where nothing was broken the pool returns the image itself.
        return [(out.adv[kept], out.labels[kept], out.index[kept])]

    def _run_batches(self, flush: bool):
        survivors = []
        while self.queue.n >= self.batch_size or (flush and self.queue.n):
            x, y, idx = self.queue.take(self.batch_size)
            robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            for _ in range(self.runs):
                sub = robust.nonzero().flatten()
                if sub.numel() == 0:
                    break
                adv = self.atk.run_for_evaluation(x[sub], y[sub])
                broken = _judge(self.model, self.atk, adv, x[sub], y[sub], self.record)
                robust[sub[broken]] = False
                self.record.broken += int(broken.sum())
                self.outcomes.broken(idx[sub[broken]], adv[broken])
            survivors.append((x[robust], y[robust], idx[robust]))
        return survivors


class _MinimumNormStage:
    """The minimum-norm attacks, each on every correctly classified sample.

    A sample is broken when one of them finds an example within its budget; its
    record counts the samples it broke first, in order.  Every distance found
    is kept for the record's :class:`MinimumNormResult`.
    """

    def __init__(self, model, attacks: dict[str, Attack], records: dict[str, AttackRecord],
                 budgets: dict[str, float], batch_size: int, counter: _PassCounter,
                 outcomes: _Outcomes):
        self.model, self.attacks, self.records, self.budgets = model, attacks, records, budgets
        self.batch_size, self.counter, self.outcomes = batch_size, counter, outcomes
        self.queue = _Queue()
        self.found: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = \
            {name: [] for name in attacks}

    def push(self, x, y, idx) -> None:
        self.queue.push(x, y, idx)

    def run(self, flush: bool) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        survivors = []
        while self.queue.n >= self.batch_size or (flush and self.queue.n):
            x, y, idx = self.queue.take(self.batch_size)
            robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            for name, atk in self.attacks.items():
                record = self.records[name]
                start, (g0, f0) = time.perf_counter(), self.counter.now()
                adv = atk.run_for_evaluation(x, y)
                fooled = _judge(self.model, atk, adv, x, y, record)
                dist = perturbation_norms(_pixels(atk, adv), _pixels(atk, x), atk.norm)
                dist = torch.where(fooled, dist.double(), torch.full_like(dist, math.inf).double())
                self.found[name].append((idx.cpu(), dist.cpu(), self._queries(atk)))
                broken = robust & fooled & (dist <= self.budgets[name])
                robust &= ~broken
                record.broken += int(broken.sum())
                self.outcomes.broken(idx[broken], adv[broken])
                g1, f1 = self.counter.now()
                record.gradient_passes += g1 - g0
                record.forward_passes += f1 - f0
                record.seconds += time.perf_counter() - start
            survivors.append((x[robust], y[robust], idx[robust]))
        return survivors

    @staticmethod
    def _queries(atk: Attack) -> torch.Tensor | None:
        queries = getattr(atk, "queries", None)
        return queries.detach().cpu() if isinstance(queries, torch.Tensor) else None

    def finish(self, n_total: int) -> None:
        """Attach each attack's distance distribution over all ``n_total`` samples."""
        for name, atk in self.attacks.items():
            distances = torch.zeros(n_total, dtype=torch.float64)
            attacked = torch.zeros(n_total, dtype=torch.bool)
            queries = torch.zeros(n_total, dtype=torch.int64)
            has_queries = bool(self.found[name]) and all(q is not None
                                                         for _, _, q in self.found[name])
            for idx, dist, q in self.found[name]:
                distances[idx], attacked[idx] = dist, True
                if has_queries:
                    queries[idx] = q
            rec = self.records[name]
            rec.distances = MinimumNormResult.from_distances(
                name, atk.norm, distances, attacked, queries=queries if has_queries else None,
                seconds=rec.seconds, settings=rec.settings)


class _Pipeline:
    """The stages in order: samples a stage leaves robust go on to the next."""

    def __init__(self, model, named: dict[str, Attack], records: dict[str, AttackRecord],
                 budgets: dict[str, float | None], restarts: int, batch_size: int,
                 counter: _PassCounter, outcomes: _Outcomes):
        minimum = {n: a for n, a in named.items() if a.minimum_norm}
        self.front = _MinimumNormStage(model, minimum, records, budgets, batch_size, counter,
                                       outcomes) if minimum else None
        self.stages: list = [self.front] if self.front is not None else []
        for name, atk in named.items():
            if not atk.minimum_norm:
                # Only an attack with fresh randomness per call can gain from another run.
                runs = restarts if atk.stochastic else 1
                self.stages.append(_Stage(model, atk, records[name], runs, batch_size, counter,
                                          outcomes))
        self.robust = 0

    def push(self, x, y, idx) -> None:
        self.stages[0].push(x, y, idx)

    def advance(self, flush: bool) -> None:
        """Run every stage that has a full batch waiting (``flush``: everything, in order)."""
        for k, stage in enumerate(self.stages):
            for x, y, idx in stage.run(flush):
                if k + 1 < len(self.stages):
                    self.stages[k + 1].push(x, y, idx)
                else:
                    self.robust += x.shape[0]

    def finish(self, n_total: int) -> None:
        if self.front is not None:
            self.front.finish(n_total)


# ------------------------------------------------------------------ summary
def _finish_records(records: dict[str, AttackRecord], n_clean: int, n_total: int) -> None:
    """Set each record's robust accuracy: the cumulative worst case after it."""
    remaining = n_clean
    for rec in records.values():
        remaining -= rec.broken
        rec.robust_accuracy = remaining / n_total if n_total else math.nan


def _passes(records: dict[str, AttackRecord]) -> tuple[int, int, int | None]:
    """(gradient sample-passes, forward-only rows, floor or None) over the records."""
    floors = [rec.floor_passes for rec in records.values()]
    return (sum(rec.gradient_passes for rec in records.values()),
            sum(rec.forward_passes for rec in records.values()),
            None if not floors or None in floors else sum(floors))


def _record_warnings(records: dict[str, AttackRecord], n_total: int, check_masking: bool
                     ) -> list[str]:
    """A gradient-free attack that beat the gradient attacks before it; rejected examples."""
    warnings = []
    gradient_ran = False
    for name, rec in records.items():
        beats = rec.broken if rec.gradient_free and gradient_ran else 0
        if check_masking and beats > _GRADIENT_FREE_MARGIN * n_total:
            warnings.append(f"{name} (gradient-free) broke {beats} points the gradient attacks "
                            f"missed ({100 * beats / n_total:.2f}% of the samples, more than "
                            f"{100 * _GRADIENT_FREE_MARGIN:.1f}%): gradient masking suspected; "
                            "try more queries or adaptive attacks")
        if rec.rejected:
            warnings.append(f"{name} returned {rec.rejected} examples outside the eps ball "
                            "or [0, 1] (or NaN); they were not counted as broken")
        gradient_ran = gradient_ran or not rec.gradient_free
    return warnings


@contextlib.contextmanager
def _progress_bar(progress: bool, total: int | None):
    if not progress:
        yield None
        return
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc="robust accuracy", unit="img", leave=False)
    try:
        yield bar
    finally:
        bar.close()


# ------------------------------------------------------------------ main API
def robust_accuracy(model: nn.Module, data, attacks="standard", *, eps: float | None = None,
                    norm: str | None = None, batch_size: int = 500, restarts: int = 1,
                    normalization: Sequence | None = None, progress: bool = True,
                    check_masking: bool = True, eps_sweep: bool = False, seed: int = 0,
                    return_adversarial: bool = False) -> RobustAccuracyResult:
    """Per-sample worst-case robust accuracy over ``attacks``.

    Args:
        model: classifier returning logits (B, K); evaluated in eval mode
            (its modes are restored afterwards).
        data: ``(images, labels)`` tensors or an iterable of such batches
            (e.g. a DataLoader); images in the space the attacks expect
            ([0, 1], or normalised if the attacks use set_normalization_used;
            every chunk is range-checked before the clean pass). Each chunk
            is moved to the model's device (deliberately: DataLoaders yield
            CPU tensors), one chunk at a time.
        attacks: "standard" (AutoAttack's preset, needs ``eps``) or a list of
            :class:`~modelsec_fast.attacks.Attack` built on ``model``,
            minimum-norm attacks (CW, DeepFool, HopSkipJump) included.
        eps, norm: the threat model: for the preset, its eps and norm ("Linf"
            or "L2", default "Linf"); for a list, optional: ``eps`` is the
            budget of the minimum-norm attacks and must equal every fixed-eps
            attack's eps, ``norm`` must be every attack's norm (default: the
            attacks' own).
        batch_size: samples per chunk and per pass (bounds memory), >= 1.
        restarts: runs of each randomly started attack (PGD, PGDL2, FFGSM) on
            the samples still robust; deterministic attacks run once.  APGD,
            APGD-T, FAB and Square draw their starts from a seeded generator
            (deterministic: set their own ``n_restarts``), so the "standard"
            preset ignores ``restarts``: like AutoAttack's standard version it
            runs each of its attacks with ``n_restarts=1``.
        normalization: (mean, std) per channel of normalised data, for the
            range check, the preset and the sweep's attacks; default: the
            first attack's ``set_normalization_used``.
        progress: show a tqdm progress bar.
        check_masking: run the gradient-masking checks (on the first chunk).
        eps_sweep: also run the eps sanity sweep (PGD-20 at growing eps on
            the first chunk; costs extra passes).
        seed: seed of the preset's attacks.
        return_adversarial: keep the worst-case examples (on the CPU).
    Raises:
        ValueError / TypeError: bad arguments (an attack whose norm is not
            ``norm``, a fixed-eps attack whose eps is not ``eps``), labels out of
            range, images outside [0, 1] (or NaN; the message gives the range
            found), a targeted attack in ``targeted(label)`` mode.
    """
    plan = _check_arguments(attacks, eps, norm, batch_size, restarts)
    normalization = _normalization_of(plan.attacks, normalization)
    device = _model_device(model)
    chunks, total = _chunks(data, batch_size)
    start = time.perf_counter()
    records: dict[str, AttackRecord] = {}
    warnings: list[str] = []
    sweep, pipeline = None, None
    n_total = n_clean = 0
    images: list[torch.Tensor] = []
    outcomes = _Outcomes(return_adversarial)
    counter = _PassCounter(model)
    try:
        with _eval_mode(model), _progress_bar(progress, total) as bar:
            for x, y in chunks:
                chunk = _clean_pass(model, x, y, device, normalization)
                if chunk is None:
                    continue
                x, y, logits = chunk
                if pipeline is None:
                    named, warnings, sweep = _first_chunk(
                        model, plan.attacks, x, y, logits, eps=plan.eps, norm=plan.norm,
                        seed=seed, normalization=normalization, check_masking=check_masking,
                        eps_sweep=eps_sweep)
                    records = {name: AttackRecord(gradient_free=atk.gradient_free,
                                                  settings=repr(atk))
                               for name, atk in named.items()}
                    pipeline = _Pipeline(model, named, records, dict(zip(named, plan.budgets)),
                                         restarts, batch_size, counter, outcomes)
                correct = logits.argmax(1) == y
                ids = torch.arange(n_total, n_total + x.shape[0], device=device)
                pipeline.push(x[correct], y[correct], ids[correct])
                pipeline.advance(flush=False)
                n_total += x.shape[0]
                n_clean += int(correct.sum())
                if return_adversarial:
                    images.append(x.detach().cpu())
                if bar is not None:
                    bar.update(x.shape[0])
            if pipeline is not None:
                pipeline.advance(flush=True)
                pipeline.finish(n_total)
    finally:
        counter.remove()
    _finish_records(records, n_clean, n_total)
    warnings += _record_warnings(records, n_total, check_masking)
    sample_passes, forward_passes, floor = _passes(records)
    adversarial = None
    if images:
        adversarial = torch.cat(images)
        for idx, adv in outcomes.examples:
            adversarial[idx] = adv
    return RobustAccuracyResult(
        n_samples=n_total,
        clean_accuracy=n_clean / n_total if n_total else math.nan,
        robust_accuracy=(pipeline.robust if pipeline else 0) / n_total if n_total else math.nan,
        per_attack=records, warnings=warnings, eps=plan.eps, norm=plan.norm,
        seconds=time.perf_counter() - start, eps_sweep=sweep, adversarial=adversarial,
        restarts=restarts, sample_passes=sample_passes, forward_passes=n_total + forward_passes,
        floor_passes=floor)
