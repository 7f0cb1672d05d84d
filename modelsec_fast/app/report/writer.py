"""Writes a report: ``report.md`` and a self-contained ``report.html`` for people,
``report.json`` for programs, and the sections' PNG figures, all in one folder.

``report.json`` is ``{"title", "meta", "sections"}``; ``sections`` maps each
section's key, in report order, to ``{"title", "status", "figures", "result"}``
(``status`` "ok", "skipped" or "failed"; a skipped section adds ``"reason"``, a
failed one ``"error"``; ``figures`` are paths relative to the report's folder;
``result`` is the section's :meth:`~.document.Section.to_json`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

from ..console import one_line
from ..jsonio import strict_json
from .html import render_html
from .document import (Failed, FailedSection, Figure, RenderedSection, ReportMeta, Section,
                       SkippedSection)
from .markdown import render_markdown

__all__ = ["ReportFiles", "write_report"]


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote: ``markdown``, ``json`` and ``html`` paths, the
    ``figures``, and the keys of the sections that were ``skipped`` or ``failed``."""

    markdown: str
    json: str
    figures: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[str, ...]
    html: str = ""


def write_report(out_dir: str, title: str, meta: ReportMeta, sections: Sequence[Section], *,
                 raise_errors: bool = False) -> ReportFiles:
    """Render ``sections`` in order into ``out_dir`` (created if needed).

    A section whose ``blocks`` or ``to_json`` raises is reported as failed in its
    place, with the error, and every other section still renders; ``raise_errors``
    lets the error through instead.

    Raises:
        ValueError: two sections share a key, or one wrote a figure file that an
            earlier section had written (a programming error, so not reported in
            place).
    """
    keys = [s.key for s in sections]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"report sections must have distinct keys, repeated: {repeated}")
    os.makedirs(out_dir, exist_ok=True)
    rendered, entries, owner = [], {}, {}
    for section in sections:
        part, entry = _render(section, out_dir, raise_errors)
        taken = [f for f in entry["figures"] if f in owner]
        if taken:  # it overwrote another section's figure: that section's report is wrong
            raise ValueError(f"report section {section.key!r} wrote {taken[0]}, which section "
                             f"{owner[taken[0]]!r} had written: name figures after the section")
        owner.update({f: section.key for f in entry["figures"]})
        rendered.append(part)
        entries[section.key] = entry
    paths = {"json": os.path.join(out_dir, "report.json"),
             "markdown": os.path.join(out_dir, "report.md"),
             "html": os.path.join(out_dir, "report.html")}
    with open(paths["json"], "w") as f:
        f.write(strict_json({"title": title, "meta": meta.to_json(), "sections": entries}) + "\n")
    with open(paths["markdown"], "w") as f:
        f.write(render_markdown(title, meta, rendered, out_dir))
    with open(paths["html"], "w", encoding="utf-8") as f:
        f.write(render_html(title, meta, rendered))
    status = {key: entry["status"] for key, entry in entries.items()}
    figures = tuple(os.path.join(out_dir, f) for f in owner)
    return ReportFiles(markdown=paths["markdown"], json=paths["json"], html=paths["html"],
                       figures=figures,
                       skipped=tuple(k for k, s in status.items() if s == "skipped"),
                       failed=tuple(k for k, s in status.items() if s == "failed"))


def _render(section: Section, out_dir: str, raise_errors: bool) -> tuple[RenderedSection, dict]:
    """(the section's blocks for the renderers, its report.json entry)."""
    entry: dict = {"title": section.title, "status": "ok"}
    if isinstance(section, SkippedSection):
        entry.update(status="skipped", reason=section.reason)
    elif isinstance(section, FailedSection):
        entry.update(status="failed", error=section.error)
    try:
        blocks = tuple(section.blocks(out_dir))
        # Parsed back so that a result JSON cannot hold is caught here, in its section.
        result = json.loads(strict_json(section.to_json()))
    except Exception as error:  # noqa: BLE001  (reported in the section's place)
        if raise_errors:
            raise
        message = f"{type(error).__name__}: {one_line(error)}"
        entry = {"title": section.title, "status": "failed", "error": message}
        blocks, result = (Failed(message),), {}
    entry["figures"] = [os.path.relpath(b.path, out_dir).replace(os.sep, "/")
                        for b in blocks if isinstance(b, Figure)]
    entry["result"] = result
    return RenderedSection(section.key, section.title, entry["status"], blocks), entry
