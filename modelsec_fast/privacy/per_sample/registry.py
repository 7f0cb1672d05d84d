"""Registry of per-layer rules: adding a layer family touches one file.

``register_rule(nn.Linear)(LinearRule)`` attaches a rule; ``rule_for(module)``
finds it. Subclasses of a registered type get the rule only when they do not
override ``forward`` (an override would be silently bypassed otherwise).
"""

from __future__ import annotations

from torch import nn

from .base import LayerRule

_RULES: dict[type, LayerRule] = {}


def register_rule(*module_types: type):
    """Class decorator: instantiate the rule and register it for ``module_types``."""
    def wrap(rule_cls):
        rule = rule_cls()
        for t in module_types:
            _RULES[t] = rule
        return rule_cls
    return wrap


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule for ``module``, or None when the layer type has none."""
    t = type(module)
    if t in _RULES:
        return _RULES[t]
    for base in t.__mro__[1:]:
        if base in _RULES:
            return _RULES[base] if t.forward is base.forward else None
    return None


def registered_types() -> tuple[type, ...]:
    return tuple(_RULES)
