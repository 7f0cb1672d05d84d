"""DP-SGD's protection against gradient inversion, as a number.

:func:`dp_protection` gives each image its own one-image update, once as the
plain gradient and once per noise multiplier as the update the DP engine
releases (clipped to ``max_grad_norm``, noised, scaled), runs one attack on all
of them, and reports the reconstructions' PSNR, SSIM and label accuracy per
setting. With ``other_images`` (for instance another image of the same class per
image) it also reports the PSNR against those: a reconstruction no closer to its
own image than to another of its class has revealed nothing about that image
beyond its class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..validation import check_non_negative, check_positive
from .gradients import dp_gradient, plain_gradient
from .metrics import psnr

__all__ = ["DPProtectionRow", "DPProtectionResult", "dp_protection"]


@dataclass(frozen=True)
class DPProtectionRow:
    """One setting: ``noise_multiplier`` None is the plain gradient (no clipping, no
    noise). Means over the images; ``mean_psnr_other`` is None without other images."""

    noise_multiplier: float | None
    max_grad_norm: float | None
    mean_psnr: float
    mean_ssim: float
    label_accuracy: float | None
    mean_psnr_other: float | None

    def to_json(self) -> dict:
        return {"noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm,
                "mean_psnr": self.mean_psnr, "mean_ssim": self.mean_ssim,
                "label_accuracy": self.label_accuracy, "mean_psnr_other": self.mean_psnr_other}


@dataclass
class DPProtectionResult:
    """The rows of :func:`dp_protection`, the attack's name and settings, the images
    (N, C, H, W) and each setting's reconstructions (keyed like the rows)."""

    attack: str
    rows: list[DPProtectionRow]
    images: torch.Tensor = field(repr=False)
    reconstructions: dict = field(repr=False, default_factory=dict)
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def row(self, noise_multiplier: float | None) -> DPProtectionRow:
        for r in self.rows:
            if r.noise_multiplier == noise_multiplier:
                return r
        raise KeyError(f"no row for noise multiplier {noise_multiplier}")

    def to_json(self) -> dict:
        return {"attack": self.attack, "images": len(self.images),
                "rows": [r.to_json() for r in self.rows], "settings": dict(self.settings),
                "seconds": self.seconds}


def dp_protection(attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  noise_multipliers: Sequence[float] = (0.1, 1.0), max_grad_norm: float = 1.0,
                  include_plain: bool = True, other_images: torch.Tensor | None = None,
                  seed: int = 0) -> DPProtectionResult:
    """Reconstructs every image of ``x`` (N, C, H, W) in [0, 1] (labels ``y`` (N,)) from
    its own one-image update, plain and under DP-SGD at each noise multiplier.

    Args:
        attack: an object with ``reconstruct(updates, input_shape=...)`` returning a
            :class:`~modelsec_fast.inversion.GradientInversionResult` (any attack here).
        noise_multipliers: the DP engine's sigmas (>= 0).
        max_grad_norm: the clipping bound C of the DP updates.
        include_plain: add the plain averaged gradient as the first row.
        other_images: (N, C, H, W): also report the PSNR against these.
        seed: the DP noise (image i's update uses ``seed + i``).
    Raises:
        ValueError: images outside [0, 1], mismatched shapes, a sigma < 0, C <= 0.
    """
    import time

    started = time.perf_counter()
    sigmas = [check_non_negative("noise_multiplier", s) for s in noise_multipliers]
    check_positive("max_grad_norm", max_grad_norm)
    if other_images is not None and other_images.shape != x.shape:
        raise ValueError(f"other_images must be shaped like x {tuple(x.shape)}, got "
                         f"{tuple(other_images.shape)}")
    settings: list[float | None] = ([None] if include_plain else []) + sigmas
    rows, reconstructions = [], {}
    for sigma in settings:
        if sigma is None:
            updates = [plain_gradient(model, x[i:i + 1], y[i:i + 1]) for i in range(len(x))]
        else:
            updates = [dp_gradient(model, x[i:i + 1], y[i:i + 1], noise_multiplier=sigma,
                                   max_grad_norm=max_grad_norm, seed=seed + i)
                       for i in range(len(x))]
        result = attack.reconstruct(updates, input_shape=tuple(x.shape[1:]))
        scores = result.score(x, y)
        other = None if other_images is None else float(psnr(result.images, other_images).mean())
        rows.append(DPProtectionRow(sigma, None if sigma is None else float(max_grad_norm),
                                    scores.mean_psnr, scores.mean_ssim, scores.label_accuracy,
                                    other))
        reconstructions[sigma] = result.images
    return DPProtectionResult(getattr(attack, "name", type(attack).__name__), rows,
                              x.detach().cpu(), reconstructions,
                              {"max_grad_norm": max_grad_norm, "seed": seed,
                               "attack": getattr(attack, "settings", lambda: {})()
                               if callable(getattr(attack, "settings", None)) else {}},
                              time.perf_counter() - started)
