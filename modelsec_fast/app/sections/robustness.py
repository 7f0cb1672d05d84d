"""Robust accuracy against the L-inf radius, per model: the evasion part of a report."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from ..report.document import Block, BulletList, Figure, Paragraph, Table
from ..robustness import RobustCurve
from .formatting import percent

__all__ = ["RobustnessSection"]


@dataclass
class RobustnessSection:
    """``curves``: model label -> :class:`~modelsec_fast.app.robustness.RobustCurve`,
    all measured with ``attacks`` (names) at ``steps`` iterations over ``eps_grid``
    (L-inf radii in pixel space) on ``n_test`` test examples."""

    curves: dict[str, RobustCurve]
    attacks: Sequence[str]
    steps: int
    eps_grid: Sequence[float]
    n_test: int
    key = "robustness"
    title = "Robustness: accuracy under attack"

    def to_json(self) -> dict:
        return {"attacks": list(self.attacks), "steps": self.steps,
                "eps_grid": [float(e) for e in self.eps_grid], "n_test": self.n_test,
                "models": {label: c.to_json() for label, c in self.curves.items()}}

    def blocks(self, figure_dir: str) -> list[Block]:
        from ..report.plots import plot_accuracy_vs_eps

        radii = [float(e) for e in self.eps_grid if float(e) != 0]
        rows = [(label, percent(c.clean_accuracy),
                 *(percent(c.robust_accuracy.get(e)) for e in radii))
                for label, c in self.curves.items()]
        figure = plot_accuracy_vs_eps(
            {label: dict(c.robust_accuracy) for label, c in self.curves.items()},
            os.path.join(figure_dir, "accuracy_vs_eps.png"))
        blocks: list[Block] = [
            Paragraph(f"Accuracy on {self.n_test} test examples under the per-example worst "
                      f"case of {', '.join(self.attacks)} (L-inf, pixel space; {self.steps} "
                      "steps for PGD and APGD): an example counts as robust only if every "
                      "attack fails on it."),
            Table(("model", "clean acc.", *(f"robust acc. at eps {e:g}" for e in radii)), rows,
                  align="l" + "r" * (1 + len(radii))),
            Figure(figure, "accuracy vs eps"),
        ]
        warnings = [f"warning: {label}: {w}" for label, c in self.curves.items()
                    for w in c.warnings]
        if warnings:
            blocks.append(BulletList(warnings))
        return blocks
