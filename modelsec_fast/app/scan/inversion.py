"""Scan stage: gradient inversion against the user's model.

:func:`measure_inversion` is the one pipeline (the demo calls it too): each of a few
test images is the batch of one training step on the model; the analytic recovery
of the first layer's input (a model that begins with a fully connected layer) or
else iDLG reconstructs it from the plain gradient and from the update the DP-SGD
engine releases at each noise multiplier
(:func:`~modelsec_fast.inversion.dp_protection`); the PSNR against another test
image of the same class is the baseline. :func:`run` feeds it
the scan's inputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from modelsec_fast.inversion import IDLG, AnalyticLinearRecovery, dp_protection

from ..report import SkippedSection
from ..sections.inversion import InversionSection
from .extraction import pixel_model
from .inputs import ScanInputs

__all__ = ["NOISE_MULTIPLIERS", "attack_for", "measure_inversion", "same_class_pairs", "run"]

# From barely any noise, where the image still leaks, to DP-SGD's usual range.
NOISE_MULTIPLIERS = (0.001, 0.01, 0.1, 1.0)


def same_class_pairs(x: torch.Tensor, y: torch.Tensor, n: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(images, labels, other images of the same class): up to ``n`` images of distinct
    classes, each with the next image of its class (classes with one image are left
    out); without any such class, the first ``n`` images and ``other`` None."""
    picked, others = [], []
    for c in y.unique().tolist():
        idx = (y == c).nonzero()[:, 0]
        if len(idx) >= 2:
            picked.append(int(idx[0]))
            others.append(int(idx[1]))
        if len(picked) == n:
            break
    if not picked:
        return x[:n], y[:n], None
    picked_t, others_t = torch.tensor(picked), torch.tensor(others)
    return x[picked_t], y[picked_t], x[others_t]


def measure_inversion(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, model_label: str,
                      iterations: int, noise_multipliers: Sequence[float] = NOISE_MULTIPLIERS,
                      max_grad_norm: float = 1.0, images: int = 6, seed: int = 0,
                      log: Callable[[str], None] = lambda message: None) -> InversionSection:
    """Gradient inversion of ``images`` test images (``x`` (N, C, H, W) in [0, 1], ``y``
    (N,)) from ``model``'s one-image updates, plain and under DP-SGD."""
    notes = []
    xs, ys, other = same_class_pairs(x, y, images)
    if other is None:
        notes.append("no class has two test images: no same-class baseline")
    attack = attack_for(model, iterations, seed)
    log(f"inversion: {attack.name} on {len(xs)} images, plain and DP sigma "
        f"{', '.join(f'{s:g}' for s in noise_multipliers)}")
    try:
        result = dp_protection(attack, model, xs, ys, noise_multipliers=noise_multipliers,
                               max_grad_norm=max_grad_norm, other_images=other, seed=seed)
    except (ValueError, NotImplementedError) as err:
        # The DP engine cannot make every architecture private: keep the plain row.
        notes.append(f"DP rows skipped: {err}")
        result = dp_protection(attack, model, xs, ys, noise_multipliers=(),
                               other_images=other, seed=seed)
    return InversionSection(result, model_label, notes)


def attack_for(model: nn.Module, iterations: int, seed: int = 0):
    """The analytic recovery where the model begins with a fully connected layer with
    a bias (exact from a plain gradient), else iDLG with ``iterations`` L-BFGS steps."""
    try:
        return AnalyticLinearRecovery(model)
    except ValueError:
        return IDLG(model, iterations=iterations, seed=seed)


def run(inputs: ScanInputs) -> InversionSection | SkippedSection:
    """The scan's inversion stage on the user's model and a few test examples."""
    key, title = InversionSection.key, InversionSection.title
    if not inputs.is_image or inputs.x.dim() != 4:
        return SkippedSection(key, title, "gradient inversion reconstructs images (N, C, H, W)")
    model, to_box = pixel_model(inputs)
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        return SkippedSection(key, title, "gradient inversion reads the labels and the class "
                              "count off the model's last nn.Linear layer, and this model has "
                              "none (an exported program or TorchScript file keeps no layer "
                              "objects): scan the factory form of the model to run it")
    model = _without_grad_state(model)
    x = to_box(inputs.x[:inputs.budget.n_examples].to(inputs.device))
    y = inputs.y[:inputs.budget.n_examples].to(inputs.device)
    return measure_inversion(model, x, y, model_label="the scanned model",
                             iterations=inputs.budget.optimisation_steps, seed=inputs.seed,
                             log=inputs.log)


def _without_grad_state(model: nn.Module) -> nn.Module:
    """The model with every parameter trainable: the update an attacker sees covers them
    all (a copy, so the user's model is untouched)."""
    import copy

    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()
