"""The record every training-data detector returns, and its figures against a true mask.

Scores are "higher = more likely poison". AUROC and TPR at a fixed FPR come from
:mod:`modelsec_fast.audit.metrics` (the poisons play the members): TPR at an FPR of
``a`` is the largest TPR over thresholds whose FPR is at most ``a``, and is None
("not measurable") when fewer than ``1 / a`` clean samples exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ...audit.metrics import auc, tpr_at_fpr

__all__ = ["ClassDetection", "PoisonDetectionReport", "FPR_LEVELS", "build_report",
           "check_features"]

FPR_LEVELS = (0.01, 0.05, 0.10)


def check_features(features, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(features as (N, D) float, labels as int64 (N,)); TypeError/ValueError otherwise.

    Features of more than two dimensions (conv features) are flattened whole.
    NaN or infinity is refused (a NaN would silently poison every score of its class).
    """
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        raise TypeError(f"features must be a float tensor (N, D), got "
                        f"{type(features).__name__}")
    if features.dim() < 2:
        raise ValueError(f"features must be (N, D) or (N, C, ...), got {tuple(features.shape)}")
    features = features.flatten(1)
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() \
            or labels.dtype == torch.bool:
        raise TypeError("labels must be an integer tensor (N,)")
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels must have shape ({features.shape[0]},), "
                         f"got {tuple(labels.shape)}")
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0, found {int(labels.min())}")
    # One min/max pass finds any NaN (it propagates) or infinity; the rows only then.
    if not all(math.isfinite(v) for v in torch.stack(torch.aminmax(features)).tolist()):
        bad = ~torch.isfinite(features).all(1)
        raise ValueError(f"features contain NaN or infinity in {int(bad.sum())} of "
                         f"{len(labels)} rows (first at row {int(torch.nonzero(bad)[0])})")
    return features, labels.long().to(features.device)


@dataclass
class ClassDetection:
    """One class's figures.

    ``flagged``: the detector's decision that this class holds poison at all;
    ``statistics``: the per-class quantities behind it (e.g. separation, silhouette);
    ``auroc``: within the class, when the true mask is known and both kinds occur.
    """

    label: int
    n: int
    flagged: bool
    n_flagged_samples: int
    statistics: dict[str, Any]
    n_poison: int | None = None
    n_poison_flagged: int | None = None
    auroc: float | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PoisonDetectionReport:
    """A detector's per-sample scores and decisions, and (given the true mask) its quality.

    Attributes:
        detector: its name; settings: its parameters.
        scores: (N,) float, higher = more likely poison (CPU).
        flagged: (N,) bool, the samples the detector would remove.
        classes: one :class:`ClassDetection` per label present.
        auroc, tpr_at_fpr: against the true mask (None without one); ``tpr_at_fpr``
            maps 0.01, 0.05, 0.10 to a TPR or None (not measurable).
        n_poison: the true number of poisons (None without the mask).
        seconds: wall time of the detection (features given).
        notes: how to read the figures (e.g. what was not measurable).
    """

    detector: str
    settings: dict[str, Any]
    scores: torch.Tensor = field(repr=False)
    flagged: torch.Tensor = field(repr=False)
    classes: list[ClassDetection]
    auroc: float | None = None
    tpr_at_fpr: dict[float, float | None] = field(default_factory=dict)
    n_poison: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def flagged_classes(self) -> list[int]:
        return [c.label for c in self.classes if c.flagged]

    def to_json(self) -> dict:
        """Every figure, without the per-sample arrays."""
        n = len(self.scores)
        tp = None
        if self.n_poison is not None:
            tp = sum(c.n_poison_flagged or 0 for c in self.classes)
        return {"detector": self.detector, "settings": dict(self.settings), "n": n,
                "n_flagged": int(self.flagged.sum()), "n_poison": self.n_poison,
                "n_poison_flagged": tp, "auroc": self.auroc,
                "tpr_at_fpr": {f"{k:g}": v for k, v in self.tpr_at_fpr.items()},
                "flagged_classes": self.flagged_classes,
                "classes": [c.to_json() for c in self.classes],
                "seconds": self.seconds, "notes": list(self.notes)}


def build_report(detector: str, settings: dict, scores: torch.Tensor, flagged: torch.Tensor,
                 labels: torch.Tensor, class_flagged: dict[int, bool],
                 class_statistics: dict[int, dict], is_poison=None,
                 seconds: float = 0.0) -> PoisonDetectionReport:
    """The report of ``scores`` (N,) and ``flagged`` (N,) with per-class figures and,
    given ``is_poison`` (N,) bool, AUROC, TPR at 1/5/10% FPR and per-class counts."""
    scores, flagged, labels = scores.detach().cpu(), flagged.detach().cpu(), labels.cpu()
    mask = None
    if is_poison is not None:
        mask = torch.as_tensor(is_poison).detach().cpu().bool()
        if mask.shape != scores.shape:
            raise ValueError(f"is_poison must have shape {tuple(scores.shape)}, "
                             f"got {tuple(mask.shape)}")
    classes = []
    for c in labels.unique().tolist():
        sel = labels == c
        entry = ClassDetection(label=int(c), n=int(sel.sum()), flagged=bool(class_flagged.get(c)),
                               n_flagged_samples=int(flagged[sel].sum()),
                               statistics=dict(class_statistics.get(c, {})))
        if mask is not None:
            entry.n_poison = int(mask[sel].sum())
            entry.n_poison_flagged = int((mask[sel] & flagged[sel]).sum())
            if 0 < entry.n_poison < entry.n:
                entry.auroc = auc(scores[sel][mask[sel]], scores[sel][~mask[sel]])
        classes.append(entry)
    report = PoisonDetectionReport(detector, dict(settings), scores, flagged, classes,
                                   seconds=seconds)
    if mask is not None:
        report.n_poison = int(mask.sum())
        if 0 < report.n_poison < len(mask):
            pos, neg = scores[mask], scores[~mask]
            report.auroc = auc(pos, neg)
            report.tpr_at_fpr = {a: tpr_at_fpr(pos, neg, a) for a in FPR_LEVELS}
            for a, v in report.tpr_at_fpr.items():
                if v is None:
                    report.notes.append(f"TPR at {a:.0%} FPR not measurable: needs >= "
                                        f"{round(1 / a)} clean samples, have {len(neg)}")
        else:
            report.notes.append("AUROC not defined: the mask holds only one kind of sample")
    return report
