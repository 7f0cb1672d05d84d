"""modelsec_fast: fast, verified AI-model security for PyTorch.

Differentially private training (an Opacus-compatible ``PrivacyEngine``),
adversarial attacks with the torchattacks calling convention, adversarial
training and privacy audits, on fused C++/CUDA kernels with a pure-PyTorch
fallback.

Submodules and names are imported lazily so that ``import modelsec_fast`` stays
cheap and a user of the attacks never pays for the DP engine's imports; the
``TYPE_CHECKING`` block below tells IDEs and type checkers what each name is.
The ``modelsec-fast`` command lives in :mod:`modelsec_fast.app`, which the
library never imports.
"""

import importlib
from typing import TYPE_CHECKING

import torch  # noqa: F401  (loads libc10 before the native extension needs it)

__version__ = "0.2.0"

if TYPE_CHECKING:
    from . import (accountants, attacks, audit, data, defenses, evaluate, explain, inversion,
                   models, ops, poisoning, privacy, reference, state, stealing, validation)
    from .defenses import AdversarialTrainer
    from .evaluate import robust_accuracy
    from .privacy.distributed import DPDDP, DifferentiallyPrivateDistributedDataParallel
    from .privacy.engine import PrivacyEngine
    from .privacy.sampling import BatchMemoryManager, DPDataLoader

_SUBMODULES = {
    "ops", "reference", "privacy", "accountants", "attacks", "evaluate",
    "defenses", "audit", "data", "models", "state", "validation",
    "explain", "inversion", "poisoning", "stealing",
}
_EXPORTS = {
    "PrivacyEngine": "modelsec_fast.privacy.engine",
    "DPDataLoader": "modelsec_fast.privacy.sampling",
    "BatchMemoryManager": "modelsec_fast.privacy.sampling",
    "DPDDP": "modelsec_fast.privacy.distributed",
    "DifferentiallyPrivateDistributedDataParallel": "modelsec_fast.privacy.distributed",
    "AdversarialTrainer": "modelsec_fast.defenses",
    "robust_accuracy": "modelsec_fast.evaluate",
}

__all__ = [
    "__version__", "AdversarialTrainer", "BatchMemoryManager", "DPDDP", "DPDataLoader",
    "DifferentiallyPrivateDistributedDataParallel", "PrivacyEngine", "robust_accuracy",
    "accountants", "attacks", "audit", "data", "defenses", "evaluate", "explain", "inversion",
    "models", "ops", "poisoning", "privacy", "reference", "state", "stealing", "validation",
]


# Hidden from type checkers, which read the TYPE_CHECKING imports instead and so
# flag a misspelt name rather than typing it Any.
if not TYPE_CHECKING:
    def __getattr__(name):
        if name in _SUBMODULES:
            return importlib.import_module(f"modelsec_fast.{name}")
        if name in _EXPORTS:
            return getattr(importlib.import_module(_EXPORTS[name]), name)
        raise AttributeError(f"module 'modelsec_fast' has no attribute {name!r}")

    def __dir__():
        return sorted(set(globals()) | _SUBMODULES | set(_EXPORTS))
