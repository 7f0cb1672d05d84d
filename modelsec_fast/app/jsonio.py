"""Strict JSON for reports and ``--json``: tensors and arrays as lists, NaN and
infinities as null, so every file parses with any JSON reader."""

from __future__ import annotations

import json
import math
import os

__all__ = ["strict_json", "write_json"]


def _json_default(o):
    """Tensors and numpy values as (nested) lists or numbers; floats, NaN included,
    never reach here (json writes them itself, and :func:`_clean` nulls NaN/inf)."""
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o):
    """Replace NaN/inf by None so the text is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def strict_json(obj, indent: int = 2) -> str:
    """JSON text of ``obj`` (tensors/arrays as lists, NaN/inf as null), always parseable.

    Raises:
        TypeError: ``obj`` holds something that is neither JSON nor array-like.
    """
    return json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))),
                      indent=indent, allow_nan=False)


def write_json(obj, destination: str | None) -> None:
    """Write ``obj`` as strict JSON to a file (its folder is created), or to stdout
    for ``None`` or ``"-"``."""
    text = strict_json(obj)
    if destination in (None, "-"):
        print(text)
        return
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    with open(destination, "w") as f:
        f.write(text + "\n")
