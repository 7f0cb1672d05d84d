"""Registry of per-layer rules: adding a layer family touches one file.

``register_rule(nn.Linear)(LinearRule)`` attaches a rule; ``rule_for(module)``
finds it. Subclasses of a registered type get the rule when they do not
override ``forward``, or when their override computes the same function
(checked on a probe input); otherwise they take the generic path.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import LayerRule

_RULES: dict[type, LayerRule] = {}
#: rules for classes of optional libraries, keyed "module.QualName" (no import needed)
_NAMED_RULES: dict[str, LayerRule] = {}


def register_rule(*module_types: type):
    """Class decorator: instantiate the rule and register it for ``module_types``."""
    def wrap(rule_cls):
        rule = rule_cls()
        for t in module_types:
            _RULES[t] = rule
        return rule_cls
    return wrap


def register_rule_by_name(*qualified_names: str):
    """Class decorator: register the rule for classes named ``"package.module.Class"``."""
    def wrap(rule_cls):
        rule = rule_cls()
        for n in qualified_names:
            _NAMED_RULES[n] = rule
        return rule_cls
    return wrap


def _registered(t: type) -> LayerRule | None:
    rule = _RULES.get(t)
    if rule is None and _NAMED_RULES:
        rule = _NAMED_RULES.get(f"{t.__module__}.{t.__qualname__}")
    return rule


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule for ``module``, or None when the layer type has none.

    A subclass of a registered type that overrides ``forward`` gets the rule
    only when its forward computes the same function as the registered
    type's on a probe input (``LayerRule.example_input``): timm's LayerNorm
    does, a LayerNorm over channels-first maps does not (and then takes the
    generic path). The answer is cached per module.
    """
    t = type(module)
    rule = _registered(t)
    if rule is not None:
        return rule
    for base in t.__mro__[1:]:
        rule = _registered(base)
        if rule is not None:
            if t.forward is base.forward:
                return rule
            cached = module.__dict__.get("_modelsec_same_function")
            if cached is None:
                cached = _same_function(module, base, rule)
                module.__dict__["_modelsec_same_function"] = cached
            return rule if cached else None
    return None


def _same_function(module: nn.Module, base: type, rule: LayerRule) -> bool:
    """Whether ``module``'s own forward equals ``base.forward`` on the rule's probe input."""
    try:
        with torch.no_grad():
            x = rule.example_input(module)
            if x is None:
                return False
            ours = type(module).forward(module, x)
            theirs = base.forward(module, x)
    except Exception:  # a forward that cannot even run the probe is not the same function
        return False
    return (isinstance(ours, torch.Tensor) and isinstance(theirs, torch.Tensor)
            and ours.shape == theirs.shape and torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6))


def registered_types() -> tuple[type, ...]:
    return tuple(_RULES)
