"""Data poisoning and backdoors: the demo's review of a backdoored model
(:class:`PoisoningSection`) and the scan's inspection of the user's own model
(:class:`BackdoorScanSection`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..report.document import Block, BulletList, Figure, Paragraph, Skipped, Subheading, Table
from .formatting import percent

__all__ = ["PoisoningSection", "BackdoorScanSection"]

_TITLE = "Data poisoning and backdoors"


def _index_text(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


def _nc_table(nc) -> Table:
    """Every class's reversed-trigger mask L1 norm, anomaly index and flag."""
    rows = [(str(c), f"{l1:.1f}", _index_text(idx), percent(ok),
             "flagged" if c in nc.flagged else "")
            for c, (l1, idx, ok) in enumerate(zip(nc.l1_norms, nc.anomaly_index, nc.success))]
    return Table(("class", "mask L1", "anomaly index", "trigger success", "flag"), rows,
                 align="rrrrl")


def _mitigation_row(m) -> tuple[str, ...]:
    """method, clean accuracy before -> after, ASR before -> after (when measured), verdict."""
    d = m.metrics.defended if m.metrics is not None else None
    asr = (f"{percent(m.metrics.asr)} -> {percent(d.asr)}"
           if d is not None and m.metrics.asr is not None else "n/a")
    return (m.method, f"{percent(m.clean_accuracy_before)} -> {percent(m.clean_accuracy_after)}",
            asr, m.verdict)


@dataclass
class PoisoningSection:
    """``review``: a :class:`~modelsec_fast.poisoning.PoisoningReview` (BadNets victim,
    detectors, STRIP, Neural Cleanse, mitigations, optional epsilon sweep);
    ``sweep_skipped``: why the review has no epsilon sweep (rendered in its place)."""

    review: Any
    sweep_skipped: str | None = None
    key = "poisoning"
    title = _TITLE

    def to_json(self) -> dict:
        return {**self.review.to_json(), "dp_sweep_skipped": self.sweep_skipped}

    def blocks(self, figure_dir: str) -> list[Block]:
        from modelsec_fast.poisoning.plots import save_figures

        r, s = self.review, self.review.settings
        b = r.backdoor
        figures = save_figures(r.figures, figure_dir)
        blocks: list[Block] = [
            Paragraph(f"BadNets ({s['trigger_size']}x{s['trigger_size']} patch, all-to-one, "
                      f"target class {s['target']}) poisoned {r.attack['n_poison']} of "
                      f"{s['n_train']} training images ({percent(s['rate'])}). A clean and a "
                      f"backdoored {r.model} were trained for {s['epochs']} epochs on {r.data}; "
                      f"the defender holds out {s['n_defender']} clean training images that "
                      f"the attacker never sees; {s['n_test']} test images."),
            Table(("model", "clean acc. (C-Acc)", "attack success (ASR)",
                   "robust acc. on triggered inputs (RA)"),
                  [("clean", percent(r.clean_model_accuracy), "", ""),
                   ("backdoored", percent(b.clean_accuracy), percent(b.asr), percent(b.ra))]
                  + [(f"repaired: {m.method}", percent(m.metrics.defended.clean_accuracy),
                      percent(m.metrics.defended.asr), percent(m.metrics.defended.ra))
                     for m in r.mitigations
                     if m.metrics is not None and m.metrics.defended is not None],
                  align="lrrr"),
            Subheading("Detection of the poisoned training images"),
            Paragraph(f"Per-sample scores on the features of layer {r.feature_layer} "
                      "against the true poison mask."),
            Table(("detector", "AUROC", "TPR at 1% FPR", "TPR at 5% FPR", "TPR at 10% FPR",
                   "classes judged poisoned"),
                  [(d.detector, f"{d.auroc:.3f}" if d.auroc is not None else "n/a",
                    *(percent(d.tpr_at_fpr.get(a)) for a in (0.01, 0.05, 0.10)),
                    ", ".join(map(str, d.flagged_classes)) or "none")
                   for d in r.detection], align="lrrrrl"),
        ]
        if "detection_roc" in figures:
            blocks.append(Figure(figures["detection_roc"], "poison detection ROC curves"))
        st = r.strip
        blocks += [
            Subheading("STRIP at inference"),
            Paragraph(f"{st.n_copies} superimposed copies per input; threshold set for a "
                      f"{percent(st.frr_target)} false rejection rate on clean data: "
                      f"{percent(st.tpr)} of {st.n_triggered} triggered test inputs flagged, "
                      f"{percent(st.fpr)} of {st.n_clean} clean ones (AUROC {st.auroc:.3f})."),
            Subheading("Neural Cleanse and mitigation"),
            Paragraph("Flagged: " + (", ".join(f"class {c}" for c in r.neural_cleanse.flagged)
                                     or "no class")
                      + f" (anomaly index above {r.neural_cleanse.threshold:g} and a mask "
                        "far smaller than the median)."),
            _nc_table(r.neural_cleanse),
        ]
        if "nc_anomaly" in figures:
            blocks.append(Figure(figures["nc_anomaly"], "Neural Cleanse mask norms"))
        blocks.append(Table(("mitigation", "clean acc.", "ASR", "verdict"),
                            [_mitigation_row(m) for m in r.mitigations], align="lrrl"))
        if r.dp_sweep is not None:
            sw = r.dp_sweep
            blocks += [
                Subheading("DP-SGD as a defence: ASR against epsilon"),
                Paragraph(f"BadNets with k poisons against MLP victims trained with DP-SGD "
                          f"(delta {sw.delta:g}); ASR the mean over {sw.seeds} seeds with its "
                          f"{sw.confidence:.0%} interval, beside the group-privacy bound "
                          "(k' = 2k replaced records) from the clean victims' rate."),
                Table(("k", "epsilon", "ASR", "interval", "bound"),
                      [(str(p.k), "no DP" if math.isinf(p.epsilon) else f"{p.epsilon:g}",
                        percent(p.asr_mean), f"{percent(p.asr_low)} - {percent(p.asr_high)}",
                        "" if math.isinf(p.epsilon) else percent(p.bound))
                       for p in sorted(sw.points, key=lambda p: (p.k, p.epsilon))],
                      align="rrrrr"),
            ]
            if "asr_vs_epsilon" in figures:
                blocks.append(Figure(figures["asr_vs_epsilon"], "ASR against epsilon"))
        elif self.sweep_skipped:
            blocks += [Subheading("DP-SGD as a defence: ASR against epsilon"),
                       Skipped(self.sweep_skipped)]
        if r.notes:
            blocks.append(BulletList(r.notes))
        return blocks


@dataclass
class BackdoorScanSection:
    """The scan's backdoor inspection of a user's model.

    ``neural_cleanse``: a :class:`~modelsec_fast.defenses.neural_cleanse.NeuralCleanseResult`
    over every class; ``strip``: a :class:`~modelsec_fast.defenses.strip.StripEvaluation`
    of clean test inputs against the same inputs carrying ``probe_class``'s reversed
    trigger; ``mitigation``: a :class:`~modelsec_fast.defenses.backdoor_repair.MitigationResult`
    with the reversed trigger's success before/after (``trigger_success``), or None
    with ``mitigation_skipped`` saying why; ``settings``: the sizes used.
    """

    neural_cleanse: Any
    strip: Any
    probe_class: int
    settings: dict
    mitigation: Any = None
    mitigation_skipped: str | None = None
    trigger_success: dict = field(default_factory=dict)
    key = "backdoor"
    title = "Backdoors: trigger inspection"

    def to_json(self) -> dict:
        return {"settings": dict(self.settings), "neural_cleanse": self.neural_cleanse.to_json(),
                "probe_class": self.probe_class, "strip": self.strip.to_json(),
                "mitigation": self.mitigation.to_json() if self.mitigation else None,
                "mitigation_skipped": self.mitigation_skipped,
                "trigger_success": dict(self.trigger_success)}

    def verdict(self):
        """At risk when Neural Cleanse flags a class (the scan's summary)."""
        from .scan_summary import AT_RISK, NO_FINDING, Verdict

        nc = self.neural_cleanse
        top = max(range(len(nc.anomaly_index)), key=lambda c: nc.anomaly_index[c])
        ratio = nc.settings.get("max_relative_norm", 0.6)
        return Verdict(
            AT_RISK if nc.flagged else NO_FINDING,
            f"largest anomaly index {nc.anomaly_index[top]:.2f} (class {top}, mask L1 "
            f"{nc.relative_norms[top]:.2f} of the median)"
            + (f"; flagged: {', '.join(str(c) for c in nc.flagged)}" if nc.flagged else ""),
            f"at risk when a class has an anomaly index above {nc.threshold:g} and a mask "
            f"at most {ratio:g} of the median",
            "Wang et al. 2019 (Neural Cleanse: MAD anomaly index above 2); the mask-size "
            "guard is this tool's, against flags from a near-median class")

    def blocks(self, figure_dir: str) -> list[Block]:
        from modelsec_fast.poisoning.plots import plot_anomaly_index

        nc, st, s = self.neural_cleanse, self.strip, self.settings
        flagged = ", ".join(f"class {c}" for c in nc.flagged)
        figure = plot_anomaly_index(
            {"l1": nc.l1_norms, "index": nc.anomaly_index, "flagged": nc.flagged},
            os.path.join(figure_dir, f"{self.key}_anomaly_index.png"))
        blocks: list[Block] = [
            Paragraph(f"Neural Cleanse reverse-engineered the smallest trigger that sends "
                      f"{s['n_inputs']} test inputs to each class ({s['epochs']} epochs, "
                      f"{s['steps']} optimisation steps per class). A backdoor's target needs a "
                      f"far smaller trigger than a natural class: "
                      + (f"{flagged} stands out (a likely backdoor target)." if flagged else
                         "no class stands out (anomaly index above "
                         f"{nc.threshold:g} with a mask far below the median).")),
            _nc_table(nc),
            Figure(figure, "Neural Cleanse mask norms"),
            Paragraph(f"STRIP ({st.n_copies} superimposed copies; threshold for a "
                      f"{percent(st.frr_target)} false rejection rate on clean test inputs) "
                      f"flags {percent(st.fpr)} of {st.n_clean} clean test inputs and "
                      f"{percent(st.tpr)} of the same inputs carrying class "
                      f"{self.probe_class}'s reversed trigger (AUROC {st.auroc:.3f})."),
        ]
        m = self.mitigation
        if m is None:
            blocks.append(Paragraph(f"Mitigation: skipped ({self.mitigation_skipped})."))
        else:
            before, after = (self.trigger_success.get(k) for k in ("before", "after"))
            blocks.append(Paragraph(
                f"Mitigation ({m.method}, on a copy): the reversed trigger of class "
                f"{self.probe_class} succeeds on {percent(before)} of the test inputs before "
                f"and {percent(after)} after; {m.verdict}."))
        return blocks
