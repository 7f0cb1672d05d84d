"""Defences: adversarial training (PGD-AT, FGSM-RS, Free AT, TRADES), also under DP-SGD.

See :mod:`modelsec_fast.defenses.adversarial_training` for the methods and
:mod:`modelsec_fast.defenses.privacy_rules` for the privacy argument.
"""

from .adversarial_training import METHODS, AdversarialTrainer, StepOutput
from .overfitting_guard import CatastrophicOverfittingWarning, OverfittingGuard

__all__ = ["AdversarialTrainer", "CatastrophicOverfittingWarning", "METHODS",
           "OverfittingGuard", "StepOutput"]
