"""A worked example for ``modelsec-fast scan``: a small CNN on the embedded 8x8 digits.

``python -m modelsec_fast.app.scan.example OUT`` trains :func:`digits_cnn` on a
fair-coin half of the digits' training split (seeded, a few seconds on a CPU) and
writes, into ``OUT``:

* ``digits_cnn.pt``: its state dict (for ``--model
  modelsec_fast.app.scan.example:digits_cnn --weights OUT/digits_cnn.pt``);
* ``digits_cnn.pt2``: the same model as a ``torch.export`` program (``--trust-model``);
* ``digits_test.npz``: the test split (``x`` float32 (N, 1, 8, 8) in [0, 1], ``y``);
* ``digits_pool.npz``: the training split with ``member`` (who was trained on).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from torch import nn

__all__ = ["digits_cnn", "write_example"]


def digits_cnn() -> nn.Module:
    """A fresh, untrained CNN for (N, 1, 8, 8) digits in [0, 1] -> 10 logits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10))


# The factory's documented companion: how the scan retrains it (LiRA's shadow models).
digits_cnn.training_recipe = {"epochs": 15, "batch_size": 64, "lr": 3e-3, "optimizer": "adam"}


def write_example(out: str, seed: int = 0) -> dict[str, str]:
    """Train the example model and write its files into ``out``; returns name -> path."""
    from modelsec_fast.data import load_dataset

    from .fitting import fit
    from .inputs import FitRecipe

    os.makedirs(out, exist_ok=True)
    ds = load_dataset("digits")
    member = np.random.default_rng(seed).random(len(ds.y_train)) < 0.5
    model = fit(digits_cnn, FitRecipe(**digits_cnn.training_recipe),
                ds.x_train[torch.from_numpy(member)], ds.y_train[torch.from_numpy(member)],
                seed=seed)
    paths = {name: os.path.join(out, name) for name in
             ("digits_cnn.pt", "digits_cnn.pt2", "digits_test.npz", "digits_pool.npz")}
    torch.save(model.state_dict(), paths["digits_cnn.pt"])
    program = torch.export.export(model, (ds.x_test[:32],))
    torch.export.save(program, paths["digits_cnn.pt2"])
    np.savez(paths["digits_test.npz"], x=ds.x_test.numpy(), y=ds.y_test.numpy())
    np.savez(paths["digits_pool.npz"], x=ds.x_train.numpy(), y=ds.y_train.numpy(), member=member)
    with torch.no_grad():
        accuracy = float((model(ds.x_test).argmax(1) == ds.y_test).float().mean())
    print(f"example model: test accuracy {100 * accuracy:.1f}%; wrote {', '.join(paths.values())}")
    return paths


if __name__ == "__main__":
    write_example(sys.argv[1] if len(sys.argv) > 1 else "example")
