"""Robust accuracy over a grid of L-inf radii: what ``evaluate`` and the demo report.

:func:`robust_curve` runs :func:`modelsec_fast.evaluate.robust_accuracy` with the
command line's attacks (FGSM, PGD, APGD) at each radius and returns a
:class:`RobustCurve`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

__all__ = ["DEFAULT_ATTACKS", "RobustCurve", "make_attack", "robust_curve"]

DEFAULT_ATTACKS = ("fgsm", "pgd", "apgd")


@dataclass
class RobustCurve:
    """Accuracy under the per-example worst case of a set of attacks, per L-inf radius.

    Accuracies are in [0, 1]; radii in pixel space. ``robust_accuracy[0.0]`` is the
    clean accuracy when 0 was on the grid. ``per_attack[eps][name]`` is the
    cumulative worst case after that attack ran. ``adversarial[eps]``: the
    worst-case examples (N, ...), when they were kept.
    """

    clean_accuracy: float
    robust_accuracy: dict[float, float]
    per_attack: dict[float, dict[str, float]]
    warnings: list[str] = field(default_factory=list)
    adversarial: dict[float, torch.Tensor] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        """Figures keyed by ``str(eps)`` (JSON keys are strings); no examples."""
        return {"clean_accuracy": self.clean_accuracy,
                "robust_accuracy": {str(e): a for e, a in self.robust_accuracy.items()},
                "per_attack": {str(e): dict(p) for e, p in self.per_attack.items()},
                "warnings": list(self.warnings)}


def make_attack(name: str, model: nn.Module, eps: float, steps: int, seed: int):
    """The L-inf attack ``name`` ("fgsm", "pgd" or "apgd") at radius ``eps`` (pixel space).

    PGD uses step size 2.5 * eps / steps with a random start. Raises ``ValueError``
    for an unknown name.
    """
    from modelsec_fast import attacks

    if name == "fgsm":
        return attacks.FGSM(model, eps=eps)
    if name == "pgd":
        return attacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps,
                           random_start=True)
    if name == "apgd":
        return attacks.APGD(model, eps=eps, steps=steps, seed=seed)
    raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(DEFAULT_ATTACKS)}")


def robust_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 eps_grid: Sequence[float], *, attacks: Sequence[str] = DEFAULT_ATTACKS,
                 steps: int = 10, seed: int = 0, batch_size: int = 512,
                 keep_adversarial: bool = False) -> RobustCurve:
    """Accuracy under the per-example worst case of ``attacks`` at each L-inf eps.

    Args:
        x, y: float32 (N, C, H, W) in [0, 1], int64 (N,), on the model's device.
        eps_grid: radii in pixel space; eps 0 is clean accuracy.
        keep_adversarial: keep each radius's worst-case examples.
    """
    from modelsec_fast.evaluate import robust_accuracy

    from .training import evaluate_accuracy

    torch.manual_seed(seed)
    curve = RobustCurve(clean_accuracy=float("nan"), robust_accuracy={}, per_attack={})
    clean = None
    for eps in eps_grid:
        eps = float(eps)
        if eps == 0:
            continue
        atks = [make_attack(a, model, eps, steps, seed) for a in attacks]
        result = robust_accuracy(model, (x, y), attacks=atks, batch_size=batch_size,
                                 progress=False, seed=seed,
                                 return_adversarial=keep_adversarial)
        clean = result.clean_accuracy
        curve.robust_accuracy[eps] = float(result.robust_accuracy)
        curve.per_attack[eps] = {name: float(rec.robust_accuracy)
                                 for name, rec in result.per_attack.items()}
        curve.warnings += [f"eps {eps:g}: {w}" for w in result.warnings]
        if keep_adversarial and result.adversarial is not None:
            curve.adversarial[eps] = result.adversarial
    curve.clean_accuracy = float(clean if clean is not None else evaluate_accuracy(model, x, y))
    if any(float(e) == 0 for e in eps_grid):
        curve.robust_accuracy[0.0] = curve.clean_accuracy
    return curve
