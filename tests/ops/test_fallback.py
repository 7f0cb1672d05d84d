"""The pure-PyTorch path (MODELSEC_FAST_DISABLE_NATIVE=1) computes the contract."""

import subprocess
import sys

import torch

from modelsec_fast import ops


def test_disable_env_switches_to_the_reference(fallback):
    assert ops.native_available() is False


def test_disable_env_is_honoured_in_a_fresh_process():
    code = "import modelsec_fast as m; print(m.ops.native_available())"
    env = dict(__import__("os").environ, MODELSEC_FAST_DISABLE_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_fallback_clip_and_noise_equals_the_eager_opacus_sequence(fallback):
    grads = [torch.randn(9, 4, 5) * 3, torch.randn(9, 6)]
    summed, norms = ops._clip_and_noise(grads, 1.5, 0.0, scale=0.5)
    flat = torch.cat([g.reshape(9, -1) for g in grads], dim=1)
    want_norms = flat.norm(dim=1)
    factors = (1.5 / (want_norms + 1e-6)).clamp(max=1.0)
    torch.testing.assert_close(norms, want_norms)
    for s, g in zip(summed, grads):
        torch.testing.assert_close(s, torch.einsum("i,i...->...", factors, g) * 0.5)


def test_fallback_sign_step_is_bit_identical_to_eager(fallback):
    x_orig, x_adv, grad = torch.rand(6, 3, 8, 8), torch.rand(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    want = torch.clamp(x_orig + torch.clamp(x_adv + 0.01 * grad.sign() - x_orig, -0.03, 0.03), 0, 1)
    assert torch.equal(ops.sign_step(x_adv, grad, x_orig, 0.01, 0.03), want)
    ops.sign_step_(x_adv, grad, x_orig, 0.01, 0.03)
    assert torch.equal(x_adv, want)


def test_fallback_l2_step_stays_in_the_ball_and_box(fallback):
    x_orig = torch.rand(5, 3, 4, 4)
    out = ops.l2_step(x_orig.clone(), torch.randn(5, 3, 4, 4), x_orig, 2.0, 0.3)
    assert (out.reshape(5, -1) - x_orig.reshape(5, -1)).norm(dim=1).max() <= 0.3 + 1e-6
    assert out.min() >= 0 and out.max() <= 1
    zero = ops.l2_step(x_orig, torch.zeros_like(x_orig), x_orig, 2.0, 0.3)
    assert torch.equal(zero, x_orig)
