"""Data poisoning and backdoor attacks, their metrics, and DP-SGD as a defence.

Attacks (each ``poison(x, y)`` returns a :class:`PoisonedData` record with the
poisoned set, an ``is_poison`` mask and the settings; ``poison_dataset(ds)`` wraps a
``Dataset`` lazily; trigger attacks have ``apply_trigger(x)``):

* :class:`LabelFlip` (random, or targeted source -> target);
* :class:`BadNets` (patch), :class:`Blended` (blended pattern), :class:`WaNet` (warp),
  all-to-one or all-to-all;
* :class:`LabelConsistent` (clean-label: PGD-perturbed target images plus a patch);
* :class:`WitchesBrew` (clean-label, targeted: gradient matching).

Metrics: :func:`backdoor_metrics` (C-Acc, ASR, RA; with a defended model the deltas
and BackdoorBench's DER). DP-SGD as a defence: :func:`asr_epsilon_sweep` with the
group-privacy bound of :func:`modelsec_fast.audit.bounds.group_privacy_bound`.
The whole review on a data set: :func:`poisoning_review`.
"""

from .base import EvaluationSet, PoisonedData, PoisonedDataset, PoisoningAttack, TriggerAttack
from .clean_label import LabelConsistent, WitchesBrew
from .dp_defence import EpsilonSweep, SweepPoint, asr_epsilon_sweep
from .label_flip import LabelFlip
from .metrics import BackdoorMetrics, accuracy, backdoor_metrics, defence_effectiveness_rating
from .review import PoisoningReview, ReviewSizes, poisoning_review
from .training import (dp_noise_multiplier, eval_mode, model_device, train_classifier,
                       train_private)
from .triggers import BadNets, Blended, WaNet

__all__ = [
    "PoisoningAttack", "TriggerAttack", "PoisonedData", "PoisonedDataset", "EvaluationSet",
    "LabelFlip", "BadNets", "Blended", "WaNet", "LabelConsistent", "WitchesBrew",
    "BackdoorMetrics", "backdoor_metrics", "defence_effectiveness_rating", "accuracy",
    "train_classifier", "train_private", "dp_noise_multiplier", "eval_mode", "model_device",
    "asr_epsilon_sweep", "EpsilonSweep", "SweepPoint", "poisoning_review", "PoisoningReview",
    "ReviewSizes",
]
