"""Small trained models for the attack and evaluation tests, trained once per process.

sklearn's 8x8 digits (pixel space [0, 1]), a tiny CNN and an MLP trained for
a few seconds with fixed seeds.  The fixtures in tests/attacks/conftest.py return
these; tests outside tests/attacks import the fixtures from there, and the cache
here keeps the models from being trained once more for each importing module.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

from modelsec_fast.data import load_dataset
from modelsec_fast.models import MLP, SmallCNN

TRAIN_SEED = 0


@dataclasses.dataclass
class Trained:
    model: nn.Module
    x: torch.Tensor   # test images (N, 1, 8, 8) in [0, 1]
    y: torch.Tensor   # test labels (N,)
    clean_accuracy: float


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@functools.cache
def digits():
    return load_dataset("digits", seed=TRAIN_SEED)


@functools.cache
def digits_cnn() -> Trained:
    data = digits()
    torch.manual_seed(TRAIN_SEED)
    model = SmallCNN((1, 8, 8), 10, width=8, hidden=32)
    _train(model, data.x_train, data.y_train, epochs=5, seed=TRAIN_SEED)
    return Trained(model, data.x_test, data.y_test,
                   _accuracy(model, data.x_test, data.y_test))


@functools.cache
def digits_mlp() -> Trained:
    data = digits()
    torch.manual_seed(TRAIN_SEED + 1)
    model = MLP((1, 8, 8), 10, hidden=(64,))
    _train(model, data.x_train, data.y_train, epochs=20, seed=TRAIN_SEED + 1)
    return Trained(model, data.x_test, data.y_test,
                   _accuracy(model, data.x_test, data.y_test))
