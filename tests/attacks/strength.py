"""Helpers of the strength comparisons (robust accuracy with fixed seeds)."""

import torch


def robust_acc(model, adv, y) -> float:
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).float().mean())


def assert_at_least_as_strong(ours: float, theirs: float, tolerance: float, what: str):
    """Our robust accuracy may exceed the reference's by at most ``tolerance``."""
    print(f"{what}: ours {ours:.4f} reference {theirs:.4f} (tolerance {tolerance})")
    assert ours <= theirs + tolerance, f"{what}: ours {ours:.4f} > reference {theirs:.4f} + {tolerance}"
