"""Public fused ops: DP clipping + noise and adversarial steps.

Each op runs the native C++/CUDA kernel (``torch.ops.modelsec_fast.*``) when the
extension is built and loaded, and otherwise the pure-PyTorch specification in
:mod:`modelsec_fast.reference`. ``MODELSEC_FAST_DISABLE_NATIVE=1`` forces the
Python path (read on every call, so tests can switch it);
``MODELSEC_FAST_NATIVE_LIB=/path/_C*.so`` loads a freshly built library instead
of the installed one. Both paths validate inputs here, so they raise the same
errors. Build facts: ``modelsec_fast._native.build_info()``.

Randomness
----------
Every noise op takes a fresh Philox stream (seed, offset) on each call:

* a CPU ``torch.Generator`` (the default one when ``generator=None``): one
  64-bit key is drawn with ``torch.randint(..., generator=g)`` and used as the
  Philox key with offset 0. The draw advances the generator, so consecutive
  calls never reuse a key (collision odds ~2**-64 per pair), and
  ``g.get_state()`` / ``g.set_state()`` checkpoint the noise stream.
* a Philox generator with an offset (a CUDA generator): seed =
  ``g.initial_seed()``, offset = ``g.get_offset()`` (in 32-bit words, rounded
  up to a block); the op advances the offset by the words it used.

Inside ``torch.compile`` the key draw is a graph break (the seed must be a
Python int for the op), so two calls in one compiled function still draw
different noise. Tensors of one call use distinct Philox counters (the tensor
index is a counter word), so same-shaped tensors get different noise.

``source="secure"`` ignores the generator and draws a 256-bit ChaCha20 key from
the OS per call (inside the C++ kernel when native, ``os.urandom`` otherwise).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch

from modelsec_fast import reference
from modelsec_fast import _native

__all__ = [
    "native_available", "clip_and_noise", "accumulate_and_noise", "add_noise_",
    "sign_step", "sign_step_", "l2_step",
]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_SOURCE_CODES = {"philox": 0, "secure": 1}


def native_available() -> bool:
    """True when the ops run the native library (built, loaded, not disabled)."""
    if os.environ.get("MODELSEC_FAST_DISABLE_NATIVE", "") not in ("", "0"):
        return False
    return _native.load() is not None


# ----------------------------------------------------------------- validation

def _check_scalar(op: str, name: str, value, *, positive=False, nonneg=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not torch.compiler.is_compiling():
            value = float(value)
        else:
            raise TypeError(f"{op}: {name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{op}: {name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{op}: {name} must be > 0, got {value}")
    if nonneg and value < 0:
        raise ValueError(f"{op}: {name} must be >= 0, got {value}")
    return value


def _check_source(op: str, source: str) -> str:
    if source not in _SOURCE_CODES:
        raise ValueError(f"{op}: source must be one of {sorted(_SOURCE_CODES)}, got {source!r}")
    return source


def _check_float_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported: float32, float64, "
                        "bfloat16, float16")


def _check_grads(op: str, grads) -> list[torch.Tensor]:
    if isinstance(grads, torch.Tensor) or not isinstance(grads, (list, tuple)):
        raise TypeError(f"{op}: grads must be a list of tensors, got {type(grads).__name__}")
    grads = list(grads)
    if not grads:
        raise ValueError(f"{op}: grads is empty")
    for t, g in enumerate(grads):
        _check_float_tensor(op, f"grads[{t}]", g)
        if g.dim() < 1:
            raise ValueError(f"{op}: grads[{t}] must be shaped (B, *param_shape), got a 0-d tensor")
    first = grads[0]
    for t, g in enumerate(grads[1:], 1):
        if g.shape[0] != first.shape[0]:
            raise ValueError(f"{op}: mismatched batch size: grads[0] has B={first.shape[0]}, "
                             f"grads[{t}] has B={g.shape[0]}")
        if g.device != first.device:
            raise ValueError(f"{op}: mixed devices: grads[0] on {first.device}, grads[{t}] on {g.device}")
        if g.dtype != first.dtype:
            raise TypeError(f"{op}: mixed dtypes: grads[0] is {first.dtype}, grads[{t}] is {g.dtype}")
    return grads


def _check_noise_targets(op: str, tensors) -> list[torch.Tensor]:
    items = [tensors] if isinstance(tensors, torch.Tensor) else tensors
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{op}: expected a Tensor or a list of Tensors, got {type(tensors).__name__}")
    items = list(items)
    for t, x in enumerate(items):
        _check_float_tensor(op, f"tensors[{t}]", x)
    if items:
        dev = items[0].device
        for t, x in enumerate(items[1:], 1):
            if x.device != dev:
                raise ValueError(f"{op}: mixed devices: tensors[0] on {dev}, tensors[{t}] on {x.device}")
    return items


# ---------------------------------------------------------------- randomness

def _philox_stream(generator: torch.Generator | None, words_used: int) -> tuple[int, int]:
    """A fresh (seed, block offset) for one call; advances ``generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator is not None and generator.device.type != "cpu":
        # Philox-offset generators (CUDA): counters continue from its offset.
        offset_words = generator.get_offset()
        block = (offset_words + 3) // 4
        generator.set_offset((block + (words_used + 3) // 4) * 4)
        return generator.initial_seed(), block
    key = torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64, generator=generator)
    return int(key), 0


def _stream_args(op: str, source: str, generator, numels: Sequence[int]) -> tuple[int, int]:
    _check_source(op, source)
    if source == "secure":
        return 0, 0
    return _philox_stream(generator, max(numels, default=0))


# ------------------------------------------------------------------------ ops

def clip_and_noise(grads: list[torch.Tensor], max_norm: float, noise_std: float, *,
                   scale: float = 1.0, generator: torch.Generator | None = None,
                   source: str = "philox") -> tuple[list[torch.Tensor], torch.Tensor]:
    """Flat per-sample clipping, sum over the batch, Gaussian noise, scale.

    n_i = sqrt(sum_t ||grads[t][i]||^2);  c_i = min(1, max_norm / (n_i + 1e-6));
    summed[t] = (sum_i c_i grads[t][i] + N(0, noise_std^2)) * scale.

    Args:
        grads: list of tensors (B, *param_shape_t), same B, dtype (float32, float64,
            bfloat16, float16) and device; any strides.
        max_norm: clipping bound (> 0, finite).
        noise_std: absolute noise standard deviation (>= 0), e.g. sigma * max_norm.
        scale: multiplies sum plus noise (e.g. 1 / expected batch size).
        generator: source of the Philox (seed, offset); default torch's CPU generator.
        source: "philox" (reproducible) or "secure" (ChaCha20 keyed from the OS).
    Returns:
        (summed, norms): summed[t] shaped param_shape_t in the grads' dtype;
        norms (B,) float32, the unclipped per-sample norms (accumulated in fp32).
    Raises:
        TypeError/ValueError: bad arguments; ValueError when a per-sample norm is
        not finite (never a valid-looking sum from NaN/Inf gradients).
    """
    op = "clip_and_noise"
    grads = _check_grads(op, grads)
    max_norm = _check_scalar(op, "max_norm", max_norm, positive=True)
    noise_std = _check_scalar(op, "noise_std", noise_std, nonneg=True)
    scale = _check_scalar(op, "scale", scale)
    seed, offset = _stream_args(op, source, generator, [math.prod(g.shape[1:]) for g in grads])
    if native_available():
        summed, norms = torch.ops.modelsec_fast.clip_and_noise(
            grads, max_norm, noise_std, scale, seed, offset, _SOURCE_CODES[source])
        return list(summed), norms
    return reference.clip_and_noise(grads, max_norm, noise_std, scale=scale, seed=seed,
                                    offset=offset, source=source)


def accumulate_and_noise(grads: list[torch.Tensor], factors: torch.Tensor, noise_std: float, *,
                         scale: float = 1.0, generator: torch.Generator | None = None,
                         source: str = "philox") -> list[torch.Tensor]:
    """(sum_i factors[i] * grads[t][i] + N(0, noise_std^2)) * scale, per tensor.

    Args:
        grads: as in :func:`clip_and_noise`.
        factors: (B,) floating tensor on the grads' device (e.g. clipping factors).
        noise_std, scale, generator, source: as in :func:`clip_and_noise`.
    Returns:
        list of tensors shaped param_shape_t in the grads' dtype.
    Raises:
        TypeError/ValueError: bad arguments; ValueError when a sum is not finite.
    """
    op = "accumulate_and_noise"
    grads = _check_grads(op, grads)
    _check_float_tensor(op, "factors", factors)
    b = grads[0].shape[0]
    if factors.dim() != 1 or factors.shape[0] != b:
        raise ValueError(f"{op}: factors must have shape ({b},), got {tuple(factors.shape)}")
    if factors.device != grads[0].device:
        raise ValueError(f"{op}: factors on {factors.device}, grads on {grads[0].device}")
    noise_std = _check_scalar(op, "noise_std", noise_std, nonneg=True)
    scale = _check_scalar(op, "scale", scale)
    seed, offset = _stream_args(op, source, generator, [math.prod(g.shape[1:]) for g in grads])
    if native_available():
        return list(torch.ops.modelsec_fast.accumulate_and_noise(
            grads, factors, noise_std, scale, seed, offset, _SOURCE_CODES[source]))
    return reference.accumulate_and_noise(grads, factors, noise_std, scale=scale, seed=seed,
                                          offset=offset, source=source)


def add_noise_(tensor_or_list, noise_std: float, *, scale: float = 1.0,
               generator: torch.Generator | None = None, source: str = "philox"):
    """In place: t = (t + N(0, noise_std^2)) * scale for a Tensor or each of a list.

    Computed in fp32 (fp64 for float64 tensors) in one pass; tensors of one call
    draw different noise.

    Args:
        tensor_or_list: a floating tensor (float32, float64, bfloat16, float16), or
            a list of them on one device (dtypes may differ); any strides.
        noise_std: absolute noise standard deviation (>= 0).
        scale, generator, source: as in :func:`clip_and_noise`.
    Returns:
        its argument, modified in place.
    Raises:
        TypeError/ValueError: bad arguments (not a tensor, unsupported dtype,
        mixed devices, negative or non-finite noise_std, unknown source).
    """
    op = "add_noise_"
    items = _check_noise_targets(op, tensor_or_list)
    noise_std = _check_scalar(op, "noise_std", noise_std, nonneg=True)
    scale = _check_scalar(op, "scale", scale)
    seed, offset = _stream_args(op, source, generator, [x.numel() for x in items])
    if not items:
        return tensor_or_list
    if native_available():
        torch.ops.modelsec_fast.add_noise_(items, noise_std, scale, seed, offset, _SOURCE_CODES[source])
    else:
        with torch.no_grad():
            reference.add_noise_(items, noise_std, scale=scale, seed=seed, offset=offset, source=source)
    return tensor_or_list


def _check_step_args(op, x_adv, grad, x_orig, alpha, eps, lo, hi):
    for name, t in (("x_adv", x_adv), ("grad", grad), ("x_orig", x_orig)):
        _check_float_tensor(op, name, t)
    for name, t in (("grad", grad), ("x_orig", x_orig)):
        if t.shape != x_adv.shape:
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, x_adv has {tuple(x_adv.shape)}")
        if t.device != x_adv.device:
            raise ValueError(f"{op}: mixed devices: {name} on {t.device}, x_adv on {x_adv.device}")
        if t.dtype != x_adv.dtype:
            raise TypeError(f"{op}: mixed dtypes: {name} is {t.dtype}, x_adv is {x_adv.dtype}")
    lo = _check_scalar(op, "lo", lo)
    hi = _check_scalar(op, "hi", hi)
    if lo > hi:
        raise ValueError(f"{op}: lo ({lo}) > hi ({hi})")
    # Per-sample values are held in the images' dtype (fp32 for half/bf16), as ATen
    # holds Python scalars; a float is rounded by the kernel in the same way.
    scalar_dtype = x_adv.dtype if x_adv.dtype in (torch.float32, torch.float64) else torch.float32
    out = []
    for name, v in (("alpha", alpha), ("eps", eps)):
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            _check_float_tensor(op, name, v)
            b = x_adv.shape[0] if x_adv.dim() else None
            if v.dim() != 1 or x_adv.dim() == 0 or v.shape[0] != b:
                raise ValueError(f"{op}: per-sample {name} must have shape ({b},), got {tuple(v.shape)}")
            if v.device != x_adv.device:
                raise ValueError(f"{op}: {name} on {v.device}, x_adv on {x_adv.device}")
            if not torch.compiler.is_compiling():
                if not bool(torch.isfinite(v).all()):
                    raise ValueError(f"{op}: {name} has non-finite entries")
                if bool((v < 0).any()):
                    raise ValueError(f"{op}: {name} has negative entries")
            out.append((0.0, v.to(scalar_dtype)))
        else:
            out.append((_check_scalar(op, name, v, nonneg=True), None))
    (alpha_f, alpha_t), (eps_f, eps_t) = out
    return alpha_f, alpha_t, eps_f, eps_t, lo, hi


def sign_step(x_adv: torch.Tensor, grad: torch.Tensor, x_orig: torch.Tensor, alpha, eps,
              lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """L-inf PGD update, bit-identical in fp32 to the eager formula

        clamp(x_orig + clamp(x_adv + alpha*sign(grad) - x_orig, -eps, eps), lo, hi)

    Args:
        x_adv, grad, x_orig: same shape (B, ...), dtype and device; pixel space.
        alpha, eps: step and L-inf radius, floats >= 0 or per-sample (B,) tensors.
        lo, hi: valid input range, lo <= hi.
    Returns a new tensor. Raises TypeError/ValueError on bad arguments.
    """
    a, at, e, et, lo, hi = _check_step_args("sign_step", x_adv, grad, x_orig, alpha, eps, lo, hi)
    if native_available():
        return torch.ops.modelsec_fast.sign_step(x_adv, grad, x_orig, a, e, lo, hi, at, et)
    return reference.sign_step(x_adv, grad, x_orig, at if at is not None else a,
                               et if et is not None else e, lo, hi)


def sign_step_(x_adv: torch.Tensor, grad: torch.Tensor, x_orig: torch.Tensor, alpha, eps,
               lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """In-place :func:`sign_step`: writes the result into ``x_adv`` and returns it."""
    a, at, e, et, lo, hi = _check_step_args("sign_step_", x_adv, grad, x_orig, alpha, eps, lo, hi)
    if native_available():
        torch.ops.modelsec_fast.sign_step_(x_adv, grad, x_orig, a, e, lo, hi, at, et)
        return x_adv
    with torch.no_grad():
        x_adv.copy_(reference.sign_step(x_adv, grad, x_orig, at if at is not None else a,
                                        et if et is not None else e, lo, hi))
    return x_adv


def l2_step(x_adv: torch.Tensor, grad: torch.Tensor, x_orig: torch.Tensor, alpha, eps,
            lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """PGD-L2 update (torchattacks PGDL2 semantics), per sample:

    x_adv + alpha * grad / (||grad||_2 + 1e-10) (a zero gradient gives a zero step),
    then projection onto the L2 ball of radius eps around x_orig, then clamp to
    [lo, hi]. Norms in fp32 (fp64 for float64). Arguments as in :func:`sign_step`.
    """
    a, at, e, et, lo, hi = _check_step_args("l2_step", x_adv, grad, x_orig, alpha, eps, lo, hi)
    if x_adv.dim() < 1:
        raise ValueError("l2_step: x_adv must be shaped (B, ...)")
    if native_available():
        return torch.ops.modelsec_fast.l2_step(x_adv, grad, x_orig, a, e, lo, hi, at, et)
    return reference.l2_step(x_adv, grad, x_orig, at if at is not None else a,
                             et if et is not None else e, lo, hi)
