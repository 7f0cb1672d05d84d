"""Defences: adversarial training (PGD-AT, FGSM-RS, Free AT, TRADES), also under DP-SGD;
detection and repair of poisoned data and backdoored models; defences against model
extraction: output post-processors, PRADA query monitoring and ownership verification by
dataset inference.

See :mod:`modelsec_fast.defenses.adversarial_training` for the methods and
:mod:`modelsec_fast.defenses.privacy_rules` for the privacy argument;
:mod:`~modelsec_fast.defenses.poison_detection` (spectral signatures, activation
clustering, SPECTRE-style), :mod:`~modelsec_fast.defenses.strip`,
:mod:`~modelsec_fast.defenses.neural_cleanse` and :mod:`~modelsec_fast.defenses.fine_pruning`
for poisoning; :mod:`~modelsec_fast.defenses.output_perturbation`,
:mod:`~modelsec_fast.defenses.query_monitor` and :mod:`~modelsec_fast.defenses.ownership`
for extraction.
"""

from .adversarial_training import METHODS, AdversarialTrainer, StepOutput
from .backdoor_repair import MitigationResult
from .fine_pruning import fine_pruning
from .neural_cleanse import NeuralCleanse, NeuralCleanseResult
from .output_perturbation import (GaussianNoise, LabelOnly, PredictionPoisoning, ReverseSigmoid,
                                  Rounding, TopK, UtilityCost, utility_cost)
from .overfitting_guard import CatastrophicOverfittingWarning, OverfittingGuard
from .ownership import DatasetInference, OwnershipResult
from .poison_detection import (ActivationClustering, PoisonDetectionReport, Spectre,
                               SpectralSignatures, extract_features)
from .query_monitor import PradaMonitor, PradaResult
from .strip import STRIP, StripEvaluation, StripResult

__all__ = ["AdversarialTrainer", "CatastrophicOverfittingWarning", "METHODS",
           "OverfittingGuard", "StepOutput",
           "SpectralSignatures", "ActivationClustering", "Spectre", "PoisonDetectionReport",
           "extract_features", "STRIP", "StripResult", "StripEvaluation", "NeuralCleanse",
           "NeuralCleanseResult", "MitigationResult", "fine_pruning",
           "TopK", "Rounding", "ReverseSigmoid", "GaussianNoise", "LabelOnly",
           "PredictionPoisoning", "UtilityCost", "utility_cost",
           "PradaMonitor", "PradaResult", "DatasetInference", "OwnershipResult"]
