"""Checkpoints of private training that resume exactly (Opacus-compatible API).

``save_checkpoint``/``load_checkpoint`` (and ``PrivacyEngine``'s methods of
the same names) keep Opacus's keyword signatures and store the training state
of :mod:`modelsec_fast.state`: the model, the DP optimizer (its state, noise
multiplier, clipping norm and noise generator outside secure mode), the
Poisson loader's position, the accountant's history, every RNG, and the
caller's ``checkpoint_dict``, and Opacus's ``noise_scheduler`` and
``grad_clip_scheduler`` states. A run killed and resumed from its last
checkpoint continues bit-identically (outside secure mode) and reports the
same epsilon. The file is the state module's envelope: atomic write, sha256,
loaded with ``weights_only=True`` only.

``load_checkpoint`` also reads a checkpoint Opacus 1.6 wrote (its
``torch.save`` dict of ``module_state_dict``, ``privacy_accountant_state_dict``,
``optimizer_state_dict`` and scheduler states), through the state module's
safe loader: weights and plain values load, a pickled object is refused.
"""

from typing import Any, Dict, Optional

import torch

from modelsec_fast.state import (CheckpointError, capture_training_state, check_same_model,
                                 read_checkpoint, read_tensor_file, restore_training_state,
                                 write_checkpoint)

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "KIND"]

KIND = "privacy_engine"
# checkpoint_dict keys under which the schedulers' states travel (Opacus's names)
_SCHEDULERS = ("noise_scheduler_state_dict", "grad_clip_scheduler_state_dict")
_OPACUS_KEYS = ("module_state_dict", "privacy_accountant_state_dict")


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
    noise_scheduler=None,
    grad_clip_scheduler=None,
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
        noise_scheduler, grad_clip_scheduler: Opacus-style schedulers (any
            object with ``state_dict``/``load_state_dict``); their states are saved.

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
    extra = dict(checkpoint_dict or {})
    for key, scheduler in zip(_SCHEDULERS, (noise_scheduler, grad_clip_scheduler)):
        if scheduler is not None:
            extra[key] = scheduler.state_dict()
    state = capture_training_state(model=module, optimizer=optimizer, loader=data_loader,
                                   accountant=acc, rng=save_rng_state, extra=extra)
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
    noise_scheduler=None,
    grad_clip_scheduler=None,
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
    schedulers = tuple(zip(_SCHEDULERS, (noise_scheduler, grad_clip_scheduler)))
    try:
        state = read_checkpoint(path, kind=KIND)
    except CheckpointError as err:
        if "not a modelsec_fast checkpoint" not in str(err):
            raise
        if hasattr(path, "seek"):
            path.seek(0)
        opacus = read_tensor_file(path, "checkpoint")
        if not (isinstance(opacus, dict) and all(k in opacus for k in _OPACUS_KEYS)):
            raise
        return _load_opacus(opacus, path, module, optimizer, acc, schedulers)
    extra = restore_training_state(state, source=path, model=module, optimizer=optimizer,
                                   loader=data_loader, accountant=acc, rng=load_rng_state)
    _restore_schedulers(extra, schedulers, path)
    return extra


def _restore_schedulers(entries: dict, schedulers, path) -> None:
    for key, scheduler in schedulers:
        if scheduler is None:
            continue
        if key not in entries:
            raise CheckpointError(f"checkpoint {path}: holds no {key.replace('_state_dict', '')} "
                                  "state")
        scheduler.load_state_dict(entries[key])


def _load_opacus(saved: dict, path, module, optimizer, accountant, schedulers) -> dict:
    """Restore a checkpoint Opacus wrote; returns its other entries (as Opacus does)."""
    weights = saved["module_state_dict"]
    mine = module.state_dict()
    if set(weights) != set(mine):  # one side saved through a wrapper (keys "_module.")
        stripped = {k.removeprefix("_module."): v for k, v in weights.items()}
        prefixed = {f"_module.{k}": v for k, v in stripped.items()}
        weights = next((w for w in (stripped, prefixed) if set(w) == set(mine)), weights)
    check_same_model(weights, module, source=path)
    accountant.load_state_dict(saved["privacy_accountant_state_dict"])
    module.load_state_dict(weights)
    if optimizer is not None:
        if "optimizer_state_dict" not in saved:
            raise CheckpointError(f"checkpoint {path}: holds no optimizer state")
        optimizer.load_state_dict(saved["optimizer_state_dict"])
    _restore_schedulers(saved, schedulers, path)
    return {k: v for k, v in saved.items()
            if k not in _OPACUS_KEYS + _SCHEDULERS + ("optimizer_state_dict",)}
