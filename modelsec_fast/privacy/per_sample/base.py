"""The contract every per-layer rule implements, and shared numerics.

A rule knows three things about one layer family:

* ``forward``: run the layer through a custom ``torch.autograd.Function``
  whose backward returns only the input gradient (never autograd's own weight
  gradient) and hands what the rule needs to the layer's recorder.
* ``sq_norms``: the per-sample squared norm of the layer's gradient, summed
  over its trainable parameters, from the calls recorded in one backward pass.
* ``clipped_sums``: ``sum_i f_i * grad_i`` per parameter, by book-keeping
  (the layer's own weight-gradient formula applied to f-scaled output
  gradients) or from a per-sample gradient materialised in ``sq_norms``.

Memory: a pass holds every layer's records until all norms are known, so
rules drop records as early as the math allows. ``compact`` runs at capture
(in backward): a rule whose norm phase would reduce a call's tensors to
per-sample gradients no larger than them does it there, and the input
activation and output gradient are freed as the backward pass goes on. In
``sq_norms`` a rule whose cache holds everything ``clipped_sums`` needs calls
:func:`release` on its calls; ``clip_pass`` releases each layer's calls and
cache once its clipped sum is formed.

Per-sample convention: dimension 0 of every recorded tensor is the sample
index (``batch_dim`` moves it there for sequence layers used batch-second).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from modelsec_fast import ops, reference


@dataclass
class Call:
    """What one forward call of a layer left for the rule, captured in backward.

    ``tensors`` are rule-specific (typically the input activation and the
    output gradient); ``batch_size`` is the number of samples of the call.
    ``parts``: set by :meth:`LayerRule.compact` (which then empties
    ``tensors``), the call's per-sample gradients, name -> (B, ...).
    """

    tensors: tuple
    batch_size: int
    meta: dict = field(default_factory=dict)
    parts: dict | None = None


def add_part(parts: dict, name: str, value: torch.Tensor) -> None:
    """parts[name] += value (a layer's per-call per-sample gradients add up)."""
    parts[name] = value if name not in parts else parts[name] + value


def summed_parts(calls: list[Call]) -> dict:
    """name -> sum over the compacted calls of their per-sample gradients."""
    parts = {}
    for c in calls:
        for name, v in (c.parts or {}).items():
            add_part(parts, name, v)
    return parts


def release(calls: list[Call]) -> None:
    """Drop the calls' recorded tensors (they are freed once nothing else holds them)."""
    for c in calls:
        c.tensors = ()


class LayerRule:
    """Base class of per-layer rules; one subclass per layer family."""

    #: names of the layer's parameters, in a fixed order
    param_names: tuple[str, ...] = ("weight", "bias")

    def present_params(self, module) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) for the parameters the module actually has."""
        out = []
        for name in self.param_names:
            p = getattr(module, name, None)
            if isinstance(p, torch.nn.Parameter):
                out.append((name, p))
        return out

    def validate(self, module) -> list[str]:
        """Configuration problems that make the layer unsupported (empty: fine)."""
        return []

    def forward(self, module, recorder, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} defines no forward")

    def example_input(self, module) -> torch.Tensor | None:
        """A small batched input for ``module`` (probes a subclass's forward; None: none)."""
        return None

    def per_sample_grads(self, module, calls: list[Call], mask: dict[str, bool],
                         batch_dim: int) -> dict[str, torch.Tensor]:
        """name -> (B, *param.shape) materialised per-sample gradients (shared parameters)."""
        raise RuntimeError(f"{type(self).__name__} defines no per_sample_grads")

    def compact(self, module, call: Call, mask: dict[str, bool], batch_dim: int) -> None:
        """At capture: optionally replace ``call.tensors`` by ``call.parts`` (default: keep)."""

    def sq_norms(self, module, calls: list[Call], mask: dict[str, bool],
                 batch_dim: int) -> tuple[torch.Tensor, Any]:
        """(B,) squared per-sample norms over the masked-in parameters, and a cache.

        Calls :func:`release` on ``calls`` when ``clipped_sums`` needs only the cache.
        """
        raise RuntimeError(f"{type(self).__name__} defines no sq_norms")

    def clipped_sums(self, module, calls: list[Call], mask: dict[str, bool],
                     batch_dim: int, cache: Any, factors: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
        """name -> sum_i factors[i] * per-sample grad_i, in the parameter's shape."""
        raise RuntimeError(f"{type(self).__name__} defines no clipped_sums")


def opmath(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp64 for fp64 inputs, fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


#: largest materialised per-sample gradient (elements, B * groups * p * d) we allow
MATERIALISE_BUDGET = 1 << 26


#: the ghost norm pays while T^2 (p + d) <= GHOST_FACTOR * p * d (see prefer_ghost)
GHOST_FACTOR = 16


def prefer_ghost(time_steps: int, out_features: int, in_features: int, *,
                 batch: int = 1, groups: int = 1, low_memory: bool = False) -> bool:
    """Ghost norm (True) or materialised per-sample gradient (False) for one layer.

    Per sample and group, the ghost norm costs T^2 (p + d) multiply-adds (in
    float64 for fp32 layers of realistic width, where its error bound needs it:
    see :func:`ghost_sq_norm`) and then still needs the book-keeping product
    G^T diag(c) A (T p d); the materialised gradient costs the same T p d once,
    plus memory passes over its p d entries (written, read for the norm and
    for the weighted sum, in fresh pages), worth some 30 fp32 multiply-adds
    each on the CPU. So ghost pays while 2 T^2 (p + d) <= 30 p d, i.e.
    T^2 (p + d) <= ``GHOST_FACTOR`` p d (always for T = 1; measured on the
    benchmark models: the LSTM's recurrent layer, at 10, runs 3.6% faster per
    step as ghost; ResNet-18's first downsampling conv, at 6, changed too; the
    other layers of bench_dpsgd's models are at 18 or more, or at most 2.4,
    and kept their methods). Past that we materialise, unless the
    B * groups * p * d tensor would exceed ``MATERIALISE_BUDGET``; then the
    published mixed-ghost rule (Bu et al. 2023: ghost iff 2T^2 <= p d, i.e.
    whichever needs less memory) decides. ``low_memory`` (the engine's
    low-memory mode) applies that rule everywhere.
    """
    t, p, d = time_steps, out_features, in_features
    if low_memory:
        return 2 * t * t <= p * d
    if t * t * (p + d) <= GHOST_FACTOR * p * d:
        return True
    if batch * groups * p * d <= MATERIALISE_BUDGET:
        return False
    return 2 * t * t <= p * d


#: bytes of one chunk's working set per thread (its samples' inputs, output
#: gradients, patches and per-sample gradients) in the materialised paths: a few
#: MiB keeps a chunk in cache and its temporaries out of fresh, page-faulting
#: allocations, where whole-batch tensors would miss the cache; a tuning constant,
#: timed by bench/bench_dpsgd.py
CHUNK_BYTES = 4 << 20


def chunked_norm_pays(time_steps: int, out_features: int, in_features: int) -> bool:
    """Low-memory mode, where the ghost norm was chosen for its memory: whether the norms
    of per-sample gradients G_i^T A_i materialised a cache-sized chunk of samples at a
    time (:func:`chunked_sq_norms`) are faster.

    Both keep A and G for the book-keeping sum, so they need the same memory. Per
    sample the chunk costs T p d fp32 multiply-adds in cache, the ghost norm of a
    float32 layer T^2 (p + d) in float64 (see :func:`ghost_sq_norm`). Measured on 2
    threads (B = 16, T = 64-65): the chunks are 6.5x faster at p = d = 128 (BERT, GPT-2),
    1.8x at 512 x 128, 1.05-1.2x at ViT-tiny's 768 x 192 and 576 x 192, and 0.6x at
    the LSTM's 1024 x 256 with T = 32: they pay while 2 T (p + d) >= 0.8 p d. CPU only
    (the Linear rule asks on CPU tensors): the crossover and the cache-sized chunks are the
    CPU's; on an accelerator the ghost norm stays.
    """
    t, p, d = time_steps, out_features, in_features
    return 5 * t * (p + d) >= 2 * p * d


#: the most a bounded chunked norm may exceed the exact one before float64 recomputes it
CHUNKED_BOUND_RELATIVE = 1e-4


def chunked_sq_norms(a: torch.Tensor, g: torch.Tensor, *, bounded: bool = False) -> torch.Tensor:
    """||G_i^T A_i||_F^2 per sample of a: (B, T, d), g: (B, T, p), forming G_i^T A_i for
    ``CHUNK_BYTES``-sized chunks of samples only.

    ``bounded``: never below the exact value, for a clipped sum that is book-kept (not
    summed from these very per-sample gradients). Each entry of the computed G_i^T A_i
    is off by at most T u sum_t |g_t||a_t|, so its norm by at most
    e_i = T u sum_t ||g_t|| ||a_t||. The norm is raised by e_i (4e-6 to 8e-5 of it on
    the benchmark transformers, T = 64-128), and samples whose e_i exceeds 1e-4 of their
    norm (long sequences, or time steps that cancel) are recomputed in float64, so a
    clipped sample is never scaled down by more than 1e-4 for the bound's sake.
    """
    batch, steps, d = a.shape
    p = g.shape[2]
    chunk = max(1, CHUNK_BYTES * torch.get_num_threads() // (p * d * a.element_size()))
    sq = a.new_empty(batch)
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        sq[start:stop] = row_sq_norms(torch.bmm(g[start:stop].transpose(1, 2), a[start:stop]))
    if not bounded or a.dtype == torch.float64:
        return sq
    root_scale = torch.linalg.vecdot(torch.linalg.vector_norm(a, dim=2),
                                     torch.linalg.vector_norm(g, dim=2))  # sum_t |g_t| |a_t|
    err = steps * unit_roundoff(a.dtype) * root_scale
    norm = sq.sqrt()
    risky = (err > CHUNKED_BOUND_RELATIVE * norm).nonzero().reshape(-1)
    sq = (norm + err).square()
    if risky.numel():
        exact = chunked_sq_norms(a[risky].double(), g[risky].double()).sqrt()
        fixed = (exact + steps * unit_roundoff(torch.float64) * root_scale[risky].double()).square()
        # float64 -> float32 rounds to nearest: step up one ulp so it never rounds down
        sq[risky] = torch.nextafter(fixed.to(sq.dtype), sq.new_tensor(float("inf")))
    return sq


def ghost_sq_norm(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """||G^T A||_F^2 per sample without forming G^T A, never negative nor underestimated.

    a: (N, T, d), g: (N, T, p) -> (N,) = <A A^T, G G^T>, clamped at 0. The
    inner product cancels when a sample's time steps pull against each other,
    and its rounding error (see :func:`guard_sq_norms`) can then exceed the
    result: such samples are recomputed in float64, plus the error bound, so
    that a clip factor computed from the norm never lets a sample exceed C.
    With one time step it is ||a||^2 ||g||^2, two sums of squares, which
    cannot cancel.
    """
    if a.shape[1] == 1:
        return row_sq_norms(a[:, 0]) * row_sq_norms(g[:, 0])
    terms = a.shape[2] + g.shape[2] + a.shape[1] * a.shape[1]
    if a.dtype != torch.float64 and terms * unit_roundoff(a.dtype) > 2 * GUARD_RELATIVE:
        # scale >= the squared norm, so the guard would flag every sample: the
        # low-precision pass would be thrown away, go to float64 at once (on
        # contiguous copies: bmm is several times slower on a transposed layout)
        a64 = a.to(torch.float64, memory_format=torch.contiguous_format)
        g64 = g.to(torch.float64, memory_format=torch.contiguous_format)
        aat = torch.bmm(a64, a64.transpose(1, 2))
        ggt = torch.bmm(g64, g64.transpose(1, 2))
        # the Gram diagonals are the squared row norms that the scale needs
        scale = torch.linalg.vecdot(aat.diagonal(dim1=1, dim2=2).sqrt(),
                                    ggt.diagonal(dim1=1, dim2=2).sqrt()).square()
        return _float64_repair((aat * ggt).sum(dim=(1, 2)), scale, terms, a.dtype)
    scale = torch.linalg.vecdot(torch.linalg.vector_norm(a, dim=2),
                                torch.linalg.vector_norm(g, dim=2)).square()
    sq = _raw_ghost(a, g)
    return guard_sq_norms(sq, scale, terms, a.dtype,
                          lambda idx: _raw_ghost(a[idx].double(), g[idx].double()))


def _raw_ghost(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    aat = torch.bmm(a, a.transpose(1, 2))
    ggt = torch.bmm(g, g.transpose(1, 2))
    return (aat * ggt).sum(dim=(1, 2))


#: relative error of a squared norm we tolerate without recomputing (1e-6 on the norm)
GUARD_RELATIVE = 2e-6


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff of matrix products in ``dtype`` (TF32 when float32 matmuls allow it)."""
    if dtype == torch.float64:
        return 2.0 ** -53
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return 2.0 ** -24
    return 2.0 ** -11 if dtype == torch.float32 else float(torch.finfo(dtype).eps) / 2


def guard_sq_norms(sq: torch.Tensor, scale: torch.Tensor, terms: int, dtype: torch.dtype,
                   recompute) -> torch.Tensor:
    """Clamp squared norms at 0 and repair the samples whose rounding error may be large.

    A sum of ``terms`` products computed in ``dtype`` is off by at most
    terms * u * ``scale`` (``scale`` bounds the sum of the products' absolute
    values). Where that bound exceeds ``GUARD_RELATIVE`` of the result, the
    sample is recomputed by ``recompute(indices)`` in float64 and its bound
    added, so the returned value is never below the exact squared norm (it
    over-clips such a sample slightly instead of under-clipping it).
    """
    sq = sq.clamp(min=0)
    gamma = terms * unit_roundoff(dtype)
    risky = (gamma * scale) > GUARD_RELATIVE * sq
    if not bool(risky.any()):
        return sq
    idx = risky.nonzero().reshape(-1)
    if dtype == torch.float64:
        fixed = sq[idx] + gamma * scale[idx]
    else:
        fixed = _float64_repair(recompute(idx), scale[idx], terms, sq.dtype)
    sq = sq.clone()
    sq[idx] = fixed.to(sq.dtype)
    return sq


def _float64_repair(exact: torch.Tensor, scale: torch.Tensor, terms: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """Float64 sums (clamped at 0) plus their error bound, rounded up to ``dtype``."""
    fixed = exact.clamp(min=0) + terms * unit_roundoff(torch.float64) * scale.double()
    # float64 -> float32 rounds to nearest: step up one ulp so it never rounds down
    return torch.nextafter(fixed.to(dtype), fixed.new_tensor(float("inf"), dtype=dtype))


def batch_first(t: torch.Tensor, batch_dim: int) -> torch.Tensor:
    """Move the sample dimension to 0 (no copy)."""
    return t if batch_dim == 0 or t.dim() < 2 else t.movedim(batch_dim, 0)


def layout_meta(t: torch.Tensor, batch_dim: int, *, sequence: bool) -> dict:
    """Call meta for a layer whose sample dimension depends on ``batch_first``.

    ``alt_batch`` is the size the sample dimension would have under the other
    layout; the optimizer compares both with the data loader's batch to catch
    a ``batch_first`` that does not match the model.
    """
    return {"alt_batch": t.shape[1 - batch_dim]} if sequence else {}


def scale_rows(t: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """t[i] * factors[i] for t of shape (B, ...)."""
    return t * factors.reshape((-1,) + (1,) * (t.dim() - 1)).to(t.dtype)


def paired_rows(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, d), (B, T, p) -> (B*T, d), (B*T, p) with matching rows.

    Rows come in memory order, so time-major views of (T, B, f) tensors (a recurrence's
    calls) flatten without a copy, as batch-major ones do; the row order of a sum over
    all rows does not matter, only that a and g share it.
    """
    if a.transpose(0, 1).is_contiguous() and g.transpose(0, 1).is_contiguous():
        a, g = a.transpose(0, 1), g.transpose(0, 1)
    return a.reshape(-1, a.shape[2]), g.reshape(-1, g.shape[2])


def flat_rows(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, prod(...)); safe for B = 0, unlike reshape(B, -1)."""
    n = 1
    for s in t.shape[1:]:
        n *= s
    return t.reshape(t.shape[0], n)


#: elements from which row_sq_norms takes the native kernel (see there)
NATIVE_NORM_NUMEL = 1 << 15


def row_sq_norms(t: torch.Tensor) -> torch.Tensor:
    """||t[i]||^2 for each row of (B, ...), in float32 (float64 for float64 t).

    On the CPU the native kernel reads a large t once, where ``vecdot`` would first
    write t * t to fresh memory (5-11% of GPT-2's step); below ``NATIVE_NORM_NUMEL``
    elements vecdot's temporary stays in cache and its call is cheaper. The engine's
    tensors need no Python-side argument checks (the kernel checks again in C++).
    """
    if t.numel() >= NATIVE_NORM_NUMEL and t.device.type == "cpu" and ops.native_available():
        return torch.ops.modelsec_fast._row_sq_norms(t)
    return reference.row_sq_norms(t)


class CompactedRule(LayerRule):
    """A rule whose calls hold their per-sample gradients (``call.parts``) once
    compacted: norms, per-sample gradients and clipped sums all come from those
    parts' sums over the calls."""

    def sq_norms(self, module, calls, mask, batch_dim):
        per = summed_parts(calls)
        ref = next(iter(per.values()))
        sq = torch.zeros(ref.shape[0], dtype=ref.dtype, device=ref.device)
        for v in per.values():
            sq += row_sq_norms(v)
        return sq, per

    def per_sample_grads(self, module, calls, mask, batch_dim):
        return summed_parts(calls)

    def clipped_sums(self, module, calls, mask, batch_dim, cache, factors):
        return {k: factors.to(v.dtype) @ flat_rows(v) for k, v in cache.items()}
