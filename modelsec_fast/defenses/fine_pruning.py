"""Fine-pruning (Liu, Dolan-Gavitt, Garg 2018): prune the channels clean inputs leave
dormant, then fine-tune on clean data.

A backdoor often lives in channels that clean inputs barely use. On a copy of the
model, the output channels of ``layer`` (None: the last convolution) are zeroed in
increasing order of their mean rectified activation over the defender's clean data,
``step`` at a time, while the clean accuracy on that data stays within
``prune_drop`` of the original (and at most ``max_fraction`` of the channels); the
copy is then fine-tuned on the clean data with the pruned channels held at zero.
The result reports the clean-accuracy change beside the ASR change
(:class:`~.backdoor_repair.MitigationResult`).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..poisoning.base import PoisoningAttack, check_images
from ..poisoning.metrics import accuracy
from ..poisoning.training import model_device
from ..validation import check_in_range, check_int, check_positive
from .backdoor_repair import (MAX_CLEAN_DROP, MitigationResult, channel_activations, fine_tune,
                              finish_mitigation, prunable_layer, repaired_copy, zero_channels)

__all__ = ["fine_pruning"]


def fine_pruning(model: nn.Module, x_clean: torch.Tensor, y_clean: torch.Tensor, *,
                 layer: str | None = None, prune_drop: float = 0.04, max_fraction: float = 0.9,
                 step: int = 1, epochs: int = 5, lr: float = 1e-3, batch_size: int = 128,
                 seed: int = 0, test: tuple[torch.Tensor, torch.Tensor] | None = None,
                 attack: PoisoningAttack | None = None,
                 max_clean_drop: float = MAX_CLEAN_DROP) -> MitigationResult:
    """Fine-pruning of a copy of ``model`` (see the module docstring).

    Args:
        x_clean, y_clean: the defender's clean data (N, C, H, W) and (N,).
        layer: a Conv/Linear module name, or None for the last convolution.
        prune_drop: clean-accuracy drop on ``x_clean`` allowed while pruning (Liu et
            al. stop at 4%).
        max_fraction, step: at most this fraction of channels, ``step`` per round.
        epochs, lr, batch_size, seed: the fine-tuning (epochs=0 skips it).
        test, attack: measure C-Acc/ASR/RA before and after.
        max_clean_drop: a larger test-accuracy drop marks the repair as failed.

    Raises:
        ValueError: a layer the model lacks or that is not Conv/Linear; bad arguments.
    """
    start = time.perf_counter()
    check_images(x_clean, y_clean)
    prune_drop = check_in_range("prune_drop", prune_drop, 0.0, 1.0)
    max_fraction = check_in_range("max_fraction", max_fraction, 0.0, 1.0, low_open=True)
    step = check_int("step", step, 1)
    epochs = check_int("epochs", epochs, 0)
    repaired = repaired_copy(model)
    name, module = prunable_layer(repaired, layer)
    device = model_device(repaired)
    x_dev, y_dev = x_clean.to(device), y_clean.to(device)
    order = channel_activations(repaired, module, x_dev).argsort().cpu()
    base = accuracy(repaired, x_dev, y_dev)
    limit = int(math.floor(max_fraction * len(order)))
    pruned = torch.empty(0, dtype=torch.long)
    weight = module.weight.detach().clone()
    bias = module.bias.detach().clone() if module.bias is not None else None
    while len(pruned) + step <= limit:
        candidate = order[:len(pruned) + step]
        zero_channels(module, candidate)
        if base - accuracy(repaired, x_dev, y_dev) > prune_drop:
            with torch.no_grad():  # undo the step that cost too much
                module.weight.copy_(weight)
                if bias is not None:
                    module.bias.copy_(bias)
            zero_channels(module, pruned)
            break
        pruned = candidate
    pruned_accuracy = accuracy(repaired, x_dev, y_dev)
    if epochs:
        fine_tune(repaired, x_clean, y_clean, epochs=epochs, lr=check_positive("lr", lr),
                  batch_size=check_int("batch_size", batch_size, 1), seed=seed,
                  keep_zero=lambda: zero_channels(module, pruned))
    settings = {"layer": name, "prune_drop": prune_drop, "max_fraction": max_fraction,
                "step": step, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
                "n_clean": len(y_clean)}
    details = {"pruned_channels": pruned.tolist(), "n_pruned": len(pruned),
               "n_channels": len(order), "clean_accuracy_after_pruning": pruned_accuracy}
    return finish_mitigation("fine_pruning", settings, model, repaired, (x_clean, y_clean),
                             test=test, attack=attack, max_clean_drop=max_clean_drop,
                             details=details, seconds=time.perf_counter() - start)
