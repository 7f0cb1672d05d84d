"""Membership-inference attack metrics: ROC, AUC, TPR at a fixed low FPR.

Convention: a higher score means "more likely a member". An attack predicts
"member" when ``score >= threshold``; every distinct score is a threshold.

TPR at FPR level ``a`` is the largest TPR over thresholds whose FPR is at most
``a`` (Carlini et al. 2022, "Membership Inference Attacks From First
Principles"). It is only *measurable* when at least one false positive is
allowed, i.e. when ``n_nonmembers * a >= 1``: with fewer non-members the
smallest non-zero FPR already exceeds ``a``, and the figure would really be
TPR at 0 false positives. So TPR at 1% FPR needs >= 100 non-members and TPR at
0.1% FPR needs >= 1,000; otherwise it is reported as not measurable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["AttackMetrics", "roc_curve", "auc", "tpr_at_fpr", "attack_metrics"]

FPR_LEVELS = (0.01, 0.001)


def _scores(a, what: str) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{what} scores are empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} scores contain NaN or inf")
    return a


def roc_curve(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC over all thresholds.

    Args:
        member_scores: (P,) scores of true members.
        nonmember_scores: (N,) scores of true non-members.

    Returns:
        (fpr, tpr, thresholds), each (K+1,) float64 with K distinct scores.
        Point j predicts "member" for scores >= thresholds[j]; thresholds
        decrease, the first is +inf (nothing predicted, fpr = tpr = 0) and the
        last is the smallest score (everything predicted, fpr = tpr = 1).
    """
    pos = _scores(member_scores, "member")
    neg = _scores(nonmember_scores, "non-member")
    values = np.unique(np.concatenate([pos, neg]))[::-1]
    # Counts of scores >= each threshold, by binary search on sorted arrays.
    tp = len(pos) - np.searchsorted(np.sort(pos), values, side="left")
    fp = len(neg) - np.searchsorted(np.sort(neg), values, side="left")
    tpr = np.concatenate([[0.0], tp / len(pos)])
    fpr = np.concatenate([[0.0], fp / len(neg)])
    thresholds = np.concatenate([[np.inf], values])
    return fpr, tpr, thresholds


def auc(member_scores, nonmember_scores) -> float:
    """Area under the ROC: P(member score > non-member score) + 0.5 P(tie)."""
    pos = _scores(member_scores, "member")
    neg = _scores(nonmember_scores, "non-member")
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    ties = np.searchsorted(neg_sorted, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (len(pos) * len(neg)))


def tpr_at_fpr(member_scores, nonmember_scores, fpr_level: float) -> float | None:
    """Largest TPR with FPR <= ``fpr_level``; None when not measurable (see module doc)."""
    if not 0.0 < fpr_level < 1.0:
        raise ValueError(f"fpr_level must be in (0, 1), got {fpr_level}")
    n_neg = np.asarray(nonmember_scores).size
    if n_neg * fpr_level < 1.0 - 1e-9:
        return None
    fpr, tpr, _ = roc_curve(member_scores, nonmember_scores)
    return float(tpr[fpr <= fpr_level + 1e-12].max())


@dataclass
class AttackMetrics:
    """Summary of one membership-inference attack.

    ``tpr_at_fpr`` maps an FPR level (0.01, 0.001) to the TPR there, or to None
    when not measurable; ``notes`` says why.
    """

    name: str
    auc: float
    tpr_at_fpr: dict[float, float | None]
    n_members: int
    n_nonmembers: int
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    notes: list[str] = field(default_factory=list)

    def to_dict(self, curve_points: int = 200) -> dict:
        """JSON-ready dict; the ROC is thinned to about ``curve_points`` points."""
        keep = np.unique(np.linspace(0, len(self.fpr) - 1, min(curve_points, len(self.fpr)))
                         .astype(int))
        return {
            "attack": self.name,
            "auc": self.auc,
            "tpr_at_fpr": {f"{k:g}": v for k, v in self.tpr_at_fpr.items()},
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "notes": list(self.notes),
            "roc": {"fpr": self.fpr[keep].tolist(), "tpr": self.tpr[keep].tolist()},
        }

    def row(self) -> str:
        def fmt(v):
            return "not measurable" if v is None else f"{100 * v:.2f}%"
        return (f"| {self.name} | {self.auc:.4f} | {fmt(self.tpr_at_fpr[0.01])} | "
                f"{fmt(self.tpr_at_fpr[0.001])} |")


def attack_metrics(name: str, member_scores, nonmember_scores,
                   fpr_levels=FPR_LEVELS) -> AttackMetrics:
    """AUC, ROC and TPR at each FPR level, with "not measurable" notes."""
    pos = _scores(member_scores, "member")
    neg = _scores(nonmember_scores, "non-member")
    fpr, tpr, _ = roc_curve(pos, neg)
    levels, notes = {}, []
    for level in fpr_levels:
        levels[level] = tpr_at_fpr(pos, neg, level)
        if levels[level] is None:
            notes.append(f"TPR at {100 * level:g}% FPR not measurable: needs >= "
                         f"{int(round(1 / level))} non-members, have {len(neg)}")
    return AttackMetrics(name=name, auc=auc(pos, neg), tpr_at_fpr=levels,
                         n_members=len(pos), n_nonmembers=len(neg), fpr=fpr, tpr=tpr,
                         notes=notes)
