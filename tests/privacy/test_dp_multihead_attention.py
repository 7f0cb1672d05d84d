"""DPMultiheadAttention: add_bias_kv, and nn.MultiheadAttention's state-dict layout."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelsec_fast.privacy.layers import DPMultiheadAttention
from modelsec_fast.privacy.optimizer import DPOptimizer
from modelsec_fast.privacy.per_sample import PrivateModule


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 5])
def test_loads_a_multihead_attention_state_dict_and_computes_the_same(batch_first, kdim,
                                                                      random_seed):
    torch.manual_seed(random_seed)
    mha = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=batch_first, kdim=kdim,
                                vdim=kdim).double()
    dp = DPMultiheadAttention(8, 2, add_bias_kv=True, batch_first=batch_first, kdim=kdim,
                              vdim=kdim).double()
    dp.load_state_dict(mha.state_dict())
    q = torch.randn(3, 4, 8, dtype=torch.float64)
    kv = torch.randn(3, 6, kdim or 8, dtype=torch.float64)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, -1] = True
    want, _ = mha(q, kv, kv, key_padding_mask=mask)
    got, _ = dp(q, kv, kv, key_padding_mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch_first", [True, False])
def test_add_bias_kv_update_matches_ground_truth(batch_first, random_seed):
    torch.manual_seed(random_seed)
    dim = 1 if batch_first else 0

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = DPMultiheadAttention(8, 2, add_bias_kv=True, batch_first=batch_first)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.att(x, x, x)[0].mean(dim))

    model = Net().double()
    x = torch.randn(5, 4, 8, dtype=torch.float64)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    y = torch.randint(0, 3, (5,))
    C = 0.05
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i in range(5):
        xi = x[i:i + 1] if batch_first else x[:, i:i + 1]
        grads = torch.autograd.grad(F.cross_entropy(model(xi), y[i:i + 1]), params)
        c = min(1.0, C / (float(torch.sqrt(sum((g ** 2).sum() for g in grads))) + 1e-6))
        for t, g in zip(total, grads):
            t += c * g / 5
    pm = PrivateModule(model, batch_first=batch_first)
    opt = DPOptimizer(torch.optim.SGD(params, lr=0.0), noise_multiplier=0.0, max_grad_norm=C,
                      expected_batch_size=5)
    opt.zero_grad()
    F.cross_entropy(pm(x), y).backward()
    opt.step()
    assert model.att.bias_k.grad is not None
    for p, t in zip(params, total):
        torch.testing.assert_close(p.grad, t, rtol=1e-10, atol=1e-13)
    pm.cleanup()


def test_fix_converts_a_multihead_attention_with_bias_kv():
    from modelsec_fast.privacy import ModuleValidator
    mha = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)
    fixed = ModuleValidator.fix(nn.Sequential(mha))[0]
    assert isinstance(fixed, DPMultiheadAttention)
    torch.testing.assert_close(fixed.bias_k, mha.bias_k)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(fixed(x, x, x)[0], mha(x, x, x)[0], rtol=1e-5, atol=1e-6)
