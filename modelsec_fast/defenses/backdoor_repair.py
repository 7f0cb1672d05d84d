"""What every backdoor mitigation shares: its result record (clean-accuracy change
beside the ASR change, and a verdict that says when a repair destroyed the model),
channel pruning, clean fine-tuning and the activations a pruning ranks by.

A mitigation never modifies the model it is given: it repairs a deep copy.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..poisoning.base import PoisoningAttack, check_images
from ..poisoning.metrics import BackdoorMetrics, accuracy, backdoor_metrics
from ..poisoning.training import eval_mode, model_device
from ..validation import check_in_range

__all__ = ["MitigationResult", "finish_mitigation", "prunable_layer", "channel_activations",
           "zero_channels", "fine_tune", "MAX_CLEAN_DROP"]

# A repair that costs more clean accuracy than this (a fraction: 10 points) has failed.
MAX_CLEAN_DROP = 0.10


@dataclass
class MitigationResult:
    """A mitigation's outcome.

    Attributes:
        method: its name; settings and details: its parameters and what it did.
        clean_accuracy_before, clean_accuracy_after: on the evaluation data (the test
            set when given, else the defender's clean data), fractions.
        clean_accuracy_drop: before - after (positive = worse).
        destroys_clean_accuracy: the drop exceeds ``max_clean_drop``: the repair failed.
        metrics: C-Acc/ASR/RA before and after, their deltas and the DER (when the
            attack and test data were given), else None.
        verdict: one sentence for the report.
        model: the repaired copy (not in ``to_json``).
    """

    method: str
    settings: dict[str, Any]
    clean_accuracy_before: float
    clean_accuracy_after: float
    clean_accuracy_drop: float
    max_clean_drop: float
    destroys_clean_accuracy: bool
    verdict: str
    metrics: BackdoorMetrics | None = None
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    model: nn.Module | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("model", "metrics")}
        out["metrics"] = self.metrics.to_json() if self.metrics is not None else None
        return out


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def finish_mitigation(method: str, settings: dict, original: nn.Module, repaired: nn.Module,
                      clean: tuple[torch.Tensor, torch.Tensor], *,
                      test: tuple[torch.Tensor, torch.Tensor] | None,
                      attack: PoisoningAttack | None, max_clean_drop: float,
                      details: dict, seconds: float) -> MitigationResult:
    """The record of a mitigation: accuracies, metrics against the attack, the verdict."""
    max_clean_drop = check_in_range("max_clean_drop", max_clean_drop, 0.0, 1.0)
    x_eval, y_eval = test if test is not None else clean
    metrics = None
    if attack is not None and test is not None:
        metrics = backdoor_metrics(original, test[0], test[1], attack, defended_model=repaired)
        before, after = metrics.clean_accuracy, metrics.defended.clean_accuracy
    else:
        before, after = accuracy(original, x_eval, y_eval), accuracy(repaired, x_eval, y_eval)
    drop = before - after
    destroyed = drop > max_clean_drop
    where = "test" if test is not None else "clean"
    if destroyed:
        verdict = (f"FAILED: clean accuracy fell by {100 * drop:.1f} points "
                   f"({_pct(before)} -> {_pct(after)} on the {where} data), more than the "
                   f"{100 * max_clean_drop:g} points allowed")
    elif metrics is not None and metrics.asr is not None:
        asr_after = metrics.defended.asr
        verdict = (f"ASR {_pct(metrics.asr)} -> {_pct(asr_after)}, clean accuracy "
                   f"{_pct(before)} -> {_pct(after)} (DER {metrics.der:.3f})")
        if asr_after > 0.5 * metrics.asr and metrics.asr > 0.2:
            verdict = "backdoor NOT removed: " + verdict
    else:
        verdict = f"clean accuracy {_pct(before)} -> {_pct(after)} on the {where} data"
    return MitigationResult(method, dict(settings), before, after, drop, max_clean_drop,
                            destroyed, verdict, metrics, dict(details), seconds, repaired)


def prunable_layer(model: nn.Module, layer: str | None) -> tuple[str, nn.Module]:
    """(name, module) of the Conv/Linear layer whose output channels are pruned:
    ``layer`` by name, or None for the last convolution (the last Linear but one in a
    model without convolutions).

    Raises:
        ValueError: a name the model lacks, or a module that is not Conv/Linear.
    """
    modules = dict(model.named_modules())
    if layer is not None:
        if not isinstance(layer, str) or layer not in modules or layer == "":
            known = [n for n, m in modules.items()
                     if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
            raise ValueError(f"the model has no layer named {layer!r}; its prunable layers are: "
                             f"{', '.join(known)}")
        module = modules[layer]
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            raise ValueError(f"layer {layer!r} is a {type(module).__name__}; pruning needs a "
                             "convolution or a Linear layer")
        return layer, module
    convs = [(n, m) for n, m in modules.items() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if convs:
        return convs[-1]
    linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise ValueError("the model has no convolution and fewer than two Linear layers; "
                         "pass layer=")
    return linears[-2]


@torch.no_grad()
def channel_activations(model: nn.Module, module: nn.Module, x: torch.Tensor,
                        batch_size: int = 512) -> torch.Tensor:
    """Mean rectified output (channels,) of ``module`` over ``x``: each output channel's
    ReLU(output) averaged over the samples and positions (model in eval mode)."""
    device = model_device(model)
    total, count = None, 0
    captured = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        with eval_mode(model):
            for i in range(0, len(x), batch_size):
                captured.clear()
                model(x[i:i + batch_size].to(device))
                out = F.relu(captured[0]).double()
                per_channel = out.transpose(0, 1).flatten(1).sum(1)
                total = per_channel if total is None else total + per_channel
                count += out.numel() // out.shape[1]
    finally:
        handle.remove()
    return total / max(count, 1)


@torch.no_grad()
def zero_channels(module: nn.Module, channels: torch.Tensor) -> None:
    """Prune output ``channels`` of a Conv/Linear ``module`` in place (weights and bias 0)."""
    if len(channels) == 0:
        return
    idx = channels.to(module.weight.device)
    module.weight[idx] = 0.0
    if module.bias is not None:
        module.bias[idx] = 0.0


def fine_tune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
              batch_size: int, seed: int, transform=None, keep_zero=None) -> nn.Module:
    """Adam fine-tuning on (x, y) in place; ``transform(xb, yb, generator)`` may alter a
    batch (unlearning), ``keep_zero()`` re-applies a pruning after every step."""
    check_images(x, y)
    device = model_device(model)
    x, y = x.to(device), y.to(device).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator).to(device)
        for i in range(0, len(y), batch_size):
            batch = order[i:i + batch_size]
            xb, yb = x[batch], y[batch]
            if transform is not None:
                xb = transform(xb, yb, generator)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
            if keep_zero is not None:
                keep_zero()
    return model.eval()


def repaired_copy(model: nn.Module) -> nn.Module:
    """A deep copy to repair, in eval mode (the caller's model stays as it was)."""
    return copy.deepcopy(model).eval()


def accuracy_or_nan(model, x, y) -> float:
    return accuracy(model, x, y) if len(y) else math.nan
