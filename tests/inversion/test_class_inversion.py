"""MI-Face class inversion: the known optimum of a logistic model, Algorithm 1's stopping
rule, batching over classes."""

import pytest
import torch
from torch import nn

from modelsec_fast.inversion import ClassInversion, total_variation


def _logistic(seed):
    """A binary logistic model on 4x4 images: logits (0, w.x + b). |w_i| in [0.1, 0.2] and
    |b| <= 0.5 keep p(1 - p), the gradient's scale, away from 0 on the whole box, so
    that every pixel reaches its bound in a few hundred steps."""
    g = torch.Generator().manual_seed(seed)
    w = torch.sign(torch.randn(16, generator=g)) * (0.1 + 0.1 * torch.rand(16, generator=g))
    b = (torch.rand(1, generator=g) - 0.5)
    layer = nn.Linear(16, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.zeros(16), w]))
        layer.bias.copy_(torch.cat([torch.zeros(1), b]))
    return nn.Sequential(nn.Flatten(), layer), w


def test_without_a_prior_a_logistic_model_inverts_to_its_known_optimum(random_seed):
    model, w = _logistic(random_seed)
    result = ClassInversion(model, steps=2000, lr=1.0, patience=20).invert(
        [1, 0], input_shape=(1, 4, 4), init=0.5)
    torch.testing.assert_close(result.images[0].flatten(), (w > 0).float())
    torch.testing.assert_close(result.images[1].flatten(), (w < 0).float())
    # Converged: a standstill at the corner stops each class before its last step.
    assert result.stop_reasons == ["no_improvement"] * 2 and int(result.steps.max()) < 2000
    assert bool((result.confidences > 0.5).all())


def test_a_class_stops_at_the_threshold_on_the_first_step_that_reaches_it():
    model, w = _logistic(0)
    inversion = ClassInversion(model, steps=500, lr=0.05, patience=50, threshold=0.3)
    result = inversion.invert([1], input_shape=(1, 4, 4), init=0.5)
    assert result.stop_reasons == ["threshold"] and float(result.costs[0]) <= 0.3
    # One step fewer is not enough.
    short = ClassInversion(model, steps=int(result.steps[0]) - 1, lr=0.05, patience=50,
                           threshold=0.3).invert([1], input_shape=(1, 4, 4), init=0.5)
    assert short.stop_reasons == ["max_steps"] and float(short.costs[0]) > 0.3


def test_per_class_thresholds_stop_each_class_at_its_own_gamma():
    model, _ = _logistic(0)
    inversion = ClassInversion(model, steps=500, lr=0.05, patience=50)
    loose = inversion.invert([1], input_shape=(1, 4, 4), init=0.5, thresholds=[0.4])
    both = inversion.invert([1, 1], input_shape=(1, 4, 4), init=0.5, thresholds=[0.4, 0.3])
    assert both.stop_reasons == ["threshold", "threshold"]
    assert int(both.steps[0]) == int(loose.steps[0]) < int(both.steps[1])
    assert float(both.costs[0]) <= 0.4 and float(both.costs[1]) <= 0.3 < float(both.costs[0])
    with pytest.raises(ValueError, match="thresholds must be 2 finite values"):
        inversion.invert([1, 0], input_shape=(1, 4, 4), thresholds=[0.3])


def test_the_best_iterate_is_returned_and_classes_are_inverted_independently():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))
    inversion = ClassInversion(model, steps=60, lr=0.5, patience=5, tv_weight=0.05)
    batched = inversion.invert([0, 1, 2, 3], input_shape=(1, 4, 4), init=0.3)
    for c in range(4):
        alone = inversion.invert([c], input_shape=(1, 4, 4), init=0.3)
        torch.testing.assert_close(alone.images[0], batched.images[c])
        assert int(alone.steps[0]) == int(batched.steps[c])
    with torch.no_grad():
        costs = inversion.cost(batched.images, torch.arange(4))
    torch.testing.assert_close(costs, batched.costs.double())


def test_total_variation_of_a_flat_and_a_striped_image():
    flat = torch.full((1, 1, 4, 4), 0.7)
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1.0
    assert float(total_variation(flat)) == 0.0 and float(total_variation(stripes)) == 1.0


def test_bad_inputs_are_named():
    model, _ = _logistic(0)
    inversion = ClassInversion(model, steps=5)
    with pytest.raises(ValueError, match=r"classes must lie in \[0, 2\)"):
        inversion.invert([2], input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inversion.invert([1], input_shape=(1, 4, 4), init=1.5)
    with pytest.raises(ValueError, match="init must be images shaped"):
        inversion.invert([1], input_shape=(1, 4, 4), init=torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="patience must be >= 1"):
        ClassInversion(model, patience=0)
