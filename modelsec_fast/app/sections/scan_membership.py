"""The scan's membership section: the demo's membership section for the user's one
model, with a verdict for the summary and the reason LiRA did not run, if it did not."""

from __future__ import annotations

from dataclasses import dataclass

from ..report.document import Block, BulletList
from .formatting import percent
from .membership import MembershipSection
from .scan_summary import AT_RISK, INCONCLUSIVE, NO_FINDING, Verdict

__all__ = ["ScanMembershipSection"]


@dataclass
class ScanMembershipSection(MembershipSection):
    """``audits`` holds the one audited model; ``lira_skipped``: why LiRA did not run
    ("" when it ran)."""

    lira_skipped: str = ""
    title = "Privacy: membership inference"

    def to_json(self) -> dict:
        return super().to_json() | {"lira_skipped": self.lira_skipped}

    def verdict(self) -> Verdict:
        """TPR at 0.1% FPR against 0.1% (1% when too few non-members to measure 0.1%):
        at risk when the TPR's one-sided 95% Clopper-Pearson lower bound exceeds it."""
        audit = next(iter(self.audits.values()))
        source = ("chance level: an attack that cannot tell members from non-members has "
                  "TPR = FPR at every threshold (Carlini et al. 2022 report TPR at low FPR); "
                  "the lower bound keeps sampling noise from raising the alarm")
        for level in (0.001, 0.01):
            measured = {a.name: a.tpr_at_fpr.get(level) for a in audit.attacks}
            if all(v is not None for v in measured.values()):
                best = max(measured, key=measured.get)
                low = _lower_bound(measured[best], audit.n_members)
                return Verdict(
                    AT_RISK if low > level else NO_FINDING,
                    f"TPR {percent(measured[best], 2)} at {level:.1%} FPR ({best}; 95% lower "
                    f"bound {percent(low, 2)} over {audit.n_members} members)",
                    f"at risk when the TPR's lower bound exceeds {level:.1%}", source)
        best_auc = max(audit.attacks, key=lambda a: a.auc)
        return Verdict(INCONCLUSIVE, f"AUC {best_auc.auc:.3f} ({best_auc.name}); "
                       f"{audit.n_nonmembers} non-members are too few to measure TPR at 1% FPR",
                       "TPR at 1% FPR needs >= 100 non-members", source)

    def blocks(self, figure_dir: str) -> list[Block]:
        blocks = super().blocks(figure_dir)
        if self.lira_skipped:
            blocks.insert(1, BulletList([f"LiRA not run: {self.lira_skipped}"]))
        return blocks


def _lower_bound(rate: float, n: int) -> float:
    """One-sided 95% Clopper-Pearson lower bound of a rate observed on ``n`` trials."""
    from scipy.stats import beta

    hits = round(rate * n)
    return 0.0 if hits == 0 else float(beta.ppf(0.05, hits, n - hits + 1))
