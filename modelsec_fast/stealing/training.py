"""Training a thief on a transfer set: soft cross-entropy, batched, seeded."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..validation import check_int, check_positive

__all__ = ["ThiefTraining", "fit_thief", "soft_cross_entropy"]


@dataclass(frozen=True)
class ThiefTraining:
    """How a thief is trained on its transfer set (Adam, soft cross-entropy).

    ``epochs`` passes over the transfer set in batches of ``batch_size``, and at
    least ``min_steps`` optimizer steps (small budgets need more passes).
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    min_steps: int = 300

    def __post_init__(self):
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_positive("lr", self.lr)
        check_int("min_steps", self.min_steps, 0)

    def to_json(self) -> dict:
        return asdict(self)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k targets_k log softmax(logits)_k``.

    ``logits`` and ``targets`` are (B, K); finite for any finite logits (log_softmax
    never takes the log of a zero).
    """
    # cross_entropy with probability targets is this sum in one op (fewer autograd nodes)
    return nn.functional.cross_entropy(logits, targets)


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, fused (one kernel for all parameters) where torch has the fused kernel:
    the per-parameter loop of the default Adam is a large share of a small thief's step."""
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def fit_thief(thief: nn.Module, x: torch.Tensor, targets: torch.Tensor,
              training: ThiefTraining, *, seed: int = 0) -> nn.Module:
    """Trains ``thief`` in place on inputs ``x`` (N, ...) and target rows ``targets``
    (N, K) (probabilities or one-hot labels); returns it in eval mode.

    Batches are drawn by a permutation seeded with ``seed``; the run takes
    ``max(epochs * ceil(N / batch_size), min_steps)`` steps.
    """
    n = len(x)
    if n == 0 or targets.shape[0] != n:
        raise ValueError(f"fit_thief needs N >= 1 inputs and N target rows, got {n} and "
                         f"{targets.shape[0]}")
    device = next(thief.parameters()).device
    x, targets = x.to(device), targets.to(device, torch.float32)
    batch = min(training.batch_size, n)
    per_epoch = math.ceil(n / batch)
    steps = max(training.epochs * per_epoch, training.min_steps)
    generator = torch.Generator().manual_seed(seed)
    optimizer = _adam(list(thief.parameters()), training.lr)
    thief.train()
    order = torch.empty(0, dtype=torch.long)
    for step in range(steps):
        start = (step % per_epoch) * batch
        if start == 0:
            order = torch.randperm(n, generator=generator).to(device)
        idx = order[start:start + batch]
        optimizer.zero_grad(set_to_none=True)
        soft_cross_entropy(thief(x[idx]), targets[idx]).backward()
        optimizer.step()
    return thief.eval()
