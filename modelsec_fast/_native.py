"""The op library ``torch.ops.modelsec_fast``: schemas, argument checks, kernels.

Every op is declared once, in :data:`SCHEMAS`, and has three kinds of kernel:

* the reference (:mod:`modelsec_fast.reference`), registered for the
  ``CompositeExplicitAutograd`` key: it serves every device the native library
  does not, so ``torch.ops.modelsec_fast.*`` exists whether or not it loaded;
* the native CPU (and CUDA) kernels of ``modelsec_fast._C`` (``csrc/``), which
  the dispatcher prefers on their devices once the library is loaded;
* fake kernels (shapes and dtypes only), so ``torch.compile`` can trace the ops.

The ``check_*`` functions take an op's schema arguments and raise ``TypeError``
or ``ValueError`` naming the argument and its value. :mod:`modelsec_fast.ops`
calls them before it dispatches; the reference and fake kernels call them for
direct ``torch.ops`` calls and for tracing. The native kernels check again in
C++ (``csrc/op_common.cpp``), raising ``RuntimeError`` with the same wording.

The library is loaded on import unless ``MODELSEC_FAST_DISABLE_NATIVE=1``;
``MODELSEC_FAST_NATIVE_LIB=/path/_C.abi3.so`` loads a freshly built library
instead of the installed one. A missing or broken library is logged once and
everything runs on the reference.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import torch

from modelsec_fast import reference
from modelsec_fast.validation import check_non_negative, check_positive, check_real

__all__ = [
    "SCHEMAS", "load", "build_info", "native_disabled", "source_code",
    "check_clip_and_noise", "check_accumulate_and_noise", "check_add_noise",
    "check_step", "reference_step_args", "check_fill_normals", "check_conv_grad",
    "check_row_sq_norms",
]

_log = logging.getLogger("modelsec_fast")
_state: dict = {}

# Noise ops take their stream explicitly (seed, offset: Philox key and block
# offset; source: an index into reference.SOURCES), so they are functional for
# torch.compile and opcheck; the secure source draws its key inside the kernel.
SCHEMAS = {
    "clip_and_noise": "clip_and_noise(Tensor[] grads, float max_norm, float noise_std, "
                      "float scale, int seed, int offset, int source) -> (Tensor[], Tensor)",
    "accumulate_and_noise": "accumulate_and_noise(Tensor[] grads, Tensor factors, "
                            "float noise_std, float scale, int seed, int offset, int source) "
                            "-> Tensor[]",
    "add_noise_": "add_noise_(Tensor(a!)[] tensors, float noise_std, float scale, int seed, "
                  "int offset, int source) -> ()",
    "sign_step": "sign_step(Tensor x_adv, Tensor grad, Tensor x_orig, float alpha, float eps, "
                 "float lo, float hi, Tensor? alpha_per_sample=None, "
                 "Tensor? eps_per_sample=None) -> Tensor",
    "sign_step_": "sign_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_orig, float alpha, "
                  "float eps, float lo, float hi, Tensor? alpha_per_sample=None, "
                  "Tensor? eps_per_sample=None) -> ()",
    "l2_step": "l2_step(Tensor x_adv, Tensor grad, Tensor x_orig, float alpha, float eps, "
               "float lo, float hi, Tensor? alpha_per_sample=None, "
               "Tensor? eps_per_sample=None) -> Tensor",
    # Per-sample weight gradients of a 2-D convolution (the DP engine's conv rule):
    # (squared norms (B,), the gradients when keep, else an empty tensor).
    "_conv_weight_grad_norms": "_conv_weight_grad_norms(Tensor x, Tensor grad_out, "
                               "int[] kernel, int[] stride, int[] padding, int[] dilation, "
                               "int groups, bool keep) -> (Tensor, Tensor)",
    # Each sample's sum of squares (the DP engine's per-sample norms): (B, ...) -> (B,).
    "_row_sq_norms": "_row_sq_norms(Tensor x) -> Tensor",
    # Test hook: fills `out` (float32, 1-D) with the raw normals of a stream;
    # `key` (8 words) is the ChaCha20 key for source 1, so tests can compare.
    "_fill_normals_": "_fill_normals_(Tensor(a!) out, int seed, int offset, int tensor_index, "
                      "int source, int[] key) -> ()",
}

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# ---------------------------------------------------------------- checks

def native_disabled() -> bool:
    """True when ``MODELSEC_FAST_DISABLE_NATIVE`` asks for the reference (read on each call)."""
    return os.environ.get("MODELSEC_FAST_DISABLE_NATIVE", "") not in ("", "0")


def source_code(op: str, source: str) -> int:
    """The schema's ``source`` int for a source name; ValueError for an unknown one."""
    if source not in reference.SOURCES:
        raise ValueError(f"{op}: source must be one of {sorted(reference.SOURCES)}, got {source!r}")
    return reference.SOURCES.index(source)


def _check_source(op: str, source: int) -> None:
    torch._check_value(source in range(len(reference.SOURCES)), lambda: (
        f"{op}: source must be 0 (philox) or 1 (secure), got {source}"))


def _check_float_tensor(op: str, name: str, t) -> None:
    torch._check_type(isinstance(t, torch.Tensor), lambda: (
        f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}"))
    torch._check_type(t.dtype in _FLOAT_DTYPES, lambda: (
        f"{op}: {name} has dtype {t.dtype}; supported: float32, float64, bfloat16, float16"))


def _check_grads(op: str, grads) -> list[torch.Tensor]:
    torch._check_type(isinstance(grads, (list, tuple)), lambda: (
        f"{op}: grads must be a list of tensors, got {type(grads).__name__}"))
    grads = list(grads)
    torch._check_value(len(grads) > 0, lambda: f"{op}: grads is empty")
    first = grads[0]
    for t, g in enumerate(grads):
        _check_float_tensor(op, f"grads[{t}]", g)
        torch._check_value(g.dim() >= 1, lambda: (
            f"{op}: grads[{t}] must be shaped (B, *param_shape), got a 0-d tensor"))
        torch._check_value(g.shape[0] == first.shape[0], lambda: (
            f"{op}: mismatched batch size: grads[0] has B={first.shape[0]}, "
            f"grads[{t}] has B={g.shape[0]}"))
        torch._check_value(g.device == first.device, lambda: (
            f"{op}: mixed devices: grads[0] on {first.device}, grads[{t}] on {g.device}"))
        torch._check_type(g.dtype == first.dtype, lambda: (
            f"{op}: mixed dtypes: grads[0] is {first.dtype}, grads[{t}] is {g.dtype}"))
    return grads


def _check_noise(op: str, noise_std, scale, source: int) -> tuple[float, float]:
    _check_source(op, source)
    return (check_non_negative(f"{op}: noise_std", noise_std, allow_tensor=True),
            check_real(f"{op}: scale", scale, allow_tensor=True))


def check_clip_and_noise(grads, max_norm, noise_std, scale, source: int):
    """(grads, max_norm, noise_std, scale) checked: grads a non-empty list of float
    (B, ...) tensors of one B, dtype and device; max_norm > 0; noise_std >= 0."""
    op = "clip_and_noise"
    grads = _check_grads(op, grads)
    max_norm = check_positive(f"{op}: max_norm", max_norm, allow_tensor=True)
    return (grads, max_norm, *_check_noise(op, noise_std, scale, source))


def check_accumulate_and_noise(grads, factors, noise_std, scale, source: int):
    """(grads, factors, noise_std, scale) checked: grads as :func:`check_clip_and_noise`,
    factors a float (B,) tensor on the grads' device."""
    op = "accumulate_and_noise"
    grads = _check_grads(op, grads)
    _check_float_tensor(op, "factors", factors)
    b = grads[0].shape[0]
    torch._check_value(factors.dim() == 1 and factors.shape[0] == b, lambda: (
        f"{op}: factors must have shape ({b},), got {tuple(factors.shape)}"))
    torch._check_value(factors.device == grads[0].device, lambda: (
        f"{op}: factors on {factors.device}, grads on {grads[0].device}"))
    return (grads, factors, *_check_noise(op, noise_std, scale, source))


def check_add_noise(tensors, noise_std, scale, source: int):
    """(tensors, noise_std, scale) checked: float tensors on one device (dtypes may differ)."""
    op = "add_noise_"
    torch._check_type(isinstance(tensors, (list, tuple)), lambda: (
        f"{op}: expected a Tensor or a list of Tensors, got {type(tensors).__name__}"))
    tensors = list(tensors)
    for t, x in enumerate(tensors):
        _check_float_tensor(op, f"tensors[{t}]", x)
        torch._check_value(x.device == tensors[0].device, lambda: (
            f"{op}: mixed devices: tensors[0] on {tensors[0].device}, tensors[{t}] on {x.device}"))
    return (tensors, *_check_noise(op, noise_std, scale, source))


def _check_per_sample(op: str, name: str, v, x_adv, check_data: bool):
    """A (B,) per-sample value as the kernels hold it: in the images' dtype for
    float32/float64, float32 otherwise (as ATen holds a Python scalar)."""
    if v is None:
        return None
    _check_float_tensor(op, name, v)
    b = x_adv.shape[0] if x_adv.dim() else None
    torch._check_value(v.dim() == 1 and x_adv.dim() > 0 and v.shape[0] == b, lambda: (
        f"{op}: per-sample {name} must have shape ({b},), got {tuple(v.shape)}"))
    torch._check_value(v.device == x_adv.device, lambda: (
        f"{op}: {name} on {v.device}, x_adv on {x_adv.device}"))
    if check_data:  # reads the values: eager only (a host sync on CUDA)
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{op}: {name} has non-finite entries")
        if bool((v < 0).any()):
            raise ValueError(f"{op}: {name} has negative entries")
    wide = x_adv.dtype in (torch.float32, torch.float64)
    return v.to(x_adv.dtype if wide else torch.float32)


def check_step(op: str, x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_per_sample=None,
               eps_per_sample=None, *, check_data: bool = True):
    """The arguments of ``sign_step``/``sign_step_``/``l2_step`` checked and in schema form:
    x_adv, grad and x_orig alike (with a batch dimension for ``l2_step``); lo <= hi;
    alpha, eps >= 0; per-sample (B,) tensors (their values only when ``check_data``)
    cast as the kernels hold them."""
    for name, t in (("x_adv", x_adv), ("grad", grad), ("x_orig", x_orig)):
        _check_float_tensor(op, name, t)
    for name, t in (("grad", grad), ("x_orig", x_orig)):
        torch._check_value(t.shape == x_adv.shape, lambda: (
            f"{op}: {name} has shape {tuple(t.shape)}, x_adv has {tuple(x_adv.shape)}"))
        torch._check_value(t.device == x_adv.device, lambda: (
            f"{op}: mixed devices: {name} on {t.device}, x_adv on {x_adv.device}"))
        torch._check_type(t.dtype == x_adv.dtype, lambda: (
            f"{op}: mixed dtypes: {name} is {t.dtype}, x_adv is {x_adv.dtype}"))
    lo = check_real(f"{op}: lo", lo, allow_tensor=True)
    hi = check_real(f"{op}: hi", hi, allow_tensor=True)
    if lo > hi:
        raise ValueError(f"{op}: lo ({lo}) > hi ({hi})")
    alpha = check_non_negative(f"{op}: alpha", alpha, allow_tensor=True)
    eps = check_non_negative(f"{op}: eps", eps, allow_tensor=True)
    alpha_per_sample = _check_per_sample(op, "alpha", alpha_per_sample, x_adv, check_data)
    eps_per_sample = _check_per_sample(op, "eps", eps_per_sample, x_adv, check_data)
    if op == "l2_step":
        torch._check_value(x_adv.dim() >= 1, lambda: "l2_step: x_adv must be shaped (B, ...)")
    return x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_per_sample, eps_per_sample


def reference_step_args(args: tuple) -> tuple:
    """:func:`check_step`'s result as reference.sign_step/l2_step take it: a
    per-sample tensor replaces its float."""
    x_adv, grad, x_orig, alpha, eps, lo, hi, alpha_t, eps_t = args
    return (x_adv, grad, x_orig, alpha if alpha_t is None else alpha_t,
            eps if eps_t is None else eps_t, lo, hi)


def check_fill_normals(out, source: int, key) -> None:
    """``_fill_normals_``: out a contiguous 1-D float32 tensor; source 0, or 1 with 8 key words."""
    torch._check_type(out.dtype == torch.float32 and out.dim() == 1 and out.is_contiguous(),
                      lambda: "_fill_normals_: out must be a contiguous 1-D float32 tensor")
    torch._check_value(source == 0 or (source == 1 and len(key) == 8),
                       lambda: "_fill_normals_: source 0, or source 1 with an 8-word key")


def check_conv_grad(x, grad_out, kernel, stride, padding, dilation, groups) -> None:
    """The checks of csrc/op_common.cpp's check_conv_grad_args (ValueError/TypeError)."""
    op = "_conv_weight_grad_norms"
    for name, t in (("x", x), ("grad_out", grad_out)):
        torch._check_type(isinstance(t, torch.Tensor), lambda: (
            f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}"))
        torch._check_type(t.dtype == torch.float32, lambda: (
            f"{op}: {name} has dtype {t.dtype}; supported: float32"))
        torch._check_value(t.dim() == 4, lambda: (
            f"{op}: {name} must be 4-D (B, C, H, W), got shape {tuple(t.shape)}"))
    torch._check_value(x.device == grad_out.device, lambda: (
        f"{op}: x on {x.device}, grad_out on {grad_out.device}"))
    torch._check_value(x.shape[0] == grad_out.shape[0], lambda: (
        f"{op}: x has B={x.shape[0]}, grad_out has B={grad_out.shape[0]}"))
    for name, v, least in (("kernel", kernel, 1), ("stride", stride, 1), ("padding", padding, 0),
                           ("dilation", dilation, 1)):
        torch._check_value(len(v) == 2, lambda: f"{op}: {name} must have 2 entries, got {len(v)}")
        torch._check_value(min(v) >= least, lambda: (
            f"{op}: {name} must be >= {least}, got {tuple(v)}"))
    torch._check_value(groups >= 1 and x.shape[1] % groups == 0
                       and grad_out.shape[1] % groups == 0, lambda: (
        f"{op}: groups={groups} must divide x's {x.shape[1]} and grad_out's "
        f"{grad_out.shape[1]} channels"))
    out = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
           for i in range(2)]
    torch._check_value(min(out) >= 1 and list(grad_out.shape[2:]) == out, lambda: (
        f"{op}: grad_out's spatial size {tuple(grad_out.shape[2:])} is not the convolution's "
        f"output size {tuple(out)} for x {tuple(x.shape)}"))


def check_row_sq_norms(x) -> None:
    """The checks of csrc/op_common.cpp's check_row_sq_norms_args (ValueError/TypeError)."""
    op = "_row_sq_norms"
    _check_float_tensor(op, "x", x)
    torch._check_value(x.dim() >= 1, lambda: f"{op}: x must be shaped (B, ...), got a 0-d tensor")


# ---------------------------------------------------------------- kernels

def _clip_and_noise(grads, max_norm, noise_std, scale, seed, offset, source):
    grads, max_norm, noise_std, scale = check_clip_and_noise(grads, max_norm, noise_std, scale,
                                                             source)
    return reference.clip_and_noise(grads, max_norm, noise_std, scale=scale, seed=seed,
                                    offset=offset, source=reference.SOURCES[source])


def _accumulate_and_noise(grads, factors, noise_std, scale, seed, offset, source):
    grads, factors, noise_std, scale = check_accumulate_and_noise(grads, factors, noise_std,
                                                                  scale, source)
    return reference.accumulate_and_noise(grads, factors, noise_std, scale=scale, seed=seed,
                                          offset=offset, source=reference.SOURCES[source])


def _add_noise_(tensors, noise_std, scale, seed, offset, source):
    tensors, noise_std, scale = check_add_noise(tensors, noise_std, scale, source)
    reference.add_noise_(tensors, noise_std, scale=scale, seed=seed, offset=offset,
                         source=reference.SOURCES[source])


def _sign_step(*args):
    return reference.sign_step(*reference_step_args(check_step("sign_step", *args)))


def _sign_step_(x_adv, *args):
    x_adv.copy_(reference.sign_step(*reference_step_args(check_step("sign_step_", x_adv, *args))))


def _l2_step(*args):
    return reference.l2_step(*reference_step_args(check_step("l2_step", *args)))


def _fill_normals_(out, seed, offset, tensor_index, source, key):
    check_fill_normals(out, source, key)
    z = reference.noise_normal(out.numel(), source=reference.SOURCES[source], seed=seed,
                               offset=offset, tensor_index=tensor_index, key=list(key),
                               device=out.device)
    out.copy_(z)


def _conv_weight_grad_norms(x, grad_out, kernel, stride, padding, dilation, groups, keep):
    check_conv_grad(x, grad_out, kernel, stride, padding, dilation, groups)
    return reference.conv_weight_grad_norms(x, grad_out, kernel, stride, padding, dilation,
                                            groups, keep)


def _row_sq_norms(x):
    check_row_sq_norms(x)
    return reference.row_sq_norms(x)


_REFERENCE_KERNELS = {
    "clip_and_noise": _clip_and_noise, "accumulate_and_noise": _accumulate_and_noise,
    "add_noise_": _add_noise_, "sign_step": _sign_step, "sign_step_": _sign_step_,
    "l2_step": _l2_step, "_fill_normals_": _fill_normals_,
    "_conv_weight_grad_norms": _conv_weight_grad_norms, "_row_sq_norms": _row_sq_norms,
}


def _fake_clip_and_noise(grads, max_norm, noise_std, scale, seed, offset, source):
    grads = check_clip_and_noise(grads, max_norm, noise_std, scale, source)[0]
    summed = [g.new_empty(g.shape[1:]) for g in grads]
    return summed, grads[0].new_empty((grads[0].shape[0],), dtype=torch.float32)


def _fake_accumulate_and_noise(grads, factors, noise_std, scale, seed, offset, source):
    grads = check_accumulate_and_noise(grads, factors, noise_std, scale, source)[0]
    return [g.new_empty(g.shape[1:]) for g in grads]


def _fake_add_noise_(tensors, noise_std, scale, seed, offset, source):
    check_add_noise(tensors, noise_std, scale, source)


def _fake_sign_step(*args):
    x_adv = check_step("sign_step", *args, check_data=False)[0]
    return torch.empty_like(x_adv, memory_format=torch.contiguous_format)


def _fake_sign_step_(*args):
    check_step("sign_step_", *args, check_data=False)


def _fake_l2_step(*args):
    x_adv = check_step("l2_step", *args, check_data=False)[0]
    return torch.empty_like(x_adv, memory_format=torch.contiguous_format)


def _fake_fill_normals_(out, seed, offset, tensor_index, source, key):
    check_fill_normals(out, source, key)


def _fake_conv_weight_grad_norms(x, grad_out, kernel, stride, padding, dilation, groups, keep):
    check_conv_grad(x, grad_out, kernel, stride, padding, dilation, groups)
    shape = ((x.shape[0], grad_out.shape[1], x.shape[1] // groups) + tuple(kernel)
             if keep else (0,))
    return x.new_empty((x.shape[0],)), x.new_empty(shape)


def _fake_row_sq_norms(x):
    check_row_sq_norms(x)
    return x.new_empty((x.shape[0],), dtype=torch.float64 if x.dtype == torch.float64
                       else torch.float32)


_FAKE_KERNELS = {
    "clip_and_noise": _fake_clip_and_noise, "accumulate_and_noise": _fake_accumulate_and_noise,
    "add_noise_": _fake_add_noise_, "sign_step": _fake_sign_step,
    "sign_step_": _fake_sign_step_, "l2_step": _fake_l2_step,
    "_fill_normals_": _fake_fill_normals_,
    "_conv_weight_grad_norms": _fake_conv_weight_grad_norms,
    "_row_sq_norms": _fake_row_sq_norms,
}


def _define_library() -> torch.library.Library:
    lib = torch.library.Library("modelsec_fast", "DEF")
    for name, schema in SCHEMAS.items():
        lib.define(schema)
        lib.impl(name, _REFERENCE_KERNELS[name], "CompositeExplicitAutograd")
        torch.library.register_fake(f"modelsec_fast::{name}", _FAKE_KERNELS[name], lib=lib)
    return lib


_LIBRARY = _define_library()  # kept alive: dropping it would unregister the ops


# ---------------------------------------------------------------- native library

def load():
    """The loaded ``modelsec_fast._C`` module, or None when it is unavailable."""
    if "module" not in _state:
        try:
            _C = _import_extension()
        except (ImportError, OSError, RuntimeError) as exc:
            # A library that exists but fails to load is worth a warning; an
            # unbuilt one is the documented pure-PyTorch mode.
            package = Path(__file__).parent
            built = any(package.glob("_C*.so"))
            stale = [p.name for p in package.glob("_C.cpython-*.so")]
            hint = f" (remove the stale {stale}: the library is now _C.abi3.so)" if stale else ""
            (_log.warning if built else _log.debug)(
                "modelsec_fast native ops unavailable, using the PyTorch reference: %s%s",
                exc, hint)
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
    """Facts about the native build ({} when not loaded): cuda, torch_version (built
    against), torch_abi_target (oldest torch it runs on), secure_rng, cpu_isa, clip_eps."""
    mod = load()
    return json.loads(mod.build_info()) if mod is not None else {}


if not native_disabled():
    load()
