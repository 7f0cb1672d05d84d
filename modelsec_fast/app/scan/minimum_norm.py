"""Scan stage: how far the user's test examples lie from the decision boundary.

Runs the minimum-norm attacks CW (L2) and DeepFool (L2 and L-inf) on the first
``budget.n_examples`` test examples and reports their distance distributions
(:class:`~modelsec_fast.app.sections.MinimumNormSection`), with the robust
accuracy read off them at half, once and twice the scan's ``eps_l2`` / ``eps_linf``.
Then the query-based attacks, the check for gradient masking, on the same
examples with ``budget.attack_queries`` queries each: SPSA (scores only, L-inf at
``eps_linf``) and HopSkipJump (decisions only, minimum L2). CW and DeepFool are
deterministic; SPSA and HopSkipJump draw from generators seeded with the scan's seed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import torch
from torch import nn

from modelsec_fast.attacks import CW, SPSA, DeepFool, HopSkipJump, MinimumNormResult
from modelsec_fast.evaluate import valid_examples

from ..report import Section, SkippedSection
from ..sections.minimum_norm import MinimumNormSection, ScoreBasedResult
from .inputs import ScanInputs

__all__ = ["run", "minimum_norm_results", "describe_attacks", "query_attack_results",
           "describe_query_attacks"]

# CW's Adam steps are small (learning rate CW_LR in tanh space): it needs about ten
# times the iterations of a PGD run per binary-search step to reach DeepFool's distances.
CW_STEPS_PER_ATTACK_STEP = 10
CW_BINARY_SEARCH_STEPS = 5
CW_LR = 0.05
DEEPFOOL_TOP_K, DEEPFOOL_OVERSHOOT = 10, 0.02  # DeepFool's defaults, named for the report
RADII_FACTORS = (0.5, 1.0, 2.0)  # the radii read off: these multiples of the scan's eps
# SPSA: 16 directions per iteration (33 queries with its check), so a budget of a few
# hundred queries still makes a dozen Adam steps; Adam moves a pixel by about lr per
# step, so lr = eps / 4 crosses the eps ball in a few steps whatever the radius.
SPSA_SAMPLES = 16
SPSA_LR_PER_EPS = 0.25


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


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    return torch.cat([model(part).argmax(1) for part in x.split(chunk)])


def _spsa_iterations(max_queries: int) -> int:
    """SPSA's iterations within ``max_queries`` (one clean query, then 2n + 1 each)."""
    return max(1, (max_queries - 1) // (2 * SPSA_SAMPLES + 1))


def query_attack_results(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                         eps_linf: float, max_queries: int, seed: int = 0,
                         log: Callable[[str], None] = lambda message: None
                         ) -> tuple[ScoreBasedResult, MinimumNormResult]:
    """SPSA at L-inf ``eps_linf`` and HopSkipJump (L2) on ``model`` (logits, inputs ``x``
    (N, ...) in [0, 1] on its device, labels ``y`` (N,)), each with at most
    ``max_queries`` model queries per example and generators seeded with ``seed``:
    (SPSA's per-example outcome, HopSkipJump's distances), pixel units of [0, 1].

    Raises:
        ValueError: ``eps_linf`` <= 0, ``max_queries`` < 1, images outside [0, 1].
    """
    if not eps_linf > 0:
        raise ValueError(f"eps_linf must be > 0, got {eps_linf!r}")
    spsa = SPSA(model, eps=eps_linf, lr=SPSA_LR_PER_EPS * eps_linf,
                nb_iter=_spsa_iterations(max_queries), nb_sample=SPSA_SAMPLES,
                max_queries=max_queries, seed=seed)
    start = time.perf_counter()
    adv = spsa(x, y)
    seconds = time.perf_counter() - start
    correct, after = _predict(model, x) == y, _predict(model, adv) == y
    robust = correct & (after | ~valid_examples(spsa, adv, x))
    score_based = ScoreBasedResult("SPSA", "Linf", eps_linf, correct.tolist(), robust.tolist(),
                                   [int(q) for q in spsa.queries.tolist()], max_queries,
                                   seconds, repr(spsa))
    log(f"minimum-norm: SPSA (L-inf eps {eps_linf:.4g}) robust accuracy "
        f"{100 * score_based.robust_accuracy:.1f}%, median queries "
        f"{score_based.median_queries}")
    decision_based = HopSkipJump(model, norm="L2", max_queries=max_queries,
                                 seed=seed).evaluate(x, y)
    log(f"minimum-norm: {decision_based}")
    return score_based, decision_based


def describe_query_attacks(max_queries: int) -> str:
    """One line naming the attacks :func:`query_attack_results` runs, with their settings."""
    return (f"SPSA with {SPSA_SAMPLES} +-delta direction pairs per iteration, "
            f"{_spsa_iterations(max_queries)} iterations, Adam learning rate "
            f"{SPSA_LR_PER_EPS:g} x eps; HopSkipJump (L2) with its default schedule; both at "
            f"most {max_queries} queries per example.")


def describe_attacks(cw_steps: int) -> str:
    """One line naming the attacks :func:`minimum_norm_results` runs, with their settings."""
    return (f"CW-L2 with {cw_steps} Adam steps (learning rate {CW_LR:g}) per binary-search "
            f"step, {CW_BINARY_SEARCH_STEPS} binary-search steps over c; DeepFool L2 and "
            f"L-inf over the top {DEEPFOOL_TOP_K} classes, overshoot {DEEPFOOL_OVERSHOOT:g}.")


def _radii(eps: float) -> tuple[float, ...]:
    return tuple(f * eps for f in RADII_FACTORS if f * eps > 0)


def run(inputs: ScanInputs) -> Section:
    """The stage: :func:`minimum_norm_results` on ``inputs.attack_subset()``, CW with
    ``CW_STEPS_PER_ATTACK_STEP * budget.attack_steps`` steps, then
    :func:`query_attack_results` with ``budget.attack_queries`` queries per example;
    distances in the units of ``inputs.input_range``. Skipped for non-image data."""
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
    unit_x = ((x - low) / (high - low)).clamp(0, 1)
    results = minimum_norm_results(unit, unit_x, y, cw_steps=steps, log=inputs.log)
    queries = inputs.budget.attack_queries
    inputs.log(f"minimum-norm: SPSA (L-inf eps {inputs.eps_linf:g}) and HopSkipJump (L2), "
               f"{queries} queries per example")
    score_based, decision_based = query_attack_results(
        unit, unit_x, y, eps_linf=inputs.eps_linf / (high - low), max_queries=queries,
        seed=inputs.seed, log=inputs.log)
    grid: dict[str, Sequence[float]] = {"L2": _radii(inputs.eps_l2),
                                        "Linf": _radii(inputs.eps_linf)}
    units = ("pixel space, inputs in [0, 1]" if (low, high) == (0.0, 1.0)
             else f"input units, inputs in [{low:g}, {high:g}]")
    width = high - low
    return MinimumNormSection(
        {"model": [_rescaled(r, width) for r in results]}, eps_grid=grid, n_examples=len(y),
        units=units, method=describe_attacks(steps) + " " + describe_query_attacks(queries),
        score_based={"model": dataclasses.replace(score_based, eps=inputs.eps_linf)},
        decision_based={"model": _rescaled(decision_based, width)}, max_queries=queries,
        eps={"L2": inputs.eps_l2, "Linf": inputs.eps_linf})
