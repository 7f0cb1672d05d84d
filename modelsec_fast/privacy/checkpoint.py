"""Checkpoints of private training that resume exactly, written atomically.

A checkpoint holds everything that decides the rest of a DP-SGD run:

* the model's and the optimizer's state dicts, and the DP optimizer's own
  noise multiplier and clipping norm (a schedule may have changed them);
* the noise generator's state (``optimizer.noise_generator.get_state()``,
  the Philox (seed, offset)), outside secure mode;
* the Poisson sampler's state (base seed, batches handed out, position in
  the epoch), when the data loader is given;
* the accountant's history, so a resumed run neither forgets nor repeats a
  step;
* torch's global CPU (and CUDA) generator states, for dropout and the like.

With these, a run killed and resumed from its last checkpoint continues
bit-identically (outside secure mode), and reports the same epsilon.

File format: ``torch.save`` of ``{"format", "version", "sha256", "payload"}``
where ``payload`` is the ``torch.save`` bytes of the state and ``sha256`` its
digest, so a truncated or bit-flipped file is detected before anything is
loaded. Loading uses ``weights_only=True`` (no arbitrary unpickling) unless
the caller asks otherwise. The file is written to a temporary file in the
same directory, fsync'ed, and moved over the old one with ``os.replace``, so a
kill during the save leaves the previous checkpoint intact.
"""

import hashlib
import io
from typing import Any, Dict, Optional

import torch

from modelsec_fast.atomic_file import write_atomically

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "modelsec_fast.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, another format, or another model."""


def _model_fingerprint(module: torch.nn.Module):
    """[(name, shape, dtype)] of every parameter and buffer, in state-dict order."""
    return [
        (name, tuple(t.shape), str(t.dtype))
        for name, t in module.state_dict().items()
        if isinstance(t, torch.Tensor)
    ]


def _pending_physical_batches(optimizer) -> bool:
    """True when clipped sums of a not yet finished logical batch are held in memory."""
    params = [p for group in getattr(optimizer, "param_groups", []) for p in group["params"]]
    return any(getattr(p, "summed_grad", None) is not None for p in params)


def _rng_states() -> Dict[str, Any]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


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
            plain Python values so that loading stays ``weights_only``.
        save_rng_state: also save torch's global CPU/CUDA generator states.
        privacy_engine: alias of ``engine`` (the name ``PrivacyEngine.save_checkpoint`` uses).

    Raises:
        ValueError: no accountant, or called between the physical batches of
            one logical batch (their clipped sums would be lost).
    """
    engine = engine if engine is not None else privacy_engine
    acc = _engine_accountant(engine, accountant)
    if optimizer is not None and _pending_physical_batches(optimizer):
        raise ValueError(
            "save_checkpoint was called in the middle of a logical batch: clipped gradients "
            "of its earlier physical batches are not saved. Save after the optimizer step "
            "that ends the logical batch."
        )
    state: Dict[str, Any] = {
        "module_state_dict": module.state_dict(),
        "model_fingerprint": _model_fingerprint(module),
        "accountant_state_dict": dict(acc.state_dict()),
        "secure_mode": bool(getattr(engine, "secure_mode", False)),
        "user": dict(checkpoint_dict or {}),
    }
    if optimizer is not None:
        state["optimizer_state_dict"] = optimizer.state_dict()
        state["dp_optimizer"] = {
            key: getattr(optimizer, key)
            for key in ("noise_multiplier", "max_grad_norm")
            if isinstance(getattr(optimizer, key, None), (int, float))
        }
        generator = getattr(optimizer, "noise_generator", None)
        if generator is not None and getattr(optimizer, "noise_source", "philox") != "secure":
            state["noise_generator_state"] = generator.get_state()
    if data_loader is not None:
        if not hasattr(data_loader, "state_dict"):
            raise TypeError(
                f"data_loader {type(data_loader).__name__} has no state_dict(); pass the DPDataLoader"
            )
        state["data_loader_state"] = data_loader.state_dict()
    if save_rng_state:
        state["rng_state"] = _rng_states()

    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    envelope = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": payload,
    }
    out = io.BytesIO()
    torch.save(envelope, out)
    if hasattr(path, "write"):
        path.write(out.getvalue())
    else:
        write_atomically(path, out.getvalue())


def _read_state(path, weights_only: bool) -> Dict[str, Any]:
    name = getattr(path, "name", path)
    try:
        envelope = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CheckpointError(f"checkpoint {name!s} is corrupt or not a checkpoint: {err}") from err
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{name!s} is not a modelsec_fast checkpoint")
    if envelope.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {name!s} has format version {envelope.get('version')}, "
            f"this library reads version {FORMAT_VERSION}"
        )
    payload = envelope.get("payload")
    if not isinstance(payload, (bytes, bytearray)) or \
            hashlib.sha256(payload).hexdigest() != envelope.get("sha256"):
        raise CheckpointError(f"checkpoint {name!s} is corrupt: its checksum does not match")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=weights_only)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {name!s} holds objects that cannot be loaded with "
            f"weights_only={weights_only}: {err}"
        ) from err


def _check_same_model(saved, module: torch.nn.Module) -> None:
    mine = _model_fingerprint(module)
    saved = [(n, tuple(s), d) for n, s, d in saved]
    if saved == mine:
        return
    saved_map, mine_map = {n: (s, d) for n, s, d in saved}, {n: (s, d) for n, s, d in mine}
    missing = [n for n in mine_map if n not in saved_map]
    unexpected = [n for n in saved_map if n not in mine_map]
    differing = [f"{n}: checkpoint {saved_map[n]} vs model {mine_map[n]}"
                 for n in mine_map if n in saved_map and saved_map[n] != mine_map[n]]
    details = "; ".join(
        part for part in (
            f"missing from checkpoint: {missing[:5]}" if missing else "",
            f"not in model: {unexpected[:5]}" if unexpected else "",
            f"different shape/dtype: {differing[:5]}" if differing else "",
        ) if part
    )
    raise CheckpointError(f"the checkpoint is from another model ({details})")


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

    Args: as :func:`save_checkpoint`; ``weights_only=False`` allows arbitrary
        pickled user entries (only for files you trust).

    Returns:
        The user entries given as ``checkpoint_dict`` when saving.

    Raises:
        CheckpointError (a ValueError): a corrupt or truncated file, another
            format, or a checkpoint of another model (names and shapes differ).
        ValueError: the accountant mechanism, or the data loader's dataset
            size / sample rate, differ from the checkpoint's.
        FileNotFoundError: no file at ``path``.
    """
    engine = engine if engine is not None else privacy_engine
    acc = _engine_accountant(engine, accountant)
    state = _read_state(path, weights_only)
    _check_same_model(state["model_fingerprint"], module)
    if data_loader is not None and "data_loader_state" not in state:
        raise CheckpointError("the checkpoint holds no data loader state; pass data_loader=None")
    if optimizer is not None and "optimizer_state_dict" not in state:
        raise CheckpointError("the checkpoint holds no optimizer state; pass optimizer=None")

    # Validate everything that can fail before changing anything.
    fresh = type(acc).__new__(type(acc))
    fresh.__dict__.update(acc.__dict__)
    fresh.load_state_dict(state["accountant_state_dict"])
    if data_loader is not None:
        data_loader.load_state_dict(state["data_loader_state"])  # validates before it changes

    module.load_state_dict(state["module_state_dict"])
    if optimizer is not None:
        try:
            optimizer.load_state_dict(state["optimizer_state_dict"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"the optimizer state does not fit this optimizer: {err}") from err
        for key, value in state.get("dp_optimizer", {}).items():
            setattr(optimizer, key, value)
        generator = getattr(optimizer, "noise_generator", None)
        if generator is not None and "noise_generator_state" in state \
                and getattr(optimizer, "noise_source", "philox") != "secure":
            generator.set_state(state["noise_generator_state"])
    acc.load_state_dict(state["accountant_state_dict"])
    if load_rng_state and "rng_state" in state:
        torch.set_rng_state(state["rng_state"]["cpu"])
        if "cuda" in state["rng_state"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_state"]["cuda"])
    return state["user"]
