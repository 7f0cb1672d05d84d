"""Loading the user's model for ``scan``, and what each format can run.

* ``package.module:factory`` plus ``--weights`` (a ``state_dict`` file): the
  factory is the user's own code, imported on purpose (the working directory is
  searched too); the weights are read with ``torch.load(weights_only=True)``,
  which never unpickles code. The default, and the only format that can train a
  fresh copy (LiRA shadows, trigger repair).
* a ``torch.export`` program (``.pt2``) or a TorchScript file: both loaders
  unpickle (``torch.export.load`` reads some entries with ``weights_only=False``;
  ``torch.jit.load`` says never to load untrusted files), so they load only with
  ``trust_model=True`` (``--trust-model``). The format is recognised from the zip
  archive's entry names, without reading them.
* ``.onnx`` through ``onnx2torch`` when it is installed (a graph, no pickle).

The user's normalisation (``--mean``/``--std``) goes inside the returned model,
so every scan stage sees pixel-space inputs. Every failure raises
:class:`ModelLoadError` (a ``ValueError``) with one line naming the file and the
problem.
"""

from __future__ import annotations

import importlib
import os
import sys
import zipfile
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from modelsec_fast.validation import check_normalization, to_model_space

from ..console import one_line

__all__ = ["ModelLoadError", "LoadedModel", "ExportedProgramModel", "NormalisedModel",
           "detect_format", "load_model", "FORMATS_RUNNING_CODE"]

# Formats whose loader unpickles: loaded only with --trust-model.
FORMATS_RUNNING_CODE = ("torch.export", "torchscript")


class ModelLoadError(ValueError):
    """The model could not be loaded; the message is one line naming the file."""


@dataclass
class LoadedModel:
    """The user's model, ready for the scan.

    ``model``: pixel-space inputs (normalisation inside), eval mode, on the device.
    ``format``: "factory", "torch.export", "torchscript" or "onnx".
    ``factory``: a fresh untrained model in pixel space, for the factory format only.
    ``source``: one line saying what was loaded.
    """

    model: nn.Module
    format: str
    source: str
    factory: Optional[Callable[[], nn.Module]] = None


class NormalisedModel(nn.Module):
    """``model`` on pixel-space inputs: normalises with per-channel (mean, std) first."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        mean_t, std_t = check_normalization((mean, std), "--mean/--std")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(to_model_space(x, (self.mean, self.std)))


class ExportedProgramModel(nn.Module):
    """A ``torch.export`` program as a module the attacks can use.

    ``train()``/``eval()`` change nothing (an exported graph is frozen in the mode
    it was exported in). When the program was exported with a static batch size
    B, inputs are run in chunks of B, the last one padded with copies of its
    first row and trimmed afterwards, so any batch size works.
    """

    def __init__(self, program):
        super().__init__()
        self.program = program
        self.graph = program.module()
        self.batch_size = _static_batch_size(program)

    def train(self, mode: bool = True):
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.batch_size
        if b is None or x.shape[0] == b:
            return self.graph(x)
        outputs = []
        for start in range(0, x.shape[0], b):
            chunk = x[start:start + b]
            n = chunk.shape[0]
            if n < b:
                chunk = torch.cat([chunk, chunk[:1].expand(b - n, *chunk.shape[1:])])
            outputs.append(self.graph(chunk)[:n])
        return torch.cat(outputs)


def _static_batch_size(program) -> Optional[int]:
    """The exported first input's batch size when it is a plain int, else None."""
    signature = program.graph_signature
    lifted = {**signature.inputs_to_parameters, **signature.inputs_to_buffers,
              **signature.inputs_to_lifted_tensor_constants}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name not in lifted:
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                size = value.shape[0]
                return int(size) if isinstance(size, int) else None
            return None
    return None


def detect_format(path: str) -> str:
    """"torch.export", "torchscript", "onnx" or "state_dict", from the file's name and
    its zip entries (nothing is unpickled).

    Raises:
        ModelLoadError: a missing file, or one that is none of these formats.
    """
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: model file not found")
    if path.endswith(".onnx"):
        return "onnx"
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path}: not a model file this scan reads (expected a torch.export "
                             ".pt2, a TorchScript file, an .onnx file, or "
                             "package.module:factory with --weights)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n.split("/", 1)[-1] for n in archive.namelist()]
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelLoadError(f"{path}: unreadable zip archive ({one_line(e)})") from None
    if "archive_format" in names or any(n.startswith("models/") for n in names):
        return "torch.export"
    if "constants.pkl" in names or any(n.startswith("code/") for n in names):
        return "torchscript"
    if "data.pkl" in names:
        return "state_dict"
    raise ModelLoadError(f"{path}: a zip archive but neither a torch.export program nor a "
                         "TorchScript file")


def load_model(spec: str, *, weights: Optional[str] = None, trust_model: bool = False,
               mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
               device: torch.device | str = "cpu") -> LoadedModel:
    """Load the model ``spec`` names (see the module docstring) for a scan.

    Args:
        spec: ``package.module:factory`` or a model file path.
        weights: the state-dict file for a factory (required with one, refused otherwise).
        trust_model: allow the formats that unpickle (``.pt2``, TorchScript).
        mean, std: per-channel normalisation the model expects (both or neither).
        device: where the model runs.
    Raises:
        ModelLoadError: every failure, one line naming the file and the problem.
    """
    if (mean is None) != (std is None):
        raise ModelLoadError("--mean and --std go together: give both or neither")
    if not os.path.exists(spec) and ":" in spec:
        loaded = _load_factory(spec, weights)
    else:
        if weights is not None:
            raise ModelLoadError(f"--weights is for a package.module:factory model; "
                                 f"{spec} is a model file")
        kind = detect_format(spec)
        if kind == "state_dict":
            raise ModelLoadError(f"{spec}: a state dict, not a model: give the architecture as "
                                 f"--model package.module:factory --weights {spec}")
        if kind in FORMATS_RUNNING_CODE and not trust_model:
            shown = {"torch.export": "torch.export", "torchscript": "TorchScript"}[kind]
            raise ModelLoadError(f"{spec}: a {shown} file; loading one unpickles data that can "
                                 "run code: pass --trust-model only for a file you trust, or "
                                 "use package.module:factory with --weights")
        loaded = {"torch.export": _load_export, "torchscript": _load_torchscript,
                  "onnx": _load_onnx}[kind](spec)
    if mean is not None:
        inner, make = loaded.model, loaded.factory
        loaded.model = NormalisedModel(inner, mean, std)
        if make is not None:
            loaded.factory = lambda: NormalisedModel(make(), mean, std)
    loaded.model = _to_device(loaded.model, loaded.format, device).eval()
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    return loaded


def _to_device(model: nn.Module, kind: str, device) -> nn.Module:
    device = torch.device(device)
    if device.type == "cpu":
        return model.to(device)
    if kind == "torch.export":
        inner = model.model if isinstance(model, NormalisedModel) else model
        from torch.export.passes import move_to_device_pass

        inner.graph = move_to_device_pass(inner.program, device).module()
    return model.to(device)


def _load_factory(spec: str, weights: Optional[str]) -> LoadedModel:
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ModelLoadError(f"--model {spec}: expected package.module:factory or a file")
    if weights is None:
        raise ModelLoadError(f"--model {spec}: a factory needs its trained weights: "
                             "--weights STATE_DICT_FILE")
    if os.getcwd() not in sys.path:  # the user's own module, next to their data
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001  (any import failure is the user's to fix)
        raise ModelLoadError(f"--model {spec}: cannot import {module_name} "
                             f"({type(e).__name__}: {one_line(e)})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"--model {spec}: {module_name} has no callable {attr!r}")
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"--model {spec}: calling {attr}() failed "
                             f"({type(e).__name__}: {one_line(e)})") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--model {spec}: {attr}() returned {type(model).__name__}, "
                             "not a torch.nn.Module")
    state = _load_state_dict(weights)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{weights}: does not fit {spec}'s model ({_mismatch(e)})") from None
    return LoadedModel(model=model, format="factory", factory=factory,
                       source=f"{spec} with weights {weights} (state dict, weights_only=True)")


def _mismatch(error: Exception) -> str:
    """The first line of load_state_dict's complaint, trimmed."""
    text = " ".join(str(error).split())
    text = text.replace("Error(s) in loading state_dict for ", "")
    return text if len(text) < 300 else text[:297] + "..."


def _load_state_dict(path: str) -> dict:
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: weights file not found")
    from modelsec_fast.state import read_tensor_file  # the package's one torch.load

    try:
        state = read_tensor_file(path, "weights")
    except (OSError, ValueError) as e:  # a foreign, damaged or code-carrying file
        raise ModelLoadError(f"{path}: not a state dict readable with weights_only=True "
                             f"({one_line(e)[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ModelLoadError(f"{path}: expected a state dict (parameter name -> tensor), "
                             f"got {type(state).__name__}")
    return state


def _load_export(path: str) -> LoadedModel:
    try:
        program = torch.export.load(path)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot load the torch.export program "
                             f"({type(e).__name__}: {one_line(e)[:200]})") from None
    model = ExportedProgramModel(program)
    batch = f", static batch {model.batch_size}" if model.batch_size else ""
    return LoadedModel(model=model, format="torch.export",
                       source=f"{path} (torch.export program{batch}, loaded with --trust-model)")


def _load_torchscript(path: str) -> LoadedModel:
    try:
        model = torch.jit.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot load the TorchScript file "
                             f"({type(e).__name__}: {one_line(e)[:200]})") from None
    return LoadedModel(model=model, format="torchscript",
                       source=f"{path} (TorchScript, loaded with --trust-model)")


def _load_onnx(path: str) -> LoadedModel:
    try:
        from onnx2torch import convert
    except ImportError:
        raise ModelLoadError(f"{path}: reading ONNX needs the onnx2torch package "
                             "(pip install onnx2torch)") from None
    except RuntimeError as e:  # e.g. a torchvision build that does not match torch
        raise ModelLoadError(f"{path}: onnx2torch did not import ({one_line(e)[:200]})") from None
    try:
        model = convert(path)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot convert the ONNX model "
                             f"({type(e).__name__}: {one_line(e)[:200]})") from None
    return LoadedModel(model=model, format="onnx", source=f"{path} (ONNX via onnx2torch)")
