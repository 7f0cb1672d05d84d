"""Saliency, Integrated Gradients and SmoothGrad on Captum, chunked by memory.

Every function takes a classifier ``model`` (logits (B, K)) and ``inputs`` (B, ...)
and returns attributions shaped like ``inputs``, on their device and in their
dtype. ``target`` is the class each example is explained for: an int for all, a
(B,) integer tensor, or None for the model's own prediction. No pass through the
model ever holds more than ``max_inputs`` model inputs (see :mod:`.chunking`).

The model's mode is left as the caller set it (explain an ``eval()`` model) and
no parameter gradient is accumulated: Captum differentiates w.r.t. the inputs only.

Errors: TypeError for an argument of the wrong kind, ValueError for a bad value
(empty or non-finite inputs, a target outside the model's classes, a model on
another device than the inputs), each naming the argument.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from modelsec_fast.validation import check_choice, check_in_range, check_int, check_real

from .chunking import DEFAULT_MAX_INPUTS, plan_chunks

__all__ = ["saliency", "integrated_gradients", "smoothgrad", "predicted_labels",
           "check_attribution_inputs", "resolve_target", "IG_METHODS"]

# Captum's quadrature rules for the path integral.
IG_METHODS = ("gausslegendre", "riemann_right", "riemann_left", "riemann_middle",
              "riemann_trapezoid")


# ------------------------------------------------------------------ checks
def check_attribution_inputs(inputs, name: str = "inputs") -> torch.Tensor:
    """``inputs`` unchanged; TypeError unless a floating tensor, ValueError unless it
    has a batch dimension and at least one example and holds no NaN or infinity."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {inputs.dtype}")
    if inputs.dim() < 2 or inputs.shape[0] == 0 or inputs.numel() == 0:
        raise ValueError(f"{name} must be a non-empty batch (B, ...) with B >= 1, got shape "
                         f"{tuple(inputs.shape)}")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError(f"{name} contain NaN or infinite values")
    return inputs


def _check_model(model, inputs: torch.Tensor) -> None:
    if not callable(model):
        raise TypeError(f"model must be a callable (a torch.nn.Module), got {type(model).__name__}")
    if isinstance(model, nn.Module):
        param = next(model.parameters(), None)
        if param is not None and param.device != inputs.device:
            raise ValueError(f"model is on {param.device} but inputs are on {inputs.device}; "
                             "move one of them")


def _check_max_inputs(max_inputs) -> int:
    return check_int("max_inputs", max_inputs, 1)


def _check_input_range(input_range) -> tuple[float, float]:
    try:
        lo, hi = input_range
    except (TypeError, ValueError) as err:
        raise TypeError(f"input_range must be a pair (low, high), got {input_range!r}") from err
    lo, hi = check_real("input_range low", lo), check_real("input_range high", hi)
    if not lo < hi:
        raise ValueError(f"input_range must have low < high, got ({lo:g}, {hi:g})")
    return lo, hi


def _noise_stdev(stdev_fraction: float, input_range) -> float:
    """Gaussian noise's standard deviation: ``stdev_fraction`` in (0, 1] of the input
    range's width (SmoothGrad's 10-20% of the range, not an absolute level)."""
    lo, hi = _check_input_range(input_range)
    return check_in_range("stdev_fraction", stdev_fraction, 0.0, 1.0, low_open=True,
                          reason=" (a fraction of the input range)") * (hi - lo)


def _check_generator(generator) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    return generator


# ------------------------------------------------------------------ targets
@torch.no_grad()
def _logits(model: Callable, inputs: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 \
            or logits.shape[0] != inputs.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return logits of shape (B, num_classes) = "
                         f"({inputs.shape[0]}, K), got {shape}")
    return logits


def predicted_labels(model: Callable, inputs: torch.Tensor, *,
                     max_inputs: int = DEFAULT_MAX_INPUTS) -> torch.Tensor:
    """The model's predicted class per example, (B,) int64 on ``inputs``' device,
    in passes of at most ``max_inputs`` examples (no gradient)."""
    inputs = check_attribution_inputs(inputs)
    max_inputs = _check_max_inputs(max_inputs)
    _check_model(model, inputs)
    return torch.cat([_logits(model, chunk).argmax(1) for chunk in inputs.split(max_inputs)])


def resolve_target(model: Callable, inputs: torch.Tensor, target, *,
                   max_inputs: int = DEFAULT_MAX_INPUTS) -> torch.Tensor:
    """``target`` as a (B,) int64 tensor on ``inputs``' device: an int for every
    example, a (B,) integer tensor, or None for the predicted classes.

    Raises:
        TypeError: a float or bool target, a non-integer tensor.
        ValueError: a tensor of another length than the batch, or a class outside
            [0, K) where K is the width of the model's output.
    """
    batch = inputs.shape[0]
    if target is None:
        return predicted_labels(model, inputs, max_inputs=max_inputs)
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must be an integer tensor, got dtype {target.dtype}")
        if target.shape != (batch,):
            raise ValueError(f"target must have shape ({batch},), one class per example, got "
                             f"{tuple(target.shape)}")
        target = target.to(inputs.device, torch.int64)
    else:
        target = torch.full((batch,), check_int("target", target, 0), dtype=torch.int64,
                            device=inputs.device)
    num_classes = _logits(model, inputs[:1]).shape[1]
    lo, hi = torch.stack(torch.aminmax(target)).tolist()
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"target must lie in [0, {num_classes}) (the model's classes), got "
                         f"values in [{lo}, {hi}]")
    return target


def _baselines(baselines, inputs: torch.Tensor) -> torch.Tensor:
    """The IG baseline of every example, (B, ...) like ``inputs``: None means zeros
    (Captum's default), a number that value everywhere, a tensor shaped like one
    example (shared by all) or like ``inputs``."""
    if baselines is None:
        return torch.zeros_like(inputs)
    if not isinstance(baselines, torch.Tensor):
        return torch.full_like(inputs, check_real("baselines", baselines))
    if baselines.shape not in (inputs.shape, inputs.shape[1:]):
        raise ValueError(f"baselines must have the shape of inputs {tuple(inputs.shape)} or of "
                         f"one example {tuple(inputs.shape[1:])}, got {tuple(baselines.shape)}")
    check_attribution_inputs(baselines.reshape(1, -1), "baselines")
    return baselines.to(inputs.device, inputs.dtype).expand_as(inputs)


# ------------------------------------------------------------------ methods
def saliency(model: Callable, inputs: torch.Tensor, target=None, *, absolute: bool = True,
             max_inputs: int = DEFAULT_MAX_INPUTS) -> torch.Tensor:
    """Gradient of the target logit w.r.t. the inputs (Simonyan et al. 2014), via
    Captum's ``Saliency``; ``absolute`` (Captum's ``abs``) takes its magnitude.

    Returns (B, ...) like ``inputs``. Raises as the module docstring says.
    """
    from captum.attr import Saliency

    inputs = check_attribution_inputs(inputs)
    max_inputs = _check_max_inputs(max_inputs)
    _check_model(model, inputs)
    target = resolve_target(model, inputs, target, max_inputs=max_inputs)
    method = Saliency(model)
    # A leaf that requires grad, so Captum has nothing to set (and warn about).
    return torch.cat([method.attribute(x.detach().requires_grad_(), target=t, abs=bool(absolute))
                      for x, t in zip(inputs.split(max_inputs), target.split(max_inputs))])


def integrated_gradients(model: Callable, inputs: torch.Tensor, target=None, *,
                         baselines=None, n_steps: int = 50, method: str = "gausslegendre",
                         max_inputs: int = DEFAULT_MAX_INPUTS,
                         return_convergence_delta: bool = False):
    """Integrated Gradients (Sundararajan et al. 2017) via Captum, in chunks of at
    most ``max_inputs`` model inputs (examples x steps) per pass.

    Args:
        baselines: None (zeros, Captum's default), a number, or a tensor shaped
            like one example or like ``inputs``; in the inputs' units.
        n_steps: points on the path from baseline to input; ``method`` one of
            :data:`IG_METHODS`.
        return_convergence_delta: also return the completeness error per example,
            sum(attributions) - (f(x)[t] - f(baseline)[t]), shape (B,).

    Returns:
        attributions (B, ...) like ``inputs``; with ``return_convergence_delta`` the
        pair (attributions, delta).
    """
    from captum.attr import IntegratedGradients

    inputs = check_attribution_inputs(inputs)
    n_steps = check_int("n_steps", n_steps, 1)
    method = check_choice("method", method, IG_METHODS)
    max_inputs = _check_max_inputs(max_inputs)
    _check_model(model, inputs)
    target = resolve_target(model, inputs, target, max_inputs=max_inputs)
    base = _baselines(baselines, inputs)
    plan = plan_chunks(inputs.shape[0], n_steps, max_inputs)
    # Captum splits the steps of one call (internal_batch_size), we split the examples.
    internal = None if plan.copies == n_steps else plan.inputs_per_pass
    explainer = IntegratedGradients(model)
    attributions = torch.cat([
        explainer.attribute(x, baselines=b, target=t, n_steps=n_steps, method=method,
                            internal_batch_size=internal)
        for x, b, t in zip(inputs.split(plan.examples), base.split(plan.examples),
                           target.split(plan.examples))])
    if not return_convergence_delta:
        return attributions
    return attributions, _completeness_error(model, attributions, inputs, base, target,
                                             max_inputs)


def _completeness_error(model, attributions, inputs, baselines, target, max_inputs):
    """sum(attributions) - (f(x)[t] - f(baseline)[t]) per example, (B,)."""
    def target_logit(x):
        return torch.cat([_logits(model, c).gather(1, t[:, None])[:, 0]
                          for c, t in zip(x.split(max_inputs), target.split(max_inputs))])

    gap = target_logit(inputs) - target_logit(baselines)
    return attributions.flatten(1).sum(1) - gap.to(attributions.dtype)


def _normal(inputs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``inputs``, drawn from ``generator`` (on its
    own device) or from the global generator of the inputs' device."""
    device = generator.device if generator is not None else inputs.device
    noise = torch.randn(inputs.shape, generator=generator, device=device, dtype=inputs.dtype)
    return noise.to(inputs.device)


def smoothgrad(model: Callable, inputs: torch.Tensor, target=None, *,
               input_range: Sequence[float] = (0.0, 1.0), stdev_fraction: float = 0.15,
               n_samples: int = 50, absolute: bool = True,
               max_inputs: int = DEFAULT_MAX_INPUTS,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the saliency map averaged over ``n_samples``
    noisy copies of each input, as Captum's ``NoiseTunnel(Saliency)`` with
    ``nt_type="smoothgrad"``, in chunks of at most ``max_inputs`` model inputs.

    The noise is Gaussian with standard deviation ``stdev_fraction`` times the
    width of ``input_range`` (the paper's 10-20% of the input range; Captum's
    ``stdevs`` is absolute). Noisy copies are not clipped to the range. Sample j
    of every example is drawn by one ``randn`` call of the inputs' shape, in order
    j = 0, 1, ..., so a seeded ``generator`` gives the same map for any
    ``max_inputs``.

    Returns (B, ...) like ``inputs``.
    """
    from captum.attr import Saliency

    inputs = check_attribution_inputs(inputs)
    stdev = _noise_stdev(stdev_fraction, input_range)
    n_samples = check_int("n_samples", n_samples, 1)
    max_inputs = _check_max_inputs(max_inputs)
    generator = _check_generator(generator)
    _check_model(model, inputs)
    target = resolve_target(model, inputs, target, max_inputs=max_inputs)
    plan = plan_chunks(inputs.shape[0], n_samples, max_inputs)
    explainer = Saliency(model)
    shape = inputs.shape[1:]
    total = torch.zeros_like(inputs)
    for first in range(0, n_samples, plan.copies):
        copies = min(plan.copies, n_samples - first)
        noise = torch.stack([_normal(inputs, generator) for _ in range(copies)]) * stdev
        for start in range(0, inputs.shape[0], plan.examples):
            rows = slice(start, start + plan.examples)
            x = inputs[rows]
            noisy = (x.unsqueeze(0) + noise[:, rows]).reshape(-1, *shape)
            grads = explainer.attribute(noisy.requires_grad_(), target=target[rows].repeat(copies),
                                        abs=bool(absolute))
            total[rows] += grads.reshape(copies, x.shape[0], *shape).sum(0)
    return total / n_samples
