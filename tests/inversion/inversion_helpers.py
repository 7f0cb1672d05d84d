"""Digits images and small untrained models for the inversion tests."""

from __future__ import annotations

import torch

from modelsec_fast.models import build_model
from tests.stealing.stealing_helpers import IN_SHAPE, digits


def mlp(seed: int, hidden: int = 64):
    torch.manual_seed(seed)
    return build_model("mlp", IN_SHAPE, 10, hidden=(hidden,))


def cnn(seed: int):
    torch.manual_seed(seed)
    return build_model("small_cnn", IN_SHAPE, 10, width=8, hidden=32)


def same_class_pairs(seed: int, classes: int = 8):
    """(x, y, other): one test image of each class 0..classes-1, its label, and another
    test image of the same class, drawn with ``seed``."""
    ds = digits()
    g = torch.Generator().manual_seed(seed)
    x, other = [], []
    for c in range(classes):
        idx = (ds.y_test == c).nonzero()[:, 0]
        idx = idx[torch.randperm(len(idx), generator=g)]
        x.append(ds.x_test[idx[0]])
        other.append(ds.x_test[idx[1]])
    return torch.stack(x), torch.arange(classes), torch.stack(other)
