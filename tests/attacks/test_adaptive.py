"""EOT and BPDA wrappers: stronger than the plain attack where they should be, transparent otherwise."""

import pytest
import torch
from torch import nn

import modelsec_fast.attacks as ma
from modelsec_fast.evaluate import robust_accuracy
from tests.attacks.strength import robust_acc

SEED = 5


class InputDropout(nn.Module):
    """A randomised defence: drops each input pixel with probability ``p`` on every call."""

    def __init__(self, inner, p=0.5):
        super().__init__()
        self.inner, self.p = inner, p

    def forward(self, x):
        return self.inner(x * (torch.rand_like(x) > self.p) / (1 - self.p))


class Quantise(nn.Module):
    """Non-differentiable preprocessing: 5 grey levels (zero gradient almost everywhere)."""

    def forward(self, x):
        return torch.round(x * 4) / 4


def expected_accuracy(model, adv, y, draws=20) -> float:
    with torch.no_grad():
        return sum(float((model(adv).argmax(1) == y).float().mean()) for _ in range(draws)) / draws


def test_eot_is_stronger_than_the_plain_attack_on_a_random_defence(digits_cnn):
    m = InputDropout(digits_cnn.model).eval()
    x, y = digits_cnn.x[:200], digits_cnn.y[:200]
    torch.manual_seed(SEED)
    plain = expected_accuracy(m, ma.PGD(m, eps=0.1, alpha=0.04, steps=5)(x, y), y)
    torch.manual_seed(SEED)
    eot = expected_accuracy(m, ma.EOT(ma.PGD(m, eps=0.1, alpha=0.04, steps=5), samples=10)(x, y), y)
    print(f"seed {SEED}: expected accuracy plain {plain:.3f}, EOT {eot:.3f}")
    assert eot <= plain - 0.02, f"seed {SEED}: EOT {eot:.3f} not below plain {plain:.3f}"


def test_eot_applies_its_transform_and_restores_the_model(digits_cnn):
    m = digits_cnn.model
    calls = []

    def jitter(x):
        calls.append(x.shape[0])
        return (x + 0.05 * torch.randn_like(x)).clamp(0, 1)

    inner = ma.PGD(m, eps=0.1, alpha=0.05, steps=3)
    atk = ma.EOT(inner, samples=4, transform=jitter)
    adv = atk(digits_cnn.x[:8], digits_cnn.y[:8])
    assert calls == [8] * 12  # 3 steps x 4 samples
    assert inner.model is m and atk.eps == 0.1 and atk.norm == "Linf" and atk.stochastic
    assert float((adv - digits_cnn.x[:8]).abs().max()) <= 0.1 + 1e-6
    assert "EOT(samples=4, transform=jitter" in repr(atk)


def test_bpda_breaks_a_rounding_defence_that_plain_pgd_cannot(digits_cnn):
    m = nn.Sequential(Quantise(), digits_cnn.model).eval()
    x, y = digits_cnn.x[:100], digits_cnn.y[:100]
    clean = robust_acc(m, x, y)
    torch.manual_seed(SEED)
    plain = robust_acc(m, ma.PGD(m, eps=0.15, alpha=0.04, steps=10)(x, y), y)
    torch.manual_seed(SEED)
    bpda = robust_acc(m, ma.BPDA(ma.PGD(m, eps=0.15, alpha=0.04, steps=10), m[0])(x, y), y)
    print(f"seed {SEED}: clean {clean:.2f}, plain PGD {plain:.2f}, BPDA {bpda:.2f}")
    assert plain >= clean - 0.05  # the zero gradient stops plain PGD
    assert bpda <= 0.2 * clean
    assert not m[0]._forward_hooks  # the straight-through hook is gone after the call


def test_wrappers_work_inside_robust_accuracy(digits_cnn):
    m = nn.Sequential(Quantise(), digits_cnn.model).eval()
    x, y = digits_cnn.x[:60], digits_cnn.y[:60]
    torch.manual_seed(SEED)
    atk = ma.BPDA(ma.PGD(m, eps=0.15, alpha=0.04, steps=10), m[0])
    result = robust_accuracy(m, (x, y), [atk], progress=False, check_masking=False)
    record = result.per_attack["BPDA"]
    assert record.rejected == 0 and record.broken > 0.8 * round(result.clean_accuracy * 60)
    assert result.eps == 0.15 and result.norm == "Linf"


def test_wrappers_pass_normalisation_and_modes_through(digits_mlp):
    from tests.attacks.strength import Unnormalising
    m = Unnormalising(digits_mlp.model).eval()
    inner = ma.PGD(m, eps=0.1, alpha=0.02, steps=3, random_start=False)
    atk = ma.EOT(inner, samples=1)
    atk.set_normalization_used([0.5], [0.25])
    assert inner.normalization_used is not None and atk.normalization_used is not None
    x, y = digits_mlp.x[:10], digits_mlp.y[:10]
    plain = ma.PGD(digits_mlp.model, eps=0.1, alpha=0.02, steps=3, random_start=False)(x, y)
    torch.testing.assert_close(atk((x - 0.5) / 0.25, y) * 0.25 + 0.5, plain, rtol=0, atol=1e-5)
    atk.set_mode_targeted_random()
    assert inner.targeted and atk.attack_mode == "targeted(random)"


def test_bad_wrapper_arguments_raise(digits_mlp):
    m = nn.Sequential(Quantise(), digits_mlp.model)
    with pytest.raises(TypeError, match="wraps a modelsec_fast attack"):
        ma.EOT("pgd")
    with pytest.raises(ValueError, match="samples must be >= 1"):
        ma.EOT(ma.PGD(m), samples=0)
    with pytest.raises(TypeError, match="transform must be callable"):
        ma.EOT(ma.PGD(m), transform=3)
    with pytest.raises(ValueError, match="not a submodule"):
        ma.BPDA(ma.PGD(m), Quantise())
    with pytest.raises(TypeError, match="preprocess must be the nn.Module"):
        ma.BPDA(ma.PGD(m), torch.round)
    atk = ma.BPDA(ma.PGD(m, steps=1), m[0], approximation=lambda x: x.flatten(1))
    with pytest.raises(ValueError, match="approximation gives shape"):
        atk(digits_mlp.x[:2], digits_mlp.y[:2])
    assert not m[0]._forward_hooks
