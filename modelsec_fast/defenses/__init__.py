"""Defences: adversarial training (PGD-AT, FGSM-RS, Free AT, TRADES), also under DP-SGD;
detection and repair of poisoned data and backdoored models.

See :mod:`modelsec_fast.defenses.adversarial_training` for the methods and
:mod:`modelsec_fast.defenses.privacy_rules` for the privacy argument;
:mod:`~modelsec_fast.defenses.poison_detection` (spectral signatures, activation
clustering, SPECTRE-style), :mod:`~modelsec_fast.defenses.strip`,
:mod:`~modelsec_fast.defenses.neural_cleanse` and :mod:`~modelsec_fast.defenses.fine_pruning`
for poisoning.
"""

from .adversarial_training import METHODS, AdversarialTrainer, StepOutput
from .backdoor_repair import MitigationResult
from .fine_pruning import fine_pruning
from .neural_cleanse import NeuralCleanse, NeuralCleanseResult
from .overfitting_guard import CatastrophicOverfittingWarning, OverfittingGuard
from .poison_detection import (ActivationClustering, PoisonDetectionReport, Spectre,
                               SpectralSignatures, extract_features)
from .strip import STRIP, StripEvaluation, StripResult

__all__ = ["AdversarialTrainer", "CatastrophicOverfittingWarning", "METHODS",
           "OverfittingGuard", "StepOutput",
           "SpectralSignatures", "ActivationClustering", "Spectre", "PoisonDetectionReport",
           "extract_features", "STRIP", "StripResult", "StripEvaluation", "NeuralCleanse",
           "NeuralCleanseResult", "MitigationResult", "fine_pruning"]
