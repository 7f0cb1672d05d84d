"""Every per-sample conv method, chunk size and keep/book-keep choice vs ground truth (fp64)."""
from unittest import mock

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from modelsec_fast import ops
from modelsec_fast.privacy.per_sample import conv
from tests.privacy.parity import check_parity

F64 = dict(rtol=1e-10, atol=1e-13)


@settings(max_examples=40, deadline=None)
@given(method=st.sampled_from([conv.GROUPED, conv.GROUPED_NHWC, conv.PATCHES]),
       chunk_bytes=st.sampled_from([1, 3000, 1 << 20]), keep=st.booleans(),
       b=st.integers(1, 5), groups=st.sampled_from([1, 2, 3]),
       cin_g=st.integers(1, 3), cout_g=st.integers(1, 3), k=st.integers(1, 3),
       stride=st.integers(1, 2), pad=st.integers(0, 2), dil=st.integers(1, 2),
       bias=st.booleans(), reuse=st.booleans(), red=st.sampled_from(["mean", "sum"]),
       seed=st.integers(0, 2**16))
def test_forced_methods(method, chunk_bytes, keep, b, groups, cin_g, cout_g, k, stride, pad,
                        dil, bias, reuse, red, seed):
    torch.manual_seed(seed)
    cin, cout = cin_g * groups, cout_g * groups
    x = torch.randn(b, cin, 8, 7, dtype=torch.float64)
    y = torch.randint(0, 3, (b,))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil,
                               groups=groups, bias=bias)
            self.c2 = nn.Conv2d(cout, cin, 1) if reuse else None
            self.head = nn.LazyLinear(3)

        def forward(self, z):
            h = self.c(z)
            if reuse:  # the same conv called twice: per-sample grad = sum over calls
                h = self.c(nn.functional.interpolate(torch.tanh(self.c2(h)), size=z.shape[2:]))
            return self.head(h.flatten(1))

    def built():
        m = Net().double()
        m(x[:1])
        return m

    with mock.patch.object(conv, "_per_sample_method", lambda *a: method), \
            mock.patch.object(conv, "CHUNK_BYTES", chunk_bytes), \
            mock.patch.object(conv, "_keep_per_sample", lambda *a: keep), \
            mock.patch.object(conv, "prefer_ghost", lambda *a, **kw: False):
        check_parity(built, x, y, reduction=red, max_grad_norm=0.1, **F64)


@pytest.mark.parametrize("method", [conv.GROUPED, conv.GROUPED_NHWC, conv.PATCHES])
def test_methods_agree_fp32_bench_shapes(method):
    torch.manual_seed(0)
    for (ci, co, h, k, s, p) in [(1, 16, 28, 8, 2, 3), (3, 32, 32, 3, 1, 1), (16, 32, 13, 4, 2, 0)]:
        x = torch.randn(5, ci, h, h, dtype=torch.float64)
        w = torch.randn(co, ci, k, k, dtype=torch.float64)
        ho = (h + 2 * p - k) // s + 1
        g = torch.randn(5, co, ho, ho, dtype=torch.float64)
        want = torch.stack([conv._conv_weight_grad(g[i:i + 1], x[i:i + 1], w.shape, (s, s), (p, p),
                                                   (1, 1), 1) for i in range(5)])
        got = conv._per_sample_weight_grads(x, g, tuple(w.shape), ((s, s), (p, p), (1, 1), 1), method)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not ops.native_available(), reason="the fused kernel is native only")
@pytest.mark.parametrize("dim, groups, stride, pad, dil, keep",
                         [(2, 1, 1, 1, 1, False), (2, 2, 2, 0, 1, True), (2, 1, 1, 2, 2, True),
                          (1, 3, 2, 1, 1, False), (1, 1, 1, 0, 2, True)])
def test_fused_kernel_through_the_engine_fp32(dim, groups, stride, pad, dil, keep):
    """The engine's conv rule on the native fused kernel (fp32): the clipped update equals
    the per-sample ground truth, and the kernel did serve the layer. The conv weight is
    the only trainable parameter, so every sample's clip factor is the kernel's norm."""
    torch.manual_seed(3)
    conv_cls = nn.Conv2d if dim == 2 else nn.Conv1d
    size = (9, 11) if dim == 2 else (23,)
    x = torch.randn(6, 3 * groups, *size)
    y = torch.randint(0, 3, (6,))

    def built():
        torch.manual_seed(4)
        m = nn.Sequential(conv_cls(3 * groups, 4 * groups, 3, stride=stride, padding=pad,
                                   dilation=dil, groups=groups, bias=False), nn.Tanh(),
                          nn.Flatten(), nn.LazyLinear(3))
        m(x[:1])
        m[3].requires_grad_(False)
        return m

    with mock.patch.object(conv, "_fused_sq_norms", wraps=conv._fused_sq_norms) as served, \
            mock.patch.object(conv, "_keep_per_sample", lambda *a: keep), \
            mock.patch.object(conv, "prefer_ghost", lambda *a, **kw: False):
        check_parity(built, x, y, max_grad_norm=1e-3, rtol=1e-4, atol=1e-8)
    assert served.called


@settings(max_examples=25, deadline=None)
@given(dim=st.sampled_from([1, 2, 3]), b=st.integers(1, 4), groups=st.sampled_from([1, 2, 3]),
       cin_g=st.integers(1, 3), cout_g=st.integers(1, 3), k=st.integers(1, 3),
       stride=st.integers(1, 2), pad=st.integers(0, 2), dil=st.integers(1, 2),
       bias=st.booleans(), red=st.sampled_from(["mean", "sum"]), low_memory=st.booleans(),
       seed=st.integers(0, 2**16))
def test_ghost_norm_and_patch_sum(dim, b, groups, cin_g, cout_g, k, stride, pad, dil, bias, red,
                                  low_memory, seed):
    """After a ghost norm the clipped sum is one GEMM over the norm's patches
    (``_patch_weighted_sum``; in the low-memory mode on small maps only): every
    geometry equals the per-sample ground truth."""
    torch.manual_seed(seed)
    cin, cout = cin_g * groups, cout_g * groups
    size = {1: (9,), 2: (8, 7), 3: (5, 6, 5)}[dim]
    x = torch.randn(b, cin, *size, dtype=torch.float64)
    y = torch.randint(0, 3, (b,))
    conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]

    def built():
        torch.manual_seed(seed + 1)
        m = nn.Sequential(conv_cls(cin, cout, k, stride=stride, padding=pad, dilation=dil,
                                   groups=groups, bias=bias), nn.Tanh(), nn.Flatten(),
                          nn.LazyLinear(3)).double()
        m(x[:1])
        return m

    with mock.patch.object(conv, "_patch_weighted_sum", wraps=conv._patch_weighted_sum) as served, \
            mock.patch.object(conv, "prefer_ghost", lambda *a, **kw: True):
        check_parity(built, x, y, reduction=red, max_grad_norm=0.1, low_memory=low_memory,
                     **F64)
    steps = built()[0](x[:1]).shape[2:].numel()
    assert served.called == (not low_memory or steps <= conv.SMALL_MAP_STEPS)
