"""Layers reduced to per-sample gradients at capture (``LayerRule.compact``).

A Linear whose per-sample gradient will be materialised anyway is reduced when
its call is recorded, so its input and output gradient are freed during the
backward pass. A layer called twice may have one call reduced and one raw;
their contributions must still add up exactly (float64 against the per-sample
ground truth).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelsec_fast.privacy.per_sample import linear as linear_rule
from tests.privacy.parity import check_parity

F64 = dict(rtol=1e-10, atol=1e-13)


class TwiceCalledLinear(nn.Module):
    """One Linear on a long sequence (reduced at capture) and on a 2-D input (kept raw)."""

    def __init__(self, d, k, bias=True):
        super().__init__()
        self.lin = nn.Linear(d, d, bias=bias)
        self.head = nn.Linear(d, k)

    def forward(self, x):  # (B, T, d)
        h = self.lin(x).mean(1)
        return self.head(self.lin(torch.tanh(h)))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduced_and_raw_calls_of_one_linear_add_up(seed, bias, reduction, monkeypatch):
    seen = {"reduced": 0, "raw": 0}
    original = linear_rule.LinearRule.sq_norms

    def spy(self, module, calls, mask, batch_dim):
        seen["reduced"] += sum(c.parts is not None for c in calls)
        seen["raw"] += sum(c.parts is None for c in calls)
        return original(self, module, calls, mask, batch_dim)

    monkeypatch.setattr(linear_rule.LinearRule, "sq_norms", spy)
    torch.manual_seed(seed)
    b, t, d = 2 + seed, 6 + seed, 4
    x = torch.randn(b, t, d, dtype=torch.float64)
    y = torch.randint(0, 3, (b,))
    check_parity(lambda: TwiceCalledLinear(d, 3, bias).double(), x, y, reduction=reduction,
                 max_grad_norm=0.05, **F64)
    assert seen["reduced"] > 0 and seen["raw"] > 0  # both paths ran


class FrozenWeightSequenceLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.lin.weight.requires_grad_(False)  # only the bias is trained: reduced to sum_t g_t
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.lin(x).mean(1))


def test_a_sequence_linear_training_only_its_bias():
    torch.manual_seed(1)
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    check_parity(lambda: FrozenWeightSequenceLinear().double(), x, torch.randint(0, 3, (5,)),
                 max_grad_norm=0.05, **F64)


class SequenceSecondLayerNorm(nn.Module):
    """LayerNorm over ``shape`` on (T, B, *shape) inputs (the engine's batch_first=False)."""

    def __init__(self, shape):
        super().__init__()
        self.norm = nn.LayerNorm(shape)
        self.head = nn.Linear(shape[-1], 3)

    def forward(self, x):  # x arrives (B, T, *shape) from the parity harness's slicing
        h = self.norm(x.transpose(0, 1)).mean(0)
        while h.dim() > 2:
            h = h.mean(1)
        return self.head(h)


@pytest.mark.parametrize("shape", [(4,), (3, 4)])
def test_layer_norm_statistics_path_with_sequence_second_inputs(shape):
    torch.manual_seed(2)
    x = torch.randn(5, 6, *shape, dtype=torch.float64)
    check_parity(lambda: SequenceSecondLayerNorm(shape).double(), x, torch.randint(0, 3, (5,)),
                 max_grad_norm=0.05, batch_first=False, **F64)
