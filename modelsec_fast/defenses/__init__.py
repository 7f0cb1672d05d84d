"""Defences: adversarial training (PGD-AT, FGSM-RS, Free AT, TRADES), also under DP-SGD;
against model extraction, output post-processors, PRADA query monitoring and
ownership verification by dataset inference.

See :mod:`modelsec_fast.defenses.adversarial_training` for the methods and
:mod:`modelsec_fast.defenses.privacy_rules` for the privacy argument;
:mod:`~modelsec_fast.defenses.output_perturbation`,
:mod:`~modelsec_fast.defenses.query_monitor` and
:mod:`~modelsec_fast.defenses.ownership` for the extraction defences.
"""

from .adversarial_training import METHODS, AdversarialTrainer, StepOutput
from .output_perturbation import (GaussianNoise, LabelOnly, PredictionPoisoning, ReverseSigmoid,
                                  Rounding, TopK, UtilityCost, utility_cost)
from .overfitting_guard import CatastrophicOverfittingWarning, OverfittingGuard
from .ownership import DatasetInference, OwnershipResult
from .query_monitor import PradaMonitor, PradaResult

__all__ = ["AdversarialTrainer", "CatastrophicOverfittingWarning", "METHODS",
           "OverfittingGuard", "StepOutput",
           "TopK", "Rounding", "ReverseSigmoid", "GaussianNoise", "LabelOnly",
           "PredictionPoisoning", "UtilityCost", "utility_cost",
           "PradaMonitor", "PradaResult", "DatasetInference", "OwnershipResult"]
