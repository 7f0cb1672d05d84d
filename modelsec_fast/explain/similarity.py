"""How similar two attribution maps are, and how far an attack moved one.

Maps are compared as heatmaps of attribution magnitude: for image batches
(B, C, H, W) the absolute attribution summed over channels, (B, H, W); for any
other shape the absolute attribution per feature. Two measures per example:

* Spearman rank correlation of the two heatmaps (1: same order of importance,
  0: unrelated), with average ranks for ties;
* top-k overlap: the share of the k most attributed features that both maps
  share, k a fraction of the features (1: same top features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modelsec_fast.validation import check_in_range

from .attributions import check_attribution_inputs

__all__ = ["heatmap", "rank_correlation", "top_k_overlap", "AttributionShift",
           "attribution_shift", "DEFAULT_TOP_K_FRACTION"]

# The top 10% of features: small enough to be "where the model looks".
DEFAULT_TOP_K_FRACTION = 0.1


def heatmap(attributions: torch.Tensor) -> torch.Tensor:
    """Attribution magnitude per location: |a| summed over channels for (B, C, H, W),
    |a| otherwise; shape (B, H, W) or like ``attributions``."""
    attributions = check_attribution_inputs(attributions, "attributions")
    magnitude = attributions.detach().abs()
    return magnitude.sum(1) if magnitude.dim() == 4 else magnitude


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = check_attribution_inputs(a, "first"), check_attribution_inputs(b, "second")
    if a.shape != b.shape:
        raise ValueError(f"maps must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.detach().flatten(1).double(), b.detach().flatten(1).to(a.device).double()


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0..D-1 along the last dim, tied values sharing their mean rank."""
    order = values.argsort(dim=1, stable=True)
    sorted_values = values.gather(1, order)
    positions = torch.arange(values.shape[1], device=values.device, dtype=values.dtype)
    positions = positions.expand_as(values)
    # Each run of equal values gets the mean of its positions.
    new_run = torch.ones_like(sorted_values, dtype=torch.bool)
    new_run[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    run_id = new_run.cumsum(1) - 1
    run_sum = torch.zeros_like(values).scatter_add_(1, run_id, positions)
    run_len = torch.zeros_like(values).scatter_add_(1, run_id, torch.ones_like(values))
    mean_rank = (run_sum / run_len.clamp_min(1)).gather(1, run_id)
    return torch.empty_like(values).scatter_(1, order, mean_rank)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per example of two maps of one shape (B, ...),
    (B,) float64 in [-1, 1]; 0 where either map is constant (no order to compare)."""
    a, b = _pair(a, b)
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return torch.where(denominator > 0, (ra * rb).sum(1) / denominator.clamp_min(1e-300),
                       torch.zeros_like(denominator))


def top_k_overlap(a: torch.Tensor, b: torch.Tensor,
                  fraction: float = DEFAULT_TOP_K_FRACTION) -> torch.Tensor:
    """Share of the top-k features of ``a`` that are among the top-k of ``b``, per
    example, (B,) float64 in [0, 1]; k = max(1, round(fraction x features))."""
    fraction = check_in_range("fraction", fraction, 0.0, 1.0, low_open=True)
    a, b = _pair(a, b)
    k = max(1, round(fraction * a.shape[1]))
    in_a = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.topk(k, dim=1).indices, True)
    in_b = torch.zeros_like(b, dtype=torch.bool).scatter_(1, b.topk(k, dim=1).indices, True)
    return (in_a & in_b).sum(1).double() / k


@dataclass
class AttributionShift:
    """Clean and adversarial attributions of the same examples, side by side.

    ``clean``/``adversarial``: the attribution maps (B, ...); ``rank_correlation``
    and ``top_k_overlap``: (B,) similarity of their heatmaps (see the module
    docstring; low means the attack moved the evidence), with ``top_k_fraction``.
    """

    clean: torch.Tensor
    adversarial: torch.Tensor
    rank_correlation: torch.Tensor
    top_k_overlap: torch.Tensor
    top_k_fraction: float

    @property
    def mean_rank_correlation(self) -> float:
        return float(self.rank_correlation.mean())

    @property
    def mean_top_k_overlap(self) -> float:
        return float(self.top_k_overlap.mean())

    def to_json(self) -> dict:
        """The similarity figures (not the maps)."""
        return {"top_k_fraction": self.top_k_fraction,
                "rank_correlation": self.rank_correlation.tolist(),
                "top_k_overlap": self.top_k_overlap.tolist(),
                "mean_rank_correlation": self.mean_rank_correlation,
                "mean_top_k_overlap": self.mean_top_k_overlap}


def attribution_shift(clean: torch.Tensor, adversarial: torch.Tensor, *,
                      top_k_fraction: float = DEFAULT_TOP_K_FRACTION) -> AttributionShift:
    """How far the attribution moved from clean to adversarial inputs: the heatmaps'
    rank correlation and top-k overlap per example.

    ``clean`` and ``adversarial`` are attributions (B, ...) of one method for the
    same examples and target (for example the true label). Raises ValueError for
    maps of different shapes.
    """
    top_k_fraction = check_in_range("top_k_fraction", top_k_fraction, 0.0, 1.0, low_open=True)
    maps_clean, maps_adv = heatmap(clean), heatmap(adversarial)
    if maps_clean.shape != maps_adv.shape:
        raise ValueError(f"clean and adversarial attributions must have one shape, got "
                         f"{tuple(clean.shape)} and {tuple(adversarial.shape)}")
    return AttributionShift(clean.detach(), adversarial.detach(),
                            rank_correlation(maps_clean, maps_adv),
                            top_k_overlap(maps_clean, maps_adv, top_k_fraction), top_k_fraction)
