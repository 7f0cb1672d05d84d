"""The update a client releases after one training step, plain or through DP-SGD.

* :func:`plain_gradient`: the averaged cross-entropy gradient of a batch.
* :func:`dp_gradient`: the update our :class:`~modelsec_fast.PrivacyEngine`
  releases for the same batch: per-sample gradients clipped to
  ``max_grad_norm``, summed, Gaussian noise of std ``noise_multiplier *
  max_grad_norm`` added, divided by the batch size. It is produced by the engine
  itself (one step of a zero-learning-rate SGD made private), so what an attack
  sees is exactly what DP-SGD would send.

Both return one tensor per trainable parameter, in ``model.parameters()`` order;
:func:`check_gradients` checks a list against a model.
"""

from __future__ import annotations

import copy
import warnings
from typing import Sequence

import torch
from torch import nn

from ..validation import check_input_pixels, check_int, check_non_negative, check_positive

__all__ = ["plain_gradient", "dp_gradient", "check_gradients", "trainable_parameters"]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters a released update covers: those with ``requires_grad``."""
    return [p for p in model.parameters() if p.requires_grad]


def check_gradients(model: nn.Module, gradients: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``gradients`` as a list of detached tensors, one per trainable parameter of
    ``model`` with its shape.

    Raises:
        TypeError: not a sequence of tensors.
        ValueError: another count or a shape that differs (both named), NaN or inf.
    """
    params = trainable_parameters(model)
    if isinstance(gradients, torch.Tensor) or not isinstance(gradients, Sequence):
        raise TypeError("gradients must be a list of tensors, one per trainable parameter, "
                        f"got {type(gradients).__name__}")
    if len(gradients) != len(params):
        raise ValueError(f"gradients has {len(gradients)} tensors but the model has "
                         f"{len(params)} trainable parameters")
    out = []
    for i, (g, p) in enumerate(zip(gradients, params)):
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"gradients[{i}] must be a tensor, got {type(g).__name__}")
        if g.shape != p.shape:
            raise ValueError(f"gradients[{i}] has shape {tuple(g.shape)}, the model's "
                             f"parameter {i} has shape {tuple(p.shape)}")
        if not bool(torch.isfinite(g).all()):
            raise ValueError(f"gradients[{i}] contains NaN or inf")
        out.append(g.detach().to(p.device, p.dtype))
    return out


def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() < 2 or len(x) == 0 or y.shape != (len(x),):
        raise ValueError(f"need a batch x (B, ...) with B >= 1 and labels y (B,), got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    check_input_pixels(x, unnormalised=False)


def plain_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The gradient of the mean cross-entropy of ``model`` on images ``x`` (B, C, H, W)
    in [0, 1] with labels ``y`` (B,), one tensor per trainable parameter.

    Raises:
        ValueError: images outside [0, 1], labels of another length.
    """
    _check_batch(x, y)
    params = trainable_parameters(model)
    device = params[0].device
    loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device).long())
    return [g.detach() for g in torch.autograd.grad(loss, params)]


def dp_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                noise_multiplier: float, max_grad_norm: float, seed: int = 0
                ) -> list[torch.Tensor]:
    """The update :class:`~modelsec_fast.PrivacyEngine` releases for the batch
    (``x`` (B, C, H, W) in [0, 1], ``y`` (B,)): clipped per-sample gradients, summed,
    noised (std ``noise_multiplier * max_grad_norm``, drawn from a generator seeded
    with ``seed``) and divided by B. ``model`` itself is left untouched.

    Raises:
        ValueError: images outside [0, 1], ``noise_multiplier < 0``,
            ``max_grad_norm <= 0``, or a model the engine cannot make private.
    """
    from ..privacy.engine import PrivacyEngine

    _check_batch(x, y)
    check_non_negative("noise_multiplier", noise_multiplier)
    check_positive("max_grad_norm", max_grad_norm)
    check_int("seed", seed)
    replica = copy.deepcopy(model)
    params = trainable_parameters(replica)
    device = params[0].device
    optimizer = torch.optim.SGD(params, lr=0.0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y.long()),
                                         batch_size=len(x))
    with warnings.catch_warnings():
        # One step of a fixed batch: the engine's warning about epsilon accounting
        # without Poisson sampling concerns training runs, not this single release.
        warnings.filterwarnings("ignore", message="poisson_sampling=False")
        private, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
            module=replica, optimizer=optimizer, data_loader=loader,
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            poisson_sampling=False, expected_batch_size=len(x),
            noise_generator=torch.Generator(device=device).manual_seed(seed))
    private.train()
    for xb, yb in loader:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(private(xb.to(device)), yb.to(device)).backward()
        optimizer.step()
    return [p.grad.detach().clone() for p in params]
