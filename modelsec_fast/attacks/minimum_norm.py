"""Minimum-norm attacks and their result record: how far each input lies from the boundary.

A minimum-norm attack (CW, DeepFool, HopSkipJump) has no eps: it looks for the
smallest perturbation, in its norm, that changes the decision.  Its per-sample
distances answer a question a fixed-eps attack cannot: the robust accuracy at
*every* eps at once, read off the distribution::

    atk = CW(model, steps=100)
    result = atk.evaluate(images, labels)      # a MinimumNormResult
    result.median_norm, result.success_rate
    result.robust_accuracy_at(0.5)             # fraction with distance > 0.5
    result.to_json("cw.json")

Units: distances are in pixel space [0, 1] (after un-normalising), in the
attack's norm ("L2" or "Linf").
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Sequence

import torch

from .._json import json_text
from ..validation import check_choice, check_non_negative
from .base import Attack

__all__ = ["MinimumNormAttack", "MinimumNormResult", "perturbation_norms",
           "looks_like_probabilities", "warn_if_probabilities"]

NORMS = ("L2", "Linf")
# The quantiles a result reports of the distances it found.
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def perturbation_norms(adv: torch.Tensor, images: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm (B,) of ``adv - images`` (both (B, ...)), "L2" or "Linf"."""
    delta = (adv - images).flatten(1)
    return delta.norm(dim=1) if norm == "L2" else delta.abs().amax(1)


def looks_like_probabilities(outputs: torch.Tensor) -> bool:
    """Whether every row of ``outputs`` (B, K) lies in [0, 1] and sums to 1 (softmax outputs)."""
    if outputs.dim() != 2 or outputs.numel() == 0:
        return False
    sums = outputs.sum(1)
    return bool((outputs >= 0).all() and (outputs <= 1).all() and ((sums - 1).abs() < 1e-4).all())


def warn_if_probabilities(outputs: torch.Tensor, attack: str) -> None:
    """A UserWarning when ``outputs`` look like probabilities: ``attack`` needs logits."""
    if looks_like_probabilities(outputs.detach()):
        warnings.warn(f"{attack}: the model seems to output probabilities (rows in [0, 1] "
                      "summing to 1); this attack needs logits to find small perturbations: "
                      "remove the final softmax", UserWarning, stacklevel=3)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclasses.dataclass
class MinimumNormResult:
    """Per-sample distances to the nearest adversarial example a minimum-norm attack found.

    Attributes:
        attack: the attack's name.
        norm: "L2" or "Linf"; distances are in this norm, pixel space [0, 1].
        n_samples: samples evaluated.
        n_attacked: samples the model classified correctly (the others are at
            distance 0: already misclassified).
        n_found: attacked samples for which an adversarial example was found.
        success_rate: ``n_found / n_attacked`` (NaN when nothing was attacked).
        median_norm, mean_norm: median and mean distance of the found examples
            (NaN when none was found).
        quantiles: quantile (as text, "0.1" ...) -> distance, over the found examples.
        distances: one per sample, in the order given: 0.0 for a sample already
            misclassified, the distance found, or ``math.inf`` where none was
            found (``None`` in the JSON).
        queries: per-sample model queries (score- and decision-based attacks), else None.
        seconds: wall time of the attack.
        settings: the attack's arguments, as its ``repr``.
    """

    attack: str
    norm: str
    n_samples: int
    n_attacked: int
    n_found: int
    success_rate: float
    median_norm: float
    mean_norm: float
    quantiles: dict[str, float]
    distances: list[float]
    queries: list[int] | None = None
    seconds: float = 0.0
    settings: str = ""

    @classmethod
    def from_distances(cls, attack: str, norm: str, distances: torch.Tensor,
                       attacked: torch.Tensor, *, queries: torch.Tensor | None = None,
                       seconds: float = 0.0, settings: str = "") -> "MinimumNormResult":
        """The record of per-sample ``distances`` (N,): 0 where not ``attacked`` (bool (N,)),
        ``inf`` where nothing was found."""
        check_choice("norm", norm, NORMS)
        distances = distances.detach().double().cpu()
        attacked = attacked.detach().bool().cpu()
        distances = torch.where(attacked, distances, torch.zeros_like(distances))
        found = distances[attacked & torch.isfinite(distances)]
        n_attacked, n_found = int(attacked.sum()), int(found.numel())
        nan = math.nan
        if n_found:
            qs = torch.quantile(found, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
            median, mean = float(found.median()), float(found.mean())
        else:
            qs, median, mean = [nan] * len(QUANTILES), nan, nan
        return cls(attack=attack, norm=norm, n_samples=int(distances.numel()),
                   n_attacked=n_attacked, n_found=n_found,
                   success_rate=n_found / n_attacked if n_attacked else nan,
                   median_norm=median, mean_norm=mean,
                   quantiles={f"{q:g}": v for q, v in zip(QUANTILES, qs)},
                   distances=distances.tolist(),
                   queries=None if queries is None else [int(q) for q in queries.cpu().tolist()],
                   seconds=seconds, settings=settings)

    def robust_accuracy_at(self, eps: float, norm: str | None = None) -> float:
        """Fraction of all samples whose distance exceeds ``eps`` (NaN if no samples).

        ``norm``, if given, must be this record's norm: an L2 record cannot answer
        an L-inf eps (ValueError).
        """
        if not (isinstance(eps, float) and eps == math.inf):  # inf: any distance found
            eps = check_non_negative("eps", eps)
        if norm is not None and check_choice("norm", norm, NORMS) != self.norm:
            raise ValueError(f"{self.attack} measured {self.norm} distances; it cannot give the "
                             f"robust accuracy at a {norm} eps of {eps:g}")
        if not self.n_samples:
            return math.nan
        return sum(d > eps for d in self.distances) / self.n_samples

    def robust_accuracy_curve(self, epsilons: Sequence[float] | None = None) -> dict[float, float]:
        """eps -> robust accuracy; default eps: 0 and the reported quantiles of the distances."""
        if epsilons is None:
            epsilons = [0.0] + [q for q in self.quantiles.values() if math.isfinite(q)]
        return {float(e): self.robust_accuracy_at(e) for e in epsilons}

    def to_dict(self) -> dict:
        """JSON-ready: infinite distances (nothing found) and NaN figures become None."""
        out = dataclasses.asdict(self)
        out["distances"] = [_finite_or_none(d) for d in self.distances]
        for key in ("success_rate", "median_norm", "mean_norm"):
            out[key] = _finite_or_none(out[key])
        out["quantiles"] = {k: _finite_or_none(v) for k, v in self.quantiles.items()}
        return out

    def to_json(self, path: str | None = None, indent: int = 2) -> str:
        """:meth:`to_dict` as JSON text; also written to ``path`` if given."""
        return json_text(self.to_dict(), path, indent)

    def __str__(self) -> str:
        head = (f"{self.attack} ({self.norm}) on {self.n_samples} samples: found "
                f"{self.n_found} of {self.n_attacked} attacked")
        if self.n_found:
            head += (f" ({100 * self.success_rate:.1f}%), median {self.norm} {self.median_norm:.4g}, "
                     f"mean {self.mean_norm:.4g}")
        if self.queries:
            head += f", median queries {sorted(self.queries)[len(self.queries) // 2]}"
        return head


class MinimumNormAttack(Attack):
    """Base of the attacks that minimise the perturbation instead of using an eps.

    Subclasses set ``norm`` ("L2" or "Linf") and implement :meth:`forward`; a
    call returns, per sample, the smallest adversarial example found, or the
    image itself where none was found.  :meth:`evaluate` measures the result.
    """

    minimum_norm = True
    #: no eps ball: robust_accuracy checks range and finiteness only, and applies its own eps.
    eps = None
    #: per-sample model queries of the last call (int64 (B,)), for query-based attacks.
    queries: torch.Tensor | None = None

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> MinimumNormResult:
        """Attack ``images`` and measure the distances found (a :class:`MinimumNormResult`).

        A sample counts as found when the model, in eval mode, misclassifies the
        returned example (in targeted modes too: success here means
        misclassified).  Args as a call; distances in pixel space.
        """
        start = time.perf_counter()
        adv = self(images, labels)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            clean = self.get_output_with_eval_nograd(images).argmax(1)
            fooled = self.get_output_with_eval_nograd(adv).argmax(1)
        if self.normalization_used is not None:
            adv, images = self.inverse_normalize(adv), self.inverse_normalize(images)
        labels = labels.to(clean.device).long()
        attacked = clean == labels
        norms = perturbation_norms(adv, images, self.norm).double()
        distances = torch.where(fooled != labels, norms, torch.full_like(norms, math.inf))
        queries = self.queries if self.gradient_free else None
        return MinimumNormResult.from_distances(self.attack, self.norm, distances, attacked,
                                                queries=queries, seconds=seconds,
                                                settings=repr(self))
