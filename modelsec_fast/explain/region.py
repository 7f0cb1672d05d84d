"""The share of attribution inside a region: does the model look at the trigger?

A backdoored model decides triggered inputs by the trigger patch; its attribution
mass then concentrates in the trigger's region. The region is a known trigger
mask or one reverse-engineered (Neural Cleanse's mask, values in [0, 1]): a soft
mask weights each location by its value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .similarity import heatmap

__all__ = ["RegionAttribution", "attribution_in_region"]


@dataclass
class RegionAttribution:
    """``share``: (B,) fraction of each example's attribution magnitude inside the
    region; ``area``: (B,) the region's share of the locations (what a map spread
    evenly would give); ``lift``: share / area (1: no preference for the region)."""

    share: torch.Tensor
    area: torch.Tensor

    @property
    def lift(self) -> torch.Tensor:
        return self.share / self.area

    @property
    def mean_share(self) -> float:
        return float(self.share.mean())

    @property
    def mean_area(self) -> float:
        return float(self.area.mean())

    def to_json(self) -> dict:
        return {"share": self.share.tolist(), "area": self.area.tolist(),
                "mean_share": self.mean_share, "mean_area": self.mean_area,
                "mean_lift": float(self.lift.mean())}


def attribution_in_region(attributions: torch.Tensor, mask: torch.Tensor) -> RegionAttribution:
    """The share of attribution magnitude inside ``mask``, per example.

    Args:
        attributions: (B, C, H, W) image attributions (heatmap summed over
            channels) or (B, ...) for other data.
        mask: the region, values in [0, 1] (bool allowed), shaped like one heatmap
            ((H, W) for images), or (B, H, W) for one region per example.

    Raises:
        TypeError: ``mask`` not a tensor.
        ValueError: a mask of another shape, values outside [0, 1], an empty
            region, or an example whose attribution is zero everywhere.
    """
    maps = heatmap(attributions).double()
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape not in (maps.shape, maps.shape[1:]):
        raise ValueError(f"mask must have shape {tuple(maps.shape[1:])} (one region) or "
                         f"{tuple(maps.shape)} (one per example), got {tuple(mask.shape)}")
    weights = mask.detach().to(maps.device, torch.float64).expand_as(maps).flatten(1)
    if not bool(((weights >= 0) & (weights <= 1)).all()):
        raise ValueError("mask values must lie in [0, 1]")
    maps = maps.flatten(1)
    total, area = maps.sum(1), weights.mean(1)
    if bool((area == 0).any()):
        raise ValueError("mask is empty (zero everywhere) for at least one example")
    if bool((total == 0).any()):
        raise ValueError("attributions are zero everywhere for at least one example; "
                         "no share can be computed")
    return RegionAttribution((maps * weights).sum(1) / total, area)
