"""The released update: the plain gradient, the DP engine's clipped and noised one, and
the checks on a gradient list."""

import pytest
import torch

from modelsec_fast.inversion import check_gradients, dp_gradient, plain_gradient
from tests.inversion.inversion_helpers import mlp, same_class_pairs


def _norm(grads):
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


def test_without_noise_the_dp_update_is_the_clipped_plain_gradient():
    model = mlp(0)
    x, y, _ = same_class_pairs(0, 1)
    plain = plain_gradient(model, x, y)
    clip = _norm(plain) / 4  # clipping is active
    dp = dp_gradient(model, x, y, noise_multiplier=0.0, max_grad_norm=clip)
    for d, p in zip(dp, plain):
        torch.testing.assert_close(d, p * (clip / _norm(plain)), rtol=1e-4, atol=1e-7)
    loose = dp_gradient(model, x, y, noise_multiplier=0.0, max_grad_norm=_norm(plain) * 10)
    for d, p in zip(loose, plain):
        torch.testing.assert_close(d, p, rtol=1e-4, atol=1e-7)


def test_the_dp_noise_has_std_sigma_times_c_and_follows_the_seed():
    model = mlp(0)
    x, y, _ = same_class_pairs(0, 1)
    clean = torch.cat([g.flatten() for g in dp_gradient(model, x, y, noise_multiplier=0.0,
                                                        max_grad_norm=0.5)])
    noisy = dp_gradient(model, x, y, noise_multiplier=2.0, max_grad_norm=0.5, seed=3)
    noise = torch.cat([g.flatten() for g in noisy]) - clean
    assert float(noise.std()) == pytest.approx(2.0 * 0.5, rel=0.05)  # 4810 draws
    again = dp_gradient(model, x, y, noise_multiplier=2.0, max_grad_norm=0.5, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(noisy, again))
    other = dp_gradient(model, x, y, noise_multiplier=2.0, max_grad_norm=0.5, seed=4)
    assert not torch.equal(noisy[0], other[0])


def test_the_model_is_left_untouched():
    model = mlp(0)
    before = [p.detach().clone() for p in model.parameters()]
    x, y, _ = same_class_pairs(0, 2)
    dp_gradient(model, x, y, noise_multiplier=1.0, max_grad_norm=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_a_gradient_list_that_does_not_match_the_model_is_named():
    model = mlp(0)
    x, y, _ = same_class_pairs(0, 1)
    grads = plain_gradient(model, x, y)
    with pytest.raises(ValueError, match="gradients has 3 tensors but the model has 4"):
        check_gradients(model, grads[:3])
    with pytest.raises(ValueError, match=r"gradients\[1\] has shape \(63,\), the model's "
                                         r"parameter 1 has shape \(64,\)"):
        check_gradients(model, [grads[0], grads[1][:63], *grads[2:]])
    with pytest.raises(ValueError, match=r"gradients\[2\] contains NaN or inf"):
        check_gradients(model, [*grads[:2], grads[2] * float("nan"), grads[3]])
    with pytest.raises(TypeError, match="gradients must be a list of tensors"):
        check_gradients(model, grads[0])


def test_images_outside_the_unit_box_are_refused():
    model = mlp(0)
    x, y, _ = same_class_pairs(0, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plain_gradient(model, x * 2, y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dp_gradient(model, x - 1, y, noise_multiplier=1.0, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="noise_multiplier must be >= 0"):
        dp_gradient(model, x, y, noise_multiplier=-1.0, max_grad_norm=1.0)
    with pytest.raises(ValueError, match=r"labels y \(B,\)"):
        plain_gradient(model, x, y.repeat(2))
