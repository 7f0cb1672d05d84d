"""Empirical epsilon lower bounds from a membership attack (Clopper-Pearson).

(epsilon, delta)-DP bounds any membership test: TPR <= e^eps * FPR + delta and,
symmetrically, TNR <= e^eps * FNR + delta. With Clopper-Pearson confidence
bounds TPR_lo and FPR_hi (each at level 1 - alpha/2, so jointly 1 - alpha):

    eps >= max( log((TPR_lo - delta) / FPR_hi), log((TNR_lo - delta) / FNR_hi) ).

**When this is valid.** The counts are binomial only if membership of each
example is an independent fair coin flip (or each trial is a separate training
run). A fixed train/test split is neither: the attack score still measures
leakage, but it is no DP bound, and :func:`empirical_epsilon` refuses it.

The threshold is chosen on a random half of the examples and the bound is
computed on the other half, so choosing the best threshold does not inflate it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta as beta_dist

__all__ = ["DESIGNS", "EpsilonBound", "clopper_pearson", "epsilon_from_counts",
           "empirical_epsilon", "group_distance", "group_privacy_bound"]

# Membership designs, and whether Clopper-Pearson DP bounds are valid under them.
DESIGNS = {"coin_flip": True, "repeated_runs": True, "split": False}


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) confidence interval of a binomial proportion k/n."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    lo = 0.0 if k == 0 else float(beta_dist.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta_dist.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def _log_ratio(num: float, den: float) -> float:
    if num <= 0.0:
        return 0.0
    if den <= 0.0:
        return math.inf
    return max(0.0, math.log(num / den))


def epsilon_from_counts(tp: int, fn: int, fp: int, tn: int, *, delta: float,
                        alpha: float = 0.05) -> float:
    """Epsilon lower bound, holding with probability >= 1 - alpha, from one confusion matrix."""
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    # One tail of each two-sided interval: TPR >= tpr_lo and FPR <= fpr_hi jointly
    # hold with probability >= 1 - alpha; both inequalities below use only these.
    tpr_lo, _ = clopper_pearson(tp, tp + fn, alpha)
    _, fpr_hi = clopper_pearson(fp, fp + tn, alpha)
    return max(_log_ratio(tpr_lo - delta, fpr_hi),
               _log_ratio((1.0 - fpr_hi) - delta, 1.0 - tpr_lo))


@dataclass
class EpsilonBound:
    """An empirical epsilon lower bound and the evidence behind it."""

    attack: str
    epsilon_lower_bound: float
    threshold: float
    tp: int
    fn: int
    fp: int
    tn: int
    alpha: float
    delta: float
    design: str

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["method"] = ("Clopper-Pearson, threshold chosen on a held-out half, "
                       f"confidence {1 - self.alpha:g}")
        return d


def empirical_epsilon(member_scores, nonmember_scores, *, delta: float, design: str,
                      alpha: float = 0.05, attack: str = "attack", seed: int = 0) -> EpsilonBound:
    """Epsilon lower bound from membership scores (higher = member).

    Raises:
        ValueError: ``design`` is "split" (no DP bound exists for it) or unknown;
            fewer than 2 members or non-members.
    """
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {sorted(DESIGNS)}, got {design!r}")
    if not DESIGNS[design]:
        raise ValueError("a fixed train/test split gives no differential-privacy bound; "
                         "report the attack's AUC/TPR instead (use a coin-flip design for a bound)")
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError("need at least 2 members and 2 non-members")
    rng = np.random.default_rng(seed)
    pos_sel, pos_eval = _halves(pos, rng)
    neg_sel, neg_eval = _halves(neg, rng)
    best_t = _best_threshold(pos_sel, neg_sel, delta=delta, alpha=alpha)
    tp, fp = int((pos_eval >= best_t).sum()), int((neg_eval >= best_t).sum())
    fn, tn = len(pos_eval) - tp, len(neg_eval) - fp
    eps = epsilon_from_counts(tp, fn, fp, tn, delta=delta, alpha=alpha)
    return EpsilonBound(attack=attack, epsilon_lower_bound=eps, threshold=best_t, tp=tp, fn=fn,
                        fp=fp, tn=tn, alpha=alpha, delta=delta, design=design)


def _best_threshold(pos, neg, *, delta, alpha) -> float:
    """Threshold maximising the Clopper-Pearson bound on (pos, neg), vectorised."""
    t = np.unique(np.concatenate([pos, neg]))
    tp = len(pos) - np.searchsorted(np.sort(pos), t, side="left")
    fp = len(neg) - np.searchsorted(np.sort(neg), t, side="left")
    n_pos, n_neg = len(pos), len(neg)
    tpr_lo = np.where(tp > 0, beta_dist.ppf(alpha / 2, np.maximum(tp, 1), n_pos - tp + 1), 0.0)
    fpr_hi = np.where(fp < n_neg, beta_dist.ppf(1 - alpha / 2, fp + 1,
                                                  np.maximum(n_neg - fp, 1)), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.maximum(tpr_lo - delta, 0.0) / fpr_hi)
        b = np.log(np.maximum(1.0 - fpr_hi - delta, 0.0) / (1.0 - tpr_lo))
    score = np.nan_to_num(np.maximum(a, b), nan=-np.inf, neginf=-np.inf)
    return float(t[int(np.argmax(score))])


def _halves(a: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(len(a))
    half = len(a) // 2
    return a[order[:half]], a[order[half:]]


# ------------------------------------------------------------------ group privacy
def group_distance(k: int, replaced: bool) -> int:
    """How many add/remove-one steps separate a data set from its poisoned version:
    ``k`` inserted records are k steps away, ``k`` replaced records 2k (remove, add)."""
    from ..validation import check_int

    k = check_int("k", k, 0)
    return 2 * k if replaced else k


def group_privacy_bound(p: float, epsilon: float, delta: float, k: int, *,
                        replaced: bool = True) -> float:
    """Upper bound on an event's probability once ``k`` records are poisoned.

    A mechanism that is (epsilon, delta)-DP for add/remove-one neighbours is
    ``(k' epsilon, k' e^{(k'-1) epsilon} delta)``-DP for data sets ``k'`` steps apart
    (group privacy), with ``k' = k`` for inserted and ``2k`` for replaced records
    (:func:`group_distance`). An event of probability ``p`` on the clean data (e.g.
    "the model sends this triggered input to the target class") then has probability
    at most ``min(1, e^{k' epsilon} p + k' e^{(k'-1) epsilon} delta)`` on the poisoned
    data. By linearity and the concavity of this bound in ``p``, it also bounds the
    expected attack success rate given the clean model's expected rate ``p``.
    The bound is vacuous (1) once ``k' epsilon`` is large: a 10% poison rate makes
    ``k'`` hundreds, and then only ``epsilon`` far below 1 keeps it informative.

    Args:
        p: the event's probability on the clean data, in [0, 1].
        epsilon: >= 0 (``math.inf`` gives 1). delta: in [0, 1].
        k: poisoned records (>= 0); ``replaced``: True for replaced records (BadNets,
            label flips, clean-label perturbations), False for inserted ones.

    Raises:
        TypeError / ValueError: arguments out of range.
    """
    from ..validation import check_in_range

    p = check_in_range("p", p, 0.0, 1.0)
    if not (isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool)
            and epsilon == math.inf):
        epsilon = check_in_range("epsilon", epsilon, 0.0, math.inf, high_open=True)
    delta = check_in_range("delta", delta, 0.0, 1.0)
    kk = group_distance(k, replaced)
    if kk == 0:
        return p
    if epsilon == math.inf:
        return 1.0
    # In logs first: e^{k' eps} overflows long before the bound stops being 1.
    log_terms = [kk * epsilon + math.log(p) if p > 0 else -math.inf,
                 math.log(kk) + (kk - 1) * epsilon + math.log(delta) if delta > 0 else -math.inf]
    if max(log_terms) >= 0.0:
        return 1.0
    return min(1.0, sum(math.exp(t) for t in log_terms))
