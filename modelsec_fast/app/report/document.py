"""The report's document model: sections and the blocks they render to.

A :class:`Section` is a typed result plus how it renders: ``to_json()`` gives
its figures for ``report.json`` and ``blocks(figure_dir)`` gives what a reader
sees, as a list of the small blocks below (writing any PNG figure into
``figure_dir``). Renderers (Markdown today, a self-contained HTML page later)
turn blocks into text and never look inside a section, so a new threat family
adds a section without touching the writer or a renderer.

Block text is plain text (no Markdown markup); a renderer escapes it as its
format needs.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, Union, runtime_checkable

from ..console import one_line

__all__ = ["Paragraph", "BulletList", "Subheading", "Table", "Figure", "Skipped", "Failed",
           "Block", "Section", "SkippedSection", "FailedSection", "build_section",
           "ReportMeta", "RenderedSection"]


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text."""

    text: str


@dataclass(frozen=True)
class BulletList:
    """An unordered list, one plain-text item per entry."""

    items: Sequence[str]

    def __post_init__(self):
        object.__setattr__(self, "items", tuple(str(i) for i in self.items))


@dataclass(frozen=True)
class Subheading:
    """A heading one level below the section's title."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table: ``header`` (one cell per column) and ``rows`` of plain-text cells.

    ``align`` has one letter per column, ``"l"`` or ``"r"`` (numbers read best
    right-aligned); empty means every column left-aligned.

    Raises:
        ValueError: a row or ``align`` of another length than the header.
    """

    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    align: str = ""

    def __post_init__(self):
        header = tuple(str(h) for h in self.header)
        rows = tuple(tuple(str(c) for c in row) for row in self.rows)
        align = self.align
        for i, row in enumerate(rows):
            if len(row) != len(header):
                raise ValueError(f"table row {i} has {len(row)} cells, the header "
                                 f"{len(header)}")
        if align and (len(align) != len(header) or set(align) - {"l", "r"}):
            raise ValueError(f"align must be one 'l' or 'r' per column ({len(header)}), "
                             f"got {align!r}")
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "align", align or "l" * len(header))


@dataclass(frozen=True)
class Figure:
    """A PNG figure the section wrote: ``path`` (absolute, or relative to the
    working directory) and ``caption`` (one line, also its alt text)."""

    path: str
    caption: str


@dataclass(frozen=True)
class Skipped:
    """The section (or a part of it) did not run; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """The section (or a part of it) failed; ``error`` is the one-line error."""

    error: str


Block = Union[Paragraph, BulletList, Subheading, Table, Figure, Skipped, Failed]


@runtime_checkable
class Section(Protocol):
    """One part of a report: a typed result plus how it renders.

    ``key`` names the section in ``report.json`` (unique, stable, snake_case);
    ``title`` is its heading. A section is usually a dataclass holding the
    result objects of one analysis (for example a
    :class:`~modelsec_fast.audit.MembershipAudit` per model).
    """

    key: str
    title: str

    def to_json(self) -> dict:
        """The section's figures and settings as JSON-ready data (tensors and
        arrays allowed: the writer turns them into lists)."""
        ...

    def blocks(self, figure_dir: str) -> list[Block]:
        """What a reader sees, in order; figures are written into ``figure_dir``, under
        names no other section uses (best: prefixed with the section's key)."""
        ...


@dataclass
class SkippedSection:
    """A section that did not run, with the reason (for example: no DP-SGD
    model was trained, so there is no accountant to report)."""

    key: str
    title: str
    reason: str

    def to_json(self) -> dict:
        return {}

    def blocks(self, figure_dir: str) -> list[Block]:
        return [Skipped(self.reason)]


@dataclass
class FailedSection:
    """A section whose analysis raised; ``error`` is the one-line error. The
    report still renders every other section."""

    key: str
    title: str
    error: str

    def to_json(self) -> dict:
        return {}

    def blocks(self, figure_dir: str) -> list[Block]:
        return [Failed(self.error)]


def build_section(key: str, title: str, build: Callable[[], Section], *,
                  raise_errors: bool = False) -> Section:
    """``build()``, or a :class:`FailedSection` naming the error it raised, so one
    failing analysis leaves the rest of a report standing.

    ``raise_errors`` lets the error through instead (tests, debugging).
    ``KeyboardInterrupt`` always goes through.
    """
    try:
        return build()
    except Exception as error:  # noqa: BLE001  (any failure is reported in its place)
        if raise_errors:
            raise
        return FailedSection(key, title, f"{type(error).__name__}: {one_line(error)}")


@dataclass
class ReportMeta:
    """Who made a report, when and how: ``command`` (the command line), ``version``
    (modelsec_fast's), ``created_utc`` ("YYYY-MM-DD HH:MM UTC"), ``total_time_s``
    (wall time of the whole run, once known)."""

    command: str
    version: str
    created_utc: str
    tool: str = "modelsec-fast"
    total_time_s: float | None = None

    @classmethod
    def now(cls, command: str) -> "ReportMeta":
        """Meta for a report started now by ``command``."""
        from modelsec_fast import __version__

        created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return cls(command=command, version=__version__, created_utc=created)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RenderedSection:
    """What a renderer gets for one section: its ``key``, ``title``, ``status``
    ("ok", "skipped" or "failed") and ``blocks``."""

    key: str
    title: str
    status: str
    blocks: tuple[Block, ...]
