"""Differentially private training: an Opacus-compatible DP-SGD engine.

``PrivacyEngine`` (engine.py), ``DPOptimizer`` (optimizer.py),
``ModuleValidator`` (validate.py), per-sample rules (per_sample/), DP-ready
layers (layers/). Accounting-side pieces (sampling, checkpoint, distributed,
secure) live beside them. Names are resolved lazily so that importing one
part never imports the others.
"""

import importlib

_EXPORTS = {
    "PrivacyEngine": "modelsec_fast.privacy.engine",
    "DPOptimizer": "modelsec_fast.privacy.optimizer",
    "ModuleValidator": "modelsec_fast.privacy.validate",
    "UnsupportedModuleError": "modelsec_fast.privacy.validate",
    "PrivateModule": "modelsec_fast.privacy.per_sample.capture",
    "DPMultiheadAttention": "modelsec_fast.privacy.layers",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modelsec_fast.privacy' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
