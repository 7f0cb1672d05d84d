"""Functionally equivalent extraction of one-hidden-layer ReLU networks."""

import pytest
import torch
from torch import nn

from modelsec_fast.stealing import (FunctionallyEquivalentExtraction, QueryBudgetExceeded,
                                    Victim)


def _network(seed, d=20, h=16, k=5, activation=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, h), activation(), nn.Linear(h, k)).double()


@pytest.mark.parametrize("output", ["logits", "probabilities"])
def test_extraction_is_exact_on_10000_random_inputs(output):
    net = _network(0)
    victim = Victim.from_model(net, output=output, budget=50_000)
    result = FunctionallyEquivalentExtraction(victim, input_shape=(20,), seed=0).extract()
    x = torch.randn(10_000, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        agree = (result.model(x).argmax(1) == net(x).argmax(1)).double().mean()
    assert float(agree) == 1.0
    assert result.units_found == 16 and not result.has_skip and result.max_error < 1e-6
    assert result.queries_used == victim.queries_used <= victim.budget


def test_the_weights_are_recovered_up_to_permutation_and_scale():
    net = _network(3)
    victim = Victim.from_model(net, output="logits", budget=50_000)
    result = FunctionallyEquivalentExtraction(victim, input_shape=(20,), seed=3).extract()
    w1, b1 = net[1].weight.detach(), net[1].bias.detach()
    scale = w1.norm(dim=1)
    cos = result.first_weight @ (w1 / scale[:, None]).T          # (found, true)
    match = cos.argmax(0)
    assert sorted(match.tolist()) == list(range(16))              # a permutation
    torch.testing.assert_close(cos.amax(0), torch.ones(16, dtype=torch.float64),
                               rtol=0, atol=1e-9)                 # signs included
    torch.testing.assert_close(result.first_bias[match], b1 / scale, rtol=1e-6, atol=1e-8)
    # The output layer absorbs the scale: W2[:, j] * |w_j| is recovered.
    torch.testing.assert_close(result.second_weight[:, match],
                               net[3].weight.detach() * scale[None, :], rtol=1e-6, atol=1e-8)


def test_a_box_domain_recovers_a_digits_sized_network():
    net = _network(1, d=64, h=32, k=10)
    victim = Victim.from_model(net, output="probabilities", budget=60_000)
    result = FunctionallyEquivalentExtraction(victim, input_shape=(1, 8, 8), domain=(0.0, 1.0),
                                              seed=1).extract()
    x = torch.rand(10_000, 1, 8, 8, generator=torch.Generator().manual_seed(2),
                   dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(result.model(x).argmax(1), net(x).argmax(1))
    assert result.units_found == 32


def test_the_budget_stops_the_extraction_exactly_at_its_end():
    victim = Victim.from_model(_network(0), output="logits", budget=2_000)
    with pytest.raises(QueryBudgetExceeded):
        FunctionallyEquivalentExtraction(victim, input_shape=(20,)).extract()
    assert victim.queries_used <= 2_000


def test_it_refuses_label_victims_and_reports_a_network_it_cannot_explain():
    with pytest.raises(ValueError, match="needs a victim answering 'logits' or 'probabilities'"):
        FunctionallyEquivalentExtraction(
            Victim.from_model(_network(0), output="labels", budget=10), input_shape=(20,))
    victim = Victim.from_model(_network(0, activation=nn.Tanh), output="logits", budget=10**6)
    with pytest.raises(RuntimeError, match="not piecewise linear"):
        FunctionallyEquivalentExtraction(victim, input_shape=(20,)).extract()
    assert victim.queries_used < 20_000  # stopped on the first line
