"""Output post-processors against extraction: each keeps the victim's top-1, releases
valid rows and reports its utility cost."""

import pytest
import torch
from torch import nn

from modelsec_fast.defenses import (GaussianNoise, LabelOnly, PredictionPoisoning,
                                    ReverseSigmoid, Rounding, TopK, utility_cost)
from modelsec_fast.defenses.output_perturbation import keep_argmax
from modelsec_fast.stealing import Victim


def _defences():
    torch.manual_seed(0)
    surrogate = nn.Linear(6, 10)
    return [TopK(1), TopK(3, renormalize=True), Rounding(0), Rounding(1), Rounding(2),
            ReverseSigmoid(), ReverseSigmoid(beta=0.7, gamma=0.4), GaussianNoise(0.3, seed=1),
            LabelOnly(), PredictionPoisoning(0.5), PredictionPoisoning(2.0, surrogate)]


def _random_probabilities(seed: int) -> torch.Tensor:
    """Softmax rows of random logits at scales from 1e-3 to 1e4, some rows with ties."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([1e-3, 0.1, 1.0, 5.0, 30.0, 1e4]).repeat_interleave(400)
    logits = torch.randn(len(scales), 10, generator=g) * scales[:, None]
    logits[::7, 3] = logits[::7, 5]  # exact ties between two classes
    logits[::11] = logits[::11].round()  # many ties at small scales
    return torch.softmax(logits.double(), 1).float()


@pytest.mark.parametrize("defence", _defences(),
                         ids=lambda d: "-".join(str(v) for v in d.to_json().values()))
def test_every_post_processor_keeps_the_argmax_of_every_row(defence, random_seed):
    probs = _random_probabilities(random_seed)
    x = torch.rand(len(probs), 6, generator=torch.Generator().manual_seed(random_seed))
    released = defence(probs, x)
    assert torch.equal(released.argmax(1), probs.argmax(1))
    assert released.shape == probs.shape and bool(torch.isfinite(released).all())
    assert float(released.min()) >= 0 and float(released.max()) <= 1 + 1e-6


def test_keep_argmax_swaps_values_and_breaks_ties_upwards():
    original = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.5, 0.0]])
    released = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]])
    fixed = keep_argmax(original, released)
    assert fixed[0].tolist() == pytest.approx([0.2, 0.7, 0.1])
    assert int(fixed[1].argmax()) == 0 and float(fixed[1, 0]) > 0.4


@pytest.mark.parametrize("defence", [Rounding(1), Rounding(2), ReverseSigmoid(),
                                     GaussianNoise(0.2), LabelOnly(), PredictionPoisoning(1.0),
                                     TopK(2, renormalize=True)], ids=lambda d: d.name)
def test_a_defended_victim_still_promises_probabilities(defence):
    torch.manual_seed(0)
    model = nn.Linear(6, 10)
    victim = Victim.from_model(model, budget=500, postprocess=defence)
    rows = victim.query(torch.randn(500, 6) * 3)
    assert torch.allclose(rows.double().sum(1), torch.ones(500, dtype=torch.float64), atol=1e-6)


def test_rounding_puts_rows_on_the_grid_and_top_k_keeps_k_entries():
    probs = _random_probabilities(3)
    rounded = Rounding(2)(probs)
    assert torch.allclose(rounded.double() * 100, (rounded.double() * 100).round(), atol=1e-4)
    top = TopK(3)(probs)
    assert bool(((top > 0).sum(1) <= 3).all()) and bool((top.sum(1) <= 1 + 1e-6).all())


def test_prediction_poisoning_stays_within_its_l1_budget_and_moves_the_rows():
    probs = _random_probabilities(4)
    for eps in (0.1, 0.5):
        released = PredictionPoisoning(eps)(probs)
        l1 = (released.double() - probs.double()).abs().sum(1)
        assert float(l1.max()) <= eps + 1e-5
        assert float(l1.mean()) > 0.3 * eps


def test_the_utility_cost_is_the_l1_change_with_the_top1_kept():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    cost = utility_cost(LabelOnly(), probs)
    assert cost.top1_agreement == 1.0 and cost.rows == 2
    assert cost.mean_l1 == pytest.approx((0.6 + 0.4) / 2) and cost.max_l1 == pytest.approx(0.6)
    assert cost.to_json()["defense"] == "label_only"
    assert utility_cost(Rounding(3), probs).mean_l1 == pytest.approx(0.0, abs=1e-6)
    strong = utility_cost(ReverseSigmoid(beta=1.0, gamma=0.1), _random_probabilities(5))
    assert strong.top1_agreement == 1.0 and strong.mean_l1 > 0.1


@pytest.mark.parametrize("make, message", [
    (lambda: TopK(0), "k must be >= 1"),
    (lambda: Rounding(-1), "decimals must be >= 0"),
    (lambda: ReverseSigmoid(gamma=0.0), "gamma must be > 0"),
    (lambda: GaussianNoise(-1.0), "scale must be >= 0"),
    (lambda: PredictionPoisoning(float("nan")), "epsilon must be finite"),
])
def test_bad_settings_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_post_processor_refuses_rows_that_are_not_probability_rows():
    with pytest.raises(ValueError, match=r"takes probabilities shaped \(B, K\)"):
        ReverseSigmoid()(torch.rand(5))
    with pytest.raises(ValueError, match="needs the inputs x"):
        PredictionPoisoning(0.5, nn.Linear(3, 10))(torch.full((2, 10), 0.1))
