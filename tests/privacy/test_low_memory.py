"""The engine's low-memory mode (``grad_sample_mode="ghost"``): per-sample norms by
whichever method needs less memory, the same update as the default (fast) mode."""
from unittest import mock

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelsec_fast import PrivacyEngine
from modelsec_fast.privacy.per_sample import base, linear
from modelsec_fast.privacy.per_sample.base import chunked_norm_pays, prefer_ghost
from tests.privacy.parity import check_parity

F64 = dict(rtol=1e-10, atol=1e-13)


class TokenNet(nn.Module):
    """A Linear over 12 tokens (T = 12, p = 16, d = 18): the fast mode materialises its
    per-sample gradient (T^2 (p + d) > GHOST_FACTOR p d), the low-memory mode takes the
    ghost norm (2 T^2 <= p d). Then a Conv1d and a head."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(18, 16)
        self.conv = nn.Conv1d(16, 6, 3, padding=1)
        self.head = nn.Linear(6 * 12, 3)

    def forward(self, x):
        h = torch.tanh(self.proj(x))  # (B, 12, 16)
        return self.head(torch.tanh(self.conv(h.transpose(1, 2))).flatten(1))


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(7, 12, 18, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (7,), generator=g))


def _built():
    torch.manual_seed(1)
    return TokenNet().double()


@pytest.mark.parametrize("low_memory", [False, True])
def test_both_modes_equal_the_ground_truth(low_memory):
    x, y = _data()
    check_parity(_built, x, y, max_grad_norm=0.1, low_memory=low_memory, **F64)


@pytest.mark.parametrize("low_memory, ghost_calls", [(False, 0), (True, 1)])
def test_the_low_memory_mode_takes_the_ghost_norm(low_memory, ghost_calls):
    """Only the mode decides here: the fast mode materialises proj's (B, 16, 18)
    per-sample gradient, the low-memory mode takes its ghost norm."""
    assert not prefer_ghost(12, 16, 18, batch=7) and prefer_ghost(12, 16, 18, low_memory=True)
    x, y = _data(1)
    real = linear.ghost_sq_norm
    with mock.patch.object(linear, "ghost_sq_norm", wraps=real) as spy:
        check_parity(_built, x, y, max_grad_norm=0.1, low_memory=low_memory, **F64)
    assert spy.call_count == ghost_calls


def test_grad_sample_mode_ghost_selects_the_low_memory_mode():
    x, y = _data()
    loader = DataLoader(TensorDataset(x.float(), y), batch_size=7)
    for mode, expected in [(None, False), ("hooks", False), ("ghost", True)]:
        model = TokenNet()
        out = PrivacyEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=loader, noise_multiplier=0.0, max_grad_norm=1.0,
            grad_sample_mode=mode)
        assert out[0].capture_state.low_memory is expected
        out[0].cleanup()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fp32_low_memory_mode_takes_chunked_norms_where_they_pay(seed):
    """proj (T = 12, p = 16, d = 18) in float32: the low-memory mode forms its per-sample
    gradients a chunk of samples at a time for the norms (faster than a float64 ghost
    norm at this shape) and book-keeps the sum; the update equals the ground truth."""
    assert chunked_norm_pays(12, 16, 18)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(7, 12, 18, generator=g), torch.randint(0, 3, (7,), generator=g)
    with mock.patch.object(linear, "chunked_sq_norms", wraps=linear.chunked_sq_norms) as chunked, \
            mock.patch.object(linear, "ghost_sq_norm", wraps=linear.ghost_sq_norm) as ghost, \
            mock.patch.object(base, "CHUNK_BYTES", 16 * 18 * 4 * 3):  # 3 samples a chunk
        check_parity(TokenNet, x, y, max_grad_norm=0.1, low_memory=True, rtol=1e-4, atol=1e-6)
    assert chunked.call_count == 1 and ghost.call_count == 0


def test_chunked_sq_norms_equal_the_per_sample_norms():
    g = torch.Generator().manual_seed(3)
    a, gr = torch.randn(5, 4, 3, generator=g), torch.randn(5, 4, 6, generator=g)
    want = torch.stack([(gr[i].T.double() @ a[i].double()).square().sum() for i in range(5)])
    with mock.patch.object(base, "CHUNK_BYTES", 6 * 3 * 4 * 2):  # chunks of 2, 2 and 1
        got = base.chunked_sq_norms(a, gr)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)
    assert base.chunked_sq_norms(a[:0], gr[:0]).shape == (0,)


def test_chunked_norms_pay_on_the_measured_shapes():
    """The crossover measured on 2 threads (see chunked_norm_pays)."""
    assert chunked_norm_pays(64, 128, 128) and chunked_norm_pays(64, 512, 128)  # BERT, GPT-2
    assert chunked_norm_pays(65, 576, 192) and chunked_norm_pays(65, 768, 192)  # ViT-tiny
    assert not chunked_norm_pays(32, 1024, 256)  # the LSTM's recurrent layer


@pytest.mark.parametrize("steps", [8, 400])  # 400: the bound exceeds 1e-4, float64 recompute
def test_bounded_chunked_norms_are_never_low_and_at_most_1e_4_high(steps, random_seed):
    g = torch.Generator().manual_seed(random_seed)
    a, gr = torch.randn(6, steps, 5, generator=g), torch.randn(6, steps, 7, generator=g)
    exact = torch.stack([(gr[i].T.double() @ a[i].double()).square().sum() for i in range(6)])
    got = base.chunked_sq_norms(a, gr, bounded=True).double()
    assert (got >= exact).all()
    assert (got.sqrt() <= exact.sqrt() * (1 + 1e-4)).all()
