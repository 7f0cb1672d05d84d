"""The settings a run used, as a section: what makes the report reproducible."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..report.document import Block, BulletList

__all__ = ["SettingsSection"]


@dataclass
class SettingsSection:
    """``settings``: the values (JSON-ready), ``lines``: how a reader sees them, one
    bullet each (the pipeline writes them, since it knows what each value means)."""

    settings: dict
    lines: Sequence[str] = field(default_factory=list)
    key = "settings"
    title = "Settings"

    def to_json(self) -> dict:
        return dict(self.settings)

    def blocks(self, figure_dir: str) -> list[Block]:
        return [BulletList(self.lines)]
