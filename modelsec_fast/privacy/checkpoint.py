"""Checkpoints of private training that resume exactly (Opacus-compatible API).

``save_checkpoint``/``load_checkpoint`` (and ``PrivacyEngine``'s methods of
the same names) keep Opacus's keyword signatures and store the training state
of :mod:`modelsec_fast.state`: the model, the DP optimizer (its state, noise
multiplier, clipping norm and noise generator outside secure mode), the
Poisson loader's position, the accountant's history, every RNG, and the
caller's ``checkpoint_dict``. A run killed and resumed from its last
checkpoint continues bit-identically (outside secure mode) and reports the
same epsilon. The file is the state module's envelope: atomic write, sha256,
loaded with ``weights_only=True`` only.
"""

from typing import Any, Dict, Optional

import torch

from modelsec_fast.state import (CheckpointError, capture_training_state, read_checkpoint,
                                 restore_training_state, write_checkpoint)

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "KIND"]

KIND = "privacy_engine"


def _pending_physical_batches(optimizer) -> bool:
    """True when clipped sums of a not yet finished logical batch are held in memory."""
    params = [p for group in getattr(optimizer, "param_groups", []) for p in group["params"]]
    return any(getattr(p, "summed_grad", None) is not None for p in params)


def _engine_accountant(engine, accountant):
    """The accountant to save/restore: ``accountant=`` or ``engine.accountant``."""
    if accountant is not None:
        return accountant
    if engine is not None and getattr(engine, "accountant", None) is not None:
        return engine.accountant
    raise ValueError("pass the PrivacyEngine (engine=) or its accountant (accountant=)")


def save_checkpoint(
    *,
    path,
    module: torch.nn.Module,
    optimizer=None,
    engine=None,
    accountant=None,
    data_loader=None,
    checkpoint_dict: Optional[Dict[str, Any]] = None,
    save_rng_state: bool = True,
    privacy_engine=None,
) -> None:
    """Write a resumable checkpoint of private training to ``path``.

    Args:
        path: file path (written atomically), or a writable binary file object.
        module: the model being trained (as returned by ``make_private``).
        optimizer: the DP optimizer; its ``noise_generator`` state is saved
            unless it draws from the secure source.
        engine: the PrivacyEngine whose ``accountant`` is saved; or give
            ``accountant=`` directly.
        data_loader: the ``DPDataLoader``; its sampler state is saved.
        checkpoint_dict: extra user entries (epoch, scheduler states, ...),
            returned by :func:`load_checkpoint`. Keep them to tensors and
            plain Python values: the file is loaded with ``weights_only=True``.
        save_rng_state: also save the global generators (Python, NumPy, torch
            CPU/CUDA) and those the data loader holds.
        privacy_engine: alias of ``engine`` (the name ``PrivacyEngine.save_checkpoint`` uses).

    Raises:
        ValueError: no accountant, or called between the physical batches of
            one logical batch (their clipped sums would be lost).
        TypeError: a data loader without ``state_dict``.
    """
    engine = engine if engine is not None else privacy_engine
    acc = _engine_accountant(engine, accountant)
    if optimizer is not None and _pending_physical_batches(optimizer):
        raise ValueError(
            "save_checkpoint was called in the middle of a logical batch: clipped gradients "
            "of its earlier physical batches are not saved. Save after the optimizer step "
            "that ends the logical batch."
        )
    if data_loader is not None and not hasattr(data_loader, "state_dict"):
        raise TypeError(
            f"data_loader {type(data_loader).__name__} has no state_dict(); pass the DPDataLoader"
        )
    state = capture_training_state(model=module, optimizer=optimizer, loader=data_loader,
                                   accountant=acc, rng=save_rng_state, extra=checkpoint_dict)
    write_checkpoint(path, state, kind=KIND)


def load_checkpoint(
    *,
    path,
    module: torch.nn.Module,
    optimizer=None,
    engine=None,
    accountant=None,
    data_loader=None,
    load_rng_state: bool = True,
    weights_only: bool = True,
    privacy_engine=None,
) -> Dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`.

    Args: as :func:`save_checkpoint`; ``weights_only`` must stay True (kept
        for signature compatibility): full unpickling would run any code the
        file holds, so it is not offered.

    Returns:
        The user entries given as ``checkpoint_dict`` when saving.

    Raises:
        CheckpointError (a ValueError): a corrupt or truncated file, a bad
            checksum, another or an old format, a pickled object that would
            run code (refused, nothing executed), a checkpoint of another model
            (the names and shapes that differ), of another accountant
            mechanism, or of a data loader of another dataset size / sample
            rate. Nothing is changed when these checks fail.
        ValueError: ``weights_only=False``.
        FileNotFoundError: no file at ``path``.
    """
    if weights_only is not True:
        raise ValueError("weights_only=False is not supported: unpickling arbitrary objects "
                         "would run any code the checkpoint holds; keep checkpoint_dict entries "
                         "to tensors and plain Python values")
    engine = engine if engine is not None else privacy_engine
    acc = _engine_accountant(engine, accountant)
    state = read_checkpoint(path, kind=KIND)
    return restore_training_state(state, source=path, model=module, optimizer=optimizer,
                                  loader=data_loader, accountant=acc, rng=load_rng_state)
