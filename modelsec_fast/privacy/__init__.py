"""Differentially private training: an Opacus-compatible DP-SGD engine.

``PrivacyEngine`` (engine.py), ``DPOptimizer`` (optimizer.py),
``ModuleValidator`` (validate.py), per-sample rules (per_sample/), DP-ready
layers (layers/). Accounting-side pieces (sampling: ``DPDataLoader`` and
``BatchMemoryManager``; checkpoint; distributed: ``DPDDP``; secure) live beside
them. Names are resolved lazily so that importing one part never imports the
others; the ``TYPE_CHECKING`` block tells IDEs and type checkers what they are.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .distributed import DPDDP, DifferentiallyPrivateDistributedDataParallel
    from .engine import PrivacyEngine
    from .layers import DPMultiheadAttention
    from .optimizer import DPOptimizer
    from .per_sample.capture import PrivateModule
    from .sampling import BatchMemoryManager, DPDataLoader
    from .validate import ModuleValidator, UnsupportedModuleError

_EXPORTS = {
    "PrivacyEngine": "modelsec_fast.privacy.engine",
    "DPOptimizer": "modelsec_fast.privacy.optimizer",
    "DPDataLoader": "modelsec_fast.privacy.sampling",
    "BatchMemoryManager": "modelsec_fast.privacy.sampling",
    "DPDDP": "modelsec_fast.privacy.distributed",
    "DifferentiallyPrivateDistributedDataParallel": "modelsec_fast.privacy.distributed",
    "ModuleValidator": "modelsec_fast.privacy.validate",
    "UnsupportedModuleError": "modelsec_fast.privacy.validate",
    "PrivateModule": "modelsec_fast.privacy.per_sample.capture",
    "DPMultiheadAttention": "modelsec_fast.privacy.layers",
}


# Hidden from type checkers, which read the TYPE_CHECKING imports instead and so
# flag a misspelt name rather than typing it Any.
if not TYPE_CHECKING:
    def __getattr__(name):
        if name in _EXPORTS:
            return getattr(importlib.import_module(_EXPORTS[name]), name)
        raise AttributeError(f"module 'modelsec_fast.privacy' has no attribute {name!r}")

    def __dir__():
        return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "BatchMemoryManager", "DPDDP", "DPDataLoader", "DPMultiheadAttention", "DPOptimizer",
    "DifferentiallyPrivateDistributedDataParallel", "ModuleValidator", "PrivacyEngine",
    "PrivateModule", "UnsupportedModuleError",
]
