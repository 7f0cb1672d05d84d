"""SPSA (Uesato et al. 2018): a score-based L-inf attack, batched over samples and perturbations.

Each iteration estimates the gradient of the margin loss (untargeted
``z_y - max_{j != y} z_j``, targeted ``max_{j != t} z_j - z_t``; negative once
adversarial) from ``2 * nb_sample`` queries per sample: ``x_k + delta * v`` and
``x_k - delta * v`` for Rademacher directions ``v``, averaged into
``mean((L(+) - L(-)) / (2 delta) * v)``.  Adam (per element, as in the paper)
descends on the perturbation, which is then projected onto the eps ball and
[0, 1].  After each update one more query checks the new point: a sample stops
at its first adversarial iterate.

Every model evaluation of a sample's row is one query, counted per sample in
``atk.queries`` (int64 (B,), the last call): 1 for the clean check, then
``2 * nb_sample + 1`` per iteration.  ``max_queries`` caps that count: a sample
whose next iteration would pass it stops.  The queries of all samples and
perturbations go through the model in forwards of at most ``batch_rows``
rows.  Randomness (the start and the directions) comes from per-sample
generators, sample ``i`` seeded with ``seed + i`` (:mod:`.streams`): a call is
reproducible and each sample's result does not depend on the others in the batch.

Units: ``eps`` L-inf, in pixel space [0, 1].
"""

from __future__ import annotations

import torch

from .._forward_batch import rows_per_forward
from ..validation import check_int, check_non_negative, check_positive
from .base import Attack
from .streams import SampleStreams

__all__ = ["SPSA"]

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


def margin(logits: torch.Tensor, cls: torch.Tensor, targeted: bool) -> torch.Tensor:
    """(B,) the margin loss to minimise: negative iff adversarial."""
    real = logits.gather(1, cls[:, None]).squeeze(1)
    other = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
    return other - real if targeted else real - other


class SPSA(Attack):
    """SPSA, L-inf, untargeted or targeted (torchattacks' argument names).

    Args:
        model: the classifier (returns logits).
        eps: L-inf budget in pixel space (>= 0). Default 8/255.
        delta: size of the finite-difference probes (> 0). Default 0.01.
        lr: Adam's learning rate (> 0). Default 0.01.
        nb_iter: iterations (>= 1). Default 100.
        nb_sample: Rademacher directions per iteration, each queried at +delta
            and -delta (>= 1). Default 128.
        max_batch_size: rows per model forward (>= 2; at least one direction
            pair of one sample goes in each). Default None: 4096 on an accelerator,
            on a CPU as many as hold 2^17 input values (see
            ``modelsec_fast._forward_batch``); resolved per call as ``batch_rows``.
        max_queries: per-sample query budget (>= 1), or None for
            ``1 + nb_iter * (2 * nb_sample + 1)``. Default None.
        seed: seed of the private generator. Default 0.

    Raises:
        ValueError / TypeError: a value out of range (names the argument).
    """

    norm = "Linf"
    gradient_free = True

    def __init__(self, model, eps: float = 8 / 255, delta: float = 0.01, lr: float = 0.01,
                 nb_iter: int = 100, nb_sample: int = 128, max_batch_size: int | None = None,
                 max_queries: int | None = None, seed: int = 0):
        super().__init__("SPSA", model)
        self.eps = check_non_negative("eps", eps)
        self.delta = check_positive("delta", delta)
        self.lr = check_positive("lr", lr)
        self.nb_iter = check_int("nb_iter", nb_iter, 1, allow_integral_float=True)
        self.nb_sample = check_int("nb_sample", nb_sample, 1, allow_integral_float=True)
        self.max_batch_size = None if max_batch_size is None else check_int(
            "max_batch_size", max_batch_size, 2, allow_integral_float=True)
        self.batch_rows = self.max_batch_size
        self.max_queries = None if max_queries is None else check_int(
            "max_queries", max_queries, 1, allow_integral_float=True)
        self.seed = check_int("seed", seed)
        self.queries: torch.Tensor | None = None
        self.supported_mode = ["default", "targeted"]

    @torch.no_grad()
    def _losses(self, points: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Margin losses (N,) of ``points`` (N, ...) in forwards of ``batch_rows`` rows."""
        out = [margin(self.get_logits(part), c, self.targeted)
               for part, c in zip(points.split(self.batch_rows), cls.split(self.batch_rows))]
        return torch.cat(out)

    @torch.no_grad()
    def _gradient(self, adv: torch.Tensor, cls: torch.Tensor, rows: torch.Tensor,
                  streams: SampleStreams) -> torch.Tensor:
        """SPSA estimate (B, ...) of the margin loss's gradient at ``adv`` (samples ``rows``)."""
        b, n = adv.shape[0], self.nb_sample
        grad = torch.zeros_like(adv)
        # Samples per forward: all 2n probes of each sample, or one sample's probes split up.
        per_forward = max(1, self.batch_rows // (2 * n))
        for lo in range(0, b, per_forward):
            a, c = adv[lo:lo + per_forward], cls[lo:lo + per_forward]
            v = streams.draw(rows[lo:lo + per_forward], (n,) + a.shape[1:], "sign", a.dtype)
            probes = torch.cat([a[:, None] + self.delta * v, a[:, None] - self.delta * v], 1)
            losses = self._losses(probes.flatten(0, 1), c.repeat_interleave(2 * n))
            losses = losses.view(a.shape[0], 2, n)
            diff = (losses[:, 0] - losses[:, 1]) / (2 * self.delta)            # (b', n)
            grad[lo:lo + per_forward] = (diff.view(diff.shape + (1,) * (a.dim() - 1)) * v).mean(1)
        return grad

    def _budget(self) -> int:
        full = 1 + self.nb_iter * (2 * self.nb_sample + 1)
        return full if self.max_queries is None else min(full, self.max_queries)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cls = self.get_target_label(images, labels) if self.targeted else labels
        b, dev = images.shape[0], images.device
        self.batch_rows = self.max_batch_size or rows_per_forward(
            images.shape[1:], dev, minimum=2)
        budget = self._budget()
        per_iter = 2 * self.nb_sample + 1
        queries = torch.zeros(b, dtype=torch.int64, device=dev)
        self.queries = queries
        streams = SampleStreams(self.seed, b, dev)
        with torch.no_grad():
            logits = self.get_logits(images)
        self.check_labels_against_logits(logits, cls)
        queries += 1
        result = images.clone()
        active = (margin(logits, cls, self.targeted) >= 0).nonzero().flatten()
        x, c = images[active], cls[active]
        adv = torch.clamp(x + self.eps * streams.draw(active, x.shape[1:], "symmetric", x.dtype),
                          0.0, 1.0)
        m, v = torch.zeros_like(x), torch.zeros_like(x)
        beta1, beta2 = _ADAM_BETAS
        for it in range(self.nb_iter):
            if active.numel() == 0 or int(queries[active[0]]) + per_iter > budget:
                break  # active samples share one count: the same queries since the clean check
            grad = self._gradient(adv, c, active, streams)
            t = it + 1
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v / (1 - beta2 ** t)).sqrt_().add_(_ADAM_EPS)
            adv = adv.addcdiv(m, denom, value=-self.lr / (1 - beta1 ** t))
            adv = torch.clamp(torch.min(torch.max(adv, x - self.eps), x + self.eps), 0.0, 1.0)
            loss = self._losses(adv, c)
            queries[active] += per_iter
            done = loss < 0
            if bool(done.any()):
                result[active[done]] = adv[done]
                keep = ~done
                active, x, c, adv, m, v = active[keep], x[keep], c[keep], adv[keep], m[keep], v[keep]
        result[active] = adv
        return result
