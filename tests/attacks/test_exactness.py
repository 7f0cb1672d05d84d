"""Bit-exactness against torchattacks 3.5.1 (a test-only dependency), fp32 CPU."""

import pytest
import torch

import modelsec_fast.attacks as ma

torchattacks = pytest.importorskip("torchattacks", reason="torchattacks is a test-only anchor")

SEED = 1234


def _pair(name, model, kwargs, x, y, setup=None):
    torch.manual_seed(SEED)
    ref_atk = getattr(torchattacks, name)(model, **kwargs)
    ours_atk = getattr(ma, name)(model, **kwargs)
    if setup is not None:
        setup(ref_atk)
        setup(ours_atk)
    torch.manual_seed(SEED)
    ref = ref_atk(x, y)
    torch.manual_seed(SEED)
    ours = ours_atk(x, y)
    return ref, ours


CASES = [
    ("FGSM", dict(eps=8 / 255)),
    ("FGSM", dict(eps=0.1)),
    ("PGD", dict(eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)),
    ("PGD", dict(eps=0.1, alpha=0.01, steps=7, random_start=False)),
    ("PGD", dict(eps=0.1, alpha=0.03, steps=5, random_start=True)),
    ("FFGSM", dict(eps=0.1, alpha=0.12)),
]


@pytest.mark.parametrize("name,kwargs", CASES)
def test_matches_torchattacks_bit_for_bit(name, kwargs, digits_mlp):
    x, y = digits_mlp.x[:97], digits_mlp.y[:97]
    ref, ours = _pair(name, digits_mlp.model, kwargs, x, y)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert torch.equal(ours, ref), f"max diff {(ours - ref).abs().max().item()}"


@pytest.mark.parametrize("name", ["FGSM", "PGD"])
def test_matches_torchattacks_on_a_cnn_and_odd_batch(name, digits_cnn):
    x, y = digits_cnn.x[:33], digits_cnn.y[:33]
    kwargs = dict(eps=8 / 255) if name == "FGSM" else dict(random_start=False)
    ref, ours = _pair(name, digits_cnn.model, kwargs, x, y)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("name", ["FGSM", "PGD"])
def test_matches_torchattacks_in_targeted_mode(name, digits_mlp):
    x, y = digits_mlp.x[:50], digits_mlp.y[:50]
    targets = (y + 3) % 10
    kwargs = dict(eps=0.1) if name == "FGSM" else dict(eps=0.1, alpha=0.02, random_start=False)
    ref, ours = _pair(name, digits_mlp.model, kwargs, x, targets,
                      setup=lambda a: a.set_mode_targeted_by_label(quiet=True))
    assert torch.equal(ours, ref)


def test_matches_torchattacks_with_normalization(digits_mlp):
    mean, std = [0.3], [0.4]
    model = torch.nn.Sequential(_Normalize(mean, std), digits_mlp.model).eval()
    x, y = digits_mlp.x[:40], digits_mlp.y[:40]
    xn = (x - 0.3) / 0.4
    ref, ours = _pair("PGD", model, dict(eps=0.1, alpha=0.02, random_start=False), xn, y,
                      setup=lambda a: a.set_normalization_used(mean, std))
    assert torch.equal(ours, ref), f"max diff {(ours - ref).abs().max().item()}"


def test_pgdl2_matches_torchattacks(digits_mlp):
    x, y = digits_mlp.x[:61], digits_mlp.y[:61]
    for kwargs in (dict(eps=1.0, alpha=0.2, random_start=False), dict(eps=0.5, alpha=0.1)):
        ref, ours = _pair("PGDL2", digits_mlp.model, kwargs, x, y)
        # The fused l2_step computes in the same order; allow rounding in its norms.
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_bim_matches_torchattacks_to_rounding(digits_mlp):
    # BIM's clipping is written differently in torchattacks (bounds x - eps and
    # x + eps instead of clamping the perturbation): equal up to an ulp.
    x, y = digits_mlp.x[:61], digits_mlp.y[:61]
    ref, ours = _pair("BIM", digits_mlp.model, dict(eps=0.1, alpha=0.02, steps=6), x, y)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


class _Normalize(torch.nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

    def forward(self, x):
        # The model expects pixel-space images; normalised inputs are undone here.
        return x * self.std + self.mean
