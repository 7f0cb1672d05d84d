"""Model factories the scan tests name as ``tests.app.scan.scan_factories:NAME``."""

from torch import nn

IN_SHAPE = (1, 8, 8)


def tiny_mlp() -> nn.Module:
    """(N, 1, 8, 8) in [0, 1] -> 10 logits; small enough to scan in seconds."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def broken_factory() -> nn.Module:
    raise RuntimeError("this factory always fails")


def not_a_module():
    return "not a model"


def tabular_linear() -> nn.Module:
    """4 raw tabular features -> 3 logits."""
    return nn.Linear(4, 3)


def tiny_conv() -> nn.Module:
    """(N, 1, 8, 8) -> 10 logits; refuses inputs without the channel axis."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
