"""Clopper-Pearson epsilon lower bounds: closed forms, validity, refusal of a split design."""

import math

import numpy as np
import pytest

from modelsec_fast.audit.bounds import clopper_pearson, empirical_epsilon, epsilon_from_counts


def test_clopper_pearson_closed_forms_at_the_edges():
    n, alpha = 40, 0.05
    lo, hi = clopper_pearson(0, n, alpha)
    assert lo == 0.0 and hi == pytest.approx(1 - (alpha / 2) ** (1 / n), rel=1e-10)
    lo, hi = clopper_pearson(n, n, alpha)
    assert hi == 1.0 and lo == pytest.approx((alpha / 2) ** (1 / n), rel=1e-10)


def test_perfect_attack_bound_in_closed_form():
    # tp = n, fp = 0: TPR_lo = (a/2)^(1/n), FPR_hi = 1 - (a/2)^(1/n).
    n, alpha, delta = 200, 0.05, 1e-5
    t = (alpha / 2) ** (1 / n)
    expected = math.log((t - delta) / (1 - t))
    assert epsilon_from_counts(n, 0, 0, n, delta=delta, alpha=alpha) == pytest.approx(expected)


def test_chance_attack_gives_zero():
    assert epsilon_from_counts(50, 50, 50, 50, delta=1e-5) == 0.0


def test_split_design_is_refused():
    with pytest.raises(ValueError, match="no differential-privacy bound"):
        empirical_epsilon([1.0, 2.0], [0.0, 1.0], delta=1e-5, design="split")


def test_bound_is_valid_for_randomised_response():
    """eps-DP randomised response: the guess is right with prob e^eps/(1+e^eps).
    The bound (95%) must stay below the true eps in at least 90% of 40 seeded trials."""
    eps_true, n = 1.0, 2000
    p = math.exp(eps_true) / (1 + math.exp(eps_true))
    below = 0
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        member_scores = (rng.random(n) < p).astype(float)        # 1 = "member" answer
        nonmember_scores = (rng.random(n) >= p).astype(float)
        b = empirical_epsilon(member_scores, nonmember_scores, delta=0.0, design="coin_flip",
                              seed=seed)
        below += b.epsilon_lower_bound <= eps_true
        assert b.epsilon_lower_bound > 0.5  # and the bound is not vacuous
    assert below >= 36


def test_bound_grows_with_separation():
    rng = np.random.default_rng(11)
    weak = empirical_epsilon(rng.normal(0.5, 1, 2000), rng.normal(0, 1, 2000), delta=1e-5,
                             design="coin_flip").epsilon_lower_bound
    strong = empirical_epsilon(rng.normal(4, 1, 2000), rng.normal(0, 1, 2000), delta=1e-5,
                               design="coin_flip").epsilon_lower_bound
    assert strong > weak + 1.0
