"""Training a fresh copy of the user's architecture: LiRA's shadow models and trigger
repair need models trained "the same way" as the user's (a factory and a recipe)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from modelsec_fast.validation import check_choice, check_int, check_non_negative, check_positive

from .inputs import FitRecipe

__all__ = ["fit", "check_recipe", "parse_recipe"]


def check_recipe(recipe: FitRecipe) -> FitRecipe:
    """``recipe`` unchanged; ValueError naming the field for a value out of range."""
    check_int("epochs", recipe.epochs, 1)
    check_int("batch_size", recipe.batch_size, 1)
    check_positive("lr", recipe.lr)
    check_choice("optimizer", recipe.optimizer, ("adam", "sgd"))
    check_non_negative("weight_decay", recipe.weight_decay)
    return recipe


def parse_recipe(text: str) -> FitRecipe:
    """``"epochs=20,lr=1e-3,batch_size=64,optimizer=adam"`` (any subset) as a checked
    :class:`FitRecipe`; ValueError naming the bad item."""
    fields = {"epochs": int, "batch_size": int, "lr": float, "optimizer": str,
              "weight_decay": float}
    values = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in fields or not value:
            raise ValueError(f"--recipe: expected NAME=VALUE with NAME in "
                             f"{', '.join(fields)}, got {item!r}")
        try:
            values[name] = fields[name](value.strip())
        except ValueError:
            raise ValueError(f"--recipe: {name} must be {fields[name].__name__}, "
                             f"got {value!r}") from None
    return check_recipe(FitRecipe(**values))


def fit(factory: Callable[[], nn.Module], recipe: FitRecipe, x: torch.Tensor, y: torch.Tensor,
        *, seed: int, device: torch.device | str = "cpu") -> nn.Module:
    """``factory()`` trained on (x (N, ...), y (N,) int64) by ``recipe``; returned in
    eval mode on ``device``. Seeded: the same call gives the same model."""
    torch.manual_seed(seed)
    model = factory().to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=0.9,
                                    weight_decay=recipe.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    x, y = x.to(device), y.to(device)
    for _ in range(recipe.epochs):
        order = torch.randperm(len(y), generator=generator).to(device)
        for start in range(0, len(y), recipe.batch_size):
            batch = order[start:start + recipe.batch_size]
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()
