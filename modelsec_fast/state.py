"""One training state: capture, restore, and one safe checkpoint file.

A run killed and resumed from its last checkpoint continues bit-identically
only if everything that decides the rest of it comes back. The state captured
here holds all of it:

* the model's state dict, the optimizer's, the LR scheduler's;
* under DP-SGD: the DP optimizer's noise multiplier and clipping norm (a
  schedule may have changed them), its noise generator (outside secure mode)
  and the accountant's history, so a resumed run neither forgets nor repeats
  a step;
* the data loader's position (a ``DPDataLoader``'s Poisson seed and batches
  handed out; any loader with ``state_dict``/``load_state_dict``);
* every random generator: Python's, NumPy's, torch's CPU and CUDA generators,
  and the ``torch.Generator`` objects a loader or its samplers hold;
* the trainer's own entries (history, epoch, ...) under ``"extra"``.

The file (:func:`write_checkpoint`, :func:`read_checkpoint`) is ``torch.save``
of the envelope ``{"format": FORMAT, "version": VERSION, "kind", "sha256",
"payload"}``: ``payload`` is the ``torch.save`` bytes of the state (as a
uint8 tensor), ``sha256`` their digest and ``kind`` who wrote it (a trainer,
the privacy engine, the CLI). It is written to a temporary file beside the target, fsync'ed and
renamed over it, so a kill mid-save leaves the previous checkpoint intact.
Both layers are read with ``torch.load(weights_only=True)`` only: a file that
holds a pickled object which could run code is refused before anything runs.
Every ``torch.load`` of the package is in this module.

Errors: :class:`CheckpointError` (a ``ValueError``), one line
``checkpoint <file>: <reason>``.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import tempfile
import warnings
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT", "VERSION", "CheckpointError",
    "write_checkpoint", "read_checkpoint", "read_tensor_file", "write_atomically",
    "capture_training_state", "restore_training_state", "check_same_model",
    "capture_rng_state", "restore_rng_state", "loader_generators",
]

FORMAT = "modelsec_fast.state"
VERSION = 1
# Formats of modelsec_fast 0.1.0 that this module no longer reads, and what wrote them.
_LEGACY_FORMATS = {
    "modelsec_fast.checkpoint": "PrivacyEngine.save_checkpoint",
    "modelsec_fast.checkpoint/1": "the modelsec-fast CLI",
    "modelsec_fast.AdversarialTrainer/1": "AdversarialTrainer",
}
_LEGACY_READER = "modelsec_fast 0.1.0"
_ZIP_MAGIC = b"PK\x03\x04"
_PARTS = ("model", "optimizer", "dp_optimizer", "noise_generator", "scheduler", "loader",
          "accountant", "rng", "extra")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: not ours, truncated, damaged, of an old
    format, of another model, or holding code. The message is one line that
    names the file and the reason."""


# ------------------------------------------------------------------ the file
def write_atomically(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it over
    ``path`` and fsync the folder, so the file is either the old or the new one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _serialized(obj) -> memoryview:
    """``torch.save`` bytes of ``obj``, as a writable view (no copy)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def write_checkpoint(path, state: dict, *, kind: str) -> None:
    """Write ``state`` (tensors and plain Python values) in the envelope.

    Args:
        path: file path (written atomically), or a writable binary file object.
        state: usually :func:`capture_training_state`'s dict.
        kind: who writes it (e.g. ``"adversarial_trainer"``);
            :func:`read_checkpoint` checks it.
    """
    payload = _serialized(state)
    # A uint8 tensor, not bytes: torch stores it raw, where pickled bytes would grow by half.
    data = _serialized({"format": FORMAT, "version": VERSION, "kind": kind,
                        "sha256": hashlib.sha256(payload).hexdigest(),
                        "payload": torch.frombuffer(payload, dtype=torch.uint8)})
    if hasattr(path, "write"):
        path.write(data)
    else:
        write_atomically(path, data)


def _name(path) -> str:
    return os.fspath(path) if isinstance(path, (str, os.PathLike)) else \
        str(getattr(path, "name", "<file object>"))


def _numpy_rng_globals() -> list:
    """What unpickling NumPy's RNG state (a uint32 array) needs, taken from numpy
    itself so it holds for numpy 1 and 2; nothing else is allowed."""
    reconstruct = np.zeros(1, dtype=np.uint32).__reduce__()[0]
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _safe_load(source, name: str, what: str = "checkpoint"):
    """``torch.load(weights_only=True)`` with every failure as one-line CheckpointError.

    ``source``: a path, a readable binary file object, or bytes.
    """
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        with torch.serialization.safe_globals(_numpy_rng_globals()), warnings.catch_warnings():
            # A bare pickle draws a warning before the refusal; the refusal says it all.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises many types for a foreign or damaged file
        raise CheckpointError(f"{what} {name}: {_load_failure(err, source)}") from None


def _load_failure(err: Exception, source) -> str:
    """The reason a safe load failed, in a few words."""
    text = str(err)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return (f"refused: it holds a pickled object ({unsafe.group(1)}) that could run code; "
                "nothing was executed")
    if isinstance(err, EOFError):
        return "empty or truncated"
    if _starts_with_zip(source):  # a torch file, but its archive or pickle does not parse
        return f"truncated or damaged ({type(err).__name__}: {' '.join(text.split()[:8])})"
    return "not a torch file that loads safely"


def _starts_with_zip(source) -> bool:
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                return f.read(4) == _ZIP_MAGIC
        position = source.tell()
        source.seek(0)
        head = source.read(4)
        source.seek(position)
        return head == _ZIP_MAGIC
    except (OSError, AttributeError, ValueError):
        return False


def read_checkpoint(path, *, kind: str) -> dict:
    """Read a checkpoint written by :func:`write_checkpoint` with this ``kind``.

    Args:
        path: file path or readable binary file object.
        kind: the writer expected (see :func:`write_checkpoint`).

    Returns:
        The state dict that was written.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: not a torch file or not ours, truncated, a bad checksum,
            an old format or version (named, with the version that reads it),
            another kind, or a pickled object that would run code (refused,
            nothing executed).
    """
    name = _name(path)
    envelope = _safe_load(path, name)
    fmt = envelope.get("format") if isinstance(envelope, dict) else None
    if fmt in _LEGACY_FORMATS:
        raise CheckpointError(
            f"checkpoint {name}: old format {fmt!r} (written by {_LEGACY_FORMATS[fmt]}), read "
            f"by {_LEGACY_READER}; this version reads {FORMAT!r} version {VERSION} only: "
            f"finish that run with {_LEGACY_READER} or start it again")
    if fmt != FORMAT:
        raise CheckpointError(f"checkpoint {name}: not a modelsec_fast checkpoint (a torch file "
                              f"without the {FORMAT!r} envelope)")
    if envelope.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {name}: format version {envelope.get('version')!r}; "
                              f"this library reads version {VERSION}")
    payload = envelope.get("payload")
    payload = payload.numpy().tobytes() if isinstance(payload, torch.Tensor) and \
        payload.dtype == torch.uint8 and payload.dim() == 1 else None
    if payload is None or hashlib.sha256(payload).hexdigest() != envelope.get("sha256"):
        raise CheckpointError(f"checkpoint {name}: bad checksum (the payload's sha256 does not "
                              "match; the file is damaged)")
    if envelope.get("kind") != kind:
        raise CheckpointError(f"checkpoint {name}: holds a {envelope.get('kind')!r} state, "
                              f"not a {kind!r} one")
    state = _safe_load(payload, name)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {name}: damaged (its payload is not a dict)")
    return state


def read_tensor_file(path, what: str = "file") -> Any:
    """A plain ``torch.save`` file (tensors and plain values, e.g. torchattacks'
    adversarial datasets), loaded on the CPU with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: not a torch file, truncated, or a pickled object that
            would run code (refused, nothing executed); ``what`` names the file's role.
    """
    return _safe_load(path, _name(path), what)


# ------------------------------------------------------------------ random generators
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
    """Every generator training draws from: torch's (a DataLoader's shuffle seeds from
    it, attacks start from it), Python's and NumPy's (user transforms), CUDA's, and
    those ``loader`` holds."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "loader": [g.get_state() for g in loader_generators(loader)] if loader is not None else [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _check_loader_generators(state: dict, loader, name: str) -> None:
    if loader is not None and len(loader_generators(loader)) != len(state["loader"]):
        raise CheckpointError(
            f"checkpoint {name}: holds {len(state['loader'])} loader generator state(s) but this "
            f"loader has {len(loader_generators(loader))}; resume with the same kind of loader")


def restore_rng_state(state: dict, loader=None, *, source: str = "state") -> None:
    """Inverse of :func:`capture_rng_state`.

    Raises:
        CheckpointError: ``loader`` holds another number of generators.
    """
    _check_loader_generators(state, loader, source)
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader is not None:
        for gen, gen_state in zip(loader_generators(loader), state["loader"]):
            gen.set_state(gen_state)


# ------------------------------------------------------------------ training state
def _noise_generator(optimizer):
    """A DP optimizer's noise generator, unless it draws from the secure source."""
    generator = getattr(optimizer, "noise_generator", None)
    if isinstance(generator, torch.Generator) and \
            getattr(optimizer, "noise_source", "philox") != "secure":
        return generator
    return None


def _has_loader_state(loader) -> bool:
    return callable(getattr(loader, "state_dict", None)) and \
        callable(getattr(loader, "load_state_dict", None))


def capture_training_state(*, model: torch.nn.Module, optimizer=None, scheduler=None,
                           loader=None, accountant=None, rng: bool = True,
                           extra: dict | None = None) -> dict:
    """Everything that decides the rest of a run (see the module doc).

    Args:
        model: the model being trained (its weights are copied).
        optimizer: a torch optimizer or a DP optimizer (then its noise
            multiplier, clipping norm and noise generator are kept).
        scheduler: an LR scheduler.
        loader: the training loader (its position if it has ``state_dict``,
            the generators it holds).
        accountant: the DP accountant.
        rng: also capture the global generators and the loader's.
        extra: the trainer's own entries; keep them to tensors and plain
            Python values, so the file loads with ``weights_only=True``.

    Returns:
        A dict of tensors and plain values; hand it to :func:`write_checkpoint`
        before training goes on (optimizer and scheduler entries are live).
    """
    state: dict[str, Any] = dict.fromkeys(_PARTS)
    state["model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
        state["dp_optimizer"] = {key: getattr(optimizer, key)
                                 for key in ("noise_multiplier", "max_grad_norm")
                                 if isinstance(getattr(optimizer, key, None), (int, float))}
        generator = _noise_generator(optimizer)
        state["noise_generator"] = None if generator is None else generator.get_state()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if _has_loader_state(loader):
        state["loader"] = loader.state_dict()
    if accountant is not None:
        state["accountant"] = dict(accountant.state_dict())
    if rng:
        state["rng"] = capture_rng_state(loader)
    state["extra"] = dict(extra or {})
    return state


def check_same_model(saved: dict, model: torch.nn.Module, *, source,
                     target: str = "this model") -> None:
    """Refuse weights ``saved`` (a state dict) of another architecture than ``model``'s.

    Raises:
        CheckpointError: naming ``source`` (the file), ``target`` (the model, in
            words) and up to five keys missing, unexpected, or of another
            shape/dtype.
    """
    def shapes(sd):  # "4x3 float32"
        return {k: f"{'x'.join(map(str, t.shape)) or 'scalar'} {str(t.dtype).replace('torch.', '')}"
                for k, t in sd.items() if isinstance(t, torch.Tensor)}

    theirs, mine = shapes(saved), shapes(model.state_dict())
    if theirs == mine:
        return
    missing = [k for k in mine if k not in theirs]
    unexpected = [k for k in theirs if k not in mine]
    differing = [f"{k} {theirs[k]} vs {mine[k]}"
                 for k in mine if k in theirs and theirs[k] != mine[k]]
    details = "; ".join(part for part in (
        f"missing from the checkpoint: {', '.join(missing[:5])}" if missing else "",
        f"not in the model: {', '.join(unexpected[:5])}" if unexpected else "",
        f"shape/dtype checkpoint vs model: {', '.join(differing[:5])}" if differing else "",
    ) if part)
    raise CheckpointError(f"checkpoint {_name(source)}: another architecture, its weights do "
                          f"not fit {target} ({details})")


def _check_parts(state: dict, name: str, *, optimizer, scheduler, loader, accountant) -> None:
    """Refuse a state that lacks what the caller restores, or holds what it cannot."""
    if not isinstance(state, dict) or any(part not in state for part in _PARTS):
        raise CheckpointError(f"checkpoint {name}: damaged (not a training state)")
    for part, given in (("optimizer", optimizer), ("scheduler", scheduler)):
        if given is not None and state[part] is None:
            raise CheckpointError(f"checkpoint {name}: holds no {part} state; "
                                  f"resume without a {part} or from a run that had one")
    if (accountant is None) != (state["accountant"] is None):
        raise CheckpointError(
            f"checkpoint {name}: " + ("holds no accountant state, so it is not from a DP run"
                                      if accountant is not None else
                                      "holds a DP accountant state; resume it under DP-SGD"))
    if loader is not None and _has_loader_state(loader) != (state["loader"] is not None):
        raise CheckpointError(
            f"checkpoint {name}: " + ("holds a data-loader state (e.g. a DPDataLoader's Poisson "
                                      "position) but this loader cannot restore one"
                                      if state["loader"] is not None else
                                      "holds no data-loader state for this loader"))


def restore_training_state(state: dict, *, source, model: torch.nn.Module, optimizer=None,
                           scheduler=None, loader=None, accountant=None,
                           rng: bool = True) -> dict:
    """Inverse of :func:`capture_training_state`; checks everything it can first.

    Args:
        state: a dict from :func:`capture_training_state` (e.g. read back
            with :func:`read_checkpoint`).
        source: the file (path or file object) it came from, for error messages.
        model, optimizer, scheduler, loader, accountant: the objects to
            restore into (``None``: leave it out; an optimizer may be left
            out, an accountant only if the state holds none).
        rng: also restore the global generators and the loader's.

    Returns:
        ``state["extra"]``, the trainer's own entries.

    Raises:
        CheckpointError: another model architecture (the keys and shapes that
            differ are named), a part missing or unexpected, an accountant of
            another mechanism, a loader of another dataset size or sample rate,
            or an optimizer state that does not fit. The checks that can be
            made without changing anything come first.
    """
    source = _name(source)
    _check_parts(state, source, optimizer=optimizer, scheduler=scheduler, loader=loader,
                 accountant=accountant)
    check_same_model(state["model"], model, source=source)
    if rng and state["rng"] is not None:
        _check_loader_generators(state["rng"], loader, source)
    if accountant is not None:  # into a copy, so a refusal leaves the accountant as it was
        trial = type(accountant).__new__(type(accountant))
        trial.__dict__.update(accountant.__dict__)
        _restore_part(trial.load_state_dict, state["accountant"], "accountant", source)
    if loader is not None and state["loader"] is not None:  # validates before it changes
        _restore_part(loader.load_state_dict, state["loader"], "data loader", source)

    model.load_state_dict(state["model"])
    if optimizer is not None:
        _restore_part(optimizer.load_state_dict, state["optimizer"], "optimizer", source)
        changed = [f"{key} {getattr(optimizer, key)} -> {value}"
                   for key, value in state["dp_optimizer"].items()
                   if getattr(optimizer, key, value) != value]
        if changed:  # the run goes on as saved; a value set at construction is replaced
            warnings.warn(f"checkpoint {source}: restores the DP optimizer's "
                          f"{', '.join(changed)} (set them after loading to change them)",
                          stacklevel=3)
        for key, value in state["dp_optimizer"].items():
            setattr(optimizer, key, value)
        generator = _noise_generator(optimizer)
        if generator is not None and state["noise_generator"] is not None:
            generator.set_state(state["noise_generator"])
    if scheduler is not None:
        _restore_part(scheduler.load_state_dict, state["scheduler"], "scheduler", source)
    if accountant is not None:
        accountant.load_state_dict(state["accountant"])
    if rng and state["rng"] is not None:
        restore_rng_state(state["rng"], loader, source=source)
    return state["extra"]


def _restore_part(load_state_dict, part_state, what: str, name: str) -> None:
    try:
        load_state_dict(part_state)
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise CheckpointError(f"checkpoint {name}: the {what} state does not fit: "
                              f"{detail}") from None
