"""A layer's features for every training sample, streamed from a DataLoader.

The model runs in eval mode under ``torch.no_grad`` (its own mode, every submodule's,
is restored afterwards, also on error); a forward hook captures the chosen layer's
output batch by batch and the features are gathered on the model's device, so only
the (N, D) features, never the data set, need to fit in memory.

Which layer (``layer=None``, a heuristic: pass ``layer=`` for your architecture):
with two or more convolutions, the output of the second-to-last one, taken after the
activation module that follows it if one does (a trigger is a local pattern: in the
middle convolutions it is still a feature of its own, while later layers of a
backdoored network map poisons and clean target images to nearly the same
representation); with one convolution, the input of the first ``nn.Linear`` (the
flattened convolutional features); without any, the input of the last ``nn.Linear``
(the penultimate representation). A named layer gives its output.

Conv features are used whole: an output shaped (N, C, H, W) is flattened to
(N, C*H*W) (``conv="flatten"``, the default) or averaged over its spatial positions
to (N, C) (``conv="pool"``); never one channel only (the ART #2313 bug).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ...poisoning.training import eval_mode, model_device
from ...validation import check_choice, check_int

__all__ = ["extract_features", "default_layer", "CONV_MODES", "flatten_features"]

CONV_MODES = ("flatten", "pool")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Hardswish)


def default_layer(model: nn.Module) -> tuple[str, str]:
    """(module name, "input" or "output") of the features used when ``layer=None``
    (see the module docstring)."""
    modules = [(name, m) for name, m in model.named_modules() if name]
    convs = [i for i, (_, m) in enumerate(modules) if isinstance(m, _CONV)]
    if len(convs) >= 2:
        i = convs[-2]
        following = modules[i + 1][1] if i + 1 < len(modules) else None
        if following is not None and isinstance(following, _ACTIVATIONS):
            return modules[i + 1][0], "output"
        return modules[i][0], "output"
    linears = [name for name, m in modules if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has neither two convolutions nor an nn.Linear layer to "
                         "take features from; pass layer= (a module name)")
    return (linears[0] if convs else linears[-1]), "input"


def _resolve_layer(model: nn.Module, layer: str | None) -> tuple[nn.Module, str, str]:
    if layer is None:
        name, side = default_layer(model)
        return dict(model.named_modules())[name], name, side
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name (str) or None, got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        known = [n for n in modules if n]
        shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
        raise ValueError(f"the model has no layer named {layer!r}; its layers are: {shown}")
    return modules[layer], layer, "output"


def flatten_features(features: torch.Tensor, conv: str = "flatten") -> torch.Tensor:
    """(N, ...) features as (N, D): flattened whole, or (``conv="pool"``) for (N, C, ...)
    averaged over every position after the channel dimension."""
    check_choice("conv", conv, CONV_MODES)
    if features.dim() < 2:
        raise ValueError(f"features must be (N, D) or (N, C, ...), got {tuple(features.shape)}")
    if features.dim() > 2 and conv == "pool":
        return features.flatten(2).mean(2)
    return features.flatten(1)


def _batches(data, batch_size: int) -> Iterable:
    if isinstance(data, torch.Tensor):
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size]
    elif isinstance(data, torch.utils.data.DataLoader):
        for batch in data:
            yield batch[0] if isinstance(batch, (tuple, list)) else batch
    elif isinstance(data, torch.utils.data.Dataset):
        yield from _batches(torch.utils.data.DataLoader(data, batch_size=batch_size), batch_size)
    else:
        raise TypeError(f"data must be a tensor of inputs, a Dataset or a DataLoader, "
                        f"got {type(data).__name__}")


def extract_features(model: nn.Module, data, *, layer: str | None = None,
                     conv: str = "flatten", batch_size: int = 512) -> torch.Tensor:
    """Features (N, D) of ``layer`` for every input of ``data``, on the model's device.

    Args:
        model: the classifier (its mode is restored afterwards).
        data: inputs (N, ...) as a tensor, a Dataset of (input, label) items or a
            DataLoader yielding (input, label, ...) batches (not shuffled, so that
            row i is sample i).
        layer: a module name of ``model`` (its output), or None (see the module doc).
        conv: ``"flatten"`` or ``"pool"`` for (N, C, H, W) features.
        batch_size: inputs per forward pass for tensors and Datasets.

    Raises:
        ValueError: a layer name the model lacks (the message lists its layers), a
            layer that never ran, or features with NaN or infinity.
    """
    check_choice("conv", conv, CONV_MODES)
    batch_size = check_int("batch_size", batch_size, 1)
    module, name, side = _resolve_layer(model, layer)
    device = model_device(model)
    captured: list[torch.Tensor] = []

    def hook(_module, inputs, output):
        value = inputs[0] if side == "input" else output
        captured.append(flatten_features(value.detach(), conv))

    handle = module.register_forward_hook(hook)
    chunks: list[torch.Tensor] = []
    try:
        with eval_mode(model), torch.no_grad():
            for xb in _batches(data, batch_size):
                captured.clear()
                model(xb.to(device))
                if not captured:
                    raise ValueError(f"layer {name!r} did not run in the model's forward pass")
                chunks.append(captured[0])  # a layer called twice: its first call
    finally:
        handle.remove()
    if not chunks:
        raise ValueError("data holds no input")
    features = torch.cat(chunks)
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"the features of layer {name!r} contain NaN or infinity")
    return features
