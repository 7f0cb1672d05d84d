"""Small models for the attribution tests, and one torch thread (the models are tiny;
on a shared 2-core machine a second intra-op thread makes small ops slower)."""

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CountingModel(nn.Module):
    """Wraps a model and records the batch size of every forward pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.batch_sizes: list[int] = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        return self.model(x)


def linear_model(shape=(3, 4, 4), classes=5, dtype=torch.float32, seed=0) -> nn.Sequential:
    """Flatten + Linear: the attributions have closed forms."""
    torch.manual_seed(seed)
    features = 1
    for s in shape:
        features *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes)).to(dtype).eval()


def small_cnn(classes=4, dtype=torch.float64, seed=0) -> nn.Sequential:
    """A tiny CNN on (B, 3, 6, 6) inputs, non-linear so paths and noise matter."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 2 * 2, classes)).to(dtype).eval()
