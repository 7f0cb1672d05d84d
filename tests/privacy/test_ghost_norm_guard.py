"""Ghost norms are never negative, and never low enough to let a clipped sample exceed C.

The ghost norm <A A^T, G G^T> cancels when a sample's time steps pull against
each other: in float32 it came out negative (a NaN norm, a refused step) for
samples with tiny gradients, and low for samples with large ones, which let
their clipped contribution exceed C. Here each sample's two time steps are
a, a (1 + delta) with output gradients g, -g, so its per-sample gradient
-delta g a^T is small against its terms; the exact float64 norm of every
clipped contribution must stay within C (1 + 1e-5). The low-memory mode's chunk-wise
materialised norms (book-kept sum) must too.
"""

import pytest
import torch
from torch import nn
from unittest import mock

from modelsec_fast.privacy.optimizer import DPOptimizer
from modelsec_fast.privacy.per_sample import PrivateModule
from modelsec_fast.privacy.per_sample import clipping, linear
from modelsec_fast.privacy.per_sample.base import ghost_sq_norm

C = 1.0


def _cancelling_batch(batch, d, p, dtype, scales, delta, gen):
    """x: (B, 2, d), v: (B, 2, p) output gradients; sample i scaled by scales[i]."""
    a = torch.randn(batch, 1, d, generator=gen, dtype=torch.float64)
    g = torch.randn(batch, 1, p, generator=gen, dtype=torch.float64)
    s = torch.as_tensor(scales, dtype=torch.float64).reshape(-1, 1, 1)
    x = torch.cat([a, a * (1 + delta)], 1) * s
    v = torch.cat([g, -g], 1)
    return x.to(dtype), v.to(dtype)


def _clip_norms_seen(model, x, v, low_memory=False):
    """Run one private step (loss sum(out * v), noise 0); the norms clip_pass returned."""
    seen = []
    real = clipping.clip_pass

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out[1].detach().double())
        return out

    pm = PrivateModule(model, loss_reduction="sum", low_memory=low_memory)
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                      max_grad_norm=C, expected_batch_size=None, loss_reduction="sum")
    with mock.patch("modelsec_fast.privacy.optimizer.clip_pass", spy):
        (pm(x) * v).sum().backward()
        opt.step()
    pm.cleanup()
    return seen[0]


@pytest.mark.parametrize("dtype,delta", [(torch.float32, 1e-3), (torch.bfloat16, 2.0 ** -6)])
@pytest.mark.parametrize("d,p,low_memory,method", [
    (24, 20, False, "ghost_sq_norm"),
    (8, 8, True, "chunked_sq_norms")])  # the low-memory mode's chunked norm (bounded)
def test_clipped_contribution_never_exceeds_c(dtype, delta, d, p, low_memory, method,
                                              random_seed):
    gen = torch.Generator().manual_seed(random_seed)
    batch = 16
    # sample norms from 1e-6 C (tiny: the negative ghost norm) to 1e3 C (clipped)
    scales = torch.logspace(-4, 5, batch, dtype=torch.float64) / (delta * (d * p) ** 0.5)
    x, v = _cancelling_batch(batch, d, p, dtype, scales.tolist(), delta, gen)
    model = nn.Linear(d, p, bias=False).to(dtype)
    with mock.patch.object(linear, method, wraps=getattr(linear, method)) as spy:
        norms = _clip_norms_seen(model, x, v, low_memory)
    assert spy.called
    assert torch.isfinite(norms).all() and (norms >= 0).all()
    exact = torch.linalg.matrix_norm(v.double().transpose(1, 2) @ x.double())  # (B,)
    factors = (C / (norms + 1e-6)).clamp(max=1.0)
    contribution = factors * exact
    assert (contribution <= C * (1 + 1e-5)).all(), (contribution.max().item(), exact, norms)
    # and the guard does not over-clip: the computed norm is within 1e-3 of the exact one
    torch.testing.assert_close(norms, exact, rtol=1e-3, atol=1e-12)


def test_ghost_norm_of_tiny_gradient_is_finite_and_non_negative():
    a = torch.tensor([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0 + 3e-7]]])
    g = torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]])
    sq = ghost_sq_norm(a, g)
    exact = ((g.double().transpose(1, 2) @ a.double()) ** 2).sum()
    assert torch.isfinite(sq).all() and float(sq) >= 0
    assert float(sq) >= float(exact)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_ghost_norm_is_guarded_too(dtype, random_seed):
    # a 1x1 convolution over 2 positions is the Linear case above in conv layout
    gen = torch.Generator().manual_seed(random_seed)
    delta = 1e-3 if dtype == torch.float32 else 2.0 ** -6
    batch, d, p = 8, 12, 10
    scales = torch.logspace(-3, 4, batch, dtype=torch.float64) / (delta * (d * p) ** 0.5)
    x, v = _cancelling_batch(batch, d, p, dtype, scales.tolist(), delta, gen)
    xc = x.transpose(1, 2).unsqueeze(-1).contiguous()  # (B, d, 2, 1)
    vc = v.transpose(1, 2).unsqueeze(-1).contiguous()
    model = nn.Conv2d(d, p, 1, bias=False).to(dtype)
    with mock.patch("modelsec_fast.privacy.per_sample.conv.prefer_ghost", lambda *a, **k: True):
        norms = _clip_norms_seen(model, xc, vc)
    exact = torch.linalg.matrix_norm(v.double().transpose(1, 2) @ x.double())
    factors = (C / (norms + 1e-6)).clamp(max=1.0)
    assert torch.isfinite(norms).all() and (norms >= 0).all()
    assert (factors * exact <= C * (1 + 1e-5)).all()


@pytest.mark.parametrize("d,p", [(24, 20), (300, 200)])  # the guard's path, then all-float64
def test_ghost_norm_bounds_the_exact_norm_from_above_tightly(d, p, random_seed):
    gen = torch.Generator().manual_seed(random_seed)
    x, v = _cancelling_batch(6, d, p, torch.float32, [1.0] * 6, 1e-3, gen)
    sq = ghost_sq_norm(x, v)
    exact = ((v.double().transpose(1, 2) @ x.double()) ** 2).sum((1, 2))
    assert sq.dtype == torch.float32
    assert (sq.double() >= exact).all()
    torch.testing.assert_close(sq.double(), exact, rtol=1e-5, atol=0)


def test_ghost_norm_of_one_time_step_is_the_product_of_norms(random_seed):
    gen = torch.Generator().manual_seed(random_seed)
    a = torch.randn(5, 1, 300, generator=gen)
    g = torch.randn(5, 1, 40, generator=gen)
    exact = ((g.double().transpose(1, 2) @ a.double()) ** 2).sum((1, 2))
    torch.testing.assert_close(ghost_sq_norm(a, g).double(), exact, rtol=1e-6, atol=0)
