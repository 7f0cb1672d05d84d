"""Model stealing: how well a thief copies the model from its answers, what each output
defence changes, whether query monitoring notices, and whether ownership can be proved."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from modelsec_fast.defenses import OwnershipResult, PradaResult, UtilityCost
from modelsec_fast.stealing import ExtractionResult

from ..report.document import Block, BulletList, Figure, Paragraph, Subheading, Table
from .formatting import percent

__all__ = ["DefendedExtraction", "StealingSection"]


@dataclass
class DefendedExtraction:
    """One thief run against the victim behind one output defence: ``defence`` its
    label ("none" without one), ``result`` the attack's record, ``utility`` what the
    defence costs a benign user (None without a defence)."""

    defence: str
    result: ExtractionResult
    utility: UtilityCost | None = None

    def to_json(self) -> dict:
        return {"defence": self.defence, "extraction": self.result.to_json(),
                "utility_cost": None if self.utility is None else self.utility.to_json()}


FIDELITY_AT_RISK = 0.9  # the summary's rule (see StealingSection.verdict)


@dataclass
class StealingSection:
    """``runs``: the same attack against each defence (the first undefended);
    ``victim_accuracy`` on the held-out set; ``thief``: which architecture the thief
    trained (and why); ``prada``: query stream label -> PRADA's verdict;
    ``ownership``: suspect label -> the dataset-inference test; ``notes``: what was
    left out and why."""

    runs: list[DefendedExtraction]
    victim_accuracy: float | None
    thief: str
    held_out: int
    prada: dict[str, PradaResult] = field(default_factory=dict)
    ownership: dict[str, OwnershipResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    key = "stealing"
    title = "Model stealing: copying the model through its answers"

    def to_json(self) -> dict:
        return {"victim_accuracy": self.victim_accuracy, "thief": self.thief,
                "held_out": self.held_out, "runs": [r.to_json() for r in self.runs],
                "prada": {label: r.to_json() for label, r in self.prada.items()},
                "ownership": {label: r.to_json() for label, r in self.ownership.items()},
                "notes": list(self.notes)}

    def verdict(self):
        """At risk when the undefended thief agrees with the model on at least
        :data:`FIDELITY_AT_RISK` of the held-out inputs at its largest budget."""
        from .scan_summary import AT_RISK, INCONCLUSIVE, NO_FINDING, Verdict

        undefended = next((r for r in self.runs if r.defence == "none"), None)
        point = undefended.result.curve[-1] if undefended and undefended.result.curve else None
        if point is None or point.fidelity is None:
            return Verdict(INCONCLUSIVE, "no undefended extraction run", "", "")
        return Verdict(
            AT_RISK if point.fidelity >= FIDELITY_AT_RISK else NO_FINDING,
            f"thief fidelity {percent(point.fidelity)} after {point.queries} queries",
            f"at risk when a thief agrees with the model on at least "
            f"{FIDELITY_AT_RISK:.0%} of held-out inputs within the scan's largest budget",
            "this tool's rule: such a copy serves most of the model's answers without "
            "paying for them, and is a good surrogate for transfer attacks")

    def blocks(self, figure_dir: str) -> list[Block]:
        blocks: list[Block] = [Paragraph(self._intro())]
        if self.runs:
            blocks += [self._fidelity_table(),
                       Figure(self._plot(os.path.join(figure_dir, "stealing_fidelity.png")),
                              "thief fidelity against the query budget, per defence")]
        if self.prada:
            blocks += [Subheading("Query monitoring (PRADA)"), Paragraph(
                "PRADA (Juuti et al. 2019) flags a client once the minimum distances "
                "between its queries stop looking normally distributed (Shapiro-Wilk W "
                "below delta, calibrated on benign test queries). The delay is the number of "
                "queries seen when it first flagged."), self._prada_table()]
        if self.ownership:
            blocks += [Subheading("Ownership verification (dataset inference)"), Paragraph(
                "Dataset inference (Maini et al. 2021): a model derived from ours has "
                "lower loss on our private training data than on public data of the same "
                "distribution; the p-value is a one-sided Welch t-test. A small p-value is "
                "evidence that the suspect was derived from our model or data; the test's "
                "power grows with our model's gap between training and test loss, so a "
                "model that barely overfits may leave even a copy unflagged."),
                self._ownership_table()]
        if self.notes:
            blocks.append(BulletList([f"note: {n}" for n in self.notes]))
        return blocks

    def _intro(self) -> str:
        attack = self.runs[0].result.attack if self.runs else "no attack"
        return (f"A thief ({self.thief}) queries the model with natural images and trains on "
                f"its answers ({attack}). Fidelity is the thief's agreement with the model on "
                f"{self.held_out} held-out inputs (Jagielski et al. 2020), accuracy its "
                f"agreement with the true labels (the model's own: "
                f"{percent(self.victim_accuracy)}). Output defences keep the model's top-1 "
                "answer; their utility cost is the mean L1 change of the probability rows a "
                "benign user receives.")

    def _fidelity_table(self) -> Table:
        budgets = [p.queries for p in self.runs[0].result.curve]
        rows = []
        for run in self.runs:
            by_budget = {p.queries: p for p in run.result.curve}
            rows.append([run.defence, run.result.victim_output,
                         "-" if run.utility is None else f"{run.utility.mean_l1:.3f}",
                         *(percent(by_budget[b].fidelity) if b in by_budget else "n/a"
                           for b in budgets),
                         percent(run.result.accuracy)])
        header = ["defence", "answers", "utility cost (L1)",
                  *(f"fidelity at {b} queries" for b in budgets), "thief accuracy"]
        return Table(header, rows, align="ll" + "r" * (len(header) - 2))

    def _prada_table(self) -> Table:
        rows = [[label, "yes" if r.detected else "no",
                 "-" if r.detection_delay is None else str(r.detection_delay), str(r.queries),
                 "n/a" if r.last_w is None else f"{r.last_w:.3f}", f"{r.delta:.3f}"]
                for label, r in self.prada.items()]
        return Table(["query stream", "flagged", "delay (queries)", "queries seen",
                      "last W", "delta"], rows, align="llrrrr")

    def _ownership_table(self) -> Table:
        rows = [[label, f"{r.p_value:.2g}", "yes" if r.derived else "no",
                 f"{r.mean_private_score:.3f}", f"{r.mean_public_score:.3f}",
                 f"{r.private_points} / {r.public_points}"]
                for label, r in self.ownership.items()]
        return Table(["suspect model", "p-value", f"flagged (p < {self._alpha():g})",
                      "private score", "public score", "points (private / public)"], rows,
                     align="lrlrrr")

    def _alpha(self) -> float:
        return next(iter(self.ownership.values())).alpha

    def _plot(self, path: str) -> str:
        from modelsec_fast._plotting import agg_pyplot, save_figure

        plt = agg_pyplot()
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for run in self.runs:
            points = [p for p in run.result.curve if p.fidelity is not None]
            ax.plot([p.queries for p in points], [100 * p.fidelity for p in points],
                    marker="o", label=run.defence)
        ax.set_xscale("log")
        ax.set_xlabel("queries to the model")
        ax.set_ylabel("thief fidelity (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Model stealing: fidelity against the query budget")
        ax.grid(alpha=0.3)
        ax.legend()
        return save_figure(fig, path)
