"""Public fused ops: noise for DP-SGD and the adversarial steps.

Thin wrappers over ``torch.ops.modelsec_fast`` (defined in
:mod:`modelsec_fast._native`): each checks its arguments (``TypeError`` or
``ValueError`` naming the argument), draws the noise stream from a generator,
and runs the native C++/CUDA kernel when the library is loaded, otherwise the
pure-PyTorch specification in :mod:`modelsec_fast.reference`.
``MODELSEC_FAST_DISABLE_NATIVE=1`` forces the reference (read on every call, so
tests can switch it). Build facts: :func:`build_info`.

``_clip_and_noise`` and ``_accumulate_and_noise`` (fused clipping, sum and
noise) are private until the DP engine's hot path uses them; the canary
audit's reference backend calls ``_clip_and_noise``. ``_conv_weight_grad_norms``
(per-sample convolution weight-gradient norms) is the DP engine's conv rule's.

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
from typing import Sequence

import torch

from modelsec_fast import _native, reference
from modelsec_fast.reference import CLIP_EPS

__all__ = ["native_available", "build_info", "add_noise_", "sign_step", "sign_step_", "l2_step", "CLIP_EPS"]


def build_info() -> dict:
    """Facts about the native build ({} when it is not built): CUDA, the torch ABI
    target, the CPU instruction set, ``clip_eps``."""
    return _native.build_info()


def native_available() -> bool:
    """True when the ops run the native library (built, loaded, not disabled)."""
    return not _native.native_disabled() and _native.load() is not None


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


def _stream_args(source: int, generator, numels: Sequence[int]) -> tuple[int, int]:
    if reference.SOURCES[source] == "secure":
        return 0, 0
    return _philox_stream(generator, max(numels, default=0))


# ------------------------------------------------------------------------ ops

def _refusing_non_finite(op: str, run):
    """``run()``, with the native kernels' refusal of a non-finite sum raised as the
    reference raises it, a ValueError (the stable ABI throws it as a RuntimeError)."""
    try:
        return run()
    except RuntimeError as err:
        message = str(err)
        if f"{op}: " in message and ("non-finite norm" in message or "is not finite" in message):
            raise ValueError(message[message.index(f"{op}: "):]) from err
        raise


def _clip_and_noise(grads: list[torch.Tensor], max_norm: float, noise_std: float, *,
                    scale: float = 1.0, generator: torch.Generator | None = None,
                    source: str = "philox") -> tuple[list[torch.Tensor], torch.Tensor]:
    """Flat per-sample clipping, sum over the batch, Gaussian noise, scale.

    n_i = sqrt(sum_t ||grads[t][i]||^2);  c_i = min(1, max_norm / (n_i + CLIP_EPS));
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
    code = _native.source_code("clip_and_noise", source)
    grads, max_norm, noise_std, scale = _native.check_clip_and_noise(
        grads, max_norm, noise_std, scale, code)
    seed, offset = _stream_args(code, generator, [math.prod(g.shape[1:]) for g in grads])
    if native_available():
        summed, norms = _refusing_non_finite("clip_and_noise", lambda: torch.ops.modelsec_fast
                                             .clip_and_noise(grads, max_norm, noise_std, scale,
                                                             seed, offset, code))
        return list(summed), norms
    return reference.clip_and_noise(grads, max_norm, noise_std, scale=scale, seed=seed,
                                    offset=offset, source=source)


def _accumulate_and_noise(grads: list[torch.Tensor], factors: torch.Tensor, noise_std: float, *,
                          scale: float = 1.0, generator: torch.Generator | None = None,
                          source: str = "philox") -> list[torch.Tensor]:
    """(sum_i factors[i] * grads[t][i] + N(0, noise_std^2)) * scale, per tensor.

    Args:
        grads: as in :func:`_clip_and_noise`.
        factors: (B,) floating tensor on the grads' device (e.g. clipping factors).
        noise_std, scale, generator, source: as in :func:`_clip_and_noise`.
    Returns:
        list of tensors shaped param_shape_t in the grads' dtype.
    Raises:
        TypeError/ValueError: bad arguments; ValueError when a sum is not finite.
    """
    code = _native.source_code("accumulate_and_noise", source)
    grads, factors, noise_std, scale = _native.check_accumulate_and_noise(
        grads, factors, noise_std, scale, code)
    seed, offset = _stream_args(code, generator, [math.prod(g.shape[1:]) for g in grads])
    if native_available():
        return list(_refusing_non_finite("accumulate_and_noise", lambda: torch.ops.modelsec_fast
                                         .accumulate_and_noise(grads, factors, noise_std, scale,
                                                               seed, offset, code)))
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
        scale, generator, source: as in :func:`_clip_and_noise`.
    Returns:
        its argument, modified in place.
    Raises:
        TypeError/ValueError: bad arguments (not a tensor, unsupported dtype,
        mixed devices, negative or non-finite noise_std, unknown source).
    """
    code = _native.source_code("add_noise_", source)
    items = [tensor_or_list] if isinstance(tensor_or_list, torch.Tensor) else tensor_or_list
    items, noise_std, scale = _native.check_add_noise(items, noise_std, scale, code)
    seed, offset = _stream_args(code, generator, [x.numel() for x in items])
    if not items:
        return tensor_or_list
    if native_available():
        torch.ops.modelsec_fast.add_noise_(items, noise_std, scale, seed, offset, code)
    else:
        with torch.no_grad():
            reference.add_noise_(items, noise_std, scale=scale, seed=seed, offset=offset,
                                 source=source)
    return tensor_or_list


def _step_args(op: str, x_adv, grad, x_orig, alpha, eps, lo, hi) -> tuple:
    """The schema's arguments of a step: a per-sample (B,) alpha or eps tensor
    travels as ``*_per_sample`` (its float slot 0.0), checked by ``_native``."""
    per_sample = [v if isinstance(v, torch.Tensor) and v.dim() > 0 else None for v in (alpha, eps)]
    alpha, eps = (0.0 if t is not None else v for v, t in zip((alpha, eps), per_sample))
    return _native.check_step(op, x_adv, grad, x_orig, alpha, eps, lo, hi, *per_sample,
                              check_data=not torch.compiler.is_compiling())


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
    args = _step_args("sign_step", x_adv, grad, x_orig, alpha, eps, lo, hi)
    if native_available():
        return torch.ops.modelsec_fast.sign_step(*args)
    return reference.sign_step(*_native.reference_step_args(args))


def sign_step_(x_adv: torch.Tensor, grad: torch.Tensor, x_orig: torch.Tensor, alpha, eps,
               lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """In-place :func:`sign_step`: writes the result into ``x_adv`` and returns it."""
    args = _step_args("sign_step_", x_adv, grad, x_orig, alpha, eps, lo, hi)
    if native_available():
        torch.ops.modelsec_fast.sign_step_(*args)
        return x_adv
    with torch.no_grad():
        x_adv.copy_(reference.sign_step(*_native.reference_step_args(args)))
    return x_adv


def l2_step(x_adv: torch.Tensor, grad: torch.Tensor, x_orig: torch.Tensor, alpha, eps,
            lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """PGD-L2 update (torchattacks PGDL2 semantics), per sample:

    x_adv + alpha * grad / (||grad||_2 + L2_GRAD_EPS) (a zero gradient gives a zero
    step), then projection onto the L2 ball of radius eps around x_orig, then
    clamp to [lo, hi]. Norms in fp32 (fp64 for float64). Arguments as in
    :func:`sign_step`; x_adv needs a batch dimension.
    """
    args = _step_args("l2_step", x_adv, grad, x_orig, alpha, eps, lo, hi)
    if native_available():
        return torch.ops.modelsec_fast.l2_step(*args)
    return reference.l2_step(*_native.reference_step_args(args))


def _conv_weight_grad_norms(x: torch.Tensor, grad_out: torch.Tensor, kernel: Sequence[int],
                            stride: Sequence[int], padding: Sequence[int],
                            dilation: Sequence[int], groups: int, *, keep: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample weight gradients of a 2-D convolution and their squared norms.

    Args:
        x: the layer's input (B, C_in, H, W), float32.
        grad_out: its output gradient (B, C_out, OH, OW), float32, same device.
        kernel, stride, padding, dilation: the convolution's, two ints each.
        groups: its groups.
        keep: also return the per-sample gradients.
    Returns:
        (sq, grads): sq (B,) float32, each sample's squared weight-gradient norm;
        grads (B, C_out, C_in / groups, *kernel) when ``keep``, else None. The
        native CPU kernel never forms the per-sample gradients unless ``keep``.
    Raises:
        TypeError/ValueError: bad arguments (dtype, shapes, geometry).
    """
    args = (x, grad_out, [int(k) for k in kernel], [int(s) for s in stride],
            [int(p) for p in padding], [int(d) for d in dilation], int(groups))
    _native.check_conv_grad(*args)
    if native_available():
        sq, grads = torch.ops.modelsec_fast._conv_weight_grad_norms(*args, keep)
    else:
        sq, grads = reference.conv_weight_grad_norms(*args, keep)
    return sq, (grads if keep else None)


def _row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Each sample's sum of squares, ``(B, ...) -> (B,)``, in float32 (float64 for
    float64 input): the DP engine's per-sample squared norms.

    The native CPU kernel reads x once (blocks of 512 in float32 lanes, the blocks
    summed in float64, in a fixed order); ``vecdot`` first writes ``x * x`` to fresh
    memory, which cost 10x the read on the engine's per-sample gradients. Other
    devices run the reference (``vecdot``).

    Raises:
        TypeError/ValueError: not a float tensor, or 0-d.
    """
    _native.check_row_sq_norms(x)
    if native_available():
        return torch.ops.modelsec_fast._row_sq_norms(x)
    return reference.row_sq_norms(x)
