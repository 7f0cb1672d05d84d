"""The model-randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for
Saliency Maps"): do the maps depend on what the model learned?

Cascading randomisation: the layers with parameters are randomised one group at a
time from the top (the last registered layer, usually the logits) down, on a copy of the model, and after each group
the maps of the randomised copy are compared with the original maps. A method
whose maps stay similar when the model's weights are noise explains the input
(edges, textures), not the model, and its maps mean little for a security review.

Randomising a layer replaces each of its parameters with Gaussian noise of that
parameter's own mean and standard deviation: the layer's scale is kept, so the
activations stay in range, and what it learned is erased (the paper redraws from
the initialisation distribution instead).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from modelsec_fast.validation import check_choice, check_in_range, check_int

from .attributions import (check_attribution_inputs, integrated_gradients, resolve_target,
                           saliency, smoothgrad)
from .chunking import DEFAULT_MAX_INPUTS
from .similarity import DEFAULT_TOP_K_FRACTION, heatmap, rank_correlation, top_k_overlap

__all__ = ["RandomisationStage", "RandomisationCheck", "model_randomisation_check",
           "parameter_layers", "METHODS", "DEFAULT_MAX_SIMILARITY"]

METHODS: dict[str, Callable] = {"saliency": saliency,
                                "integrated_gradients": integrated_gradients,
                                "smoothgrad": smoothgrad}
# Spearman correlation of |maps| at which maps of a random model count as "still similar".
DEFAULT_MAX_SIMILARITY = 0.5


@dataclass(frozen=True)
class RandomisationStage:
    """The maps after the layers ``randomised`` (cumulative, top first) were
    randomised: mean rank correlation and mean top-k overlap with the original maps."""

    randomised: tuple[str, ...]
    rank_correlation: float
    top_k_overlap: float

    def to_json(self) -> dict:
        return {"randomised": list(self.randomised), "rank_correlation": self.rank_correlation,
                "top_k_overlap": self.top_k_overlap}


@dataclass
class RandomisationCheck:
    """The cascading-randomisation result of one attribution ``method`` on
    ``n_examples`` examples. ``passed``: the maps of the fully randomised model have a
    mean rank correlation with the original maps below ``max_similarity``."""

    method: str
    n_examples: int
    stages: list[RandomisationStage]
    max_similarity: float
    top_k_fraction: float

    @property
    def final_rank_correlation(self) -> float:
        return self.stages[-1].rank_correlation

    @property
    def passed(self) -> bool:
        return self.final_rank_correlation < self.max_similarity

    def to_json(self) -> dict:
        return {"method": self.method, "n_examples": self.n_examples,
                "max_similarity": self.max_similarity, "top_k_fraction": self.top_k_fraction,
                "final_rank_correlation": self.final_rank_correlation, "passed": self.passed,
                "stages": [s.to_json() for s in self.stages]}


def parameter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module with parameters of its own, in registration
    order (the input side first for models built in the order they compute)."""
    return [(name, m) for name, m in model.named_modules()
            if next(m.parameters(recurse=False), None) is not None]


@torch.no_grad()
def _randomise_(module: nn.Module, generator: torch.Generator) -> None:
    for param in module.parameters(recurse=False):
        std = param.std() if param.numel() > 1 else torch.zeros((), device=param.device)
        noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        param.copy_(param.mean() + std * noise.to(param.device))


def model_randomisation_check(model: nn.Module, inputs: torch.Tensor, target=None, *,
                              method: str = "saliency", n_stages: int = 5,
                              max_similarity: float = DEFAULT_MAX_SIMILARITY,
                              top_k_fraction: float = DEFAULT_TOP_K_FRACTION,
                              generator: torch.Generator | None = None,
                              max_inputs: int = DEFAULT_MAX_INPUTS,
                              **method_kwargs) -> RandomisationCheck:
    """Cascading model randomisation of ``method``'s maps on ``inputs`` (B, ...).

    Args:
        model: the classifier; it is copied, never changed.
        target: the class explained, fixed for every stage (None: the original
            model's predictions).
        method: a key of :data:`METHODS`; ``method_kwargs`` go to it.
        n_stages: groups the layers with parameters are randomised in (at most
            one group per layer); the last stage has every layer randomised.
        max_similarity: threshold on the final mean rank correlation (see
            :class:`RandomisationCheck`).
        generator: a CPU generator for the random weights (None: a fresh one
            seeded 0, so the check is reproducible).

    Raises:
        TypeError, ValueError: bad arguments; ValueError for a model without
        parameters.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = check_attribution_inputs(inputs)
    method = check_choice("method", method, tuple(METHODS))
    n_stages = check_int("n_stages", n_stages, 1)
    max_similarity = check_in_range("max_similarity", max_similarity, -1.0, 1.0)
    top_k_fraction = check_in_range("top_k_fraction", top_k_fraction, 0.0, 1.0, low_open=True)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    elif not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator must be a CPU torch.Generator, got {generator!r}")
    attribute = METHODS[method]
    target = resolve_target(model, inputs, target, max_inputs=max_inputs)
    original = heatmap(attribute(model, inputs, target, max_inputs=max_inputs, **method_kwargs))

    randomised_model = copy.deepcopy(model)
    top_first = parameter_layers(randomised_model)[::-1]
    if not top_first:
        raise ValueError("model has no parameters to randomise")
    n_stages = min(n_stages, len(top_first))
    bounds = [round(i * len(top_first) / n_stages) for i in range(n_stages + 1)]
    stages = []
    for first, last in zip(bounds[:-1], bounds[1:]):
        for _, layer in top_first[first:last]:
            _randomise_(layer, generator)
        maps = heatmap(attribute(randomised_model, inputs, target, max_inputs=max_inputs,
                                 **method_kwargs))
        stages.append(RandomisationStage(
            tuple(name or "(model)" for name, _ in top_first[:last]),
            float(rank_correlation(original, maps).mean()),
            float(top_k_overlap(original, maps, top_k_fraction).mean())))
    return RandomisationCheck(method, inputs.shape[0], stages, max_similarity, top_k_fraction)
