"""Privacy audits: membership inference (loss threshold, LiRA), empirical epsilon
lower bounds, and the one-run canary audit of DP-SGD.

* :mod:`.metrics`: ROC, AUC, TPR at low FPR ("not measurable" when too few non-members).
* :mod:`.membership`: the attacks and :func:`membership_audit`.
* :mod:`.bounds`: Clopper-Pearson epsilon lower bounds (coin-flip membership only).
* :mod:`.canary`: Steinke-Nasr-Jagielski 2023 one-run audit with Dirac gradient canaries.

The audits take what they need as arguments: LiRA's shadow models come from the
caller's ``train_fn(x, y, seed) -> model`` (the ``modelsec-fast`` command replays
its training recipe, :mod:`modelsec_fast.app.training`).
"""

from .bounds import EpsilonBound, clopper_pearson, empirical_epsilon, epsilon_from_counts
from .canary import (CanaryAuditResult, canary_audit_dp_sgd, one_run_epsilon_lower_bound,
                     one_run_p_value)
from .membership import (MembershipAudit, ShadowObservations, lira_scores, logit_confidence,
                         loss_threshold_scores, membership_audit, train_shadow_models)
from .metrics import AttackMetrics, attack_metrics, auc, roc_curve, tpr_at_fpr

__all__ = [
    "AttackMetrics", "attack_metrics", "auc", "roc_curve", "tpr_at_fpr",
    "loss_threshold_scores", "logit_confidence", "lira_scores", "train_shadow_models",
    "ShadowObservations", "MembershipAudit", "membership_audit",
    "EpsilonBound", "clopper_pearson", "empirical_epsilon", "epsilon_from_counts",
    "CanaryAuditResult", "canary_audit_dp_sgd", "one_run_epsilon_lower_bound",
    "one_run_p_value",
]
