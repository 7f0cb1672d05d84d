"""The report writer: sections in, ``report.md``, ``report.json`` and PNG figures out.

* :mod:`.document`: the :class:`Section` interface (a typed result plus how it
  renders) and the blocks a section renders to.
* :mod:`.writer`: :func:`write_report`.
* :mod:`.markdown`: the Markdown renderer.
* :mod:`.plots`: the matplotlib figures the sections draw.

The sections themselves live in :mod:`modelsec_fast.app.sections`.
"""

from .document import (Block, BulletList, Failed, FailedSection, Figure, Paragraph,
                       RenderedSection, ReportMeta, Section, Skipped, SkippedSection,
                       Subheading, Table, build_section)
from .writer import ReportFiles, write_report

__all__ = [
    "Section", "SkippedSection", "FailedSection", "build_section",
    "Block", "Paragraph", "BulletList", "Subheading", "Table", "Figure", "Skipped", "Failed",
    "ReportMeta", "RenderedSection", "ReportFiles", "write_report",
]
