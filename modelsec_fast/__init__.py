"""modelsec_fast: fast, verified AI-model security for PyTorch.

Differentially private training (an Opacus-compatible ``PrivacyEngine``),
adversarial attacks with the torchattacks calling convention, adversarial
training and privacy audits, on fused C++/CUDA kernels with a pure-PyTorch
fallback.

Submodules are imported lazily so that ``import modelsec_fast`` stays cheap
and a user of the attacks never pays for the DP engine's imports.
"""

import importlib

import torch  # noqa: F401  (loads libc10 before the native extension needs it)

__version__ = "0.1.0"

_SUBMODULES = {
    "ops", "reference", "privacy", "accountants", "attacks", "evaluate",
    "defenses", "audit", "data", "models", "demo", "report", "cli",
}
_EXPORTS = {
    "PrivacyEngine": "modelsec_fast.privacy.engine",
    "AdversarialTrainer": "modelsec_fast.defenses",
    "robust_accuracy": "modelsec_fast.evaluate",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"modelsec_fast.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modelsec_fast' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES | set(_EXPORTS))
