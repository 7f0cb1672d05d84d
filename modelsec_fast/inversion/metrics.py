"""Image-reconstruction metrics: PSNR, SSIM, label accuracy; LPIPS only from disk.

Every metric compares pixel-space images in [0, 1] shaped (N, C, H, W), image by
image, and returns one value per image.
"""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F

from ..validation import check_pixel_range

__all__ = ["MAX_PSNR_DB", "psnr", "ssim", "label_accuracy", "lpips", "lpips_status"]

# PSNR of an exact reconstruction is infinite; it is reported as this many dB
# (an MSE of 1e-10), so averages and JSON stay finite.
MAX_PSNR_DB = 100.0


def _pair(x: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != reference.shape or x.dim() != 4:
        raise ValueError(f"images must both be (N, C, H, W) of one shape, got "
                         f"{tuple(x.shape)} and {tuple(reference.shape)}")
    check_pixel_range(x, where=" (reconstruction)")
    check_pixel_range(reference, where=" (reference images)")
    return x.double(), reference.double()


def psnr(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB (peak 1), (N,) float64, at most
    :data:`MAX_PSNR_DB`.

    Raises:
        ValueError: shapes that differ or are not (N, C, H, W); pixels outside [0, 1].
    """
    x, reference = _pair(x, reference)
    mse = ((x - reference) ** 2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp_min(10 ** (-MAX_PSNR_DB / 10)))


def _gaussian_window(size: int, sigma: float, dtype) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, reference: torch.Tensor, *, window: int = 7,
         sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), (N,) float64 in [-1, 1].

    Gaussian window of ``window`` pixels (shrunk to the largest odd size that fits
    the image) and std ``sigma``, constants (0.01)^2 and (0.03)^2 for a peak of 1,
    averaged over the valid window positions and the channels.
    """
    x, reference = _pair(x, reference)
    size = min(window, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2
    c = x.shape[1]
    kernel = _gaussian_window(size, sigma, x.dtype).expand(c, 1, size, size)

    def blur(t):
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(reference)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(reference * reference) - mu_y ** 2
    cov = blur(x * reference) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / \
        ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(1)


def label_accuracy(predicted: torch.Tensor, true: torch.Tensor) -> float:
    """Fraction of labels recovered exactly. Labels of a batch are compared as a
    multiset (a batch's gradient does not say which image had which label)."""
    predicted, true = predicted.long().flatten().cpu(), true.long().flatten().cpu()
    if predicted.shape != true.shape or len(true) == 0:
        raise ValueError(f"label tensors must hold the same number (>= 1) of labels, got "
                         f"{tuple(predicted.shape)} and {tuple(true.shape)}")
    k = int(max(predicted.max(), true.max())) + 1
    matched = torch.minimum(torch.bincount(predicted, minlength=k),
                            torch.bincount(true, minlength=k)).sum()
    return float(matched) / len(true)


def lpips_status() -> tuple[bool, str]:
    """Whether LPIPS can run without a download: (available, reason when not).

    LPIPS needs the ``lpips`` package and its backbone's ImageNet weights in the torch
    hub cache; it would fetch missing weights at run time, which this library never does.
    """
    if importlib.util.find_spec("lpips") is None:
        return False, "the lpips package is not installed"
    hub = os.path.join(torch.hub.get_dir(), "checkpoints")
    names = os.listdir(hub) if os.path.isdir(hub) else []
    if not any(n.startswith("alexnet") for n in names):
        return False, (f"LPIPS's AlexNet weights are not in {hub}; lpips would download "
                       "them at run time")
    return True, ""


def lpips(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor | None:
    """LPIPS distance (AlexNet, (N,) float64) where :func:`lpips_status` allows it, else
    None. Images of one channel are repeated to three; [0, 1] maps to LPIPS's [-1, 1]."""
    available, _ = lpips_status()
    if not available:
        return None
    import lpips as lpips_package

    x, reference = _pair(x, reference)
    if x.shape[1] == 1:
        x, reference = x.repeat(1, 3, 1, 1), reference.repeat(1, 3, 1, 1)
    metric = lpips_package.LPIPS(net="alex", verbose=False).double()
    with torch.no_grad():
        return metric(2 * x - 1, 2 * reference - 1).flatten()
