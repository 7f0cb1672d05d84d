"""Per-sample gradient norms and clipped sums without per-sample copies.

One file per layer family (``linear``, ``conv``, ``embedding``, ``norms``)
registers a :class:`~.base.LayerRule`; ``capture`` routes layers through their
rules and groups what one backward pass recorded; ``clipping`` turns a pass
into per-sample norms and clipped sums.
"""

from . import conv, embedding, linear, norms  # noqa: F401  (register the rules)
from .base import Call, LayerRule
from .capture import CaptureState, PrivateModule, attach, detach
from .clipping import clip_pass
from .registry import register_rule, registered_types, rule_for

__all__ = [
    "Call", "LayerRule", "CaptureState", "PrivateModule", "attach", "detach",
    "clip_pass", "register_rule", "registered_types", "rule_for",
]
