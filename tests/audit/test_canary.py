"""One-run canary audit (Steinke, Nasr, Jagielski 2023): the theorem's numbers, and
detection of a broken DP-SGD run through the real PrivacyEngine (fixed seeds)."""

import math

import pytest
import torch

from modelsec_fast.accountants import get_noise_multiplier
from modelsec_fast.audit.canary import (canary_audit_dp_sgd, one_run_epsilon_lower_bound,
                                        one_run_p_value)
from modelsec_fast.data import load_dataset

# Sizes of the audited run: small enough for seconds, large enough to detect.
M, R, Q, STEPS, DELTA = 400, 100, 0.1, 100, 1e-5


@pytest.mark.parametrize("r, expected", [(100, 3.49), (1000, 5.81), (10000, 8.11)])
def test_all_correct_bound_matches_the_paper(r, expected):
    # The figures for r all-correct guesses, beta = 0.05, delta = 0.
    assert one_run_epsilon_lower_bound(2 * r, r, r, delta=0.0) == pytest.approx(expected, abs=0.01)


def test_pure_dp_p_value_is_the_binomial_tail():
    # delta = 0: P[Binomial(r, e^eps/(1+e^eps)) >= v]; r = 3, v = 3 -> p^3.
    p = math.exp(1.0) / (1 + math.exp(1.0))
    assert one_run_p_value(10, 3, 3, 1.0, 0.0) == pytest.approx(p ** 3, rel=1e-12)


def test_bound_monotone_in_correct_guesses_and_delta():
    bounds = [one_run_epsilon_lower_bound(1000, 200, v, 1e-5) for v in (110, 150, 190, 200)]
    assert bounds == sorted(bounds) and bounds[0] < bounds[-1]
    assert one_run_epsilon_lower_bound(1000, 200, 200, 1e-3) < \
        one_run_epsilon_lower_bound(1000, 200, 200, 0.0)
    assert one_run_epsilon_lower_bound(1000, 200, 100, 1e-5) == 0.0  # chance level


def test_bound_rejects_bad_arguments():
    with pytest.raises(ValueError):
        one_run_p_value(10, 20, 5, 1.0, 0.0)  # r > m
    with pytest.raises(ValueError):
        one_run_epsilon_lower_bound(10, 5, 5, 0.0, beta=0.0)
    with pytest.raises(ValueError):
        canary_audit_dp_sgd(x=torch.zeros(4, 1, 8, 8), y=torch.zeros(4, dtype=torch.long),
                            num_classes=10, noise_multiplier=1.0, r=3)


@pytest.fixture(scope="module")
def audit_setup():
    ds = load_dataset("digits", train_size=200, seed=0)
    sigma = get_noise_multiplier(target_epsilon=2.0, target_delta=DELTA, sample_rate=Q,
                                 steps=STEPS)
    return ds, sigma


def _audit(audit_setup, *, backend="engine", fault=None, seed=0):
    ds, sigma = audit_setup
    print(f"canary audit seed={seed} backend={backend} fault={fault}")
    return canary_audit_dp_sgd(x=ds.x_train, y=ds.y_train, num_classes=ds.num_classes,
                               noise_multiplier=sigma, sample_rate=Q, steps=STEPS, delta=DELTA,
                               m=M, r=R, model="mlp", model_options={"hidden": (32,)},
                               backend=backend, fault=fault, seed=seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_honest_engine_run_stays_below_claimed_epsilon(audit_setup, seed):
    res = _audit(audit_setup, seed=seed)
    assert res.claimed_epsilon <= 2.0 + 1e-6
    assert (res.m, res.r, res.beta) == (M, R, 0.05)
    assert res.epsilon_lower_bound < res.claimed_epsilon, res.summary()
    assert not res.detected


@pytest.mark.parametrize("fault", ["no_noise", "no_clipping"])
def test_broken_engine_run_is_detected(audit_setup, fault):
    res = _audit(audit_setup, fault=fault)
    assert res.epsilon_lower_bound > res.claimed_epsilon, res.summary()
    assert res.detected and res.to_dict()["detected_violation"]


@pytest.mark.parametrize("fault", [None, "no_noise"])
def test_reference_backend_agrees(audit_setup, fault):
    """The torch.func + ops._clip_and_noise cross-check reaches the same verdicts."""
    res = _audit(audit_setup, backend="reference", fault=fault)
    assert res.detected == (fault is not None), res.summary()
