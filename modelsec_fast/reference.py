"""Pure-PyTorch reference for the fused ops: the readable specification.

Every native kernel in ``csrc/`` computes what the function of the same name
here computes, and ``tests/ops`` checks that they agree. These functions are
also the fallback: :mod:`modelsec_fast._native` registers them as the kernels
of ``torch.ops.modelsec_fast`` on every device the native library does not
serve, and :mod:`modelsec_fast.ops` calls them when the library is missing or
``MODELSEC_FAST_DISABLE_NATIVE=1``.

They take the random stream explicitly (``seed``/``offset`` for Philox,
``key`` for ChaCha20); drawing a fresh stream from a ``torch.Generator`` on
each call is the job of :mod:`modelsec_fast.ops`. Inputs are assumed valid
here: the checks of :mod:`modelsec_fast._native` run before them.

Noise specification (shared with ``csrc/common/rng.h``)
-------------------------------------------------------
Counter-based Philox-4x32-10 (Salmon et al., SC'11). Element ``e`` of tensor
number ``t`` in a call uses block ``j = e // 4`` and lane ``e % 4`` of

    philox(counter = (lo32(offset + j), hi32(offset + j), t, NOISE_DOMAIN),
           key     = (lo32(seed), hi32(seed)))

so the stream depends only on (seed, offset, tensor index, element index),
never on thread count or scheduling. ``NOISE_DOMAIN`` keeps our counters apart
from torch's own Philox counters when a CUDA generator's seed is shared.

The four 32-bit words (w0, w1, w2, w3) of a block become four standard normals
by two Box-Muller transforms, each on a pair (wu, wf):

    below = ((wf & 0xFF) + 0.5) * 2**-8        exact, in (0, 1)
    u = fp32(fp32(wu) + below) * 2**-32        in [2**-41, 1]
    r = sqrt(-2 * log(u))                      in fp32, r <= 7.54
    f = (wf >> 8) * 2**-24                     exact, in [0, 1)
    (z_a, z_b) = (r * cos(2*pi*f), r * sin(2*pi*f))

with (z0, z1) from (w0, w1) and (z2, z3) from (w2, w3). The angle uses the top
24 bits of wf and its low 8 bits extend wu, so u is the 40-bit uniform
(wu * 2**8 + (wf & 0xFF) + 0.5) * 2**-40, correctly rounded to fp32 for
wu < 2**24 (u < 2**-8, the tail) and within one fp32 ulp of it above (where
r <= 3.33). The reference rounds cos/sin from float64 to fp32 (the native
kernels use their own fp32 sincospi and log, which agree to a few ulp). Noise
is generated in fp32 and converted to the tensor's compute type. ``u`` never
reaches 0, so no infinities occur; the support is |z| <= sqrt(82 * ln 2) =
7.539 (torch's CPU sampler truncates at 5.77).

Accounting assumption: the accountants treat this noise as exactly Gaussian.
Near the truncation an output can be impossible without an example and
possible with it; for d noised coordinates this adds to delta about
q * sqrt(d) * phi(7.54) / sigma per step (phi(7.54) ~ 1.8e-13; a one-coordinate
gradient gives q * P(N(0,1) > 7.54 - 1/sigma), ~3.1e-11 q at sigma = 1). That is
small next to the usual delta for moderate d and step counts, not zero, and
like any floating-point sampler it is open to Mironov's (2012) attacks. The
secure source below makes the term negligible: its outputs reach at most
sqrt(2) * 7.54 = 10.66 (the two normals of a pair share one radius), and
phi(10.66) ~ 8e-26.

Secure source: ChaCha20 (RFC 8439 block function) keyed with 256 bits from the
OS per call. Block ``j`` of tensor ``t`` uses state words 12..15 =
(lo32(j), hi32(j), t, NOISE_DOMAIN). Its 16 words give four outputs; output k
uses words 4k..4k+3 -> four normals (the Box-Muller pairs above) whose sum is
divided by 2. Summing four normals is Opacus's mitigation of floating-point
attacks on the Gaussian mechanism (Mironov 2012; Holohan & Braghin 2021).
"""

from __future__ import annotations

import math
import os

import torch

__all__ = [
    "NOISE_DOMAIN", "philox4x32_10", "chacha20_block", "box_muller",
    "philox_normal", "chacha20_normal", "secure_key", "noise_normal",
    "clip_and_noise", "accumulate_and_noise", "add_noise_", "sign_step",
    "l2_step", "per_sample_norms", "clip_factors", "conv_weight_grad_norms", "row_sq_norms",
]

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
# The three constants below are the one definition for Python and C++ alike:
# CMakeLists.txt reads each `NAME = literal` line and passes it to the compiler.
# "MSF1": counter word 3 of every noise stream this library draws.
NOISE_DOMAIN = 0x4D534631
# Opacus's clipping denominator guard: c_i = min(1, C / (n_i + 1e-6)).
CLIP_EPS = 1e-6
# Zero-gradient guard for the L2 step: g / (||g|| + 1e-10), as torchattacks.
L2_GRAD_EPS = 1e-10

SOURCES = ("philox", "secure")


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a*b, a a 32-bit constant.

    int64 tensors cannot hold a 64-bit product, so b is split into 16-bit
    halves: a*b = a*bh*2**16 + a*bl, each partial product below 2**48.
    """
    bl = b & 0xFFFF
    bh = b >> 16
    low = a * bl
    high = a * bh
    lo = (((high & 0xFFFF) << 16) + low) & _MASK32
    hi = (high + (low >> 16)) >> 16
    return hi & _MASK32, lo


def philox4x32_10(counter: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Philox-4x32-10 on a batch of counters.

    Args:
        counter: int64 tensor (4, N), each entry in [0, 2**32).
        key: two 32-bit ints.
    Returns:
        int64 tensor (4, N) of 32-bit output words.
    """
    c0, c1, c2, c3 = counter.unbind(0)
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    for rnd in range(10):
        if rnd:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo32(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack((c0, c1, c2, c3))


def _rotl32(x: torch.Tensor, n: int) -> torch.Tensor:
    return ((x << n) | (x >> (32 - n))) & _MASK32


def chacha20_block(key: list[int], state_words_12_15: torch.Tensor) -> torch.Tensor:
    """ChaCha20 block function (RFC 8439 section 2.3), batched.

    Args:
        key: eight 32-bit key words.
        state_words_12_15: int64 tensor (4, N): counter and nonce words.
    Returns:
        int64 tensor (16, N) of keystream words.
    """
    n = state_words_12_15.shape[1]
    const = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    fixed = torch.tensor(const + [k & _MASK32 for k in key], dtype=torch.int64,
                         device=state_words_12_15.device)
    init = torch.cat((fixed[:, None].expand(12, n), state_words_12_15), dim=0)
    x = list(init.unbind(0))

    def quarter(a, b, c, d):
        x[a] = (x[a] + x[b]) & _MASK32
        x[d] = _rotl32(x[d] ^ x[a], 16)
        x[c] = (x[c] + x[d]) & _MASK32
        x[b] = _rotl32(x[b] ^ x[c], 12)
        x[a] = (x[a] + x[b]) & _MASK32
        x[d] = _rotl32(x[d] ^ x[a], 8)
        x[c] = (x[c] + x[d]) & _MASK32
        x[b] = _rotl32(x[b] ^ x[c], 7)

    for _ in range(10):
        quarter(0, 4, 8, 12)
        quarter(1, 5, 9, 13)
        quarter(2, 6, 10, 14)
        quarter(3, 7, 11, 15)
        quarter(0, 5, 10, 15)
        quarter(1, 6, 11, 12)
        quarter(2, 7, 8, 13)
        quarter(3, 4, 9, 14)
    return (torch.stack(x) + init) & _MASK32


def box_muller(wu: torch.Tensor, wf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two fp32 standard normals from two 32-bit words (int64 tensors)."""
    # The low byte of wf extends wu below its last bit; ``below`` is exact.
    below = ((wf & 0xFF).to(torch.float32) + 0.5) * (2.0 ** -8)
    u = (wu.to(torch.float32) + below) * (2.0 ** -32)
    r = torch.sqrt(-2.0 * torch.log(u))
    angle = (wf >> 8).to(torch.float64) * (2.0 * math.pi * 2.0 ** -24)
    return (r * torch.cos(angle).to(torch.float32),
            r * torch.sin(angle).to(torch.float32))


def _block_counters(numel: int, offset: int, tensor_index: int, device) -> torch.Tensor:
    blocks = (numel + 3) // 4
    # offset is a block index in [0, 2**63); offset + j stays a valid int64.
    j = torch.arange(blocks, dtype=torch.int64, device=device) + offset
    lo = j & _MASK32
    hi = (j >> 32) & _MASK32
    return torch.stack((lo, hi, torch.full_like(lo, tensor_index & _MASK32),
                        torch.full_like(lo, NOISE_DOMAIN)))


# The integer generators run eagerly under torch.compile: inductor's C++
# codegen fails on their int64 shift/mask chains, and nothing is gained by fusing them.
# Streams are generated in chunks of blocks, which bounds the memory of the
# ~300 temporary integer tensors of a large stream.
_CHUNK_BLOCKS = 16384


@torch.compiler.disable
def philox_normal(numel: int, seed: int, offset: int, tensor_index: int,
                  device=None) -> torch.Tensor:
    """The Philox noise stream: ``numel`` fp32 standard normals (see module doc)."""
    if numel == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    # seed is a signed or unsigned 64-bit int; its two's-complement halves are the key.
    key = (seed & _MASK32, (seed >> 32) & _MASK32)
    blocks = (numel + 3) // 4
    parts = []
    for first in range(0, blocks, _CHUNK_BLOCKS):
        n = min(_CHUNK_BLOCKS, blocks - first)
        words = philox4x32_10(_block_counters(4 * n, offset + first, tensor_index, device), key)
        z0, z1 = box_muller(words[0], words[1])
        z2, z3 = box_muller(words[2], words[3])
        parts.append(torch.stack((z0, z1, z2, z3), dim=1).reshape(-1))
    return torch.cat(parts)[:numel]


@torch.compiler.disable
def chacha20_normal(numel: int, key: list[int], tensor_index: int,
                    device=None) -> torch.Tensor:
    """The secure noise stream: ``numel`` fp32 standard normals, each the sum of
    four Box-Muller normals divided by 2 (see module doc)."""
    if numel == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    blocks = (numel + 3) // 4
    parts = []
    for first in range(0, blocks, _CHUNK_BLOCKS):
        n = min(_CHUNK_BLOCKS, blocks - first)
        words = chacha20_block(key, _block_counters(4 * n, first, tensor_index, device))
        outs = []
        for k in range(4):
            z0, z1 = box_muller(words[4 * k], words[4 * k + 1])
            z2, z3 = box_muller(words[4 * k + 2], words[4 * k + 3])
            outs.append(((z0 + z1) + (z2 + z3)) * 0.5)
        parts.append(torch.stack(outs, dim=1).reshape(-1))
    return torch.cat(parts)[:numel]


def secure_key() -> list[int]:
    """256 fresh bits from the operating system's CSPRNG, as eight words."""
    raw = os.urandom(32)
    return [int.from_bytes(raw[4 * i:4 * i + 4], "little") for i in range(8)]


def noise_normal(numel: int, *, source: str, seed: int, offset: int,
                 tensor_index: int, key: list[int] | None, device) -> torch.Tensor:
    """The noise stream of one tensor for either source, fp32, shape (numel,)."""
    if source == "secure":
        return chacha20_normal(numel, key, tensor_index, device)
    return philox_normal(numel, seed, offset, tensor_index, device)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """n_i = sqrt(sum_t ||g_t[i]||^2), accumulated in fp32 (fp64 for fp64), (B,) fp32."""
    acc = _opmath(grads[0].dtype)
    sq = None
    for g in grads:
        part = g.reshape(g.shape[0], math.prod(g.shape[1:])).to(acc).square().sum(dim=1)
        sq = part if sq is None else sq + part
    return sq.sqrt().to(torch.float32)


def clip_factors(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Opacus's factors c_i = min(1, max_norm / (n_i + CLIP_EPS)), fp32 (B,)."""
    # torch.full_like(...) / x divides; ``max_norm / x`` would be reciprocal * max_norm.
    return (torch.full_like(norms, max_norm) / (norms + CLIP_EPS)).clamp(max=1.0)


def _check_finite_norms(norms: torch.Tensor, op: str) -> None:
    bad = (~torch.isfinite(norms)).nonzero()
    if bad.numel():
        raise ValueError(
            f"{op}: the per-sample gradient of sample {int(bad[0, 0])} has a "
            "non-finite norm (NaN/Inf in the gradient, or its squared norm "
            "overflows float32); refusing to return a noised sum")


def _weighted_noised_sum(grads, factors, noise_std, scale, seed, offset, source, key):
    out = []
    for t, g in enumerate(grads):
        acc = _opmath(g.dtype)
        b = g.shape[0]
        flat = g.reshape(b, math.prod(g.shape[1:])).to(acc)
        total = factors.to(acc) @ flat if b else torch.zeros(flat.shape[1], dtype=acc, device=g.device)
        z = noise_normal(total.numel(), source=source, seed=seed, offset=offset,
                         tensor_index=t, key=key, device=g.device).to(acc)
        out.append(((total + noise_std * z) * scale).to(g.dtype).reshape(g.shape[1:]))
    return out


def clip_and_noise(grads: list[torch.Tensor], max_norm: float, noise_std: float, *,
                   scale: float = 1.0, seed: int = 0, offset: int = 0,
                   source: str = "philox", key: list[int] | None = None
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Flat per-sample clipping, sum and Gaussian noise.

    Args:
        grads: tensors (B, *param_shape_t), one dtype and device.
        max_norm: clipping bound C > 0.
        noise_std: standard deviation of the added noise (absolute, not a multiplier).
        scale: the sum plus noise is multiplied by it (e.g. 1 / expected batch size).
        seed, offset: Philox stream; ``key``: ChaCha20 key when ``source="secure"``
            (drawn from the OS when None).
    Returns:
        (summed, norms): summed[t] has shape param_shape_t and the grads' dtype;
        norms is (B,) float32, the unclipped n_i.
    Raises:
        ValueError: a sample's norm is not finite.
    """
    if source == "secure" and key is None:
        key = secure_key()
    norms = per_sample_norms(grads)
    _check_finite_norms(norms, "clip_and_noise")
    factors = clip_factors(norms, max_norm)
    return _weighted_noised_sum(grads, factors, noise_std, scale, seed, offset, source, key), norms


def accumulate_and_noise(grads: list[torch.Tensor], factors: torch.Tensor,
                         noise_std: float, *, scale: float = 1.0, seed: int = 0,
                         offset: int = 0, source: str = "philox",
                         key: list[int] | None = None) -> list[torch.Tensor]:
    """(sum_i factors[i] * g_t[i] + N(0, noise_std^2)) * scale for each tensor.

    ``factors`` is (B,) and is applied in fp32 (fp64 for fp64 grads).
    Raises ValueError when a result is not finite.
    """
    if source == "secure" and key is None:
        key = secure_key()
    out = _weighted_noised_sum(grads, factors, noise_std, scale, seed, offset, source, key)
    for t, o in enumerate(out):
        if not bool(torch.isfinite(o).all()):
            raise ValueError(
                f"accumulate_and_noise: the weighted sum of tensor {t} is not finite "
                "(NaN/Inf in the per-sample gradients or factors)")
    return out


def add_noise_(tensors: list[torch.Tensor], noise_std: float, *, scale: float = 1.0,
               seed: int = 0, offset: int = 0, source: str = "philox",
               key: list[int] | None = None) -> list[torch.Tensor]:
    """In place: t = (t + N(0, noise_std^2)) * scale, computed in fp32 (fp64 for fp64)."""
    if source == "secure" and key is None:
        key = secure_key()
    for t, x in enumerate(tensors):
        acc = _opmath(x.dtype)
        z = noise_normal(x.numel(), source=source, seed=seed, offset=offset,
                         tensor_index=t, key=key, device=x.device).to(acc)
        x.copy_(((x.to(acc) + noise_std * z.reshape(x.shape)) * scale).to(x.dtype))
    return tensors


def _per_sample(v, x: torch.Tensor) -> torch.Tensor | float:
    """A float stays a float (ATen rounds it like a Python scalar); a (B,) or ()
    tensor is broadcast over the sample's remaining dimensions."""
    if isinstance(v, torch.Tensor):
        if v.dim() == 0:
            return v
        return v.reshape((-1,) + (1,) * (x.dim() - 1))
    return v


def sign_step(x_adv, grad, x_orig, alpha, eps, lo: float = 0.0, hi: float = 1.0):
    """The L-inf PGD step, exactly the eager torchattacks formula:

    clamp(x_orig + clamp(x_adv + alpha * sign(grad) - x_orig, -eps, eps), lo, hi)

    alpha/eps: float or per-sample (B,) tensor (in the images' dtype for fp32/fp64,
    fp32 otherwise). Returns a new tensor shaped like x_adv.
    """
    a = _per_sample(alpha, x_adv)
    e = _per_sample(eps, x_adv)
    # Each eager op rounds its result to the images' dtype; tensors alpha/eps
    # (fp32 for half/bf16 images) follow the same rounding as Python floats.
    step = (a * grad.sign()).to(x_adv.dtype)
    delta = (x_adv + step) - x_orig
    if isinstance(e, torch.Tensor):
        delta = torch.clamp(delta.to(e.dtype), -e, e).to(x_adv.dtype)
    else:
        delta = torch.clamp(delta, -e, e)
    return torch.clamp(x_orig + delta, lo, hi)


def l2_step(x_adv, grad, x_orig, alpha, eps, lo: float = 0.0, hi: float = 1.0):
    """The PGD-L2 step (torchattacks PGDL2 semantics), per sample i:

        g = grad_i / (||grad_i||_2 + 1e-10)     zero gradient -> zero step
        d = x_adv_i + alpha_i * g - x_orig_i
        d = d * min(1, eps_i / ||d||_2)         (d unchanged when ||d|| = 0)
        out = clamp(x_orig_i + d, lo, hi)

    Norms and arithmetic in fp32 (fp64 for fp64), result in x_adv's dtype.
    """
    acc = _opmath(x_adv.dtype)
    b = x_adv.shape[0]
    shape = (b,) + (1,) * (x_adv.dim() - 1)
    a = alpha.to(acc).reshape(-1) if isinstance(alpha, torch.Tensor) else torch.tensor(alpha, dtype=acc)
    e = eps.to(acc).reshape(-1) if isinstance(eps, torch.Tensor) else torch.tensor(eps, dtype=acc)
    a = a.to(x_adv.device).expand(b).reshape(shape) if b else a
    e = e.to(x_adv.device).expand(b).reshape(shape) if b else e
    if b == 0:
        return x_adv.clone()
    g = grad.to(acc)
    gnorm = g.reshape(b, -1).norm(dim=1).reshape(shape)
    d = x_adv.to(acc) + a * (g / (gnorm + L2_GRAD_EPS)) - x_orig.to(acc)
    dnorm = d.reshape(b, -1).norm(dim=1).reshape(shape)
    factor = torch.where(dnorm > e, e / dnorm, torch.ones_like(dnorm))
    return torch.clamp(x_orig.to(acc) + d * factor, lo, hi).to(x_adv.dtype)


def conv_weight_grad_norms(x: torch.Tensor, grad_out: torch.Tensor, kernel, stride, padding,
                           dilation, groups: int, keep: bool
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample weight gradients of a 2-D convolution and their squared norms.

    x (B, C_in, H, W) and grad_out (B, C_out, OH, OW), float32: the layer's input
    and output gradient. Returns (sq, grads): sq (B,) float32, the squared
    Frobenius norm of each sample's weight gradient (summed in float64), and
    grads (B, C_out, C_in / groups, *kernel) when ``keep``, else an empty tensor.
    One grouped convolution-weight gradient with the samples folded into the groups.
    """
    batch, c_in = x.shape[:2]
    c_out = grad_out.shape[1]
    if batch == 0:
        grads = x.new_empty((0, c_out, c_in // groups) + tuple(kernel))
    else:
        xs = x.reshape((1, batch * c_in) + tuple(x.shape[2:]))
        gs = grad_out.reshape((1, batch * c_out) + tuple(grad_out.shape[2:]))
        weight = x.new_empty((batch * c_out, c_in // groups) + tuple(kernel))
        grads = torch.ops.aten.convolution_backward(
            gs, xs, weight, None, list(stride), list(padding), list(dilation), False, [0, 0],
            batch * groups, [False, True, False])[1].reshape(
                (batch, c_out, c_in // groups) + tuple(kernel))
    sq = grads.reshape(batch, -1).double().square().sum(1).float()
    return sq, (grads if keep else x.new_empty((0,)))


def row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Each sample's sum of squares: x (B, ...) -> (B,) in op-math (float32; float64
    for float64), as ``vecdot`` of the flattened rows (pairwise sums)."""
    # math.prod, not -1: reshape cannot infer a size from 0 elements (B = 0)
    flat = x.reshape(x.shape[0], math.prod(x.shape[1:])).to(_opmath(x.dtype))
    return torch.linalg.vecdot(flat, flat)
