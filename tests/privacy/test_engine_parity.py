"""Parity of the book-keeping engine with a slow per-sample ground truth (noise 0).

float64: rtol 1e-10. float32: rtol 1e-4, atol 1e-6 (gradients here are O(1e-2..1)).
Shapes and hyperparameters come from Hypothesis; both loss reductions.
"""

from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from parity import check_parity
from modelsec_fast.privacy.layers import DPMultiheadAttention

FAST = settings(max_examples=8, deadline=None)
F64 = dict(rtol=1e-10, atol=1e-13)
F32 = dict(rtol=1e-4, atol=1e-6)


@contextmanager
def forced_path(path):
    """Force the ghost-norm or the materialised path in the Linear and Conv rules."""
    if path == "auto":
        yield
        return
    choice = path == "ghost"
    with mock.patch("modelsec_fast.privacy.per_sample.conv.prefer_ghost",
                    lambda *a, **k: choice), \
            mock.patch("modelsec_fast.privacy.per_sample.linear.prefer_ghost",
                       lambda *a, **k: choice):
        yield


PATHS = st.sampled_from(["auto", "ghost", "materialise"])


def _seeded(seed):
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class Reuse(nn.Module):
    """One Linear called twice in a forward (per-sample grad = sum over calls)."""

    def __init__(self, d, k):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.head = nn.Linear(d, k)

    def forward(self, x):
        return self.head(self.lin(torch.tanh(self.lin(x))))


class SeqHead(nn.Module):
    def __init__(self, inner, d, k):
        super().__init__()
        self.inner = inner
        self.head = nn.Linear(d, k)

    def forward(self, x):
        return self.head(self.inner(x).mean(1))


@FAST
@given(b=st.integers(1, 6), d=st.integers(1, 7), h=st.integers(1, 9), k=st.integers(2, 4),
       red=st.sampled_from(["mean", "sum"]), clip=st.sampled_from([1e-3, 0.1, 10.0]),
       seed=st.integers(0, 2**16))
def test_linear_2d_matches_ground_truth(b, d, h, k, red, clip, seed):
    _seeded(seed)
    x = torch.randn(b, d, dtype=torch.float64)
    y = torch.randint(0, k, (b,))
    check_parity(lambda: nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, k, bias=False))
                 .double(), x, y, reduction=red, max_grad_norm=clip, **F64)


@FAST
@given(b=st.integers(1, 5), t=st.integers(1, 9), d=st.integers(1, 6), p=st.integers(1, 6),
       red=st.sampled_from(["mean", "sum"]), path=PATHS, seed=st.integers(0, 2**16))
def test_linear_sequence_matches_ground_truth(b, t, d, p, red, path, seed):
    _seeded(seed)
    x = torch.randn(b, t, d, dtype=torch.float64)
    y = torch.randint(0, 3, (b,))
    with forced_path(path):
        check_parity(lambda: SeqHead(nn.Sequential(nn.Linear(d, p), nn.GELU()), p, 3).double(),
                     x, y, reduction=red, max_grad_norm=0.05, **F64)


@FAST
@given(b=st.integers(1, 5), d=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_linear_called_twice_in_one_forward(b, d, seed):
    _seeded(seed)
    x = torch.randn(b, d, dtype=torch.float64)
    y = torch.randint(0, 3, (b,))
    check_parity(lambda: Reuse(d, 3).double(), x, y, max_grad_norm=0.1, **F64)


@settings(max_examples=10, deadline=None)
@given(nd=st.sampled_from([1, 2, 3]), b=st.integers(1, 4), groups=st.sampled_from([1, 2]),
       cin_g=st.integers(1, 3), cout_g=st.integers(1, 3), k=st.integers(1, 3),
       stride=st.integers(1, 2), pad=st.integers(0, 2), dil=st.integers(1, 2),
       bias=st.booleans(), red=st.sampled_from(["mean", "sum"]), path=PATHS,
       seed=st.integers(0, 2**16))
def test_conv_matches_ground_truth(nd, b, groups, cin_g, cout_g, k, stride, pad, dil, bias,
                                   red, path, seed):
    _seeded(seed)
    size = {1: 11, 2: 7, 3: 5}[nd]
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
    cin, cout = cin_g * groups, cout_g * groups
    x = torch.randn((b, cin) + (size,) * nd, dtype=torch.float64)
    y = torch.randint(0, 3, (b,))

    def make():
        return nn.Sequential(conv(cin, cout, k, stride=stride, padding=pad, dilation=dil,
                                  groups=groups, bias=bias),
                             nn.Flatten(), nn.LazyLinear(3)).double()

    def built():
        m = make()
        m(x[:1])  # materialise LazyLinear
        return m

    with forced_path(path):
        check_parity(built, x, y, reduction=red, max_grad_norm=0.1, **F64)


@settings(max_examples=6, deadline=None)
@given(mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
       padding=st.sampled_from([1, "same", "valid"]), seed=st.integers(0, 2**16))
def test_conv_padding_modes(mode, padding, seed):
    _seeded(seed)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (3,))

    def make():
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=padding, padding_mode=mode),
                          nn.Flatten(), nn.LazyLinear(3)).double()
        m(x[:1])
        return m

    check_parity(make, x, y, max_grad_norm=0.2, **F64)


def test_cost_rule_picks_ghost_for_2d_inputs_and_small_maps():
    from modelsec_fast.privacy.per_sample.base import MATERIALISE_BUDGET, prefer_ghost
    assert prefer_ghost(1, 512, 784, batch=256)            # 2-D Linear: ghost, always
    assert not prefer_ghost(128, 128, 128, batch=32)      # long sequence, small layer
    assert prefer_ghost(16, 128, 576, batch=128)          # 4x4 feature map
    big = int(MATERIALISE_BUDGET ** 0.5)                  # too big to materialise:
    assert prefer_ghost(64, big, big, batch=4)            # published rule 2T^2 <= pd


def test_conv_ghost_path_grouped_strided():
    _seeded(3)
    x = torch.randn(5, 16, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    with forced_path("ghost"):
        check_parity(lambda: nn.Sequential(nn.Conv2d(16, 8, 3, stride=2, padding=1, groups=2),
                                           nn.Flatten(), nn.Linear(8 * 4, 3)).double(),
                     x, y, max_grad_norm=0.05, **F64)


@FAST
@given(b=st.integers(1, 5), t=st.integers(1, 8), vocab=st.integers(2, 9), dim=st.integers(1, 5),
       pad=st.sampled_from([None, 0]), red=st.sampled_from(["mean", "sum"]),
       seed=st.integers(0, 2**16))
def test_embedding_matches_ground_truth(b, t, vocab, dim, pad, red, seed):
    g = _seeded(seed)
    idx = torch.randint(0, vocab, (b, t), generator=g)  # small vocab: repeated tokens
    y = torch.randint(0, 3, (b,))
    check_parity(lambda: SeqHead(nn.Embedding(vocab, dim, padding_idx=pad), dim, 3).double(),
                 idx, y, reduction=red, max_grad_norm=0.1, **F64)


NORMS = {
    "layernorm": lambda c: nn.LayerNorm(c),
    "layernorm_nobias": lambda c: nn.LayerNorm(c, bias=False),
    "rmsnorm": lambda c: nn.RMSNorm(c),
    "groupnorm": lambda c: nn.GroupNorm(2, c),
    "instancenorm": lambda c: nn.InstanceNorm2d(c, affine=True),
}


@settings(max_examples=10, deadline=None)
@given(kind=st.sampled_from(sorted(NORMS)), b=st.integers(1, 5), c2=st.integers(1, 3),
       red=st.sampled_from(["mean", "sum"]), seed=st.integers(0, 2**16))
def test_norm_layers_match_ground_truth(kind, b, c2, red, seed):
    _seeded(seed)
    c = 2 * c2
    if kind.startswith(("layer", "rms")):
        x = torch.randn(b, 3, c, dtype=torch.float64)
        make = lambda: SeqHead(nn.Sequential(nn.Linear(c, c), NORMS[kind](c)), c, 3).double()
    else:
        x = torch.randn(b, 2, 5, 5, dtype=torch.float64)
        make = lambda: nn.Sequential(nn.Conv2d(2, c, 3), NORMS[kind](c), nn.ReLU(),
                                     nn.Flatten(), nn.Linear(c * 9, 3)).double()
    y = torch.randint(0, 3, (b,))
    check_parity(make, x, y, reduction=red, max_grad_norm=0.1, **F64)


@settings(max_examples=5, deadline=None)
@given(b=st.integers(1, 4), t=st.integers(1, 6), heads=st.sampled_from([1, 2]),
       batch_first=st.booleans(), seed=st.integers(0, 2**16))
def test_dp_multihead_attention_matches_ground_truth(b, t, heads, batch_first, seed):
    _seeded(seed)
    d = 4

    class Attn(nn.Module):
        """Takes (B, T, d); runs attention, LayerNorm and a Linear in the model's layout."""

        def __init__(self):
            super().__init__()
            self.attn = DPMultiheadAttention(d, heads, batch_first=batch_first)
            self.norm = nn.LayerNorm(d)
            self.proj = nn.Linear(d, d)
            self.head = nn.Linear(d, 3)

        def forward(self, x):
            seq_dim = 1 if batch_first else 0
            if not batch_first:
                x = x.transpose(0, 1)
            h = self.proj(self.norm(self.attn(x, x, x, need_weights=False)[0]))
            return self.head(h.mean(seq_dim))

    x = torch.randn(b, t, d, dtype=torch.float64)
    y = torch.randint(0, 3, (b,))
    check_parity(lambda: Attn().double(), x, y, max_grad_norm=0.1, batch_first=batch_first,
                 **F64)


def test_transformer_encoder_layer_after_fix():
    from modelsec_fast.privacy.validate import ModuleValidator
    _seeded(7)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 8)
            layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.enc(self.emb(x)).mean(1))

    idx = torch.randint(0, 11, (4, 6))
    y = torch.randint(0, 3, (4,))
    check_parity(lambda: ModuleValidator.fix(Tiny().double()), idx, y, max_grad_norm=0.05, **F64)


@settings(max_examples=5, deadline=None)
@given(b=st.integers(2, 9), k=st.integers(2, 4), red=st.sampled_from(["mean", "sum"]),
       skip=st.booleans(), seed=st.integers(0, 2**16))
def test_accumulation_over_micro_batches(b, k, red, skip, seed):
    # k physical batches of one logical batch == one backward over the whole batch
    _seeded(seed)
    x = torch.randn(b, 2, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (b,))
    make = lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(),
                                 nn.Linear(64, 3)).double()
    # per-micro-batch mean losses: sum_i c_i g_i / E[B] still holds (Opacus semantics)
    check_parity(make, x, y, reduction=red, max_grad_norm=0.1, micro_batches=k,
                 use_skip=skip, expected_batch_size=b, **F64)


def test_float32_parity_within_stated_tolerance():
    _seeded(11)
    x = torch.randn(16, 3, 8, 8)
    y = torch.randint(0, 5, (16,))
    make = lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(),
                                 nn.Conv2d(8, 8, 3, stride=2), nn.Flatten(),
                                 nn.Linear(8 * 9, 16), nn.LayerNorm(16), nn.Linear(16, 5))
    check_parity(make, x, y, max_grad_norm=0.5, **F32)


def test_empty_batch_gives_zero_sums():
    _seeded(1)
    x = torch.randn(0, 2, 5, 5, dtype=torch.float64)
    y = torch.zeros(0, dtype=torch.long)
    make = lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(),
                                 nn.Linear(36, 3)).double()
    truth = check_parity(make, x, y, max_grad_norm=1.0, expected_batch_size=4, **F64)
    assert all(float(t.abs().max()) == 0.0 for t in truth)


# Heavier sweeps of the same properties (deselected by default; run with -m slow).
SLOW = settings(max_examples=80, deadline=None)


@pytest.mark.slow
@SLOW
@given(nd=st.sampled_from([1, 2, 3]), b=st.integers(1, 6), groups=st.sampled_from([1, 2, 3]),
       cin_g=st.integers(1, 3), cout_g=st.integers(1, 3), k=st.integers(1, 4),
       stride=st.integers(1, 3), pad=st.integers(0, 2), dil=st.integers(1, 3),
       bias=st.booleans(), red=st.sampled_from(["mean", "sum"]), path=PATHS,
       seed=st.integers(0, 2**16))
def test_conv_matches_ground_truth_sweep(nd, b, groups, cin_g, cout_g, k, stride, pad, dil,
                                         bias, red, path, seed):
    size = {1: 11, 2: 7, 3: 5}[nd]  # the inner test's input sizes
    if size + 2 * pad < (k - 1) * dil + 1:
        return  # kernel larger than the padded input: not a valid layer
    test_conv_matches_ground_truth.hypothesis.inner_test(
        nd, b, groups, cin_g, cout_g, k, stride, pad, dil, bias, red, path, seed)


@pytest.mark.slow
@SLOW
@given(b=st.integers(1, 8), t=st.integers(1, 12), vocab=st.integers(2, 20),
       dim=st.integers(1, 6), pad=st.sampled_from([None, 0, 1]),
       red=st.sampled_from(["mean", "sum"]), seed=st.integers(0, 2**16))
def test_embedding_matches_ground_truth_sweep(b, t, vocab, dim, pad, red, seed):
    test_embedding_matches_ground_truth.hypothesis.inner_test(b, t, vocab, dim, pad, red, seed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, F64), (torch.float32, F32)])
def test_cuda_parity(dtype, tol):
    _seeded(21)
    dev = torch.device("cuda")
    x = torch.randn(12, 3, 8, 8, dtype=dtype, device=dev)
    y = torch.randint(0, 5, (12,), device=dev)
    make = lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(),
                                 nn.Conv2d(8, 8, 3, stride=2), nn.Flatten(),
                                 nn.Linear(8 * 9, 16), nn.LayerNorm(16),
                                 nn.Linear(16, 5)).to(dev, dtype)
    check_parity(make, x, y, max_grad_norm=0.5, **tol)
