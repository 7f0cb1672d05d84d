"""Native kernels against the pure-PyTorch reference on fresh random inputs (each test
prints its seed; MODELSEC_FAST_TEST_SEED replays one, see tests/conftest.py)."""

import math
import random

import pytest
import torch

from modelsec_fast import ops, reference
from tests.ops.conftest import DTYPES, TOL, requires_native, stream_of

pytestmark = requires_native


def _random_grads(rng: random.Random, b: int, dtype, noncontiguous: bool):
    """1-5 per-sample gradient tensors with odd shapes, optionally non-contiguous."""
    grads = []
    for _ in range(rng.randint(1, 5)):
        shape = [rng.choice([1, 3, 5, 17, 33]) for _ in range(rng.randint(0, 3))]
        scale = 10 ** rng.uniform(-2, 1)
        if noncontiguous:
            g = torch.randn([b] + shape + [2])[..., 0] * scale  # every element strided
        else:
            g = torch.randn([b] + shape) * scale
        grads.append(g.to(dtype))
    return grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b", [0, 1, 7, 256])
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_clip_and_noise_matches_reference(dtype, b, noncontiguous, random_seed):
    rng = random.Random(random_seed)
    grads = _random_grads(rng, b, dtype, noncontiguous)
    max_norm, std, scale = rng.uniform(0.1, 3.0), rng.uniform(0, 2.0), rng.uniform(0.01, 1.0)
    seed = rng.randrange(2**31)
    summed, norms = ops._clip_and_noise(grads, max_norm, std, scale=scale,
                                       generator=torch.Generator().manual_seed(seed))
    s, off = stream_of(seed, [math.prod(g.shape[1:]) for g in grads])
    ref_summed, ref_norms = reference.clip_and_noise(grads, max_norm, std, scale=scale, seed=s, offset=off)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-5 if dtype != torch.float64 else 1e-7, atol=1e-6)
    rtol, atol = TOL[dtype]
    for got, want in zip(summed, ref_summed):
        assert got.shape == want.shape and got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol * max(1.0, max_norm * scale * 8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b", [0, 1, 7, 256])
def test_accumulate_and_noise_matches_reference(dtype, b, random_seed):
    rng = random.Random(random_seed)
    grads = _random_grads(rng, b, dtype, noncontiguous=rng.random() < 0.5)
    factors = torch.rand(b)
    std, scale, seed = rng.uniform(0, 1), rng.uniform(0.1, 2), rng.randrange(2**31)
    out = ops._accumulate_and_noise(grads, factors, std, scale=scale,
                                   generator=torch.Generator().manual_seed(seed))
    s, off = stream_of(seed, [math.prod(g.shape[1:]) for g in grads])
    ref = reference.accumulate_and_noise(grads, factors, std, scale=scale, seed=s, offset=off)
    rtol, atol = TOL[dtype]
    for got, want, g in zip(out, ref, grads):
        bound = float(g.float().abs().sum(0).max()) * scale if b else 1.0
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol * max(1.0, bound))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_noise_matches_reference_on_lists_and_strided_tensors(dtype, random_seed):
    seed = random_seed
    xs = [torch.randn(37, 5).to(dtype), torch.randn(8, 6).to(dtype).t(), torch.randn(0).to(dtype),
          torch.randn(3, 1029).to(dtype)[:, ::3]]
    want = [x.clone() for x in xs]
    ops.add_noise_(xs, 0.7, scale=0.5, generator=torch.Generator().manual_seed(seed))
    s, off = stream_of(seed, [x.numel() for x in want])
    reference.add_noise_(want, 0.7, scale=0.5, seed=s, offset=off)
    rtol, atol = TOL[dtype]
    for got, ref in zip(xs, want):
        torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)


def _eager_sign_step(x, g, xo, alpha, eps, lo, hi):
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.view(-1, *([1] * (x.dim() - 1)))
        eps = eps.view(-1, *([1] * (x.dim() - 1)))
        return torch.clamp(xo + torch.clamp(x + alpha * g.sign() - xo, min=-eps, max=eps), lo, hi)
    return torch.clamp(xo + torch.clamp(x + alpha * g.sign() - xo, -eps, eps), lo, hi)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (1, 1, 28, 28), (7, 3, 11, 5), (64, 3, 32, 32)])
@pytest.mark.parametrize("per_sample", [False, True])
def test_sign_step_fp32_is_bit_identical_to_the_eager_formula(shape, per_sample, random_seed):
    x_orig = torch.rand(shape)
    x_adv = (x_orig + 0.05 * torch.randn(shape)).clamp(0, 1)
    grad = torch.randn(shape)
    grad[..., 0] = 0.0  # sign(0) = 0
    if per_sample:
        alpha, eps = torch.rand(shape[0]) / 50, torch.rand(shape[0]) / 20
    else:
        rng = random.Random(random_seed)
        alpha, eps = rng.uniform(0, 0.02), rng.uniform(0, 0.05)
    want = _eager_sign_step(x_adv, grad, x_orig, alpha, eps, 0.0, 1.0)
    assert torch.equal(ops.sign_step(x_adv, grad, x_orig, alpha, eps), want)
    inplace = x_adv.clone()
    assert ops.sign_step_(inplace, grad, x_orig, alpha, eps) is inplace
    assert torch.equal(inplace, want)


def test_sign_step_handles_noncontiguous_inputs_and_inplace_views(random_seed):
    x_orig = torch.rand(3, 8, 8, 4).permute(0, 3, 1, 2)
    x_adv = torch.rand(3, 8, 8, 4).permute(0, 3, 1, 2)
    grad = torch.randn(3, 4, 8, 16)[..., ::2]
    want = _eager_sign_step(x_adv, grad, x_orig, 0.01, 0.03, -0.5, 0.75)
    assert torch.equal(ops.sign_step(x_adv, grad, x_orig, 0.01, 0.03, -0.5, 0.75), want)
    ops.sign_step_(x_adv, grad, x_orig, 0.01, 0.03, -0.5, 0.75)
    assert torch.equal(x_adv, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_sign_step_other_dtypes_match_reference(dtype, random_seed):
    x_orig = torch.rand(5, 3, 9, 9).to(dtype)
    x_adv = (x_orig.float() + 0.03 * torch.randn(5, 3, 9, 9)).clamp(0, 1).to(dtype)
    grad = torch.randn(5, 3, 9, 9).to(dtype)
    got = ops.sign_step(x_adv, grad, x_orig, 2 / 255, 8 / 255)
    want = reference.sign_step(x_adv, grad, x_orig, 2 / 255, 8 / 255)
    # Same per-op rounding; clamp bounds may round one ulp apart.
    torch.testing.assert_close(got, want, rtol=0, atol=float(torch.finfo(dtype).eps))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b", [0, 1, 7])
@pytest.mark.parametrize("per_sample", [False, True])
def test_l2_step_matches_reference(dtype, b, per_sample, random_seed):
    x_orig = torch.rand(b, 3, 7, 5).to(dtype)
    x_adv = (x_orig.float() + 0.1 * torch.randn(b, 3, 7, 5)).clamp(0, 1).to(dtype)
    grad = torch.randn(b, 3, 7, 5).to(dtype)
    if b:
        grad[0] = 0  # zero-gradient guard: no step for that sample
    alpha, eps = (torch.rand(b), torch.rand(b)) if per_sample else (0.2, 0.5)
    got = ops.l2_step(x_adv, grad, x_orig, alpha, eps)
    want = reference.l2_step(x_adv, grad, x_orig, alpha, eps)
    rtol, atol = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-12, 1e-12),
                  torch.bfloat16: (0, 8e-3), torch.float16: (0, 1e-3)}[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    if b:
        delta = (got.float() - x_orig.float()).reshape(b, -1).norm(dim=1)
        radius = eps if isinstance(eps, float) else eps
        assert bool((delta <= torch.as_tensor(radius) * 1.01 + 1e-2).all())
