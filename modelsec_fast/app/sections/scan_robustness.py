"""The scan's evasion section: robust accuracy of the user's model under the standard
attack preset at the stated L-inf and L2 radii, and accuracy against the radius."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from modelsec_fast.evaluate import RobustAccuracyResult

from ..report.document import Block, BulletList, Figure, Paragraph, Table
from .formatting import percent
from .scan_summary import AT_RISK, INCONCLUSIVE, NO_FINDING, Verdict

__all__ = ["ScanRobustnessSection", "ROBUST_FRACTION_THRESHOLD"]

# At risk when an attack at the stated radius removes more than half the correct answers.
ROBUST_FRACTION_THRESHOLD = 0.5


@dataclass
class ScanRobustnessSection:
    """``results``: norm ("Linf", "L2") -> the preset's result at ``eps[norm]``
    (radius in the user's input units); ``curves``: norm -> {radius: accuracy under
    APGD-CE}; ``attack_steps``/``restarts``: the budget's."""

    results: Mapping[str, RobustAccuracyResult]
    eps: Mapping[str, float]
    curves: Mapping[str, Mapping[float, float]]
    attack_steps: int
    restarts: int
    input_range: tuple[float, float]
    key = "robustness"
    title = "Evasion: robust accuracy"

    def to_json(self) -> dict:
        return {"eps": dict(self.eps), "input_range": list(self.input_range),
                "attack_steps": self.attack_steps, "restarts": self.restarts,
                "results": {n: r.to_dict() for n, r in self.results.items()},
                "curves": {n: {str(e): a for e, a in c.items()} for n, c in self.curves.items()}}

    def verdict(self) -> Verdict:
        clean = next(iter(self.results.values())).clean_accuracy
        if not clean:
            return Verdict(INCONCLUSIVE, "clean accuracy 0%: nothing to attack", "", "")
        worst = min(self.results, key=lambda n: self.results[n].robust_accuracy)
        robust = self.results[worst].robust_accuracy
        measured = "; ".join(f"{_norm(n)} eps {self.eps[n]:.4g}: "
                             f"{percent(r.robust_accuracy)}" for n, r in self.results.items())
        threshold = (f"at risk below {ROBUST_FRACTION_THRESHOLD:.0%} of clean accuracy "
                     f"{percent(clean)}, i.e. {percent(ROBUST_FRACTION_THRESHOLD * clean)}")
        return Verdict(AT_RISK if robust < ROBUST_FRACTION_THRESHOLD * clean else NO_FINDING,
                       f"robust accuracy {measured}", threshold,
                       "this tool's rule: an attack inside the stated radius must not remove "
                       "more than half of the correct answers (the radii are the scan's --eps)")

    def blocks(self, figure_dir: str) -> list[Block]:
        from ..report.plots import plot_robust_accuracy_curves

        first = next(iter(self.results.values()))
        rows = []
        for norm, r in self.results.items():
            rows.append((_norm(norm), f"{self.eps[norm]:.4g}", percent(r.clean_accuracy),
                         percent(r.robust_accuracy),
                         ", ".join(f"{a} {percent(rec.robust_accuracy)}"
                                   for a, rec in r.per_attack.items())))
        lo, hi = self.input_range
        blocks: list[Block] = [
            Paragraph(f"Accuracy on {first.n_samples} test examples under the per-example worst "
                      f"case of {', '.join(first.per_attack)} (AutoAttack's standard preset at "
                      f"{self.attack_steps} steps, {self.restarts} restart(s) of APGD): an "
                      f"example counts as robust only if every attack fails on it. Radii are in "
                      f"input units (input range {lo:g} to {hi:g})."),
            Table(("norm", "eps", "clean acc.", "robust acc.", "after each attack"), rows,
                  align="lrrrl"),
        ]
        if self.curves:
            path = plot_robust_accuracy_curves(
                {_norm(n): dict(c) for n, c in self.curves.items()},
                os.path.join(figure_dir, "robustness_vs_eps.png"))
            blocks.append(Figure(path, "accuracy under APGD-CE against the radius eps"))
        warnings = [f"warning ({_norm(n)}): {w}" for n, r in self.results.items()
                    for w in r.warnings]
        if warnings:
            blocks.append(BulletList(warnings))
        return blocks


def _norm(name: str) -> str:
    return "L-inf" if name == "Linf" else name
