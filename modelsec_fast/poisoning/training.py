"""Small, seeded training loops for poisoning experiments (plain and DP-SGD), and the
model helpers the poisoning attacks and defences share.

These train the victims of the experiments: a model on a (poisoned) tensor data set,
Adam and cross-entropy, the data moved to the model's device once. They are not the
application's training recipes (``modelsec-fast train``); they exist so that the
library's poisoning review can retrain victims without importing the application.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_int, check_positive

__all__ = ["model_device", "eval_mode", "train_classifier", "train_private", "dp_noise_multiplier"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU if it has none)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """The model in eval mode inside; every submodule's own mode restored after,
    also when the body raises."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _check_data(x, y) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("x and y must be tensors")
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"x and y must be non-empty and of one length, got {len(x)} and {len(y)}")


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 20,
                     batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 0.0,
                     seed: int = 0) -> nn.Module:
    """Train ``model`` in place with Adam on cross-entropy; returns it in eval mode.

    Args:
        x: (N, ...) inputs; y: (N,) int64 labels; both moved to the model's device.
        epochs, batch_size, lr, weight_decay: the usual (shuffled mini-batches).
        seed: seeds the shuffling (the weights are the caller's).
    """
    _check_data(x, y)
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    lr = check_positive("lr", lr)
    device = model_device(model)
    x, y = x.to(device), y.to(device).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator).to(device)
        for i in range(0, len(y), batch_size):
            batch = order[i:i + batch_size]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def dp_noise_multiplier(n: int, *, target_epsilon: float, delta: float, epochs: int,
                        batch_size: int) -> float:
    """The noise multiplier :func:`train_private` uses for ``n`` samples (RDP accountant,
    sample rate 1 / ceil(n / batch_size), ``epochs`` epochs)."""
    from ..accountants import get_noise_multiplier

    batches = math.ceil(n / min(batch_size, n))
    return get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                sample_rate=1.0 / batches, epochs=epochs, accountant="rdp")


def train_private(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  target_epsilon: float | None = None, delta: float,
                  noise_multiplier: float | None = None, epochs: int = 20,
                  batch_size: int = 128, lr: float = 3e-3, max_grad_norm: float = 1.0,
                  seed: int = 0) -> tuple[nn.Module, float]:
    """Train ``model`` in place with DP-SGD (our :class:`~modelsec_fast.PrivacyEngine`,
    RDP accountant, Poisson sampling, Adam), (epsilon, delta)-DP for add/remove-one
    neighbours.

    Exactly one of ``target_epsilon`` (``math.inf`` trains without privacy: the same
    loop with no clipping and no noise) and ``noise_multiplier`` (e.g. from
    :func:`dp_noise_multiplier`, to skip the calibration when training many victims).

    Returns:
        (the model in eval mode, the epsilon the accountant reports; inf without privacy).
    """
    _check_data(x, y)
    if (target_epsilon is None) == (noise_multiplier is None):
        raise ValueError("train_private needs exactly one of target_epsilon and noise_multiplier")
    epochs = check_int("epochs", epochs, 1)
    if target_epsilon == math.inf:
        return train_classifier(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr,
                                seed=seed), math.inf
    from ..privacy.engine import PrivacyEngine

    if noise_multiplier is None:
        noise_multiplier = dp_noise_multiplier(len(y), target_epsilon=check_positive(
            "target_epsilon", target_epsilon), delta=delta, epochs=epochs, batch_size=batch_size)
    device = model_device(model)
    data = torch.utils.data.TensorDataset(x.to(device), y.to(device).long())
    loader = torch.utils.data.DataLoader(data, batch_size=min(batch_size, len(y)))
    optimizer = torch.optim.Adam(model.parameters(), lr=check_positive("lr", lr))
    engine = PrivacyEngine(accountant="rdp")
    private, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm, poisson_sampling=True,
        sampler_generator=torch.Generator().manual_seed(seed),
        noise_generator=torch.Generator(device=device).manual_seed(seed + 7919))
    private.train()
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            # An empty Poisson batch still takes its step: the noise alone (as the recipe).
            F.cross_entropy(private(xb), yb).backward()
            optimizer.step()
    epsilon = engine.get_epsilon(delta)
    private.cleanup()  # the layers back to plain torch: the model is an ordinary module again
    return model.eval(), epsilon
