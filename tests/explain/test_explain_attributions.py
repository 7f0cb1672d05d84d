"""Saliency, Integrated Gradients and SmoothGrad: closed forms on a linear model,
equality with Captum's unchunked results, the chunk limit, edge sizes, bad input."""

import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

from modelsec_fast.explain import (integrated_gradients, plan_chunks, predicted_labels,
                                   saliency, smoothgrad)
from tests.explain.conftest import CountingModel, linear_model, small_cnn


def _weights_of(model, target, shape):
    return model[1].weight[target].detach().reshape(shape)


# ------------------------------------------------------------------ closed forms
def test_ig_on_a_linear_model_is_weight_times_input_minus_baseline(random_seed):
    model = linear_model()
    x = torch.rand(6, 3, 4, 4)
    baseline = torch.rand(3, 4, 4)
    target = torch.randint(0, 5, (6,))
    attr, delta = integrated_gradients(model, x, target, baselines=baseline, n_steps=8,
                                       max_inputs=10, return_convergence_delta=True)
    w = model[1].weight.detach()[target].reshape(6, 3, 4, 4)
    torch.testing.assert_close(attr, w * (x - baseline), rtol=1e-5, atol=1e-6)
    assert delta.shape == (6,)
    assert delta.abs().max() < 1e-4


def test_saliency_on_a_linear_model_is_the_weight_magnitude():
    model = linear_model()
    x = torch.rand(4, 3, 4, 4)
    w = _weights_of(model, 2, (3, 4, 4))
    torch.testing.assert_close(saliency(model, x, 2), w.abs().expand_as(x))
    torch.testing.assert_close(saliency(model, x, 2, absolute=False), w.expand_as(x))


def test_smoothgrad_on_a_linear_model_is_the_weight_magnitude():
    model = linear_model()
    x = torch.rand(3, 3, 4, 4)
    w = _weights_of(model, 1, (3, 4, 4))
    got = smoothgrad(model, x, 1, n_samples=5, max_inputs=4,
                     generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, w.abs().expand_as(x))


def test_target_none_explains_the_predicted_class():
    model = linear_model()
    x = torch.rand(5, 3, 4, 4)
    predicted = model(x).argmax(1)
    torch.testing.assert_close(predicted_labels(model, x, max_inputs=2), predicted)
    torch.testing.assert_close(saliency(model, x), saliency(model, x, predicted))


# ------------------------------------------------------------------ against Captum
@pytest.mark.parametrize("max_inputs", [1, 7, 24, 10_000])
def test_chunked_ig_equals_captums_unchunked(max_inputs, random_seed):
    model = small_cnn()
    x = torch.rand(5, 3, 6, 6, dtype=torch.float64)
    target = torch.randint(0, 4, (5,))
    expected = IntegratedGradients(model).attribute(x, baselines=0.25, target=target, n_steps=9)
    got = integrated_gradients(model, x, target, baselines=0.25, n_steps=9, max_inputs=max_inputs)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def _captum_smoothgrad_with_noise(model, x, target, n_samples, stdev, seed, monkeypatch):
    """Captum's unchunked NoiseTunnel(Saliency), fed the noise our smoothgrad draws from a
    generator seeded ``seed``: sample j of every example by one randn call, j = 0, 1, ..."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.stack([torch.randn(x.shape, generator=generator, dtype=x.dtype)
                         for _ in range(n_samples)])                  # (samples, B, ...)
    per_example = noise.transpose(0, 1).reshape(-1, *x.shape[1:])    # Captum's layout

    def add_our_noise(inputs, _stdev, samples):
        return inputs.repeat_interleave(samples, dim=0) + stdev * per_example

    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(add_our_noise))
    return NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=n_samples,
                                                  stdevs=stdev, target=target)


@pytest.mark.parametrize("max_inputs", [1, 6, 13, 10_000])
def test_chunked_smoothgrad_equals_captums_unchunked(max_inputs, monkeypatch, random_seed):
    model = small_cnn()
    x = torch.rand(4, 3, 6, 6, dtype=torch.float64) * 2 - 1           # input range (-1, 1)
    target = torch.randint(0, 4, (4,))
    expected = _captum_smoothgrad_with_noise(model, x, target, 7, 0.15 * 2, random_seed,
                                             monkeypatch)
    got = smoothgrad(model, x, target, input_range=(-1, 1), stdev_fraction=0.15, n_samples=7,
                     max_inputs=max_inputs, generator=torch.Generator().manual_seed(random_seed))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_smoothgrad_noise_scales_with_the_input_range():
    model = small_cnn()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    narrow = smoothgrad(model, x, 0, input_range=(0, 1), n_samples=3,
                        generator=torch.Generator().manual_seed(1))
    wide = smoothgrad(model, x, 0, input_range=(0, 255), n_samples=3,
                      generator=torch.Generator().manual_seed(1))
    # Same seed, so only the noise level differs, and 255x the noise changes the map.
    assert not torch.allclose(narrow, wide)


# ------------------------------------------------------------------ chunk limit
@pytest.mark.parametrize("max_inputs", [1, 5, 12, 40])
def test_no_pass_holds_more_than_max_inputs(max_inputs):
    model = CountingModel(small_cnn())
    x = torch.rand(6, 3, 6, 6, dtype=torch.float64)
    calls = {
        "ig": lambda: integrated_gradients(model, x, 1, n_steps=10, max_inputs=max_inputs,
                                           return_convergence_delta=True),
        "smoothgrad": lambda: smoothgrad(model, x, 1, n_samples=10, max_inputs=max_inputs),
        "saliency": lambda: saliency(model, x, None, max_inputs=max_inputs),
    }
    plan = plan_chunks(6, 10, max_inputs)
    for name, call in calls.items():
        model.batch_sizes.clear()
        call()
        assert max(model.batch_sizes) <= max_inputs, (name, model.batch_sizes)
        if name != "saliency":  # the plan fills the passes it promises
            assert plan.inputs_per_pass in model.batch_sizes, (name, model.batch_sizes)


def test_captum_without_chunking_exceeds_the_limit_we_keep():
    # What the limit guards against: one pass of batch x n_steps inputs.
    model = CountingModel(small_cnn())
    IntegratedGradients(model).attribute(torch.rand(6, 3, 6, 6, dtype=torch.float64), target=1,
                                         n_steps=10)
    assert max(model.batch_sizes) == 60


# ------------------------------------------------------------------ edge sizes
def test_a_batch_of_one_works():
    model = small_cnn()
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    expected = IntegratedGradients(model).attribute(x, target=2, n_steps=6)
    torch.testing.assert_close(integrated_gradients(model, x, 2, n_steps=6, max_inputs=1),
                               expected)
    assert smoothgrad(model, x, 2, n_samples=2, max_inputs=1).shape == x.shape
    assert saliency(model, x, 2).shape == x.shape


def test_non_contiguous_inputs_give_the_contiguous_result():
    model = small_cnn()
    x = torch.rand(4, 3, 6, 6, dtype=torch.float64).transpose(2, 3)
    assert not x.is_contiguous()
    dense = x.contiguous()
    torch.testing.assert_close(integrated_gradients(model, x, 1, n_steps=5, max_inputs=7),
                               integrated_gradients(model, dense, 1, n_steps=5, max_inputs=7))
    torch.testing.assert_close(saliency(model, x, 1, max_inputs=3), saliency(model, dense, 1))
    torch.testing.assert_close(
        smoothgrad(model, x, 1, n_samples=3, generator=torch.Generator().manual_seed(0)),
        smoothgrad(model, dense, 1, n_samples=3, generator=torch.Generator().manual_seed(0)))


def test_attributions_leave_no_parameter_gradient_and_keep_the_mode():
    model = small_cnn()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    integrated_gradients(model, x, 0, n_steps=3)
    smoothgrad(model, x, 0, n_samples=2)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


# ------------------------------------------------------------------ bad input
X = torch.rand(2, 3, 4, 4)


@pytest.mark.parametrize("call, error, words", [
    (lambda m: saliency(m, X.numpy(), 0), TypeError, "inputs must be a torch.Tensor"),
    (lambda m: saliency(m, X.long(), 0), TypeError, "floating-point"),
    (lambda m: saliency(m, X[0, 0, 0], 0), ValueError, "batch"),
    (lambda m: saliency(m, X[:0], 0), ValueError, "non-empty"),
    (lambda m: saliency(m, torch.full_like(X, float("nan")), 0), ValueError, "NaN"),
    (lambda m: saliency(m, X, 5), ValueError, "target must lie in [0, 5)"),
    (lambda m: saliency(m, X, -1), ValueError, "target must be >= 0"),
    (lambda m: saliency(m, X, 1.0), TypeError, "target must be an integer"),
    (lambda m: saliency(m, X, torch.tensor([0.0, 1.0])), TypeError, "integer tensor"),
    (lambda m: saliency(m, X, torch.tensor([0, 1, 2])), ValueError, "shape (2,)"),
    (lambda m: saliency(m, X, 0, max_inputs=0), ValueError, "max_inputs must be >= 1"),
    (lambda m: saliency("model", X, 0), TypeError, "model must be a callable"),
    (lambda m: integrated_gradients(m, X, 0, n_steps=0), ValueError, "n_steps must be >= 1"),
    (lambda m: integrated_gradients(m, X, 0, method="simpson"), ValueError,
     "method must be one of"),
    (lambda m: integrated_gradients(m, X, 0, baselines=torch.zeros(3, 4)), ValueError,
     "baselines must have the shape"),
    (lambda m: integrated_gradients(m, X, 0, baselines=float("inf")), ValueError,
     "baselines must be finite"),
    (lambda m: smoothgrad(m, X, 0, stdev_fraction=0.0), ValueError, "stdev_fraction must lie in"),
    (lambda m: smoothgrad(m, X, 0, stdev_fraction=1.5), ValueError, "stdev_fraction must lie in"),
    (lambda m: smoothgrad(m, X, 0, input_range=(1, 0)), ValueError, "low < high"),
    (lambda m: smoothgrad(m, X, 0, input_range=1), TypeError, "input_range must be a pair"),
    (lambda m: smoothgrad(m, X, 0, n_samples=0), ValueError, "n_samples must be >= 1"),
    (lambda m: smoothgrad(m, X, 0, generator=0), TypeError, "generator must be"),
])
def test_bad_input_gets_a_clear_error(call, error, words):
    with pytest.raises(error) as caught:
        call(linear_model())
    assert words in str(caught.value)


def test_a_model_that_does_not_return_logits_is_refused():
    with pytest.raises(ValueError, match="logits of shape"):
        saliency(lambda x: x.sum(), X, 0)
