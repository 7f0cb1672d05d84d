"""Dirty-label backdoor attacks with an input trigger: BadNets, Blended and WaNet.

Each poisons ``round(rate * N)`` training samples (drawn from the non-target
classes for all-to-one, from every class for all-to-all), stamps the trigger on
them and relabels them; :meth:`apply_trigger` stamps the same trigger on test
inputs. Images are pixel-space (B, C, H, W) in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..validation import check_in_range, check_int, check_positive
from .base import TriggerAttack, check_images

__all__ = ["BadNets", "Blended", "WaNet", "POSITIONS"]

POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left")


def _pattern_tensor(name: str, pattern: torch.Tensor) -> torch.Tensor:
    if not isinstance(pattern, torch.Tensor) or not pattern.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1] or a pattern name")
    if pattern.numel() == 0 or not bool(torch.isfinite(pattern).all()) \
            or float(pattern.min()) < 0.0 or float(pattern.max()) > 1.0:
        raise ValueError(f"{name} must hold finite values in [0, 1]")
    return pattern.detach()


class BadNets(TriggerAttack):
    """BadNets (Gu et al. 2017): a small patch in a corner, relabelled to the target.

    Args:
        target: the attacker's class (all-to-one) or unused (all-to-all: y -> y + 1).
        rate: fraction of the training set poisoned, in (0, 1].
        size: the patch's side in pixels (>= 1); must fit the images.
        position: a corner name (``POSITIONS``) or the patch's top-left (row, col).
        pattern: ``"checkerboard"`` (1 on the diagonal parity, 0 elsewhere),
            ``"white"`` (all ones), or a float tensor (size, size) or (C, size, size)
            in [0, 1].
        mode: ``"all-to-one"`` or ``"all-to-all"``.
        seed: seeds the choice of poisons.
        num_classes: None: taken from the labels.

    Raises:
        ValueError: bad arguments; at poisoning or :meth:`apply_trigger`, a patch
            larger than the image or placed outside it.
    """

    name = "BadNets"

    def __init__(self, target: int = 0, rate: float = 0.1, *, size: int = 3,
                 position="bottom-right", pattern="checkerboard", mode: str = "all-to-one",
                 seed: int = 0, num_classes: int | None = None):
        super().__init__(target, rate, mode, seed, num_classes)
        self.size = check_int("size", size, 1)
        if isinstance(position, str):
            if position not in POSITIONS:
                raise ValueError(f"position must be one of {', '.join(POSITIONS)} or (row, col), "
                                 f"got {position!r}")
        else:
            try:
                row, col = position
                position = (check_int("position row", row, 0), check_int("position column", col, 0))
            except (TypeError, ValueError) as err:
                raise ValueError(f"position must be a corner name or (row, col) of ints >= 0, "
                                 f"got {position!r}") from err
        self.position = position
        if isinstance(pattern, str):
            if pattern not in ("checkerboard", "white"):
                raise ValueError("pattern must be 'checkerboard', 'white' or a tensor, "
                                 f"got {pattern!r}")
            grid = torch.arange(self.size)
            self.pattern = (((grid[:, None] + grid[None, :]) % 2 == 0).float()
                            if pattern == "checkerboard" else torch.ones(self.size, self.size))
            self.pattern_name = pattern
        else:
            pattern = _pattern_tensor("pattern", pattern)
            if pattern.shape[-2:] != (self.size, self.size) or pattern.dim() not in (2, 3):
                raise ValueError(f"pattern must be ({self.size}, {self.size}) or "
                                 f"(C, {self.size}, {self.size}), got {tuple(pattern.shape)}")
            self.pattern = pattern
            self.pattern_name = "custom"

    def settings(self):
        position = self.position if isinstance(self.position, str) else list(self.position)
        return {**super().settings(), "size": self.size, "position": position,
                "pattern": self.pattern_name}

    def _corner(self, h: int, w: int) -> tuple[int, int]:
        """Top-left pixel of the patch in an (h, w) image; ValueError if it does not fit."""
        s = self.size
        if s > h or s > w:
            raise ValueError(f"trigger of size {s}x{s} is larger than the {h}x{w} images")
        if isinstance(self.position, str):
            row = h - s if self.position.startswith("bottom") else 0
            col = w - s if self.position.endswith("right") else 0
            return row, col
        row, col = self.position
        if row + s > h or col + s > w:
            raise ValueError(f"trigger of size {s}x{s} at (row {row}, column {col}) leaves the "
                             f"{h}x{w} images")
        return row, col

    def trigger_mask(self, shape) -> torch.Tensor:
        """(H, W) float mask, 1 where the patch goes, for images of ``shape`` (..., H, W)."""
        h, w = shape[-2:]
        row, col = self._corner(h, w)
        mask = torch.zeros(h, w)
        mask[row:row + self.size, col:col + self.size] = 1.0
        return mask

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        h, w = x.shape[-2:]
        row, col = self._corner(h, w)
        pattern = self.pattern.to(x.device, x.dtype)
        if pattern.dim() == 3 and pattern.shape[0] != x.shape[1]:
            raise ValueError(f"pattern has {pattern.shape[0]} channels, the images {x.shape[1]}")
        out = x.clone()
        out[:, :, row:row + self.size, col:col + self.size] = pattern
        return out


class Blended(TriggerAttack):
    """Blended injection (Chen et al. 2017): ``(1 - alpha) * x + alpha * pattern``.

    Args:
        target, rate, mode, seed, num_classes: as :class:`BadNets`.
        pattern: ``"noise"`` (a uniform-noise image drawn from ``seed``, fixed for the
            attack) or a float tensor (C, H, W) or (H, W) in [0, 1] of the images' size.
        alpha: blend ratio in (0, 1].
    """

    name = "Blended"

    def __init__(self, target: int = 0, rate: float = 0.1, *, pattern="noise",
                 alpha: float = 0.2, mode: str = "all-to-one", seed: int = 0,
                 num_classes: int | None = None):
        super().__init__(target, rate, mode, seed, num_classes)
        self.alpha = check_in_range("alpha", alpha, 0.0, 1.0, low_open=True)
        if isinstance(pattern, str):
            if pattern != "noise":
                raise ValueError(f"pattern must be 'noise' or a tensor, got {pattern!r}")
            self.pattern, self.pattern_name = None, "noise"
        else:
            self.pattern, self.pattern_name = _pattern_tensor("pattern", pattern), "custom"

    def settings(self):
        return {**super().settings(), "alpha": self.alpha, "pattern": self.pattern_name}

    def pattern_for(self, x: torch.Tensor) -> torch.Tensor:
        """The blend pattern (C, H, W) for images like ``x``."""
        c, h, w = x.shape[1:]
        if self.pattern is None:
            g = torch.Generator().manual_seed(self.seed + 7)
            return torch.rand(c, h, w, generator=g).to(x.device, x.dtype)
        p = self.pattern
        if p.dim() == 2:
            p = p.expand(c, *p.shape)
        if tuple(p.shape) != (c, h, w):
            raise ValueError(f"pattern of shape {tuple(self.pattern.shape)} does not match "
                             f"images of shape {(c, h, w)}")
        return p.to(x.device, x.dtype)

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return (1.0 - self.alpha) * x + self.alpha * self.pattern_for(x)


class WaNet(TriggerAttack):
    """WaNet-style warping trigger (Nguyen & Tran 2021): an invisible, smooth warp.

    A random ``k`` x ``k`` field of offsets (drawn from ``seed``, normalised to mean
    absolute value 1) is upsampled bicubically to the image size and added,
    scaled by ``strength / H``, to the identity sampling grid; the trigger is the
    image resampled through that grid (``grid_sample``, bilinear). The paper's
    "noise mode" (extra samples with random warps and their true labels) is not
    implemented.

    Args:
        target, rate, mode, seed, num_classes: as :class:`BadNets`.
        k: control-grid size (>= 2, at most the image's smaller side).
        strength: warp strength s (> 0); the paper uses 0.5.
    """

    name = "WaNet"

    def __init__(self, target: int = 0, rate: float = 0.1, *, k: int = 4,
                 strength: float = 0.5, mode: str = "all-to-one", seed: int = 0,
                 num_classes: int | None = None):
        super().__init__(target, rate, mode, seed, num_classes)
        self.k = check_int("k", k, 2)
        self.strength = check_positive("strength", strength)

    def settings(self):
        return {**super().settings(), "k": self.k, "strength": self.strength}

    def grid_for(self, h: int, w: int, device, dtype) -> torch.Tensor:
        """The warped sampling grid (1, H, W, 2) in grid_sample's [-1, 1] coordinates."""
        if self.k > min(h, w):
            raise ValueError(f"k = {self.k} control points exceed the {h}x{w} images")
        g = torch.Generator().manual_seed(self.seed + 11)
        offsets = torch.rand(1, 2, self.k, self.k, generator=g, dtype=torch.float64) * 2 - 1
        offsets = offsets / offsets.abs().mean()
        field = F.interpolate(offsets, size=(h, w), mode="bicubic", align_corners=True)
        field = field.permute(0, 2, 3, 1)  # (1, H, W, 2), (x, y) offsets
        ys = torch.linspace(-1, 1, h, dtype=torch.float64)
        xs = torch.linspace(-1, 1, w, dtype=torch.float64)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        identity = torch.stack([xx, yy], dim=-1)[None]
        grid = (identity + self.strength * field / h).clamp(-1, 1)
        return grid.to(device, dtype)

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        h, w = x.shape[-2:]
        grid = self.grid_for(h, w, x.device, x.dtype).expand(x.shape[0], h, w, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                             align_corners=True).clamp(0.0, 1.0)
