"""Model stealing: extraction attacks against a victim the attacker can only query.

* :class:`Victim`: a query function (probabilities, top-k, labels or logits) behind
  an exact query counter that no attack can exceed; :class:`HeldOut`: the
  evaluator's held-out inputs for thief accuracy and fidelity.
* :class:`Copycat`, :class:`KnockoffNets` (random and adaptive sampling) and
  :class:`JacobianAugmentation`: train a thief on the victim's answers, with the
  fidelity-against-budget curve in an :class:`ExtractionResult`.
* :class:`FunctionallyEquivalentExtraction`: recovers a one-hidden-layer ReLU
  network exactly (weights up to permutation and scale).

Defences against them (output post-processing, PRADA, ownership tests) are in
:mod:`modelsec_fast.defenses`.
"""

from .bandit import GradientBandit, RewardScaler
from .jacobian import JacobianAugmentation
from .knockoff import Copycat, KnockoffNets
from .relu_extraction import ExtractedReLUNetwork, FunctionallyEquivalentExtraction
from .results import BudgetPoint, ExtractionResult, ReLUExtractionResult
from .training import ThiefTraining, fit_thief
from .victim import HeldOut, QueryBudgetExceeded, Victim, predict_labels

__all__ = [
    "Victim", "HeldOut", "QueryBudgetExceeded", "predict_labels",
    "Copycat", "KnockoffNets", "JacobianAugmentation",
    "FunctionallyEquivalentExtraction", "ExtractedReLUNetwork",
    "ExtractionResult", "BudgetPoint", "ReLUExtractionResult",
    "ThiefTraining", "fit_thief", "GradientBandit", "RewardScaler",
]
