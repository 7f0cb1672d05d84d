"""Copycat and KnockoffNets: budgets, the curve, adaptive sampling's numerics."""

import pytest
import torch
from torch import nn

from modelsec_fast.stealing import (Copycat, HeldOut, KnockoffNets, ThiefTraining, Victim)
from modelsec_fast.stealing.bandit import GradientBandit, RewardScaler, loss_reward
from tests.stealing.stealing_helpers import mlp

FAST = ThiefTraining(epochs=20, min_steps=100)


def _attack(kind, victim, seed=1):
    thief = mlp(seed)
    if kind == "copycat":
        return Copycat(victim, thief, training=FAST)
    return KnockoffNets(victim, thief, sampling=kind, training=FAST)


@pytest.mark.parametrize("kind", ["copycat", "random", "adaptive"])
def test_an_attack_spends_exactly_its_largest_budget_and_never_more(victim_setup, kind):
    model, pool, pool_y, ds = victim_setup
    victim = Victim.from_model(model, budget=300)
    calls = []
    victim.monitor = type("M", (), {"observe": lambda self, x, out: calls.append(len(x))})()
    extra = {"pool_labels": pool_y} if kind == "adaptive" else {}
    result = _attack(kind, victim).extract(pool, budgets=[120, 250], **extra)
    assert result.queries_used == victim.queries_used == sum(calls) == 250
    assert [p.queries for p in result.curve] == [120, 250]
    with pytest.raises(ValueError, match="budget 400 exceeds the victim's remaining queries"):
        _attack(kind, victim).extract(pool, budgets=[400], **extra)
    assert victim.queries_used == 250
    result = _attack(kind, victim).extract(pool, **extra)  # default: what is left
    assert result.queries_used == 50 and victim.remaining == 0


@pytest.mark.parametrize("budget", [0, -1])
def test_a_budget_below_one_is_refused_before_any_query(victim_setup, budget):
    model, pool, _, _ = victim_setup
    victim = Victim.from_model(model, budget=100)
    with pytest.raises(ValueError, match=f"budget must be >= 1, got {budget}"):
        _attack("random", victim).extract(pool, budgets=[budget])
    assert victim.queries_used == 0


def test_bad_pools_are_refused(victim_setup):
    model, pool, _, _ = victim_setup
    victim = Victim.from_model(model, budget=100)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\] \(the attacker's pool\)"):
        _attack("random", victim).extract(pool * 2, budgets=[10])
    with pytest.raises(ValueError, match="adaptive sampling needs pool_labels"):
        _attack("adaptive", victim).extract(pool, budgets=[10])
    with pytest.raises(ValueError, match="exceeds the pool of 5 inputs"):
        _attack("random", victim).extract(pool[:5], budgets=[10])
    assert victim.queries_used == 0


def test_knockoff_copies_the_victim_and_the_curve_rises(victim_setup):
    model, pool, _, ds = victim_setup
    held = HeldOut.from_model(model, ds.x_test, ds.y_test)
    victim = Victim.from_model(model, budget=674)
    result = KnockoffNets(victim, mlp(1)).extract(pool, budgets=[20, 674], held_out=held)
    small, large = result.curve
    # Seeds 0-5 of the victim's split (thief seed + 1) gave 0.50-0.76 and 0.96-0.98.
    assert large.fidelity > 0.9 and large.fidelity > small.fidelity + 0.1
    assert abs(large.accuracy - held.scores(model)[0]) < 0.05
    assert result.to_json()["curve"][1] == {"queries": 674, "accuracy": large.accuracy,
                                            "fidelity": large.fidelity}


def test_copycat_trains_on_top1_labels_whatever_the_victim_answers(victim_setup):
    model, pool, _, ds = victim_setup
    held = HeldOut.from_model(model, ds.x_test, ds.y_test)
    labels = Copycat(Victim.from_model(model, output="labels", budget=300), mlp(1),
                     training=FAST).extract(pool, held_out=held)
    probs = Copycat(Victim.from_model(model, budget=300), mlp(1),
                    training=FAST).extract(pool, held_out=held)
    assert labels.fidelity == probs.fidelity  # the same sampling order, the same labels
    for a, b in zip(labels.thief.parameters(), probs.thief.parameters()):
        assert torch.equal(a, b)


class HugeLogits(nn.Module):
    """``inner``'s logits pushed to +1e4 at its argmax and -1e4 elsewhere: the softmax
    rows are exact one-hots, and exp() of them overflows."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        z = self.inner(x)
        top = nn.functional.one_hot(z.argmax(1), z.shape[1]).bool()
        return torch.where(top, 1e4, -1e4) + (z - z.detach())  # keeps the thief's gradient


def test_adaptive_knockoff_with_logits_of_1e4_produces_no_nan(victim_setup):
    model, pool, pool_y, ds = victim_setup
    for output in ("logits", "probabilities"):
        victim = Victim.from_model(HugeLogits(model), output=output, budget=256)
        answers = victim.query(pool[:4])
        assert set(answers.unique().tolist()) == ({-1e4, 1e4} if output == "logits" else {0, 1})
        attack = KnockoffNets(victim, HugeLogits(mlp(1)), sampling="adaptive",
                              training=FAST, query_batch=16)
        result = attack.extract(pool, held_out=HeldOut.from_model(model, ds.x_test, ds.y_test),
                                pool_labels=pool_y)
        assert bool(torch.isfinite(attack.last_rewards).all())
        assert bool(torch.isfinite(attack.last_policy).all())
        assert abs(float(attack.last_policy.sum()) - 1) < 1e-9
        assert all(bool(torch.isfinite(p).all()) for p in result.thief.parameters())
        assert result.fidelity == result.fidelity  # not NaN


def test_the_rewards_stay_finite_where_exponentials_overflow():
    victim = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    thief_logits = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, 1e4]])
    # A reward through exp(logits) overflows: inf / inf.
    naive = torch.exp(thief_logits) / torch.exp(thief_logits).sum(1, keepdim=True)
    assert bool(torch.isnan(naive).any())
    reward = loss_reward(victim, thief_logits)
    assert bool(torch.isfinite(reward).all()) and float(reward[0]) == pytest.approx(2e4)
    scaled = RewardScaler(3)(torch.tensor([[1e30, 0.0, 1.0], [1e30, 0.0, 2.0]]))
    assert bool(torch.isfinite(scaled).all())
    bandit = GradientBandit(3, lr=1e3)
    for _ in range(50):
        bandit.update(torch.tensor([0, 1]), torch.tensor([1e6, -1e6]))
    assert bool(torch.isfinite(bandit.policy()).all())


def test_adaptive_sampling_favours_the_arm_that_pays():
    bandit = GradientBandit(3, lr=0.5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        arms = bandit.sample(8, generator)
        bandit.update(arms, (arms == 2).double())
    assert int(bandit.policy().argmax()) == 2 and float(bandit.policy()[2]) > 0.9
