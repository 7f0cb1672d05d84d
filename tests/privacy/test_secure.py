"""Secure mode: OS-CSPRNG Poisson masks and ChaCha20 noise.

Statistical tests use significance level 1e-6. Secure draws cannot be seeded
(that is the point), so these tests have no seed to log; the size of each
sample is fixed and a failure prints the statistic.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelsec_fast import PrivacyEngine, ops
from modelsec_fast.privacy.sampling import DPDataLoader
from modelsec_fast.privacy.secure import (
    inclusion_threshold,
    secure_bernoulli_mask,
    secure_seed,
    secure_uniform_uint64,
)

ALPHA = 1e-6


def _two_sided_ok(z):
    return abs(z) < stats.norm.isf(ALPHA / 2)


# ---------------------------------------------------------------- masks and words

def test_secure_words_are_uniform_ks():
    u = secure_uniform_uint64(50_000).astype(np.float64) / 2.0**64
    result = stats.kstest(u, "uniform")
    assert result.pvalue > ALPHA, result


@pytest.mark.parametrize("p", [0.003, 0.3, 0.9])
def test_secure_bernoulli_mask_has_rate_p(p):
    n = 200_000
    hits = int(secure_bernoulli_mask(n, p).sum())
    z = (hits - n * p) / math.sqrt(n * p * (1 - p))
    assert _two_sided_ok(z), (p, hits, z)


def test_secure_mask_edges_and_threshold_never_exceeds_p():
    assert secure_bernoulli_mask(0, 0.5).shape == (0,)
    assert bool(secure_bernoulli_mask(17, 1.0).all())
    assert not bool(secure_bernoulli_mask(1000, 0.0).any())
    for p in (1e-9, 1 / 3, 0.5, 1 - 1e-12):
        assert inclusion_threshold(p) / 2**64 <= p
        assert p - inclusion_threshold(p) / 2**64 < 2**-63
    with pytest.raises(ValueError, match="p must"):
        secure_bernoulli_mask(3, 1.5)


def test_secure_draws_ignore_and_do_not_touch_torch_global_seed():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = secure_bernoulli_mask(4096, 0.5)
    s1 = secure_seed()
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn from torch's generator
    torch.manual_seed(0)
    b = secure_bernoulli_mask(4096, 0.5)
    s2 = secure_seed()
    assert not torch.equal(a, b) and s1 != s2


def test_secure_loader_masks_do_not_depend_on_torch_seed_and_are_poisson():
    data = TensorDataset(torch.arange(500))

    def batches():
        torch.manual_seed(123)
        loader = DPDataLoader(data, sample_rate=0.1, steps=40, secure_mode=True)
        return [b[0].tolist() for b in loader]

    first, second = batches(), batches()
    assert first != second
    sizes = np.array([len(b) for b in first + second], dtype=np.float64)
    z = (sizes.mean() - 50) / math.sqrt(500 * 0.1 * 0.9 / len(sizes))
    assert _two_sided_ok(z), z


def test_secure_loader_refuses_a_seed_or_generator_and_saves_no_seed():
    data = TensorDataset(torch.arange(10))
    with pytest.raises(ValueError, match="secure_mode"):
        DPDataLoader(data, sample_rate=0.5, secure_mode=True, generator=torch.Generator())
    with pytest.raises(ValueError, match="secure_mode"):
        DPDataLoader(data, sample_rate=0.5, secure_mode=True, seed=3)
    state = DPDataLoader(data, sample_rate=0.5, secure_mode=True).state_dict()
    assert state["seed"] is None and state["secure_mode"] is True


# ---------------------------------------------------------------- secure noise

def test_secure_noise_op_is_gaussian_and_ignores_the_generator():
    std = 0.7
    draws = []
    for _ in range(2):
        g = torch.Generator().manual_seed(5)
        draws.append(ops.add_noise_(torch.zeros(40_000), std, generator=g, source="secure"))
    assert not torch.equal(draws[0], draws[1])
    x = draws[0].double().numpy()
    n = x.size
    assert _two_sided_ok(x.mean() / (std / math.sqrt(n)))
    chi2 = float((x**2).sum() / std**2)
    assert stats.chi2.sf(chi2, n) > ALPHA and stats.chi2.cdf(chi2, n) > ALPHA, chi2
    assert stats.kstest(x, "norm", args=(0.0, std)).pvalue > ALPHA


def _secure_engine_noise(sigma, clip):
    torch.manual_seed(0)  # must not fix the secure noise
    engine = PrivacyEngine(secure_mode=True, accountant="rdp")
    base = nn.Linear(100, 80)
    data = TensorDataset(torch.randn(64, 100), torch.zeros(64))
    model, opt, loader = engine.make_private(
        module=base, optimizer=torch.optim.SGD(base.parameters(), lr=0.0),
        data_loader=DataLoader(data, batch_size=8), noise_multiplier=sigma,
        max_grad_norm=clip, loss_reduction="sum")
    assert opt.noise_source == "secure" and loader.secure_mode
    x, _ = next(iter(loader))
    opt.zero_grad()
    (0.0 * model(x).sum()).backward()  # zero data gradient: p.grad is the noise alone
    opt.step()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()


def test_privacy_engine_secure_noise_statistics_and_independence_from_torch_seed():
    sigma, clip = 1.2, 0.5
    std = sigma * clip
    first = _secure_engine_noise(sigma, clip)
    second = _secure_engine_noise(sigma, clip)
    assert not torch.equal(first, second)
    x = first.numpy()
    n = x.size
    assert _two_sided_ok(x.mean() / (std / math.sqrt(n)))
    chi2 = float((x**2).sum() / std**2)
    assert stats.chi2.sf(chi2, n) > ALPHA and stats.chi2.cdf(chi2, n) > ALPHA, chi2
    assert stats.kstest(x, "norm", args=(0.0, std)).pvalue > ALPHA
