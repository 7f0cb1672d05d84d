"""Attack objectives: how a loss argument becomes the value an attack maximises.

A user loss is any callable ``loss(logits, labels)`` returning either a scalar
(e.g. ``nn.CrossEntropyLoss()``, mean or ``reduction="sum"``) or per-sample
values shaped (B,).  Untargeted attacks maximise it at the true labels;
targeted attacks maximise ``-loss(logits, targets)`` (torchattacks' sign).

Built-in per-sample losses, all on logits (B, K) and int64 labels (B,):

* :func:`dlr_loss` -- Difference of Logits Ratio (Croce & Hein 2020), K >= 3;
* :func:`dlr_targeted_loss` -- its targeted form, K >= 4;
* :func:`margin_loss` -- ``z_y - max_{j != y} z_j`` (negative iff misclassified).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["dlr_loss", "dlr_targeted_loss", "margin_loss", "resolve_loss", "to_scalar",
           "per_sample_loss", "LossFn"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Denominator guard of the DLR losses (as in the AutoAttack paper).
_DLR_GUARD = 1e-12


def _check_classes(logits: torch.Tensor, minimum: int, name: str) -> None:
    if logits.dim() != 2:
        raise ValueError(f"{name} needs logits shaped (B, num_classes), got {tuple(logits.shape)}")
    if logits.shape[1] < minimum:
        raise ValueError(
            f"{name} needs at least {minimum} classes, the model has {logits.shape[1]}; "
            "use the cross-entropy loss instead")


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample DLR loss ``-(z_y - max_{j!=y} z_j) / (z_(1) - z_(3))``, shape (B,).

    ``z_(k)`` is the k-th largest logit.  Invariant to shifting and scaling
    the logits.  Raises ValueError with fewer than 3 classes.
    """
    _check_classes(logits, 3, "the DLR loss")
    top3 = logits.topk(3, dim=1).values
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    # Largest logit other than y: the top one unless y is the top one.
    y_is_top = logits.argmax(1) == labels
    z_other = torch.where(y_is_top, top3[:, 1], top3[:, 0])
    return -(z_y - z_other) / (top3[:, 0] - top3[:, 2] + _DLR_GUARD)


def dlr_targeted_loss(logits: torch.Tensor, labels: torch.Tensor,
                      targets: torch.Tensor) -> torch.Tensor:
    """Per-sample targeted DLR ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)``, (B,).

    Raises ValueError with fewer than 4 classes.
    """
    _check_classes(logits, 4, "the targeted DLR loss")
    top4 = logits.topk(4, dim=1).values
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    z_t = logits.gather(1, targets[:, None]).squeeze(1)
    return -(z_y - z_t) / (top4[:, 0] - 0.5 * (top4[:, 2] + top4[:, 3]) + _DLR_GUARD)


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample margin ``z_y - max_{j != y} z_j``, shape (B,); < 0 iff misclassified."""
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return z_y - others.max(1).values


def _ce_per_sample(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def resolve_loss(loss, *, default: LossFn | None = None) -> LossFn:
    """Turn a ``loss=`` argument into a callable.

    Accepts None (``default``, else the mean cross-entropy), "ce", "dlr",
    or a callable ``(logits, labels) -> scalar or (B,)``.
    """
    if loss is None:
        return default if default is not None else nn.CrossEntropyLoss()
    if isinstance(loss, str):
        name = loss.lower()
        if name == "ce":
            return _ce_per_sample
        if name == "dlr":
            return dlr_loss
        raise ValueError(f"unknown loss {loss!r}: use 'ce', 'dlr' or a callable")
    if callable(loss):
        return loss
    raise TypeError(f"loss must be None, 'ce', 'dlr' or a callable, got {type(loss).__name__}")


def to_scalar(value: torch.Tensor) -> torch.Tensor:
    """Sum per-sample losses; pass a scalar through (what autograd.grad needs)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"the loss must return a tensor, got {type(value).__name__}")
    return value if value.dim() == 0 else value.sum()


def per_sample_loss(value: torch.Tensor, batch: int, attack: str) -> torch.Tensor:
    """Check that ``value`` is a per-sample loss (B,); ValueError otherwise."""
    if not isinstance(value, torch.Tensor) or value.shape != (batch,):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"{attack} tracks the best point per sample, so its loss must return one value per "
            f"sample, shape ({batch},), got {shape}; use reduction='none'")
    return value
