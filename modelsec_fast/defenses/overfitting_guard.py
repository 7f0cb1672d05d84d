"""Catastrophic-overfitting guard for fast (single-step) adversarial training.

FGSM training can collapse within one epoch: the model learns to defeat the
single step while PGD robust accuracy drops to about zero (Wong et al. 2020,
section 5).  After each epoch the guard measures PGD robust accuracy on one
held-out batch.  It remembers the weights with the best value; when the value
falls more than ``max_drop`` below that best, it restores those weights and
reports a collapse (the trainer warns with
:class:`CatastrophicOverfittingWarning` and stops).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["CatastrophicOverfittingWarning", "OverfittingGuard", "accuracy_under_attack"]


class CatastrophicOverfittingWarning(UserWarning):
    """Robust accuracy collapsed during training; the best weights were restored."""


@torch.no_grad()
def _correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    return int((model(images).argmax(dim=1) == labels).sum())


def accuracy_under_attack(model: nn.Module, attack, images: torch.Tensor,
                          labels: torch.Tensor) -> tuple[float, float]:
    """(clean accuracy, robust accuracy) of ``model`` on one batch, in [0, 1].

    The model is evaluated in eval mode and its mode restored afterwards.
    """
    was_training = model.training
    try:
        model.eval()
        clean = _correct(model, images, labels)
        adversarial = attack(images, labels)
        model.eval()
        robust = _correct(model, adversarial, labels)
    finally:
        model.train(was_training)
    n = max(int(labels.shape[0]), 1)
    return clean / n, robust / n


class OverfittingGuard:
    """Track PGD robust accuracy on a held-out batch and restore the best weights.

    Args:
        attack: a multi-step attack (PGD) called as ``attack(images, labels)``.
        images, labels: the held-out batch, already on the model's device.
        max_drop: collapse threshold, an absolute drop in robust accuracy
            (0.2 = 20 points below the best seen), in (0, 1].
    """

    def __init__(self, attack, images: torch.Tensor, labels: torch.Tensor, max_drop: float = 0.2):
        if not 0.0 < float(max_drop) <= 1.0:
            raise ValueError(f"guard_max_drop must be in (0, 1], got {max_drop}")
        if images.shape[0] == 0:
            raise ValueError("the overfitting guard needs a non-empty held-out batch")
        self.attack = attack
        self.images = images
        self.labels = labels
        self.max_drop = float(max_drop)
        self.best_robust_accuracy: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def check(self, model: nn.Module, epoch: int) -> tuple[float, bool]:
        """Measure robust accuracy after ``epoch``; return (value, collapsed).

        On collapse the model's best weights are loaded back into ``model``.
        """
        _, robust = accuracy_under_attack(model, self.attack, self.images, self.labels)
        best = self.best_robust_accuracy
        if best is not None and robust < best - self.max_drop:
            model.load_state_dict(self.best_state)
            return robust, True
        if best is None or robust >= best:
            self.best_robust_accuracy = robust
            self.best_epoch = epoch
            self.best_state = copy.deepcopy(model.state_dict())
        return robust, False

    def state_dict(self) -> dict:
        return {"best_robust_accuracy": self.best_robust_accuracy,
                "best_epoch": self.best_epoch, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best_robust_accuracy = state["best_robust_accuracy"]
        self.best_epoch = state["best_epoch"]
        self.best_state = state["best_state"]
