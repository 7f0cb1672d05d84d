"""DP-SGD as a defence: the group-privacy bound against hand-computed values, and the
ASR-against-epsilon sweep against the bound."""

from __future__ import annotations

import math

import pytest
import torch

from modelsec_fast.audit.bounds import group_distance, group_privacy_bound
from modelsec_fast.models import build_model
from modelsec_fast.poisoning import asr_epsilon_sweep, train_private
from modelsec_fast.poisoning.dp_defence import mean_interval


def test_group_privacy_bound_by_hand():
    # k = 1 replaced record: k' = 2 -> e^{2 eps} p + 2 e^{eps} delta.
    assert group_privacy_bound(0.1, 1.0, 1e-5, 1) == pytest.approx(
        math.exp(2) * 0.1 + 2 * math.exp(1) * 1e-5, rel=1e-12)
    # k = 1 inserted record: k' = 1 -> e^{eps} p + delta.
    assert group_privacy_bound(0.1, 1.0, 1e-5, 1, replaced=False) == pytest.approx(
        math.exp(1) * 0.1 + 1e-5, rel=1e-12)
    # k = 3 inserted, eps 0.2, delta 1e-3: e^{0.6} * 0.05 + 3 e^{0.4} 1e-3.
    assert group_privacy_bound(0.05, 0.2, 1e-3, 3, replaced=False) == pytest.approx(
        math.exp(0.6) * 0.05 + 3 * math.exp(0.4) * 1e-3, rel=1e-12)
    # k = 2 replaced, eps 0.1: k' = 4 -> e^{0.4} p + 4 e^{0.3} delta.
    assert group_privacy_bound(0.01, 0.1, 1e-6, 2) == pytest.approx(
        math.exp(0.4) * 0.01 + 4 * math.exp(0.3) * 1e-6, rel=1e-12)


def test_group_privacy_bound_edges():
    assert group_privacy_bound(0.3, 5.0, 1e-5, 0) == 0.3  # no poison, no change
    assert group_privacy_bound(0.0, 0.5, 0.0, 4) == 0.0
    assert group_privacy_bound(0.2, 0.0, 0.0, 7) == pytest.approx(0.2)  # eps 0: no change
    assert group_privacy_bound(0.01, 8.0, 1e-5, 10) == 1.0  # vacuous
    assert group_privacy_bound(0.5, 1000.0, 1e-5, 100) == 1.0  # no overflow
    assert group_privacy_bound(0.5, math.inf, 1e-5, 1) == 1.0
    assert group_distance(5, True) == 10 and group_distance(5, False) == 5


@pytest.mark.parametrize("kwargs, match", [
    (dict(p=1.5, epsilon=1, delta=0, k=1), "p must lie in"),
    (dict(p=0.1, epsilon=-1, delta=0, k=1), "epsilon must lie in"),
    (dict(p=0.1, epsilon=1, delta=2, k=1), "delta must lie in"),
    (dict(p=0.1, epsilon=1, delta=0, k=-1), "k must be >= 0"),
])
def test_group_privacy_bound_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_privacy_bound(**kwargs)


def test_mean_interval_is_the_student_t_interval():
    mean, low, high = mean_interval([0.1, 0.2, 0.3, 0.4, 0.5], 0.95)
    half = 2.7764451051977987 * math.sqrt(0.025) / math.sqrt(5)
    assert mean == pytest.approx(0.3) and low == pytest.approx(0.3 - half)
    assert high == pytest.approx(0.3 + half)
    assert mean_interval([0.0, 0.0, 0.0], 0.95) == (0.0, 0.0, 0.0)


def _mlp(seed):
    torch.manual_seed(seed)
    return build_model("mlp", (1, 8, 8), 10, hidden=(64,))


def test_the_measured_asr_never_exceeds_the_bound(setup):
    """Issue 14: in the sweep, the 95% lower confidence bound of the measured ASR never
    exceeds the bound computed from the clean model's upper confidence bound."""
    sweep = asr_epsilon_sweep(_mlp, setup.x_train, setup.y_train, setup.x_test, setup.y_test,
                              ks=(1, 10), epsilons=(0.5, 4.0, math.inf), seeds=5, epochs=5)
    for p in sweep.points:
        print(f"seed {setup.seed} k {p.k} eps {p.epsilon}: ASR {p.asr_mean:.3f} "
              f"[{p.asr_low:.3f}, {p.asr_high:.3f}] bound {p.bound:.3f} "
              f"(p_hi {p.clean_rate_high:.3f})")
        assert p.asr_low <= p.bound
        assert p.consistent
        assert len(p.asr_per_seed) == 5
        expected = group_privacy_bound(p.clean_rate_high, p.epsilon, 1e-5, p.k, replaced=True)
        assert p.bound == expected
    assert sweep.all_consistent
    by = {(p.k, p.epsilon): p for p in sweep.points}
    # The bound is informative for one poison at a small epsilon, vacuous without DP.
    assert not by[(1, 0.5)].vacuous and by[(1, math.inf)].vacuous
    assert by[(1, 0.5)].epsilon_spent <= 0.5 + 1e-6
    assert any("10% poison rate" in note and "vacuous" in note for note in sweep.notes)
    # The check has teeth: had a broken engine trained the non-private victims while
    # claiming epsilon 0.05, the k = 10 cell would break its bound.
    broken = by[(10, math.inf)]
    claimed = group_privacy_bound(by[(1, math.inf)].clean_rate_high, 0.05, 1e-5, 10)
    assert broken.asr_low > claimed, (broken.asr_low, claimed)
    series = sweep.series(10)
    assert series["epsilon"] == [0.5, 4.0] and len(series["bound"]) == 2
    doc = sweep.to_json()
    assert doc["epsilons"] == [0.5, 4.0, None] and doc["all_consistent"] is True


def test_train_private_spends_its_target(setup):
    model, spent = train_private(_mlp(0), setup.x_train[:300], setup.y_train[:300],
                                 target_epsilon=2.0, delta=1e-5, epochs=2, batch_size=64)
    assert spent <= 2.0 + 1e-6 and spent > 1.5
    assert not model.training and type(model).__name__ == "MLP"
    with pytest.raises(ValueError, match="exactly one of target_epsilon and noise_multiplier"):
        train_private(_mlp(0), setup.x_train, setup.y_train, delta=1e-5)
