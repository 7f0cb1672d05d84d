"""Scan stage: how far the user's test examples lie from the decision boundary.

Runs the minimum-norm attacks CW (L2) and DeepFool (L2 and L-inf) on the first
``budget.n_examples`` test examples and reports their distance distributions
(:class:`~modelsec_fast.app.sections.MinimumNormSection`), with the robust
accuracy read off them at half, once and twice the scan's ``eps_l2`` / ``eps_linf``.
Both attacks are deterministic, so the stage draws no random numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
from torch import nn

from modelsec_fast.attacks import CW, DeepFool, MinimumNormResult

from ..report import Section, SkippedSection
from ..sections.minimum_norm import MinimumNormSection
from .inputs import ScanInputs

__all__ = ["run", "minimum_norm_results", "describe_attacks"]

# CW's Adam steps are small (learning rate CW_LR in tanh space): it needs about ten
# times the iterations of a PGD run per binary-search step to reach DeepFool's distances.
CW_STEPS_PER_ATTACK_STEP = 10
CW_BINARY_SEARCH_STEPS = 5
CW_LR = 0.05
DEEPFOOL_TOP_K, DEEPFOOL_OVERSHOOT = 10, 0.02  # DeepFool's defaults, named for the report
RADII_FACTORS = (0.5, 1.0, 2.0)  # the radii read off: these multiples of the scan's eps


class _FromUnitRange(nn.Module):
    """``model`` seen on inputs in [0, 1]: x -> model(low + (high - low) * x), so the
    attacks, which work in [0, 1], apply to a model of any input range."""

    def __init__(self, model: nn.Module, low: float, high: float):
        super().__init__()
        self.model, self.low, self.scale = model, float(low), float(high) - float(low)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.low + self.scale * x)


def _rescaled(result: MinimumNormResult, factor: float) -> MinimumNormResult:
    """``result`` with every distance multiplied by ``factor`` (both norms are homogeneous)."""
    if factor == 1.0:
        return result
    return dataclasses.replace(
        result, median_norm=result.median_norm * factor, mean_norm=result.mean_norm * factor,
        quantiles={q: v * factor for q, v in result.quantiles.items()},
        distances=[d * factor for d in result.distances])


def minimum_norm_results(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cw_steps: int,
                         log: Callable[[str], None] = lambda message: None
                         ) -> list[MinimumNormResult]:
    """CW-L2 (``cw_steps`` Adam steps per binary-search step), DeepFool-L2 and
    DeepFool-Linf on ``model`` (logits, inputs ``x`` (N, ...) in [0, 1] on its device,
    labels ``y`` (N,)): one :class:`~modelsec_fast.attacks.MinimumNormResult` each,
    distances in pixel units of [0, 1].

    Raises:
        ValueError: ``cw_steps`` < 1 (from CW), images outside [0, 1].
    """
    attacks = (CW(model, steps=cw_steps, binary_search_steps=CW_BINARY_SEARCH_STEPS, lr=CW_LR),
               *(DeepFool(model, norm=norm, top_k=DEEPFOOL_TOP_K, overshoot=DEEPFOOL_OVERSHOOT)
                 for norm in ("L2", "Linf")))
    results = []
    for atk in attacks:
        result = atk.evaluate(x, y)
        log(f"minimum-norm: {result}")
        results.append(result)
    return results


def describe_attacks(cw_steps: int) -> str:
    """One line naming the attacks :func:`minimum_norm_results` runs, with their settings."""
    return (f"CW-L2 with {cw_steps} Adam steps (learning rate {CW_LR:g}) per binary-search "
            f"step, {CW_BINARY_SEARCH_STEPS} binary-search steps over c; DeepFool L2 and "
            f"L-inf over the top {DEEPFOOL_TOP_K} classes, overshoot {DEEPFOOL_OVERSHOOT:g}.")


def _radii(eps: float) -> tuple[float, ...]:
    return tuple(f * eps for f in RADII_FACTORS if f * eps > 0)


def run(inputs: ScanInputs) -> Section:
    """The stage: :func:`minimum_norm_results` on ``inputs.attack_subset()``, CW with
    ``CW_STEPS_PER_ATTACK_STEP * budget.attack_steps`` steps; distances in the units
    of ``inputs.input_range``. Skipped for non-image data."""
    key, title = MinimumNormSection.key, MinimumNormSection.title
    if not inputs.is_image:
        return SkippedSection(key, title, "minimum-norm distances are measured on image "
                                          "inputs; this data is not image data")
    low, high = (float(v) for v in inputs.input_range)
    x, y = inputs.attack_subset()
    steps = CW_STEPS_PER_ATTACK_STEP * inputs.budget.attack_steps
    inputs.log(f"minimum-norm: CW-L2 ({steps} steps x {CW_BINARY_SEARCH_STEPS} binary-search "
               f"steps), DeepFool L2 and L-inf on {len(y)} examples")
    unit = _FromUnitRange(inputs.model, low, high).eval()
    results = minimum_norm_results(unit, ((x - low) / (high - low)).clamp(0, 1), y,
                                   cw_steps=steps, log=inputs.log)
    grid: dict[str, Sequence[float]] = {"L2": _radii(inputs.eps_l2),
                                        "Linf": _radii(inputs.eps_linf)}
    units = ("pixel space, inputs in [0, 1]" if (low, high) == (0.0, 1.0)
             else f"input units, inputs in [{low:g}, {high:g}]")
    return MinimumNormSection({"model": [_rescaled(r, high - low) for r in results]},
                              eps_grid=grid, n_examples=len(y), units=units,
                              method=describe_attacks(steps))
