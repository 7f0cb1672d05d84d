"""Helpers for the adversarial-training tests: sklearn's 8x8 digits in
pixel space [0, 1], seeded loaders, and a PGD robust-accuracy measurement.

Every random choice uses a fixed seed that the test logs (``print``; pytest
shows it on failure).
"""

from __future__ import annotations

import dataclasses

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from modelsec_fast.attacks import PGD

SPLIT_SEED = 1234
EPS = 0.15  # pixel-space L-inf radius of every robustness test on digits


@dataclasses.dataclass
class Digits:
    x_train: torch.Tensor  # (1400, 1, 8, 8) float32 in [0, 1]
    y_train: torch.Tensor  # (1400,) int64
    x_test: torch.Tensor   # (397, 1, 8, 8)
    y_test: torch.Tensor


def load_digits_split() -> Digits:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    x, y = x[order], y[order]
    return Digits(x[:1400], y[:1400], x[1400:], y[1400:])


def make_loader(x, y, batch_size: int = 64, seed: int = 0, shuffle: bool = True) -> DataLoader:
    """A DataLoader whose shuffle comes from its own seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=gen)


def pgd_accuracy(model, x, y, eps: float = EPS, steps: int = 20, seed: int = 99) -> tuple[float, float]:
    """(clean, PGD-``steps`` robust) accuracy with a seeded random start."""
    torch.manual_seed(seed)
    model.eval()
    adv = PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)(x, y)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
        robust = float((model(adv).argmax(1) == y).float().mean())
    return clean, robust


def train_standard(model, loader, epochs: int, lr: float = 1e-2):
    """Undefended baseline: plain cross-entropy with Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model
