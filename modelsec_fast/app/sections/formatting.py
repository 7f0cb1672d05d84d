"""Number formats shared by the sections, so every table reads alike."""

from __future__ import annotations

import math

__all__ = ["percent", "tpr_text"]


def percent(value, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage (``0.123`` -> ``12.3%``); ``n/a`` for
    None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.{digits}f}%"


def tpr_text(value) -> str:
    """A TPR at a fixed FPR, or ``not measurable`` (None: too few non-members)."""
    return "not measurable" if value is None else percent(value, 2)
