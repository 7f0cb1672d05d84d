"""BackdoorBench's figures for an attack and for a defence against it.

* C-Acc: top-1 accuracy on the clean test set.
* ASR: the fraction of the attack's evaluation inputs (triggered test inputs whose
  true label is not their target label; Witches' Brew: its target images) that the
  model classifies as the attacker's label.
* RA: the fraction of the same inputs classified as their true label.

For a defence (a repaired or retrained model) the deltas are ``after - before``
(a drop is negative), and the defence-effectiveness rating is BackdoorBench's
(introduced with FT-SAM, Zhu et al. 2023, and used by BackdoorBench since):
``DER = (max(0, ASR drop) - max(0, C-Acc drop) + 1) / 2`` in [0, 1], where a drop is
``before - after``: 1 removes a 100% ASR at no accuracy cost, 0.5 changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .base import PoisoningAttack, check_images
from .training import eval_mode, model_device

__all__ = ["BackdoorMetrics", "backdoor_metrics", "defence_effectiveness_rating",
           "accuracy"]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Top-1 predictions (N,) on the model's device, in eval mode (restored after)."""
    device = model_device(model)
    with eval_mode(model):
        out = [model(x[i:i + batch_size].to(device)).argmax(1)
               for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=device)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on (x, y); NaN for an empty set."""
    if len(y) == 0:
        return math.nan
    pred = predict(model, x, batch_size)
    return float((pred == y.to(pred.device)).float().mean())


def defence_effectiveness_rating(clean_accuracy_before: float, asr_before: float,
                                 clean_accuracy_after: float, asr_after: float) -> float:
    """BackdoorBench's DER in [0, 1] (rates as fractions in [0, 1]; see the module doc)."""
    asr_drop = asr_before - asr_after
    acc_drop = clean_accuracy_before - clean_accuracy_after
    return (max(0.0, asr_drop) - max(0.0, acc_drop) + 1.0) / 2.0


@dataclass
class BackdoorMetrics:
    """C-Acc, ASR and RA of one model (fractions in [0, 1]); with a defence, its
    model's figures in ``defended`` and the deltas (``after - before``) and DER.

    ``asr`` and ``ra`` are None for an attack without a success rate (random label
    flips); ``n_clean`` and ``n_attack`` count the inputs each figure is over.
    """

    attack: str
    clean_accuracy: float
    asr: float | None
    ra: float | None
    n_clean: int
    n_attack: int
    defended: "BackdoorMetrics | None" = None
    delta_clean_accuracy: float | None = None
    delta_asr: float | None = None
    delta_ra: float | None = None
    der: float | None = None

    def to_json(self) -> dict:
        out = asdict(self)
        out["defended"] = self.defended.to_json() if self.defended is not None else None
        return out


def _figures(model, x, y, attack, evaluation, batch_size) -> BackdoorMetrics:
    clean = accuracy(model, x, y, batch_size)
    if evaluation is None or len(evaluation.y_true) == 0:
        return BackdoorMetrics(attack.name, clean, None, None, len(y), 0)
    pred = predict(model, evaluation.x, batch_size)
    asr = float((pred == evaluation.y_target.to(pred.device)).float().mean())
    ra = float((pred == evaluation.y_true.to(pred.device)).float().mean())
    return BackdoorMetrics(attack.name, clean, asr, ra, len(y), len(evaluation.y_true))


def backdoor_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     attack: PoisoningAttack, *, defended_model: nn.Module | None = None,
                     batch_size: int = 512) -> BackdoorMetrics:
    """C-Acc, ASR and RA of ``model`` against ``attack`` on the clean test set (x, y);
    with ``defended_model``, its figures too, the deltas and the DER.

    Args:
        model: the (backdoored) classifier; evaluated in eval mode, its mode restored.
        x: (N, C, H, W) clean test images in [0, 1]; y: (N,) their labels.
        attack: the attack whose :meth:`~PoisoningAttack.evaluation_set` defines ASR/RA.
        defended_model: the model after a defence (or None).

    Raises:
        TypeError / ValueError: bad images or labels.
    """
    check_images(x, y)
    evaluation = attack.evaluation_set(x, y)
    before = _figures(model, x, y, attack, evaluation, batch_size)
    if defended_model is None:
        return before
    after = _figures(defended_model, x, y, attack, evaluation, batch_size)
    before.defended = after
    before.delta_clean_accuracy = after.clean_accuracy - before.clean_accuracy
    if before.asr is not None:
        before.delta_asr = after.asr - before.asr
        before.delta_ra = after.ra - before.ra
        before.der = defence_effectiveness_rating(before.clean_accuracy, before.asr,
                                                  after.clean_accuracy, after.asr)
    return before
