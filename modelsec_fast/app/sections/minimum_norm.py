"""Minimum-norm attacks: how far each test example lies from the decision boundary.

A minimum-norm attack (CW, DeepFool) finds, per example, the smallest
perturbation that changes the decision; the distribution of these distances
gives the robust accuracy at every radius at once (an upper bound: a stronger
attack may find closer points).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

from modelsec_fast.attacks.minimum_norm import MinimumNormResult

from ..report.document import Block, BulletList, Figure, Paragraph, Subheading, Table
from .formatting import percent

__all__ = ["MinimumNormSection"]

_NORM_TEXT = {"L2": "L2", "Linf": "L-inf"}


def _number(value: float) -> str:
    """A distance for a table cell: 4 significant digits, ``n/a`` for NaN."""
    return "n/a" if math.isnan(value) else f"{value:.4g}"


@dataclass
class MinimumNormSection:
    """``results``: model label -> the :class:`~modelsec_fast.attacks.MinimumNormResult`
    of each minimum-norm attack run on it (any mix of "L2" and "Linf" results), all on
    the same ``n_examples`` test examples. ``eps_grid``: norm -> the radii at which the
    robust accuracy is read off the distances. ``units``: what the distances are
    measured in (the results' pixel space unless the caller rescaled them). ``method``:
    the attacks' settings, one line for the reader.

    Raises:
        ValueError: a result whose norm has no ``eps_grid`` entry.
    """

    results: dict[str, list[MinimumNormResult]]
    eps_grid: dict[str, Sequence[float]]
    n_examples: int
    units: str = "pixel space, inputs in [0, 1]"
    method: str = ""
    key = "minimum_norm"
    title = "Minimum-norm attacks: distance to the decision boundary"

    def __post_init__(self):
        for label, results in self.results.items():
            for r in results:
                if r.norm not in self.eps_grid:
                    raise ValueError(f"{label}: {r.attack} measured {r.norm} distances but "
                                     f"eps_grid has radii for {sorted(self.eps_grid)} only")

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
                "models": models}

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
