"""Markdown rendering of a report's blocks (GitHub-flavoured tables).

Block text goes out as written, except ``|`` inside table cells, which is
escaped; figures are linked relative to the report's folder.
"""

from __future__ import annotations

import os
from typing import Sequence

from .document import (Block, BulletList, Failed, Figure, Paragraph, RenderedSection,
                       ReportMeta, Skipped, Subheading, Table)

__all__ = ["render_markdown"]


def render_markdown(title: str, meta: ReportMeta, sections: Sequence[RenderedSection],
                    report_dir: str) -> str:
    """The whole report as Markdown: a title, a line of provenance, then one ``##``
    part per section. ``report_dir`` is where the file will be written (figure
    links are relative to it)."""
    made = (f"Created {meta.created_utc} by `{meta.command}` (modelsec_fast "
            f"{meta.version})")
    if meta.total_time_s is not None:
        made += f" in {meta.total_time_s:.0f} s"
    lines = [f"# {title}", "", made + ".", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += _block(block, report_dir) + [""]
    return "\n".join(lines).rstrip() + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _block(block: Block, report_dir: str) -> list[str]:
    if isinstance(block, Paragraph):
        return [block.text]
    if isinstance(block, BulletList):
        return [f"- {item}" for item in block.items]
    if isinstance(block, Subheading):
        return [f"### {block.text}"]
    if isinstance(block, Table):
        rule = ["---:" if a == "r" else "---" for a in block.align]
        return ["| " + " | ".join(_cell(h) for h in block.header) + " |",
                "|" + "|".join(rule) + "|"] + [
            "| " + " | ".join(_cell(c) for c in row) + " |" for row in block.rows]
    if isinstance(block, Figure):
        link = os.path.relpath(os.path.abspath(block.path), os.path.abspath(report_dir))
        return [f"![{block.caption}]({link.replace(os.sep, '/')})"]
    if isinstance(block, Skipped):
        return [f"_Skipped: {block.reason}_"]
    if isinstance(block, Failed):
        return [f"**Failed:** {block.error}"]
    raise TypeError(f"not a report block: {type(block).__name__}")
