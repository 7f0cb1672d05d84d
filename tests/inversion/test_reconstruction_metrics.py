"""PSNR, SSIM and label accuracy on images whose answers are known."""

import pytest
import torch

from modelsec_fast.inversion import MAX_PSNR_DB, label_accuracy, lpips_status, psnr, ssim


def test_psnr_of_a_known_error_and_of_an_exact_copy():
    x = torch.full((2, 1, 4, 4), 0.5)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01: 20 dB
    values = psnr(y, x)
    assert float(values[0]) == pytest.approx(20.0) and float(values[1]) == MAX_PSNR_DB


def test_ssim_is_one_for_a_copy_and_lower_for_noise(random_seed):
    g = torch.Generator().manual_seed(random_seed)
    x = torch.rand(3, 1, 8, 8, generator=g)
    noisy = (x + 0.3 * torch.randn(3, 1, 8, 8, generator=g)).clamp(0, 1)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert bool((ssim(noisy, x) < 0.9).all())


def test_label_accuracy_and_bad_shapes():
    assert label_accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75
    with pytest.raises(ValueError, match="must hold the same number"):
        label_accuracy(torch.tensor([1]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"images must both be \(N, C, H, W\)"):
        psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr(torch.full((1, 1, 4, 4), 2.0), torch.zeros(1, 1, 4, 4))


def test_lpips_says_why_it_is_unavailable():
    available, reason = lpips_status()
    assert available or reason  # never downloads: either ready from disk or a reason
