"""CUDA kernels against the reference and the CPU kernels (run where CUDA exists)."""

import math

import pytest
import torch

from modelsec_fast import ops, reference
from tests.ops.conftest import DTYPES, TOL, requires_native, stream_of

pytestmark = [
    requires_native,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available"),
]


def _cuda_built():
    from modelsec_fast import _native
    return _native.build_info().get("cuda", False)


@pytest.fixture(autouse=True)
def _needs_cuda_kernels():
    if not _cuda_built():
        pytest.fail("CUDA is available but the native library was built without CUDA kernels "
                    "(rebuild with MODELSEC_FAST_CUDA=ON)")


@pytest.mark.parametrize("source", [0, 1])
def test_cuda_stream_matches_cpu_stream(source):
    key = reference.secure_key() if source else []
    cpu, gpu = torch.empty(100003), torch.empty(100003, device="cuda")
    torch.ops.modelsec_fast._fill_normals_(cpu, 77, 3, 2, source, key)
    torch.ops.modelsec_fast._fill_normals_(gpu, 77, 3, 2, source, key)
    # Same uniforms and the same fp32 code; log/sqrt/FMA may differ in the last bits.
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=4e-6, atol=4e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b", [0, 1, 7, 256])
def test_cuda_clip_and_noise_matches_reference(dtype, b, random_seed):
    grads = [torch.randn(b, 33, 5, device="cuda").to(dtype), torch.randn(b, 17, device="cuda").to(dtype)[:, ::2]]
    seed = random_seed
    summed, norms = ops._clip_and_noise(grads, 1.0, 0.5, scale=0.1, generator=torch.Generator().manual_seed(seed))
    s, off = stream_of(seed, [math.prod(g.shape[1:]) for g in grads])
    ref, ref_norms = reference.clip_and_noise([g.cpu() for g in grads], 1.0, 0.5, scale=0.1, seed=s, offset=off)
    torch.testing.assert_close(norms.cpu(), ref_norms, rtol=1e-5, atol=1e-6)
    rtol, atol = TOL[dtype]
    for got, want in zip(summed, ref):
        torch.testing.assert_close(got.cpu(), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_accumulate_and_add_noise_match_reference(dtype, random_seed):
    grads = [torch.randn(9, 4, 7, device="cuda").to(dtype)]
    factors = torch.rand(9, device="cuda")
    s, off = stream_of(5, [28])
    got = ops._accumulate_and_noise(grads, factors, 0.3, generator=torch.Generator().manual_seed(5))
    want = reference.accumulate_and_noise([grads[0].cpu()], factors.cpu(), 0.3, seed=s, offset=off)
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=TOL[dtype][0], atol=TOL[dtype][1])
    x = torch.randn(1001, device="cuda").to(dtype)
    want_x = [x.cpu().clone()]
    ops.add_noise_(x, 0.3, scale=2.0, generator=torch.Generator().manual_seed(6))
    s, off = stream_of(6, [1001])
    reference.add_noise_(want_x, 0.3, scale=2.0, seed=s, offset=off)
    torch.testing.assert_close(x.cpu(), want_x[0], rtol=TOL[dtype][0], atol=TOL[dtype][1])


@pytest.mark.parametrize("per_sample", [False, True])
def test_cuda_sign_step_fp32_is_bit_identical_to_eager(per_sample, random_seed):
    x_orig = torch.rand(32, 3, 32, 32, device="cuda")
    x_adv = (x_orig + 0.05 * torch.randn_like(x_orig)).clamp(0, 1)
    grad = torch.randn_like(x_orig)
    if per_sample:
        alpha, eps = torch.rand(32, device="cuda") / 50, torch.rand(32, device="cuda") / 20
        a, e = alpha.view(-1, 1, 1, 1), eps.view(-1, 1, 1, 1)
        want = torch.clamp(x_orig + torch.clamp(x_adv + a * grad.sign() - x_orig, min=-e, max=e), 0, 1)
    else:
        alpha, eps = 2 / 255, 8 / 255
        want = torch.clamp(x_orig + torch.clamp(x_adv + alpha * grad.sign() - x_orig, -eps, eps), 0, 1)
    assert torch.equal(ops.sign_step(x_adv, grad, x_orig, alpha, eps), want)
    ops.sign_step_(x_adv, grad, x_orig, alpha, eps)
    assert torch.equal(x_adv, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_l2_step_matches_reference(dtype, random_seed):
    x_orig = torch.rand(6, 3, 8, 8, device="cuda").to(dtype)
    x_adv = (x_orig.float() + 0.1 * torch.randn(6, 3, 8, 8, device="cuda")).clamp(0, 1).to(dtype)
    grad = torch.randn(6, 3, 8, 8, device="cuda").to(dtype)
    grad[0] = 0
    got = ops.l2_step(x_adv, grad, x_orig, 0.3, 0.5)
    want = reference.l2_step(x_adv.cpu(), grad.cpu(), x_orig.cpu(), 0.3, 0.5)
    atol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5 if dtype == torch.float32 else 0, atol=atol)


def test_cuda_non_finite_gradient_raises():
    grads = [torch.randn(4, 10, device="cuda")]
    grads[0][1, 3] = float("nan")
    with pytest.raises(ValueError, match="sample 1 has a non-finite norm"):
        ops._clip_and_noise(grads, 1.0, 1.0)


def test_cuda_opcheck():
    x = torch.rand(4, 3, 6, 6, device="cuda")
    g = [torch.randn(5, 3, 4, device="cuda")]
    for name, args in [
        ("clip_and_noise", (g, 1.0, 0.5, 0.2, 123, 0, 0)),
        ("accumulate_and_noise", (g, torch.rand(5, device="cuda"), 0.5, 1.0, 9, 4, 0)),
        ("add_noise_", ([torch.randn(10, device="cuda")], 0.5, 1.0, 1, 0, 0)),
        ("sign_step", (x, torch.randn_like(x), x.clone(), 0.01, 0.03, 0.0, 1.0)),
        ("sign_step_", (x.clone(), torch.randn_like(x), x.clone(), 0.01, 0.03, 0.0, 1.0)),
        ("l2_step", (x, torch.randn_like(x), x.clone(), 0.1, 0.5, 0.0, 1.0)),
        ("_fill_normals_", (torch.empty(17, device="cuda"), 3, 1, 0, 0, [])),
        ("_conv_weight_grad_norms", (torch.randn(3, 4, 7, 6, device="cuda"),
                                     torch.randn(3, 6, 4, 3, device="cuda"), [3, 2], [2, 2],
                                     [1, 0], [1, 1], 2, True)),
        ("_row_sq_norms", (torch.randn(5, 3, 70001, device="cuda"),)),  # the reference on CUDA
    ]:
        torch.library.opcheck(getattr(torch.ops.modelsec_fast, name).default, args)


@pytest.mark.parametrize("b", [0, 1, 5])
def test_cuda_conv_weight_grad_norms_match_the_cpu(b, random_seed):
    """The CUDA kernel against the reference on the same inputs (copied to the CPU): random
    geometries with groups, stride, padding and dilation; norms and kept gradients."""
    import random

    from tests.ops.test_conv_weight_grad import _case
    rng = random.Random(random_seed)
    for _ in range(10):
        x, g, *conf = _case(rng, batch=b)
        got_sq, got = ops._conv_weight_grad_norms(x.cuda(), g.cuda(), *conf, keep=True)
        want_sq, want = reference.conv_weight_grad_norms(x, g, *conf, True)
        torch.testing.assert_close(got_sq.cpu(), want_sq, rtol=2e-5, atol=1e-6)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
        sq_only, none = ops._conv_weight_grad_norms(x.cuda(), g.cuda(), *conf)
        assert none is None and torch.equal(sq_only, got_sq)


def test_cuda_conv_weight_grad_norms_more_items_than_one_grid():
    """Samples x groups above one launch's 65,535 blocks along z (a depthwise layer)."""
    x = torch.randn(300, 256, 3, 3, device="cuda")
    g = torch.randn(300, 256, 3, 3, device="cuda")
    sq, _ = ops._conv_weight_grad_norms(x, g, (1, 1), (1, 1), (0, 0), (1, 1), 256)
    want = (x * g).sum((2, 3)).square().sum(1)  # 1x1 depthwise: W[c] = sum_t g[c, t] x[c, t]
    torch.testing.assert_close(sq, want, rtol=1e-5, atol=1e-5)
