"""Membership inference per model: what an attacker can tell about who was trained on."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from modelsec_fast.audit.membership import MembershipAudit

from ..report.document import Block, BulletList, Figure, Paragraph, Subheading, Table
from .formatting import tpr_text

__all__ = ["MembershipSection"]

_INTRO = ("Membership inference on the training pool (members vs. non-members): the "
          "loss-threshold attack and LiRA (Carlini et al. 2022) with shadow models. Higher AUC "
          "and TPR at low FPR mean more leakage; a perfectly private model sits on the "
          "diagonal.")
_COIN_FLIP = ("Membership was a fair coin per record, so an empirical epsilon lower bound is "
              "valid: Clopper-Pearson on half of the records, the threshold chosen on the "
              "other half, jointly at 95% over the attacks (Bonferroni). A DP model's bound "
              "must stay below its accountant's epsilon.")
_SPLIT = ("Members and non-members were a fixed train/test split, so no epsilon lower bound "
          "is valid and none is reported.")
_MIXED = ("Epsilon lower bounds (Clopper-Pearson, the threshold chosen on a held-out half, "
          "jointly at 95% over the attacks) are reported for the models whose membership "
          "design allows them.")


@dataclass
class MembershipSection:
    """``audits``: model label -> :class:`~modelsec_fast.audit.MembershipAudit`;
    ``not_audited``: model label -> why it was left out."""

    audits: dict[str, MembershipAudit]
    not_audited: dict[str, str] = field(default_factory=dict)
    key = "membership"
    title = "Privacy: what an attacker can infer"

    def to_json(self) -> dict:
        return {"models": {label: a.to_dict() for label, a in self.audits.items()},
                "not_audited": dict(self.not_audited)}

    def blocks(self, figure_dir: str) -> list[Block]:
        from ..report.plots import plot_mi_roc

        designs = {a.design for a in self.audits.values()}
        if designs == {"coin_flip"}:
            intro = f"{_INTRO} {_COIN_FLIP}"
        elif designs <= {"split"}:
            intro = f"{_INTRO} {_SPLIT}"
        else:
            intro = f"{_INTRO} {_MIXED}"
        blocks: list[Block] = [Paragraph(intro)]
        for label, audit in self.audits.items():
            blocks += [Subheading(label), _table(audit)]
            if audit.notes:
                blocks.append(BulletList([f"note: {n}" for n in audit.notes]))
        if self.not_audited:
            blocks.append(BulletList([f"{label}: not audited ({why})"
                                      for label, why in self.not_audited.items()]))
        figure = plot_mi_roc({label: {a.name: (a.fpr.tolist(), a.tpr.tolist())
                                      for a in audit.attacks}
                              for label, audit in self.audits.items()},
                             os.path.join(figure_dir, "mi_roc.png"))
        return blocks + [Figure(figure, "membership inference ROC")]


def _table(audit: MembershipAudit) -> Table:
    bounds = {b.attack: b.epsilon_lower_bound for b in audit.epsilon_bounds}
    header = ["attack", "AUC", "TPR @ 1% FPR", "TPR @ 0.1% FPR"]
    if bounds:
        header.append("epsilon lower bound")
    rows = []
    for a in audit.attacks:
        row = [a.name, f"{a.auc:.4f}", tpr_text(a.tpr_at_fpr.get(0.01)),
               tpr_text(a.tpr_at_fpr.get(0.001))]
        if bounds:
            row.append(f"{bounds[a.name]:.3f}")
        rows.append(row)
    return Table(header, rows, align="l" + "r" * (len(header) - 1))
