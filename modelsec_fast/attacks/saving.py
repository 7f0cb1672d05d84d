"""Adversarial datasets on disk: torchattacks 3.5.1's ``save``/``load`` file format.

``save`` attacks every batch of a DataLoader and writes one ``torch.save``
dict: ``adv_inputs`` and ``labels`` (CPU tensors), optionally ``preds`` and
``clean_inputs``, and ``save_type`` ("float" or "int").  Images are stored in
pixel space [0, 1] even when the attack works on normalised inputs, and as
uint8 (``round(x * 255)``) with ``save_type="int"``.  Files written here load
with ``torchattacks.Attack.load`` and the other way round.

Differences from torchattacks, both deliberate: the file is written once at
the end (torchattacks rewrites it after every batch), and "int" rounds to the
nearest level where torchattacks truncates, which moves a pixel by at most
half a level (1/510) instead of up to one level.
"""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from modelsec_fast.state import read_tensor_file

__all__ = ["save_adversarial", "load_adversarial", "to_type"]

_SAVE_TYPES = ("float", "int")


def to_type(inputs: torch.Tensor, type: str) -> torch.Tensor:  # noqa: A002 (torchattacks' name)
    """"int": float images in [0, 1] -> uint8 levels; "float": uint8 -> [0, 1]."""
    if type not in _SAVE_TYPES:
        raise ValueError(f"{type!r} is not a valid type, expected one of {_SAVE_TYPES}")
    if type == "int" and inputs.is_floating_point():
        return (inputs * 255).round_().clamp_(0, 255).to(torch.uint8)
    if type == "float" and inputs.dtype == torch.uint8:
        return inputs.float() / 255
    return inputs


def save_adversarial(attack, data_loader, save_path=None, verbose=True, return_verbose=False,
                     save_predictions=False, save_clean_inputs=False, save_type="float"):
    """Attack every batch of ``data_loader``; see :meth:`Attack.save`."""
    if save_type not in _SAVE_TYPES:
        raise ValueError(f"save_type must be one of {_SAVE_TYPES}, got {save_type!r}")
    parts = {"adv_inputs": [], "labels": [], "preds": [], "clean_inputs": []}
    correct = total = 0
    distances = []
    elapsed = 0.0
    n_batches = len(data_loader)
    for step, (inputs, labels) in enumerate(data_loader):
        start = time.time()
        adv = attack(inputs, labels)
        preds = attack.get_output_with_eval_nograd(adv).argmax(1)
        right = preds == labels.to(preds.device)
        correct += int(right.sum())
        total += labels.shape[0]
        # Mean L2 size of the successful perturbations, torchattacks' report.
        delta = (adv - inputs.to(adv.device)).flatten(1)
        distances.append(delta[~right].norm(p=2, dim=1).cpu())
        elapsed = time.time() - start
        if save_path is not None:
            parts["adv_inputs"].append(adv.detach().cpu())
            parts["labels"].append(labels.detach().cpu())
            if save_predictions:
                parts["preds"].append(preds.cpu())
            if save_clean_inputs:
                parts["clean_inputs"].append(inputs.detach().cpu())
        if verbose:
            _print_progress(100 * (step + 1) / n_batches, correct, total, distances, elapsed, "\r")
    if verbose and total:
        _print_progress(100.0, correct, total, distances, elapsed, "\n")
    if save_path is not None and total:
        _write(attack, parts, save_path, save_predictions, save_clean_inputs, save_type)
    if return_verbose:
        return _robust_accuracy(correct, total), _mean_l2(distances), elapsed
    return None


def _write(attack, parts, save_path, save_predictions, save_clean_inputs, save_type):
    keys = ["adv_inputs", "labels"] + ["preds"] * save_predictions + ["clean_inputs"] * save_clean_inputs
    out = {k: torch.cat(parts[k]) for k in keys}
    for k in ("adv_inputs", "clean_inputs"):
        if k in out:
            if attack.normalization_used is not None:
                out[k] = attack.inverse_normalize(out[k])  # files hold pixel space
            out[k] = to_type(out[k], save_type)
    out["save_type"] = save_type
    torch.save(out, save_path)


def load_adversarial(load_path, batch_size=128, shuffle=False, normalize=None,
                     load_predictions=False, load_clean_inputs=False) -> DataLoader:
    """A DataLoader over a file written by ``save`` (ours or torchattacks').

    The file is read with ``weights_only=True`` (:func:`modelsec_fast.state.read_tensor_file`):
    a file holding a pickled object that could run code raises ``CheckpointError``
    (a ValueError) and nothing in it is executed.
    """
    saved = read_tensor_file(load_path, "adversarial dataset")
    if not isinstance(saved, dict):
        raise ValueError(f"{load_path} is not an adversarial dataset (a dict of tensors); "
                         f"it holds a {type(saved).__name__}")
    keys = ["adv_inputs", "labels"] + ["preds"] * load_predictions + ["clean_inputs"] * load_clean_inputs
    missing = [k for k in keys if k not in saved]
    if missing:
        raise ValueError(f"{load_path} holds no {missing}; it has {sorted(saved)}")
    tensors = []
    for k in keys:
        t = saved[k]
        if k in ("adv_inputs", "clean_inputs"):
            t = to_type(t, "float")
            if normalize is not None:
                shape = (1, -1) + (1,) * (t.dim() - 2)
                mean = torch.as_tensor(normalize["mean"], dtype=t.dtype).reshape(shape)
                std = torch.as_tensor(normalize["std"], dtype=t.dtype).reshape(shape)
                t = (t - mean) / std
        tensors.append(t)
    print(f"Data is loaded in the following order: [{', '.join(keys)}]")
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle)


def _robust_accuracy(correct, total) -> float:
    return 100.0 * correct / total if total else 0.0


def _mean_l2(distances) -> float:
    d = torch.cat(distances) if distances else torch.empty(0)
    return float(d.mean()) if d.numel() else 0.0


def _print_progress(progress, correct, total, distances, elapsed, end):
    print(f"- Save progress: {progress:.2f} % / Robust accuracy: "
          f"{_robust_accuracy(correct, total):.2f} % / L2: {_mean_l2(distances):.5f} "
          f"({elapsed:.3f} s/it)", end=end)
