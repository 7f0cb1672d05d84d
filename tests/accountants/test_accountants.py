"""Accountants: known answers, parity with Opacus / dp-accounting, history, state."""

import math
import time
import warnings

import numpy as np
import pytest

from modelsec_fast.accountants import (
    InfiniteEpsilonError,
    PLDAccountant,
    RDPAccountant,
    create_accountant,
    get_noise_multiplier,
)

DELTA = 1e-5
MNIST_Q = 256 / 60000
MNIST_STEPS = 14062  # 60 epochs


def _with_history(acc, history):
    acc.history = list(history)
    return acc


def _random_history(rng, segments):
    return [
        (float(rng.uniform(0.6, 3.0)), float(rng.uniform(1e-3, 0.3)), int(rng.integers(1, 400)))
        for _ in range(segments)
    ]


# ---------------------------------------------------------------- known answers

def test_rdp_known_answer_opacus_test_value():
    acc = _with_history(RDPAccountant(), [(1.5, 0.04, 2250)])
    assert acc.get_epsilon(DELTA) == pytest.approx(7.32911117143, abs=1e-9)


def test_rdp_known_answer_mnist_60_epochs():
    acc = _with_history(RDPAccountant(), [(1.1, MNIST_Q, MNIST_STEPS)])
    assert acc.get_epsilon(DELTA) == pytest.approx(2.5966, abs=5e-5)


def test_pld_known_answer_mnist_60_epochs():
    acc = _with_history(PLDAccountant(), [(1.1, MNIST_Q, MNIST_STEPS)])
    assert acc.get_epsilon(DELTA) == pytest.approx(2.3817, abs=0.01)


def test_pld_below_rdp_on_the_same_history():
    history = [(1.1, MNIST_Q, MNIST_STEPS)]
    assert _with_history(PLDAccountant(), history).get_epsilon(DELTA) < _with_history(
        RDPAccountant(), history).get_epsilon(DELTA)


# ---------------------------------------------------------------- parity with the anchors

def test_rdp_equals_opacus_on_random_multi_segment_histories():
    from opacus.accountants import RDPAccountant as OpacusRDP

    seed = 1234
    rng = np.random.default_rng(seed)
    for _ in range(4):
        history = _random_history(rng, int(rng.integers(1, 5)))
        ours = _with_history(RDPAccountant(), history)
        theirs = _with_history(OpacusRDP(), history)
        delta = float(10 ** rng.uniform(-8, -3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            expected = theirs.get_epsilon(delta)
            got = ours.get_epsilon(delta)
        assert got == pytest.approx(expected, rel=1e-10), (seed, history, delta)


def test_pld_equals_dp_accounting_composed_events():
    import dp_accounting
    from dp_accounting.pld import PLDAccountant as GooglePLD

    seed = 99
    rng = np.random.default_rng(seed)
    history = _random_history(rng, 3)
    google = GooglePLD(value_discretization_interval=1e-4)
    for sigma, q, steps in history:
        google.compose(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
    ours = _with_history(PLDAccountant(), history)
    assert ours.get_epsilon(DELTA) == pytest.approx(google.get_epsilon(DELTA), rel=1e-6), history


# ---------------------------------------------------------------- history and state

@pytest.mark.parametrize("mechanism", ["rdp", "pld"])
def test_step_merges_equal_consecutive_segments_and_len_counts_steps(mechanism):
    acc = create_accountant(mechanism)
    for sigma, q in [(1.0, 0.01)] * 3 + [(1.2, 0.01)] * 2 + [(1.0, 0.01)]:
        acc.step(noise_multiplier=sigma, sample_rate=q)
    assert acc.history == [(1.0, 0.01, 3), (1.2, 0.01, 2), (1.0, 0.01, 1)]
    assert len(acc) == 6


@pytest.mark.parametrize("mechanism", ["rdp", "pld"])
def test_empty_history_spends_nothing(mechanism):
    acc = create_accountant(mechanism)
    assert len(acc) == 0
    assert acc.get_epsilon(DELTA) == 0.0


@pytest.mark.parametrize("mechanism", ["rdp", "pld"])
def test_state_dict_round_trip_gives_the_same_epsilon(mechanism):
    acc = create_accountant(mechanism)
    for sigma in (1.0, 1.3):
        for _ in range(7):
            acc.step(noise_multiplier=sigma, sample_rate=0.02)
    restored = create_accountant(mechanism)
    restored.load_state_dict(acc.state_dict())
    assert restored.history == acc.history
    assert restored.get_epsilon(DELTA) == acc.get_epsilon(DELTA)
    # the state dict is a copy: stepping the original leaves it unchanged
    state = acc.state_dict()
    acc.step(noise_multiplier=1.3, sample_rate=0.02)
    assert state["history"][-1][2] == 7


def test_pld_loads_an_opacus_prv_history():
    from opacus.accountants import PRVAccountant as OpacusPRV

    theirs = OpacusPRV()
    for _ in range(5):
        theirs.step(noise_multiplier=1.2, sample_rate=0.05)
    ours = PLDAccountant()
    ours.load_state_dict(theirs.state_dict())
    assert ours.history == [(1.2, 0.05, 5)] and len(ours) == 5
    with pytest.raises(ValueError, match="mechanism"):
        RDPAccountant().load_state_dict(theirs.state_dict())


def test_load_state_dict_refuses_another_mechanism_and_malformed_history():
    rdp = RDPAccountant()
    rdp.step(noise_multiplier=1.0, sample_rate=0.1)
    with pytest.raises(ValueError, match="mechanism"):
        PLDAccountant().load_state_dict(rdp.state_dict())
    with pytest.raises(ValueError, match="empty"):
        RDPAccountant().load_state_dict({})
    with pytest.raises(ValueError, match="sample_rate"):
        RDPAccountant().load_state_dict({"history": [(1.0, 1.5, 3)], "mechanism": "rdp"})
    with pytest.raises(ValueError, match="noise_multiplier, sample_rate, steps"):
        RDPAccountant().load_state_dict({"history": [(1.0, 0.5)], "mechanism": "rdp"})


def test_prv_maps_to_pld_and_unknown_names_are_refused():
    from modelsec_fast.accountants import PRVAccountant

    acc = create_accountant("prv")
    assert isinstance(acc, PLDAccountant) and PRVAccountant is PLDAccountant
    assert acc.mechanism() == "pld"
    with pytest.raises(ValueError, match="unknown accounting mechanism"):
        create_accountant("gdp-typo")


def test_optimizer_hook_reads_the_current_noise_multiplier():
    acc = RDPAccountant()
    hook = acc.get_optimizer_hook_fn(sample_rate=0.05)

    class FakeOptimizer:
        noise_multiplier = 1.0

    opt = FakeOptimizer()
    hook(opt)
    opt.noise_multiplier = 2.0
    hook(opt)
    hook(opt)
    assert acc.history == [(1.0, 0.05, 1), (2.0, 0.05, 2)]


# ---------------------------------------------------------------- incremental PLD

def test_pld_incremental_composition_builds_each_segment_once_and_matches_scratch(monkeypatch):
    rng = np.random.default_rng(7)
    sigmas = rng.uniform(0.8, 2.0, size=5)
    q, steps_per_epoch = 0.02, 50
    acc = PLDAccountant()
    built = []
    original = PLDAccountant._segment_pld

    def counting(self, segment):
        built.append(segment)
        return original(self, segment)

    monkeypatch.setattr(PLDAccountant, "_segment_pld", counting)
    for epoch, sigma in enumerate(sigmas):
        for _ in range(steps_per_epoch):
            acc.step(noise_multiplier=float(sigma), sample_rate=q)
        eps = acc.get_epsilon(DELTA)
        # the previous epoch is composed onto the cache once, the open one built once
        assert len(built) <= 2 * (epoch + 1)
    monkeypatch.setattr(PLDAccountant, "_segment_pld", original)
    scratch = _with_history(PLDAccountant(), acc.history).get_epsilon(DELTA)
    assert eps == pytest.approx(scratch, rel=1e-12)
    # repeating the query costs nothing new
    before = len(built)
    acc.get_epsilon(DELTA)
    assert len(built) == before


def test_pld_cache_is_invalidated_when_history_is_rewritten():
    acc = PLDAccountant()
    acc.history = [(1.0, 0.02, 100), (1.5, 0.02, 100)]
    first = acc.get_epsilon(DELTA)
    acc.history = [(3.0, 0.02, 100), (1.5, 0.02, 100)]
    second = acc.get_epsilon(DELTA)
    assert second < first
    assert second == pytest.approx(
        _with_history(PLDAccountant(), acc.history).get_epsilon(DELTA), rel=1e-12)


@pytest.mark.slow
def test_pld_100_epoch_history_with_sigma_changing_every_epoch_is_under_a_second_per_epoch():
    q = 256 / 60000
    steps_per_epoch = int(1 / q)
    acc = PLDAccountant()
    slowest = 0.0
    for epoch in range(100):
        for _ in range(steps_per_epoch):
            acc.step(noise_multiplier=1.0 + 0.01 * epoch, sample_rate=q)
        # CPU time of this process: the shared machine's load must not fail the test
        start = time.process_time()
        acc.get_epsilon(DELTA)
        slowest = max(slowest, time.process_time() - start)
    assert slowest < 1.0, slowest


# ---------------------------------------------------------------- get_noise_multiplier

@pytest.mark.parametrize("mechanism", ["rdp", "pld"])
def test_get_noise_multiplier_meets_budget_and_is_within_one_percent_of_smallest(mechanism):
    target, q, steps = 1.5, 0.01, 300
    sigma = get_noise_multiplier(
        target_epsilon=target, target_delta=DELTA, sample_rate=q, steps=steps, accountant=mechanism)

    def eps(s):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return _with_history(create_accountant(mechanism), [(s, q, steps)]).get_epsilon(DELTA)

    assert eps(sigma) <= target
    assert eps(sigma / 1.01) > target


def test_get_noise_multiplier_rdp_on_random_budgets():
    seed = 31
    rng = np.random.default_rng(seed)
    for _ in range(8):
        target = float(rng.uniform(0.3, 10.0))
        q = float(10 ** rng.uniform(-3, -0.5))
        steps = int(rng.integers(10, 3000))
        sigma = get_noise_multiplier(target_epsilon=target, target_delta=DELTA, sample_rate=q,
                                     steps=steps, accountant="rdp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            at = _with_history(RDPAccountant(), [(sigma, q, steps)]).get_epsilon(DELTA)
            below = _with_history(RDPAccountant(), [(sigma / 1.01, q, steps)]).get_epsilon(DELTA)
        assert at <= target < below, (seed, target, q, steps, sigma)


def test_get_noise_multiplier_epochs_use_opacus_step_count():
    by_epochs = get_noise_multiplier(
        target_epsilon=3.0, target_delta=DELTA, sample_rate=0.05, epochs=2, accountant="rdp")
    by_steps = get_noise_multiplier(
        target_epsilon=3.0, target_delta=DELTA, sample_rate=0.05, steps=40, accountant="rdp")
    assert by_epochs == by_steps


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("target_epsilon", [0.0, -1.0, math.inf, math.nan])
def test_get_noise_multiplier_refuses_non_positive_or_non_finite_epsilon(target_epsilon):
    with pytest.raises(ValueError, match="target_epsilon|NaN"):
        get_noise_multiplier(target_epsilon=target_epsilon, target_delta=DELTA,
                             sample_rate=0.01, steps=10, accountant="rdp")


@pytest.mark.parametrize("delta", [0.0, -1e-5, 1.0, 2.0])
@pytest.mark.parametrize("mechanism", ["rdp", "pld"])
def test_delta_outside_open_unit_interval_is_refused(delta, mechanism):
    acc = create_accountant(mechanism)
    acc.step(noise_multiplier=1.0, sample_rate=0.1)
    with pytest.raises(ValueError, match="delta"):
        acc.get_epsilon(delta)
    with pytest.raises(ValueError, match="delta"):
        get_noise_multiplier(target_epsilon=1.0, target_delta=delta, sample_rate=0.01,
                             steps=10, accountant=mechanism)


def test_delta_at_least_one_over_n_warns():
    with pytest.warns(UserWarning, match="1/N"):
        get_noise_multiplier(target_epsilon=2.0, target_delta=1e-3, sample_rate=0.01,
                             steps=10, accountant="rdp", num_samples=1000)


@pytest.mark.parametrize("sample_rate", [0.0, -0.1, 1.0001, math.nan])
@pytest.mark.parametrize("mechanism", ["rdp", "pld"])
def test_sample_rate_outside_zero_one_is_refused(sample_rate, mechanism):
    with pytest.raises(ValueError, match="sample_rate"):
        create_accountant(mechanism).step(noise_multiplier=1.0, sample_rate=sample_rate)
    with pytest.raises(ValueError, match="sample_rate"):
        get_noise_multiplier(target_epsilon=1.0, target_delta=DELTA, sample_rate=sample_rate,
                             steps=10, accountant=mechanism)


@pytest.mark.parametrize("mechanism", ["rdp", "pld"])
def test_negative_or_non_numeric_noise_multiplier_is_refused(mechanism):
    acc = create_accountant(mechanism)
    with pytest.raises(ValueError, match="noise_multiplier"):
        acc.step(noise_multiplier=-0.5, sample_rate=0.1)
    with pytest.raises(TypeError, match="noise_multiplier"):
        acc.step(noise_multiplier="1.0", sample_rate=0.1)
    assert acc.history == []


@pytest.mark.parametrize("mechanism", ["rdp", "pld"])
def test_zero_noise_gives_a_clear_infinite_epsilon_error(mechanism):
    acc = create_accountant(mechanism)
    acc.step(noise_multiplier=1.0, sample_rate=0.1)
    acc.step(noise_multiplier=0.0, sample_rate=0.1)
    with pytest.raises(InfiniteEpsilonError, match="noise_multiplier=0"):
        acc.get_epsilon(DELTA)


def test_pld_sigma_too_small_to_discretise_is_an_error_not_a_hang():
    acc = PLDAccountant()
    acc.step(noise_multiplier=0.01, sample_rate=0.5)
    with pytest.raises(InfiniteEpsilonError, match="too small|below"):
        acc.get_epsilon(DELTA)


def test_budget_needing_huge_noise_is_refused():
    with pytest.raises(ValueError, match="noise multiplier above"):
        get_noise_multiplier(target_epsilon=1e-7, target_delta=DELTA, sample_rate=1.0,
                             steps=10_000, accountant="rdp")


def test_get_noise_multiplier_needs_exactly_one_of_epochs_and_steps():
    with pytest.raises(ValueError, match="exactly one"):
        get_noise_multiplier(target_epsilon=1.0, target_delta=DELTA, sample_rate=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        get_noise_multiplier(target_epsilon=1.0, target_delta=DELTA, sample_rate=0.1,
                             epochs=1, steps=10)
