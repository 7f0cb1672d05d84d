"""The library's result records as JSON text, optionally written to a file."""

from __future__ import annotations

import json

__all__ = ["json_text"]


def json_text(data: dict, path: str | None = None, indent: int = 2) -> str:
    """``data`` as JSON text; also written to ``path`` (UTF-8, trailing newline) if given."""
    text = json.dumps(data, indent=indent)
    if path is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return text
