"""Helpers of the attack tests: robust accuracy, strength comparisons, test models."""

import torch
from torch import nn


class Rounded(nn.Module):
    """Quantises its input with torch.round: gradients are zero almost everywhere."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


class Unnormalising(nn.Module):
    """Takes inputs normalised with mean 0.5, std 0.25 and feeds ``inner`` pixels."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, z):
        return self.inner(z * 0.25 + 0.5)


def robust_acc(model, adv, y) -> float:
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).float().mean())


def assert_at_least_as_strong(ours: float, theirs: float, tolerance: float, what: str, *,
                              seed: int):
    """Our robust accuracy may exceed the reference's by at most ``tolerance``.

    ``seed`` (the seed both attacks ran under) goes into the printed line and
    the failure message, so a failure can be rerun.
    """
    label = f"{what} (seed {seed})"
    print(f"{label}: ours {ours:.4f} reference {theirs:.4f} (tolerance {tolerance})")
    assert ours <= theirs + tolerance, \
        f"{label}: ours {ours:.4f} > reference {theirs:.4f} + {tolerance}"
