"""A tiny dataset, model and training loop shared by the end-to-end DP tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

CLASSES = 3


def tiny_dataset(n: int, features: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, features, generator=g),
                         torch.randint(0, CLASSES, (n,), generator=g))


def tiny_mlp(features: int, hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, CLASSES))


def train_steps(model, optimizer, loader, steps: int, reduction: str = "mean") -> list[int]:
    """``steps`` private steps over ``loader`` (epochs as needed); the batch sizes seen."""
    sizes = []
    while len(sizes) < steps:
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y, reduction=reduction).backward()
            optimizer.step()
            sizes.append(len(y))
            if len(sizes) == steps:
                break
    return sizes
