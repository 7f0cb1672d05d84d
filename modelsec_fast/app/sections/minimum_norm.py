"""Minimum-norm attacks: how far each test example lies from the decision boundary.

A minimum-norm attack (CW, DeepFool) finds, per example, the smallest
perturbation that changes the decision; the distribution of these distances
gives the robust accuracy at every radius at once (an upper bound: a stronger
attack may find closer points).

Query-based attacks read no gradient: SPSA (score-based, the model's logits
only, at a fixed L-inf radius) and HopSkipJump (decision-based, its decisions
only, minimum L2). A defence that masks gradients fools the gradient attacks
but not these (Athalye et al. 2018), so the section compares them: a
gradient-free attack that does better than the gradient ones is the sign of
masking. The query-based attacks may run on the first examples only (they cost
more); each comparison is on the examples both ran on.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

from modelsec_fast.attacks.minimum_norm import MinimumNormResult

from ..report.document import Block, BulletList, Figure, Paragraph, Subheading, Table
from .formatting import percent

__all__ = ["MinimumNormSection", "ScoreBasedResult", "MaskingCheck",
           "SCORE_BASED_MARGIN", "DECISION_BASED_MARGIN"]

_NORM_TEXT = {"L2": "L2", "Linf": "L-inf"}
# A gradient-free attack must beat the gradient ones by more than these to suggest
# masking. SPSA's robust accuracy: AutoAttack's margin for Square (0.2 points), the rule
# modelsec_fast.evaluate applies. HopSkipJump's median distance: it estimates the
# boundary from decisions alone and ends above CW's on a model whose gradients are
# honest; 10% below them is more than CW's binary-search resolution.
SCORE_BASED_MARGIN = 0.002
DECISION_BASED_MARGIN = 0.1


def _number(value: float) -> str:
    """A distance for a table cell: 4 significant digits, ``n/a`` for NaN."""
    return "n/a" if math.isnan(value) else f"{value:.4g}"


@dataclass(frozen=True)
class ScoreBasedResult:
    """A score-based attack (SPSA) at a fixed radius, per example.

    ``attack``/``norm``/``eps``: the threat (``eps`` in the section's units);
    ``correct``: (N,) clean prediction right; ``robust``: (N,) still right after
    the attack (an example outside the eps ball or the input range would not count
    as broken); ``queries``: (N,) model queries each example used, at most
    ``max_queries``; ``seconds``: wall time; ``settings``: the attack's ``repr``.
    """

    attack: str
    norm: str
    eps: float
    correct: list[bool]
    robust: list[bool]
    queries: list[int]
    max_queries: int
    seconds: float = 0.0
    settings: str = ""

    @property
    def n_samples(self) -> int:
        return len(self.correct)

    @property
    def clean_accuracy(self) -> float:
        return sum(self.correct) / self.n_samples if self.n_samples else math.nan

    @property
    def robust_accuracy(self) -> float:
        return sum(self.robust) / self.n_samples if self.n_samples else math.nan

    @property
    def median_queries(self) -> Optional[int]:
        """Median queries of the attacked (correctly classified) examples; None if none."""
        used = [q for q, c in zip(self.queries, self.correct) if c]
        return _lower_median(used) if used else None

    def to_dict(self) -> dict:
        return {"attack": self.attack, "norm": self.norm, "eps": self.eps,
                "n_samples": self.n_samples, "clean_accuracy": self.clean_accuracy,
                "robust_accuracy": self.robust_accuracy, "max_queries": self.max_queries,
                "median_queries": self.median_queries, "correct": list(self.correct),
                "robust": list(self.robust), "queries": list(self.queries),
                "seconds": self.seconds, "settings": self.settings}


@dataclass(frozen=True)
class MaskingCheck:
    """One gradient-free attack against the gradient ones on the same examples:
    ``measure`` ("robust accuracy" at ``eps``, or "median distance" of the correctly
    classified examples, none found counting as infinitely far), the two figures, and
    whether the gradient-free one does better by more than the margin (``suspected``)."""

    model: str
    attack: str
    norm: str
    measure: str
    gradient_free: float
    gradient: float
    gradient_attacks: tuple[str, ...]
    suspected: bool
    eps: Optional[float] = None

    def to_dict(self) -> dict:
        return {"model": self.model, "attack": self.attack, "norm": self.norm,
                "measure": self.measure, "eps": self.eps,
                "gradient_free": _finite_or_none(self.gradient_free),
                "gradient": _finite_or_none(self.gradient),
                "gradient_attacks": list(self.gradient_attacks), "suspected": self.suspected}


def _finite_or_none(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


def _lower_median(values: Sequence[float]):
    """The lower middle value (torch's median: always an observed value)."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def _closest(results: Sequence[MinimumNormResult]) -> list[float]:
    """Per example, the smallest distance any of ``results`` (same examples) found."""
    return [min(ds) for ds in zip(*(r.distances for r in results))]


def _median_of_correct(distances: Sequence[float]) -> float:
    """Median distance of the correctly classified examples (distance > 0; none found:
    ``inf``); NaN when there are none."""
    correct = [d for d in distances if d > 0]
    return _lower_median(correct) if correct else math.nan


@dataclass
class MinimumNormSection:
    """``results``: model label -> the :class:`~modelsec_fast.attacks.MinimumNormResult`
    of each gradient minimum-norm attack run on it (any mix of "L2" and "Linf"
    results), all on the same ``n_examples`` test examples. ``eps_grid``: norm -> the
    radii at which the robust accuracy is read off the distances. ``units``: what the
    distances are measured in (the results' pixel space unless the caller rescaled
    them). ``method``: the attacks' settings, one line for the reader.

    The query-based attacks, per model label, each on the first ``n_samples`` of
    those examples (all of them or fewer): ``score_based`` (:class:`ScoreBasedResult`,
    SPSA) and ``decision_based`` (a ``MinimumNormResult`` of HopSkipJump, L2), with
    ``max_queries`` their per-example query budget. ``eps``: norm -> the radius
    :meth:`verdict` judges against (the scan's ``--eps``), in ``units``.

    Raises:
        ValueError: a result whose norm has no ``eps_grid`` entry; a query-based
            result on more examples than ``n_examples``.
    """

    results: dict[str, list[MinimumNormResult]]
    eps_grid: dict[str, Sequence[float]]
    n_examples: int
    units: str = "pixel space, inputs in [0, 1]"
    method: str = ""
    score_based: dict[str, ScoreBasedResult] = field(default_factory=dict)
    decision_based: dict[str, MinimumNormResult] = field(default_factory=dict)
    max_queries: Optional[int] = None
    eps: dict[str, float] = field(default_factory=dict)
    key = "minimum_norm"
    title = "Minimum-norm attacks: distance to the decision boundary"

    def __post_init__(self):
        for label, results in self.results.items():
            for r in results:
                if r.norm not in self.eps_grid:
                    raise ValueError(f"{label}: {r.attack} measured {r.norm} distances but "
                                     f"eps_grid has radii for {sorted(self.eps_grid)} only")
        for label, r in [*self.score_based.items(), *self.decision_based.items()]:
            if r.n_samples > self.n_examples:
                raise ValueError(f"{label}: {r.attack} ran on {r.n_samples} examples, more "
                                 f"than the section's n_examples={self.n_examples}")

    def _norms(self) -> list[str]:
        return [n for n in ("L2", "Linf")
                if any(r.norm == n for rs in self.results.values() for r in rs)]

    def to_json(self) -> dict:
        models = {}
        for label, results in self.results.items():
            models[label] = {
                f"{r.attack}-{r.norm}": {
                    **r.to_dict(),
                    "robust_accuracy": {f"{float(e):g}": r.robust_accuracy_at(float(e))
                                        for e in self.eps_grid[r.norm]}}
                for r in results}
        return {"n_examples": self.n_examples, "units": self.units, "method": self.method,
                "eps_grid": {n: [float(e) for e in g] for n, g in self.eps_grid.items()},
                "models": models, "eps": dict(self.eps), "max_queries": self.max_queries,
                "score_based": {label: r.to_dict() for label, r in self.score_based.items()},
                "decision_based": {label: r.to_dict()
                                   for label, r in self.decision_based.items()},
                "masking_checks": [c.to_dict() for c in self.masking_checks()]}

    # ------------------------------------------------------------ gradient masking
    def _gradient(self, label: str, norm: str) -> list[MinimumNormResult]:
        return [r for r in self.results.get(label, ()) if r.norm == norm]

    def masking_checks(self) -> list[MaskingCheck]:
        """Each query-based attack against the gradient attacks of its norm on the same
        model and examples: SPSA's robust accuracy against the one the gradient
        attacks' distances give at its eps, HopSkipJump's median distance against theirs."""
        checks = []
        for label, spsa in self.score_based.items():
            gradient = self._gradient(label, spsa.norm)
            if gradient:
                closest = _closest(gradient)[:spsa.n_samples]
                robust = sum(d > spsa.eps for d in closest) / len(closest)
                checks.append(MaskingCheck(
                    label, spsa.attack, spsa.norm, "robust accuracy", spsa.robust_accuracy,
                    robust, tuple(r.attack for r in gradient),
                    spsa.robust_accuracy < robust - SCORE_BASED_MARGIN, spsa.eps))
        for label, free in self.decision_based.items():
            gradient = self._gradient(label, free.norm)
            if gradient:
                mine = _median_of_correct(free.distances)
                theirs = _median_of_correct(_closest(gradient)[:free.n_samples])
                checks.append(MaskingCheck(
                    label, free.attack, free.norm, "median distance", mine, theirs,
                    tuple(r.attack for r in gradient),
                    mine < (1 - DECISION_BASED_MARGIN) * theirs))
        return checks

    # ------------------------------------------------------------ summary verdict
    def closest_distances(self, label: str, norm: str) -> tuple[list[float], list[str]]:
        """Per example, the smallest ``norm`` distance any attack found on model
        ``label`` (0: misclassified, ``inf``: none found), and the attacks that took
        part: the gradient ones, HopSkipJump's distances (L2), and SPSA's breaks at its
        eps, each an adversarial example within that eps (L-inf)."""
        gradient = self._gradient(label, norm)
        closest = _closest(gradient) if gradient else []
        names = [r.attack for r in gradient]
        free = self.decision_based.get(label)
        if free is not None and free.norm == norm and closest:
            closest[:free.n_samples] = [min(a, b) for a, b in zip(closest, free.distances)]
            names.append(free.attack)
        spsa = self.score_based.get(label)
        if spsa is not None and spsa.norm == norm and closest:
            closest[:spsa.n_samples] = [d if robust or d == 0 else min(d, spsa.eps)
                                        for d, robust in zip(closest, spsa.robust)]
            names.append(spsa.attack)
        return closest, names

    def verdict(self):
        """At risk when more than half of the correctly classified examples have an
        adversarial example within the scan's eps (then their median distance to the
        boundary is below eps), in either norm, on any model; each example's distance
        is the smallest any attack found (:meth:`closest_distances`)."""
        from .scan_robustness import ROBUST_FRACTION_THRESHOLD
        from .scan_summary import AT_RISK, INCONCLUSIVE, NO_FINDING, Verdict

        share_at_risk = 1 - ROBUST_FRACTION_THRESHOLD
        threshold = (f"at risk when more than {share_at_risk:.0%} of the correctly classified "
                     "examples have an adversarial example within the scan's eps (their "
                     "median distance below eps), in either norm")
        source = ("the scan's --eps (the radii of the robust-accuracy stage) and the rule of "
                  "its verdict, read off the distances: an attack inside the radius must not "
                  "change more than half of the correct answers")
        parts, at_risk = [], False
        for label in self.results:
            for norm in self._norms():
                eps = self.eps.get(norm)
                closest, names = self.closest_distances(label, norm)
                correct = [d for d in closest if d > 0]
                if eps is None or not correct:
                    continue
                within = sum(d <= eps for d in correct) / len(correct)
                at_risk |= within > share_at_risk
                parts.append((f"{label}: " if len(self.results) > 1 else "")
                             + f"{_NORM_TEXT[norm]} median distance "
                             f"{_number(_lower_median(correct))} against eps {eps:.4g}, "
                             f"{percent(within)} of {len(correct)} correct examples within it "
                             f"({', '.join(names)})")
        if not parts:
            return Verdict(INCONCLUSIVE, "no correctly classified example, or no radius to "
                                         "judge the distances against", threshold, source)
        suspected = [f"{c.attack} ({c.model})" if len(self.results) > 1 else c.attack
                     for c in self.masking_checks() if c.suspected]
        measured = "; ".join(parts) + (
            f"; gradient masking suspected: {', '.join(suspected)} did better than the "
            "gradient attacks" if suspected else "")
        return Verdict(AT_RISK if at_risk else NO_FINDING, measured, threshold, source)

    def blocks(self, figure_dir: str) -> list[Block]:
        blocks: list[Block] = [Paragraph(
            f"Each attack searches, for each of {self.n_examples} test examples, the smallest "
            f"perturbation that changes the model's decision (distances in {self.units}). "
            "Success: the share of correctly classified examples for which one was found; "
            "the median and mean are over those. Robust accuracy at a radius is the share of "
            "all examples whose distance exceeds it (misclassified examples count at distance "
            "0, examples with none found as robust): an upper bound, as a stronger attack "
            "may find closer points." + (f" Attacks: {self.method}" if self.method else ""))]
        notes = []
        norms = self._norms()
        for norm in norms:
            name, radii = _NORM_TEXT[norm], [float(e) for e in self.eps_grid[norm]]
            rows, curves = [], {}
            for label, results in self.results.items():
                for r in results:
                    if r.norm != norm:
                        continue
                    rows.append((label, r.attack, percent(r.success_rate),
                                 _number(r.median_norm), _number(r.mean_norm),
                                 *(percent(r.robust_accuracy_at(e)) for e in radii)))
                    curves[f"{label}: {r.attack}"] = r.distances
                    if r.n_found < r.n_attacked:
                        notes.append(f"{label}: {r.attack} ({name}) found no adversarial "
                                     f"example for {r.n_attacked - r.n_found} of "
                                     f"{r.n_attacked} attacked examples")
            if len(norms) > 1:
                blocks.append(Subheading(f"{name} distances"))
            blocks.append(Table(
                ("model", "attack", "success", f"median {name}", f"mean {name}",
                 *(f"robust acc. at {name} {e:g}" for e in radii)),
                rows, align="ll" + "r" * (3 + len(radii))))
            path = _plot_distances(
                curves, radii, norm, os.path.join(figure_dir, f"{self.key}_{norm}.png"))
            blocks.append(Figure(path, f"share of examples farther than eps from the "
                                       f"boundary ({name})"))
        if notes:
            blocks.append(BulletList(notes))
        return blocks + self._query_blocks()

    def _query_blocks(self) -> list[Block]:
        """The query-based attacks: their table and the gradient-masking check."""
        if not self.score_based and not self.decision_based:
            return []
        budget = f" / {self.max_queries}" if self.max_queries else ""
        checks = {(c.model, c.attack): c for c in self.masking_checks()}
        rows = []
        for label in dict.fromkeys([*self.score_based, *self.decision_based]):
            spsa, free = self.score_based.get(label), self.decision_based.get(label)
            if spsa is not None:
                c = checks.get((label, spsa.attack))
                rows.append((label, spsa.attack, "scores", str(spsa.n_samples),
                             f"{_NORM_TEXT[spsa.norm]} eps {spsa.eps:.4g}",
                             f"{spsa.median_queries}{budget}",
                             f"robust acc. {percent(spsa.robust_accuracy)}",
                             f"robust acc. {percent(c.gradient)} ({', '.join(c.gradient_attacks)})"
                             if c else "none to compare"))
            if free is not None:
                c = checks.get((label, free.attack))
                attacked = [q for q, d in zip(free.queries or [], free.distances) if d > 0]
                name = _NORM_TEXT[free.norm]
                rows.append((label, free.attack, "decisions", str(free.n_samples),
                             f"{name}, minimum norm",
                             f"{_lower_median(attacked) if attacked else 'n/a'}{budget}",
                             f"median {name} {_number(_median_of_correct(free.distances))}",
                             f"median {name} {_number(c.gradient)} "
                             f"({', '.join(c.gradient_attacks)})" if c else "none to compare"))
        notes = []
        for c in checks.values():
            name = _NORM_TEXT[c.norm]
            if c.measure == "robust accuracy":
                figures = (f"{c.attack} leaves {percent(c.gradient_free)} robust at {name} eps "
                           f"{c.eps:.4g}; the gradient attacks' distances, "
                           f"{percent(c.gradient)}")
            else:
                figures = (f"{c.attack}'s median {name} distance is {_number(c.gradient_free)}; "
                           f"the gradient attacks', {_number(c.gradient)}")
            prefix = f"{c.model}: " if len(self.results) > 1 else ""
            notes.append(prefix + (
                f"gradient masking suspected: {figures}. The gradient figures overstate the "
                "robustness: trust the gradient-free one, and try adaptive attacks (EOT, BPDA)."
                if c.suspected else f"no sign of gradient masking: {figures}."))
        blocks: list[Block] = [
            Subheading("Query-based attacks: the check for gradient masking"),
            Paragraph(
                "These attacks read no gradient: SPSA (Uesato et al. 2018) estimates it from the "
                "model's scores alone, at a fixed L-inf radius; HopSkipJump (Chen et al. 2020) "
                "follows the decision boundary from the model's decisions alone, to the "
                "smallest L2 perturbation it finds within its query budget. A defence that "
                "masks or obfuscates gradients fools gradient attacks but not these (Athalye et "
                "al. 2018), so they are the honest check for gradient masking: when they do "
                "better than the gradient attacks above, those figures overstate the "
                "robustness. Suspected when SPSA's "
                f"robust accuracy is more than {100 * SCORE_BASED_MARGIN:g} points below what "
                "the gradient attacks' distances give at its radius (AutoAttack's margin), or "
                f"HopSkipJump's median distance more than {DECISION_BASED_MARGIN:.0%} below "
                "theirs, on the same examples (medians over the correctly classified ones, "
                "none found counting as infinitely far)."),
            Table(("model", "attack", "reads", "examples", "threat",
                   "queries (median" + (" / budget)" if budget else ")"), "result",
                   "gradient attacks, same measure"), rows, align="lllrlrll"),
        ]
        if notes:
            blocks.append(BulletList(notes))
        return blocks


def _plot_distances(curves: dict[str, Sequence[float]], radii: Sequence[float],
                               norm: str, path: str) -> str:
    """``curves[name]``: per-example distances (0: misclassified, ``inf``: none found);
    draws the share of examples farther than eps against eps (the robust accuracy read
    off the distances), marks ``radii``, writes a PNG at ``path`` and returns it."""
    from modelsec_fast._plotting import agg_pyplot, save_figure

    plt = agg_pyplot()
    finite = [d for ds in curves.values() for d in ds if math.isfinite(d)]
    right = max(finite + [float(e) for e in radii] + [1e-6]) * 1.05
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, distances in curves.items():
        ds = sorted(distances)
        n = len(ds)
        if not n:
            continue
        xs = [0.0] + [d for d in ds if math.isfinite(d)] + [right]
        # After the i-th sorted distance, n - i examples lie strictly farther.
        ys = [100.0] + [100.0 * (n - i - 1) / n for i, d in enumerate(ds) if math.isfinite(d)]
        ys.append(ys[-1])
        ax.step(xs, ys, where="post", label=name)
    for e in radii:
        ax.axvline(e, color="k", lw=0.6, ls=":")
    ax.set_xlim(0, right)
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"{_NORM_TEXT[norm]} radius eps")
    ax.set_ylabel("examples farther than eps (%)")
    ax.set_title(f"Distance to the decision boundary ({_NORM_TEXT[norm]})")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7)
    return save_figure(fig, path)
