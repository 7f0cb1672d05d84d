"""Jacobian-based dataset augmentation: the set doubles, the budget holds."""

import pytest
import torch

from modelsec_fast.stealing import HeldOut, JacobianAugmentation, ThiefTraining, Victim
from tests.stealing.stealing_helpers import mlp


def _seeds(ds, per_class):
    return torch.cat([ds.x_test[ds.y_test == c][:per_class] for c in range(10)])


def test_the_set_doubles_each_round_until_the_budget_and_never_past_it(victim_setup):
    model, _, _, ds = victim_setup
    victim = Victim.from_model(model, output="labels", budget=1000)
    attack = JacobianAugmentation(victim, mlp(1), rounds=6, step=0.1,
                                  training=ThiefTraining(epochs=5, min_steps=50))
    result = attack.extract(_seeds(ds, 2), budget=250)
    assert [p.queries for p in result.curve] == [20, 40, 80, 160, 250]
    assert result.queries_used == victim.queries_used == 250


def test_the_substitute_learns_the_victim_from_ten_seeds_per_class(victim_setup):
    model, _, _, ds = victim_setup
    held = HeldOut.from_model(model, ds.x_test, ds.y_test)
    victim = Victim.from_model(model, output="labels", budget=800)
    result = JacobianAugmentation(victim, mlp(1), rounds=4).extract(_seeds(ds, 10),
                                                                   held_out=held)
    assert result.curve[-1].queries == 800
    assert result.fidelity > 0.8


def test_bad_seeds_and_budgets_are_refused(victim_setup):
    model, _, _, ds = victim_setup
    victim = Victim.from_model(model, budget=100)
    attack = JacobianAugmentation(victim, mlp(1))
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\] \(the seed inputs\)"):
        attack.extract(_seeds(ds, 1) - 1)
    with pytest.raises(ValueError, match="budget 200 exceeds the victim's remaining queries"):
        attack.extract(_seeds(ds, 1), budget=200)
    with pytest.raises(ValueError, match="budget must be >= 1, got 0"):
        attack.extract(_seeds(ds, 1), budget=0)
    assert victim.queries_used == 0
