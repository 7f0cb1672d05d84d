"""Random-number state for exact resume.

A resumed run equals an uninterrupted one only if every source of randomness
continues where it stopped: torch's global generators (random starts of the
attacks, a DataLoader's shuffle, which draws its seed from the global
generator), Python's and NumPy's (user transforms), and any ``torch.Generator``
a loader or sampler carries (Poisson sampling).
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "loader_generators"]


def loader_generators(loader) -> list[torch.Generator]:
    """The distinct ``torch.Generator`` objects a loader and its samplers hold."""
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        gen = getattr(owner, "generator", None) if owner is not None else None
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def capture_rng_state(loader=None) -> dict:
    """Snapshot of every generator that training draws from."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "loader": [g.get_state() for g in loader_generators(loader)] if loader is not None else [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, loader=None) -> None:
    """Inverse of :func:`capture_rng_state`.

    Raises:
        ValueError: the loader holds a different number of generators than
            the one the state was captured from.
    """
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader is not None:
        gens = loader_generators(loader)
        if len(gens) != len(state["loader"]):
            raise ValueError(
                f"the checkpoint holds {len(state['loader'])} loader generator state(s) but "
                f"this train_loader has {len(gens)}; resume with the same kind of loader")
        for gen, gen_state in zip(gens, state["loader"]):
            gen.set_state(gen_state)
