"""Explanation infidelity (Yeh et al. 2019) via ``captum.metrics.infidelity``.

Infidelity is the expected squared error between what the attribution predicts
for a perturbation I (the dot product I . attribution) and what the model does
(f(x)[t] - f(x - I)[t]), over Gaussian perturbations I: 0 for an attribution that
explains the model's response exactly, larger is worse. Here I is Gaussian noise
with a standard deviation relative to the input range, drawn from a caller's
generator, and the examples are chunked so that no pass holds more than
``max_inputs`` model inputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from modelsec_fast.validation import check_int

from .attributions import (_check_generator, _check_max_inputs, _check_model, _noise_stdev,
                           _normal, check_attribution_inputs, resolve_target)
from .chunking import DEFAULT_MAX_INPUTS, plan_chunks

__all__ = ["infidelity"]


def infidelity(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor, target=None,
               *, input_range: Sequence[float] = (0.0, 1.0), stdev_fraction: float = 0.1,
               n_perturb_samples: int = 10, normalize: bool = True,
               max_inputs: int = DEFAULT_MAX_INPUTS,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Infidelity of ``attributions`` (B, ...) for ``model`` at ``inputs`` (B, ...),
    (B,) one value per example, on the inputs' device.

    Args:
        target: as for the attribution methods (None: the predicted classes).
        stdev_fraction: the perturbations' standard deviation as a fraction of the
            width of ``input_range``.
        n_perturb_samples: perturbations per example.
        normalize: Captum's ``normalize``: rescale the attributions by the
            least-squares factor first, so the value does not depend on their scale.
        generator: draws the perturbations (None: the global generator).

    Raises:
        TypeError, ValueError: bad arguments (attributions of another shape than
        the inputs among them).
    """
    from captum.metrics import infidelity as captum_infidelity

    inputs = check_attribution_inputs(inputs)
    attributions = check_attribution_inputs(attributions, "attributions")
    if attributions.shape != inputs.shape:
        raise ValueError(f"attributions must have the shape of inputs {tuple(inputs.shape)}, "
                         f"got {tuple(attributions.shape)}")
    stdev = _noise_stdev(stdev_fraction, input_range)
    n_perturb_samples = check_int("n_perturb_samples", n_perturb_samples, 1)
    max_inputs = _check_max_inputs(max_inputs)
    generator = _check_generator(generator)
    _check_model(model, inputs)
    target = resolve_target(model, inputs, target, max_inputs=max_inputs)
    attributions = attributions.detach().to(inputs.device, inputs.dtype)

    def perturb(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = _normal(x, generator) * stdev
        return noise, x - noise

    plan = plan_chunks(inputs.shape[0], n_perturb_samples, max_inputs)
    return torch.cat([
        captum_infidelity(model, perturb, x, a, target=t, n_perturb_samples=n_perturb_samples,
                          max_examples_per_batch=plan.inputs_per_pass, normalize=bool(normalize))
        for x, a, t in zip(inputs.split(plan.examples), attributions.split(plan.examples),
                           target.split(plan.examples))])
