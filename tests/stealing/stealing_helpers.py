"""Shared by the stealing, inversion and extraction-defence tests: the digits data and
small victims trained on a seeded part of it."""

from __future__ import annotations

import functools

import torch
from torch import nn

from modelsec_fast.data import load_dataset
from modelsec_fast.models import build_model
from modelsec_fast.stealing import ThiefTraining, fit_thief

IN_SHAPE = (1, 8, 8)


@functools.lru_cache(maxsize=1)
def digits():
    return load_dataset("digits")


def split(seed: int, private: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the digits training split: ``private`` for the victim, the rest."""
    order = torch.randperm(len(digits().y_train), generator=torch.Generator().manual_seed(seed))
    return order[:private], order[private:]


def mlp(seed: int, hidden: int = 128) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", IN_SHAPE, 10, hidden=(hidden,))


def train_mlp(x: torch.Tensor, y: torch.Tensor, *, seed: int, hidden: int = 128,
              epochs: int = 60) -> nn.Module:
    """An MLP trained on (x, y) with cross-entropy (Adam), in eval mode."""
    model = mlp(seed, hidden)
    return fit_thief(model, x, nn.functional.one_hot(y, 10).float(),
                     ThiefTraining(epochs=epochs), seed=seed)


@functools.lru_cache(maxsize=1)
def digits_victim():
    """(victim, pool x, pool y, data): an MLP trained on 674 digits (seed 0); the other
    674 training images are the attacker's pool. Trained once per process."""
    ds = digits()
    private, other = split(0, 674)
    victim = train_mlp(ds.x_train[private], ds.y_train[private], seed=0)
    return victim, ds.x_train[other], ds.y_train[other], ds
