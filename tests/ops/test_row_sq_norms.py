"""_row_sq_norms (the DP engine's per-sample squared norms) against a float64 ground truth:
dtypes, edge sizes, layouts, long rows split over threads, and the Python checks."""

import pytest
import torch

from modelsec_fast import ops, reference
from modelsec_fast.privacy.per_sample import base

_TOL = {torch.float32: 1e-6, torch.float64: 1e-14, torch.bfloat16: 1e-6, torch.float16: 1e-6}


def _truth(x):
    return x.double().reshape(x.shape[0], -1).square().sum(1)


@pytest.mark.parametrize("dtype", list(_TOL))
@pytest.mark.parametrize("shape", [(1, 1), (3, 511), (4, 513), (2, 65536), (2, 65537), (5, 3, 70001),
                                   (7, 17, 19)])
def test_matches_float64_sums(dtype, shape, random_seed):
    gen = torch.Generator().manual_seed(random_seed)
    # rows of very different scales: relative accuracy per row
    scales = torch.logspace(-3, 3, shape[0], dtype=torch.float64).reshape(-1, *[1] * (len(shape) - 1))
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scales).to(dtype)
    got = ops._row_sq_norms(x)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert got.shape == (shape[0],)
    torch.testing.assert_close(got.double(), _truth(x), rtol=_TOL[dtype], atol=0)


def test_native_equals_the_reference_and_is_thread_count_independent(random_seed):
    gen = torch.Generator().manual_seed(random_seed)
    x = torch.randn(3, 200003, generator=gen)
    torch.testing.assert_close(ops._row_sq_norms(x), reference.row_sq_norms(x), rtol=1e-6, atol=0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops._row_sq_norms(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, ops._row_sq_norms(x))


def test_edge_sizes_and_layouts():
    assert ops._row_sq_norms(torch.randn(0, 5)).shape == (0,)
    assert torch.equal(ops._row_sq_norms(torch.randn(4, 0)), torch.zeros(4))
    assert torch.equal(ops._row_sq_norms(torch.randn(0)), torch.zeros(0))
    x = torch.randn(6, 40000)
    t = x.t().contiguous().t()  # non-contiguous, the same values
    torch.testing.assert_close(ops._row_sq_norms(t), _truth(x).float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(ops._row_sq_norms(x[::2, 1::3]), _truth(x[::2, 1::3]).float(),
                               rtol=1e-6, atol=0)
    x = torch.randn(5)  # a 1-D x: B samples of one element
    torch.testing.assert_close(ops._row_sq_norms(x), x.square())


def test_non_finite_rows_stay_non_finite():
    x = torch.randn(3, 40000)
    x[1, 7] = float("inf")
    x[2, 9] = float("nan")
    got = ops._row_sq_norms(x)
    assert torch.isfinite(got[0]) and got[1] == float("inf") and torch.isnan(got[2])


@pytest.mark.parametrize("bad, exc, match", [
    (torch.tensor(2.0), ValueError, r"x must be shaped \(B, \.\.\.\)"),
    (torch.ones(3, 2, dtype=torch.int64), TypeError, "x has dtype torch.int64"),
    ([1.0, 2.0], TypeError, "x must be a torch.Tensor"),
])
def test_bad_input_is_named(bad, exc, match):
    with pytest.raises(exc, match=match):
        ops._row_sq_norms(bad)


def test_the_engine_takes_the_kernel_for_large_tensors_only(monkeypatch):
    calls = []
    real = torch.ops.modelsec_fast._row_sq_norms
    monkeypatch.setattr(torch.ops.modelsec_fast, "_row_sq_norms",
                        lambda t: calls.append(t.numel()) or real(t), raising=False)
    small = torch.randn(4, 10)
    large = torch.randn(4, base.NATIVE_NORM_NUMEL // 4)
    torch.testing.assert_close(base.row_sq_norms(small), _truth(small).float())
    torch.testing.assert_close(base.row_sq_norms(large), _truth(large).float(), rtol=1e-6, atol=0)
    assert calls == ([large.numel()] if ops.native_available() else [])
