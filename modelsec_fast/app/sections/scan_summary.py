"""The scan's one-screen summary: a verdict per threat, each with the threshold it was
judged against and where that threshold comes from, and the settings that make the
run reproducible.

A section takes part by defining ``verdict() -> Verdict`` (optional: a section
without one is listed with its status only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from ..report.document import Block, BulletList, Paragraph, Subheading, Table

__all__ = ["Verdict", "ThreatLine", "ScanSummarySection", "AT_RISK", "NO_FINDING",
           "INCONCLUSIVE"]

AT_RISK = "at risk"
NO_FINDING = "no finding"
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Verdict:
    """One threat's verdict: ``verdict`` (:data:`AT_RISK`, :data:`NO_FINDING` or
    :data:`INCONCLUSIVE`), ``measured`` (the figure, with its setting), ``threshold``
    (the rule, printed) and ``source`` (where the rule comes from)."""

    verdict: str
    measured: str
    threshold: str
    source: str


@dataclass(frozen=True)
class ThreatLine:
    """A summary row: the ``threat``, the section's ``key`` and ``status`` ("ok",
    "skipped", "failed"), its :class:`Verdict` or the ``note`` saying why there is none."""

    threat: str
    key: str
    status: str
    verdict: Optional[Verdict] = None
    note: str = ""


@dataclass
class ScanSummarySection:
    """``lines``: one per threat, in report order; ``settings``: JSON-ready values that
    reproduce the run; ``setting_lines``: how a reader sees them."""

    lines: Sequence[ThreatLine]
    settings: dict
    setting_lines: Sequence[str] = field(default_factory=list)
    key = "summary"
    title = "Summary"

    def to_json(self) -> dict:
        return {"threats": [{"threat": t.threat, "section": t.key, "status": t.status,
                             "verdict": None if t.verdict is None else asdict(t.verdict),
                             "note": t.note} for t in self.lines],
                "settings": dict(self.settings)}

    def blocks(self, figure_dir: str) -> list[Block]:
        rows = []
        for t in self.lines:
            if t.verdict is not None:
                v = t.verdict
                rows.append((t.threat, v.verdict, v.measured, v.threshold, v.source))
            else:
                rows.append((t.threat, {"skipped": "not run", "failed": "failed"}.get(
                    t.status, "see section"), t.note, "", ""))
        at_risk = [t.threat for t in self.lines if t.verdict and t.verdict.verdict == AT_RISK]
        headline = (f"At risk: {', '.join(at_risk)}." if at_risk else
                    "No threat was found at risk by the checks that ran.")
        return [Paragraph(headline),
                Table(("threat", "verdict", "measured", "threshold", "threshold source"), rows),
                Subheading("Settings (to reproduce this run)"),
                BulletList(self.setting_lines)]
