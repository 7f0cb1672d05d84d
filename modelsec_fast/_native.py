"""Loads the native extension ``modelsec_fast._C`` once and registers fake kernels.

The extension holds the pybind11 build facts and, on load, registers the
``torch.ops.modelsec_fast`` ops. A missing or broken library is logged once and
the package keeps working on the pure-PyTorch path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

import torch

_log = logging.getLogger("modelsec_fast")
_state: dict = {}


def load():
    """The loaded ``modelsec_fast._C`` module, or None when it is unavailable."""
    if "module" not in _state:
        try:
            _C = _import_extension()
            _register_fakes()
        except (ImportError, OSError, RuntimeError) as exc:
            # A library that exists but fails to load is worth a warning; an
            # unbuilt one is the documented pure-PyTorch mode.
            built = any(Path(__file__).parent.glob("_C*.so"))
            (_log.warning if built else _log.debug)(
                "modelsec_fast native ops unavailable, using the PyTorch reference: %s", exc)
            _C = None
        _state["module"] = _C
    return _state["module"]


def _import_extension():
    """modelsec_fast._C, or the library named by MODELSEC_FAST_NATIVE_LIB (a
    freshly built .so, to test a build without installing it)."""
    path = os.environ.get("MODELSEC_FAST_NATIVE_LIB")
    if not path:
        from modelsec_fast import _C
        return _C
    spec = importlib.util.spec_from_file_location("modelsec_fast._C", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"MODELSEC_FAST_NATIVE_LIB={path!r} is not a loadable extension")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["modelsec_fast._C"] = module
    return module


def build_info() -> dict:
    """Facts about the native build ({} when not built): cuda, torch_version, secure_rng."""
    mod = load()
    return dict(mod.build_info()) if mod is not None else {}


def _register_fakes() -> None:
    """Shape/dtype-only kernels so torch.compile can trace the ops."""
    lib = "modelsec_fast::"

    @torch.library.register_fake(lib + "clip_and_noise")
    def _(grads, max_norm, noise_std, scale, seed, offset, source):
        b = grads[0].shape[0]
        summed = [g.new_empty(g.shape[1:]) for g in grads]
        return summed, grads[0].new_empty((b,), dtype=torch.float32)

    @torch.library.register_fake(lib + "accumulate_and_noise")
    def _(grads, factors, noise_std, scale, seed, offset, source):
        return [g.new_empty(g.shape[1:]) for g in grads]

    @torch.library.register_fake(lib + "add_noise_")
    def _(tensors, noise_std, scale, seed, offset, source):
        return None

    @torch.library.register_fake(lib + "sign_step")
    def _(x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_per_sample=None, eps_per_sample=None):
        return torch.empty_like(x_adv, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "sign_step_")
    def _(x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_per_sample=None, eps_per_sample=None):
        return None

    @torch.library.register_fake(lib + "l2_step")
    def _(x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_per_sample=None, eps_per_sample=None):
        return torch.empty_like(x_adv, memory_format=torch.contiguous_format)
