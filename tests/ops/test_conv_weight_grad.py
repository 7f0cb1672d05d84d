"""ops._conv_weight_grad_norms (the fused per-sample conv weight-gradient kernel)
against a float64 per-sample ground truth, on fresh random geometries and the edge
cases: batch 1, an empty batch, groups, stride, padding, dilation, 1-D-like and
odd shapes, non-contiguous inputs, a tile-sized channel count, several threads."""

import random

import pytest
import torch

from modelsec_fast import ops, reference

NATIVE = ops.native_available()


def _truth(x, g, kernel, stride, padding, dilation, groups):
    """(B, C_out, C_in/groups, kh, kw) float64: one convolution-weight gradient per sample."""
    c_out, c_in = g.shape[1], x.shape[1]
    w = torch.empty(c_out, c_in // groups, *kernel, dtype=torch.float64)
    return torch.stack([torch.ops.aten.convolution_backward(
        g[i:i + 1].double(), x[i:i + 1].double(), w, None, list(stride), list(padding),
        list(dilation), False, [0, 0], groups, [False, True, False])[1]
        for i in range(x.shape[0])]) if x.shape[0] else w.new_empty((0,) + w.shape)


def _case(rng, batch=None):
    groups = rng.choice([1, 1, 2, 3])
    c_in, c_out = groups * rng.randint(1, 5), groups * rng.randint(1, 20)
    kernel = (rng.randint(1, 4), rng.randint(1, 4))
    stride, dilation = (rng.randint(1, 3), rng.randint(1, 2)), (rng.randint(1, 2), 1)
    padding = (rng.randint(0, 2), rng.randint(0, 2))
    h = rng.randint(dilation[0] * (kernel[0] - 1) + 1, 12)
    w = rng.randint(dilation[1] * (kernel[1] - 1) + 1, 40)
    out = [(s + 2 * p - d * (k - 1) - 1) // st + 1
           for s, p, d, k, st in zip((h, w), padding, dilation, kernel, stride)]
    batch = rng.randint(1, 6) if batch is None else batch
    x = torch.randn(batch, c_in, h, w)
    g = torch.randn(batch, c_out, *out)
    return x, g, kernel, stride, padding, dilation, groups


def _check(x, g, kernel, stride, padding, dilation, groups):
    want = _truth(x, g, kernel, stride, padding, dilation, groups)
    for keep in (False, True):
        sq, grads = ops._conv_weight_grad_norms(x, g, kernel, stride, padding, dilation, groups,
                                                keep=keep)
        assert sq.shape == (x.shape[0],) and sq.dtype == torch.float32
        torch.testing.assert_close(sq.double(), want.flatten(1).square().sum(1),
                                   rtol=2e-5, atol=1e-6)
        if keep:  # fp32 sums over T output positions: rounding grows like sqrt(T)
            steps = g.shape[2] * g.shape[3]
            torch.testing.assert_close(grads.double(), want, rtol=1e-4,
                                       atol=3e-6 * max(steps, 1) ** 0.5)
        else:
            assert grads is None


def test_random_geometries_match_the_ground_truth(random_seed):
    rng = random.Random(random_seed)
    for _ in range(25):
        _check(*_case(rng))


@pytest.mark.parametrize("batch", [0, 1])
def test_empty_and_single_sample(random_seed, batch):
    _check(*_case(random.Random(random_seed), batch=batch))


def test_shapes_that_cross_the_kernel_tiles():
    """Channel counts around the 16-channel tile, patch sizes around the 6-entry tile,
    and more output positions than one block (512)."""
    torch.manual_seed(0)
    for c_in, c_out, k, size in [(1, 16, 1, 30), (1, 17, 2, 24), (3, 32, 3, 34), (2, 15, 1, 9),
                                 (7, 33, 3, 5)]:
        x = torch.randn(3, c_in, size, size)
        g = torch.randn(3, c_out, size - k + 1, size - k + 1)
        _check(x, g, (k, k), (1, 1), (0, 0), (1, 1), 1)


def test_non_contiguous_inputs():
    torch.manual_seed(1)
    x = torch.randn(3, 9, 4, 10)[:, ::2].transpose(2, 3)  # (3, 5, 10, 4), strided
    g = torch.randn(3, 6, 4, 8).transpose(2, 3)  # (3, 6, 8, 4)
    assert not x.is_contiguous() and not g.is_contiguous()
    _check(x, g, (3, 1), (1, 1), (0, 0), (1, 1), 1)


def test_native_and_reference_agree_and_threads_do_not_matter(random_seed, monkeypatch):
    x, g, *conf = _case(random.Random(random_seed), batch=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops._conv_weight_grad_norms(x, g, *conf, keep=True)
        torch.set_num_threads(max(2, threads))
        many = ops._conv_weight_grad_norms(x, g, *conf, keep=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])
    sq, grads = reference.conv_weight_grad_norms(x, g, *conf, True)
    torch.testing.assert_close(one[0], sq, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(one[1], grads, rtol=1e-4, atol=1e-4)
    monkeypatch.setenv("MODELSEC_FAST_DISABLE_NATIVE", "1")
    assert not ops.native_available()
    torch.testing.assert_close(ops._conv_weight_grad_norms(x, g, *conf)[0], one[0], rtol=2e-5,
                               atol=1e-6)


def test_bad_arguments_raise_value_and_type_errors():
    x, g = torch.randn(2, 3, 5, 5), torch.randn(2, 4, 3, 3)
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        ops._conv_weight_grad_norms(x.double(), g, (3, 3), (1, 1), (0, 0), (1, 1), 1)
    with pytest.raises(ValueError, match="output size"):
        ops._conv_weight_grad_norms(x, g, (3, 3), (2, 2), (0, 0), (1, 1), 1)
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        ops._conv_weight_grad_norms(x, g, (3, 3), (1, 1), (0, 0), (0, 1), 1)
