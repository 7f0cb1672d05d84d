"""The floor of a flat-clipping DP-SGD step, for ``bench_dpsgd.py``'s ``floor`` row.

floor = the non-private step of the architecture the private run trains (the model after
``ModuleValidator.fix``) + the per-sample work that flat clipping cannot avoid, done on the
input activations and output gradients that the backward pass already has:

1. Every trainable layer's per-sample squared gradient norms, by the cheapest method for
   that layer (each candidate timed once on the captured tensors, outside the timed step):

   - Linear-like layers (``nn.Linear``, transformers' ``Conv1D``, the Linear layers inside
     DPLSTM and DPMultiheadAttention, LoRA's factors), A (B, T, d), G (B, T, p):
     ``||a||^2 ||g||^2`` for one position (T = 1), else the cheaper of the ghost norm
     ``<A A^T, G G^T>`` (``base.ghost_sq_norm``) and the norm of the materialised
     ``G_i^T A_i`` (chunks of samples). Calls of one layer are concatenated along T
     (DPLSTM's recurrent layer), which keeps the cross terms exact.
   - Convolutions: the cheapest of the fused native kernel
     ``ops._conv_weight_grad_norms`` (norms only; one call, 1-D/2-D fp32 on the CPU), the
     per-sample weight gradients materialised chunk by chunk (the conv rule's methods) and
     the ghost norm over im2col patches.
   - Embeddings: the rule's exact formula (rows of equal index summed, ``index_add``).
   - Biases, LayerNorm, GroupNorm, RMSNorm, InstanceNorm: their per-sample gradients by the
     rules' formulas (a few values per channel), then their norms.

2. The clip factors ``c_i`` and the weighted sums ``sum_i c_i g_i``, per weight by the
   cheaper of two strategies, chosen with the norm method:

   - book-keeping: the layer's own weight gradient of the c-scaled output gradient. It
     takes the place of the weight gradient the non-private step computes, so only the
     scaling of the output gradient is added (norms by any norms-only method above);
   - reuse (method ``REUSE``): the per-sample weight gradients are formed once (for
     convolutions by the fused kernel where it applies), give the norms, and
     ``c @ per_sample`` gives the sum. The non-private step then skips that weight's
     batched gradient (``FloorWork.drop_weight_grads``; the weight still gets its
     gradient, from the sum, and its optimizer step), unless the layer would then lose
     its output gradient (no trained bias, an input without gradient) or shares it;
   - patch sum (method ``PATCH_SUM``, convolutions called once): the ghost norm's patches
     are kept and one GEMM over them gives the sum (``conv._patch_weighted_sum``), in
     place of the weight gradient as for reuse. Where the ghost norm pays (small maps)
     the CPU's batched convolution weight gradient can be far slower than that GEMM
     (ResNet-18's 1x1 maps: 40 ms against 2 ms), so the non-private step is no lower
     bound there.

   The small per-sample gradients (biases, norm layers, generic-path parameters) are
   summed as ``c @ per_sample``.

The Gaussian noise (one ``ops.add_noise_`` over every trainable gradient) is added by
``bench_dpsgd.py``'s floor step, not here. Keeping the
activations and output gradients until the clip factors are known costs memory, not
time, and is not counted; the floor's memory is no floor (its tensors are held captured).

Approximations (each model's ``notes`` say which apply):

- Generic-path parameters (a module without a rule: timm's ``cls_token``/``pos_embed``,
  ``nn.Bilinear``, custom ``F.linear`` modules): their per-sample gradients are taken as
  given (computed by the engine's generic path while capturing); only their norms and
  weighted sums are timed. For an additive parameter that is exact (its per-sample
  gradient is a sum the non-private backward does too); for others it is a lower estimate.
- A parameter shared by several layers (GPT-2's tied ``wte``/``lm_head``): each use is
  counted as its own layer by its cheapest method; the cross terms between the uses that
  its exact norm needs are left out (a lower estimate).
- Methods are chosen by one timing on the captured tensors (best of ``SELECT_REPEATS``;
  reuse is credited with the timed batched weight gradient it spares); a candidate whose
  multiply-add count is above ``SELECT_FACTOR`` times the layer's cheapest is not tried
  (the ghost norm of a large convolution map, T^2 per sample). Per-sample gradients are
  kept only up to the engine's ``MATERIALISE_BUDGET`` elements per layer.

The tensors are captured with the engine's own recorders (``per_sample.attach``) with the
rules' capture-time reductions (``compact``) switched off, so every layer leaves its raw
activation and output gradient in the layout its rule reads.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable
from unittest import mock

import torch

from modelsec_fast.privacy.per_sample import attach, detach
from modelsec_fast.privacy.per_sample import conv as conv_rule
from modelsec_fast.privacy.per_sample.base import (
    MATERIALISE_BUDGET, Call, batch_first, chunked_sq_norms, flat_rows, ghost_sq_norm, opmath,
    row_sq_norms, scale_rows, summed_parts)
from modelsec_fast.privacy.per_sample.clipping import group_calls
from modelsec_fast.privacy.per_sample.embedding import EmbeddingRule
from modelsec_fast.privacy.per_sample.generic import GENERIC
from modelsec_fast.privacy.per_sample.linear import Conv1DRule, LinearRule
from modelsec_fast.privacy.per_sample.norms import _AffineNormRule
from modelsec_fast.reference import CLIP_EPS

__all__ = ["LayerWork", "FloorWork", "capture_floor", "SELECT_FACTOR", "SELECT_REPEATS",
           "REUSE", "PATCH_SUM"]

#: a norm method is tried only if its multiply-adds are at most this times the cheapest's
SELECT_FACTOR = 4.0
#: timed calls per candidate when choosing (after one untimed call); the best counts
SELECT_REPEATS = 3
#: the weight method that keeps the per-sample gradients for the weighted sum
REUSE = "reuse"
#: the conv weight method that keeps the ghost norm's patches for the weighted sum
#: (one GEMM over them, ``conv._patch_weighted_sum``, as the engine does)
PATCH_SUM = "ghost_patches"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Best of SELECT_REPEATS timed calls of fn, after one untimed call."""
    fn()
    best = math.inf
    for _ in range(SELECT_REPEATS):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


@dataclass
class LayerWork:
    """The clipping work of one trainable layer (one rule recorder) in one pass.

    Attributes:
        name: the layer's qualified name; params: its trained parameters' full names.
        kind: "linear", "conv", "embedding", "norm" or "generic".
        methods: method -> fn() giving the (B,) squared per-sample norms of the layer's
            product-formed weight (empty when it has none or it is frozen).
        macs: method -> multiply-adds estimate (candidates above SELECT_FACTOR x the
            cheapest are not timed).
        small: fn() -> {param: (B, ...) per-sample gradient} of the layer's small
            parameters (biases, norm-layer affines, generic-path parameters), or None.
        scaled: output gradients (B, ...) that book-keeping scales by the clip factors.
        reuse: the methods whose weighted sum replaces the layer's batched weight gradient
            (``REUSE``, ``PATCH_SUM``): method -> (fn() -> ((B,) squared norms, what the
            sum needs), fn(factors, that) -> the weight's sum_i c_i g_i).
        weight_grad: fn() computing the layer's batched weight gradient (timed only, to
            credit the reuse strategy with the weight gradient it makes unnecessary).
        can_drop_weight_grad: the non-private step can skip this weight's gradient
            without losing the layer's output gradient (its bias trains or its input
            needs a gradient) and the weight is not shared.
        method: the chosen weight method; seconds: each timed candidate's cost as chosen.
        shared: the layer uses a parameter shared with another layer.
        weight: the weight's full name; transposed: stored (in, out) (transformers' Conv1D).
        target: the floor's training-model weight whose gradient the reuse sum replaces.
    """

    name: str
    params: list[str]
    kind: str
    methods: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)
    macs: dict[str, float] = field(default_factory=dict)
    small: Callable[[], dict] | None = None
    scaled: list[torch.Tensor] = field(default_factory=list)
    method: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    shared: bool = False
    reuse: dict[str, tuple[Callable, Callable]] = field(default_factory=dict)
    weight_grad: Callable[[], torch.Tensor] | None = None
    can_drop_weight_grad: bool = False
    weight: str | None = None
    transposed: bool = False
    target: torch.nn.Parameter | None = None

    def candidates(self) -> list[str]:
        """Every weight method: the norms-only ones, then the reuse ones."""
        return list(self.methods) + list(self.reuse)

    def weight_sq_norms(self, method: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """((B,) squared norms of the weight by ``method``, what a reuse method's sum needs
        or None)."""
        if method in self.reuse:
            return self.reuse[method][0]()
        return self.methods[method](), None

    def weighted_sum(self, factors: torch.Tensor, kept: torch.Tensor | None,
                     method: str) -> None:
        """sum_i c_i g_i of the weight: by a reuse ``method`` from ``kept`` (into
        ``target.grad``), or by book-keeping, whose weight-gradient product is the
        non-private step's: only the scaling of the output gradients is done here."""
        if method not in self.reuse:
            for g in self.scaled:
                scale_rows(g, factors)
            return
        total = self.reuse[method][1](factors, kept)
        if self.target is not None:
            shape = self.target.shape
            total = (total.reshape(shape[::-1]).t() if self.transposed else total.reshape(shape))
            self.target.grad = total.to(self.target.dtype)

    def sq_norms(self, method: str | None = None) -> torch.Tensor:
        """(B,) squared per-sample norms of this layer's trained parameters.

        ``method`` picks the weight's method (default: the chosen one). The output
        gradients carry the loss's 1/B (mean reduction), so these are 1/B^2 times the
        norms of the per-sample losses' gradients.
        """
        method = method or self.method
        sq = self.weight_sq_norms(method)[0] if method is not None else None
        if self.small is not None:
            for v in self.small().values():
                sq = row_sq_norms(v) if sq is None else sq + row_sq_norms(v)
        return sq

    def choose(self, device: torch.device) -> None:
        """Time the candidates within SELECT_FACTOR of the cheapest estimate; keep the cheapest.

        A norms-only method costs its norms plus the book-keeping scaling; a reuse method
        costs its norms and its weighted sum (``REUSE``: the per-sample gradients and
        ``c @ per_sample``), less the batched weight gradient it spares the non-private
        step (where that can be skipped).
        """
        names = self.candidates()
        if len(names) < 2:
            self.method = next(iter(names), None)
            return
        cheapest = min(self.macs.values())
        ones = None
        for m in [m for m in names if self.macs[m] <= SELECT_FACTOR * cheapest]:
            def one(m=m):
                nonlocal ones
                sq, kept = self.weight_sq_norms(m)
                ones = torch.ones_like(sq) if ones is None else ones
                self.weighted_sum(ones, kept, m)
            self.seconds[m] = _best_seconds(one, device)
        spared = [m for m in self.seconds if m in self.reuse]
        if spared and self.can_drop_weight_grad:
            weight_grad = _best_seconds(self.weight_grad, device)
            for m in spared:
                self.seconds[m] -= weight_grad
        self.method = min(self.seconds, key=self.seconds.get)


class FloorWork:
    """The per-sample work of flat clipping on one captured pass; call it to do it once.

    A call computes every layer's norms by its chosen method, the clip factors
    ``min(1, C / (n_i + 1e-6))`` (n_i with the loss's 1/B undone, as the engine does), the
    scaling of the book-kept output gradients, the reuse sums (into the ``.grad`` of the
    weights :meth:`drop_weight_grads` took from the non-private step) and the weighted
    sums of the small per-sample gradients, and returns the (B,) per-sample norms n_i.
    """

    def __init__(self, layers: list[LayerWork], batch: int, device: torch.device,
                 dtype: torch.dtype, max_grad_norm: float, notes: list[str]):
        self.layers, self.batch, self.device, self.dtype = layers, batch, device, dtype
        self.max_grad_norm = max_grad_norm
        self.notes = notes

    def drop_weight_grads(self, model: torch.nn.Module) -> list[str]:
        """Stop ``model`` (the floor's training model, same names) from computing the weight
        gradients that the reuse strategy replaces; those weights get their gradient from
        :meth:`__call__` instead, so the optimizer step still updates them. Returns their
        names. Call it once, before timing ``model``'s step."""
        dropped = []
        for layer in self.layers:
            if layer.method in layer.reuse and layer.can_drop_weight_grad:
                layer.target = model.get_parameter(layer.weight)
                layer.target.requires_grad_(False)
                dropped.append(layer.weight)
        return dropped

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        sq = torch.zeros(self.batch, dtype=self.dtype, device=self.device)
        small, kept = [], []
        for layer in self.layers:
            if layer.method is not None:
                s, ps = layer.weight_sq_norms(layer.method)
                sq += s.to(self.dtype)
                kept.append((layer, ps))
            if layer.small is not None:
                parts = layer.small()
                for v in parts.values():
                    sq += row_sq_norms(v).to(self.dtype)
                small.append(parts)
        loss_factor = float(self.batch)  # mean reduction: the recorded gradients carry 1/B
        norms = sq.sqrt() * loss_factor
        factors = (self.max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0) * loss_factor
        for layer, ps in kept:
            layer.weighted_sum(factors, ps, layer.method)
        for parts in small:
            for v in parts.values():
                factors.to(v.dtype) @ flat_rows(v)
        return norms

    def summary(self) -> str:
        """One line: how many layers of each kind use each method."""
        counts = Counter(f"{layer.kind} {layer.method or 'formula'}" for layer in self.layers)
        return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))


# ------------------------------------------------------------------ per-layer work
def _fresh(calls: list[Call]) -> list[Call]:
    """Copies of the calls (a rule's sq_norms releases the calls it is given)."""
    return [Call(c.tensors, c.batch_size, dict(c.meta), c.parts) for c in calls]


def _linear_work(rec, calls, mask, batch_dim) -> LayerWork:
    a, g = rec.rule._tensors(calls, batch_dim)  # (B, T, d), (B, T, p): calls concatenated
    batch, steps, d = a.shape
    p = g.shape[2]
    work = LayerWork(rec.name, [], "linear")
    if mask.get("weight"):
        if steps == 1:
            work.methods["product"] = lambda: row_sq_norms(a[:, 0]) * row_sq_norms(g[:, 0])
            work.macs["product"] = batch * (p + d)
        else:
            work.methods["ghost"] = lambda: ghost_sq_norm(a, g)
            work.macs["ghost"] = batch * steps * steps * (p + d)
            work.methods["materialised"] = lambda: chunked_sq_norms(a, g)
            work.macs["materialised"] = batch * steps * p * d
        work.scaled.append(g)
        if batch * p * d <= MATERIALISE_BUDGET:
            def keep():
                ps = torch.bmm(g.transpose(1, 2), a)  # (B, p, d)
                return row_sq_norms(ps), ps
            work.reuse[REUSE] = (keep, _sum_of_kept)
            work.macs[REUSE] = batch * steps * p * d
            work.weight_grad = lambda: g.reshape(-1, p).t() @ a.reshape(-1, d)
    if mask.get("bias"):
        work.small = lambda: {"bias": g[:, 0] if steps == 1 else g.sum(1)}
    return work


def _sum_of_kept(factors: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    return factors.to(kept.dtype) @ flat_rows(kept)


def _conv_ghost(call, weight_shape, acc):
    """((B,) ghost squared norms, the patches they were computed from)."""
    x, g = call.tensors
    stride, padding, dilation, groups = call.meta["conf"]
    batch = x.shape[0]
    a = conv_rule._patches(x.to(acc), tuple(weight_shape[2:]), stride, padding, dilation, groups)
    gg = g.to(acc).reshape(batch * groups, weight_shape[0] // groups, a.shape[2])
    sq = ghost_sq_norm(a.transpose(1, 2), gg.transpose(1, 2)).reshape(batch, groups).sum(1)
    return sq, a


def _conv_materialised_sq(calls, weight_shape, acc):
    x = calls[0].tensors[0]
    sq = torch.zeros(x.shape[0], dtype=acc, device=x.device)
    with mock.patch.object(conv_rule, "_fused_applies", lambda *args: False):
        conv_rule._materialised_sq_norms(calls, weight_shape, acc, sq, keep=False)
    return sq


def _conv_work(rec, calls, mask, batch_dim) -> LayerWork:
    weight_shape = tuple(rec.module.weight.shape)
    x, g = calls[0].tensors
    acc = opmath(g.dtype)
    batch, groups = x.shape[0], calls[0].meta["conf"][3]
    steps = math.prod(g.shape[2:])
    p, d = weight_shape[0] // groups, math.prod(weight_shape[1:])
    work = LayerWork(rec.name, [], "conv")
    if mask.get("weight"):
        product = batch * groups * steps * p * d * len(calls)
        work.methods["materialised"] = lambda: _conv_materialised_sq(calls, weight_shape, acc)
        work.macs["materialised"] = product
        if conv_rule._fused_applies(calls, acc):
            work.methods["fused"] = lambda: conv_rule._fused_sq_norms(
                calls[0], weight_shape, keep=False)[0]
            work.macs["fused"] = product
        if len(calls) == 1:
            work.methods["ghost"] = lambda: _conv_ghost(calls[0], weight_shape, acc)[0]
            work.macs["ghost"] = batch * groups * steps * steps * (p + d)

            def patch_sum(factors, a):
                return conv_rule._patch_weighted_sum(a, g.to(acc), factors, weight_shape, groups)
            work.reuse[PATCH_SUM] = (lambda: _conv_ghost(calls[0], weight_shape, acc), patch_sum)
            work.macs[PATCH_SUM] = work.macs["ghost"]  # its GEMM replaces the weight gradient
        work.scaled += [c.tensors[1] for c in calls]
        if batch * math.prod(weight_shape) <= MATERIALISE_BUDGET:
            def keep():
                sq = torch.zeros(batch, dtype=acc, device=x.device)
                kept = conv_rule._materialised_sq_norms(calls, weight_shape, acc, sq, keep=True)
                return sq, kept
            work.reuse[REUSE] = (keep, _sum_of_kept)
            work.macs[REUSE] = product

        def weight_grad():
            return sum(conv_rule._conv_weight_grad(c.tensors[1], c.tensors[0], weight_shape,
                                                   *c.meta["conf"]) for c in calls)
        work.weight_grad = weight_grad
    if mask.get("bias"):
        def bias():
            total = None
            for c in calls:
                gc = c.tensors[1].to(acc)
                s = gc.reshape(batch, gc.shape[1], -1).sum(2)
                total = s if total is None else total + s
            return {"bias": total}
        work.small = bias
    return work


def _embedding_work(rec, calls, mask, batch_dim) -> LayerWork:
    work = LayerWork(rec.name, [], "embedding")
    rule, module = rec.rule, rec.module
    work.methods["index_add"] = lambda: rule.sq_norms(module, _fresh(calls), mask, batch_dim)[0]
    work.macs["index_add"] = 0.0
    # the output gradient's sample dimension is the ids' (batch_dim for sequences)
    work.scaled += [batch_first(c.tensors[1], batch_dim if c.tensors[0].dim() > 1 else 0)
                    for c in calls]
    return work


def _norm_work(rec, calls, mask, batch_dim) -> LayerWork:
    def parts():
        out = {}
        for c in calls:
            for k, v in rec.rule._call_parts(rec.module, c, mask).items():
                out[k] = v if k not in out else out[k] + v
        return out
    return LayerWork(rec.name, [], "norm", small=parts)


def _generic_work(rec, calls, mask, batch_dim) -> LayerWork:
    parts = summed_parts(calls)  # the generic path's per-sample gradients, taken as given
    return LayerWork(rec.name, [], "generic", small=lambda: parts)


def _layer_work(rec, calls, mask, batch_dim) -> LayerWork:
    rule = rec.rule
    if rule is GENERIC or any(c.parts is not None for c in calls):
        work = _generic_work(rec, calls, mask, batch_dim)
    elif isinstance(rule, LinearRule):
        work = _linear_work(rec, calls, mask, batch_dim)
    elif isinstance(rule, conv_rule.ConvRule):
        work = _conv_work(rec, calls, mask, batch_dim)
    elif isinstance(rule, EmbeddingRule):
        work = _embedding_work(rec, calls, mask, batch_dim)
    elif isinstance(rule, _AffineNormRule):
        work = _norm_work(rec, calls, mask, batch_dim)
    else:  # a rule this module does not know: its own norms, as the engine computes them
        work = LayerWork(rec.name, [], "rule")
        work.methods["rule"] = lambda: rule.sq_norms(rec.module, _fresh(calls), mask,
                                                     batch_dim)[0]
        work.macs["rule"] = 0.0
    work.params = [f"{rec.name}.{n}" if rec.name else n for n, _ in rec.params if mask.get(n)]
    if work.reuse:
        work.weight = f"{rec.name}.weight" if rec.name else "weight"
        work.transposed = isinstance(rule, Conv1DRule)
        # without its weight gradient, a layer whose bias is frozen and whose input needs
        # no gradient would not get its output gradient: then the weight gradient stays
        work.can_drop_weight_grad = bool(mask.get("bias")) or any(
            c.tensors[0].requires_grad for c in calls)
    return work


# ------------------------------------------------------------------ capture
class _KeepPass:
    """Stands in for the DPOptimizer: keeps the records of the backward pass."""

    def __init__(self):
        self.pending = []

    def commit_pass(self, state, pending) -> None:
        self.pending.extend(pending)


def _record_pass(model: torch.nn.Module, run: Callable[[torch.nn.Module], torch.Tensor],
                 batch_dim: int):
    """[(recorder, calls, mask)] of one forward and backward pass, raw tensors kept."""
    state = attach(model, batch_dim=batch_dim)
    sink = _KeepPass()
    state.sink = sink
    try:
        with ExitStack() as stack:
            for rule in {id(r.rule): r.rule for r in state.recorders}.values():
                # keep each call's activation and output gradient: the floor reduces them
                stack.enter_context(mock.patch.object(rule, "compact", lambda *args: None))
            run(model).backward()
    finally:
        detach(state)
    return group_calls(sink.pending), set(state.shared)


def capture_floor(model: torch.nn.Module, run: Callable[[torch.nn.Module], torch.Tensor], *,
                  max_grad_norm: float = 1.0, batch_dim: int = 0,
                  choose: bool = True) -> FloorWork:
    """The clipping work of ``model`` on one pass of ``run(model)`` (a scalar mean loss).

    ``model`` is modified in place for the duration of the pass (the engine's recorders
    are attached and removed again); pass a copy of the model the timed step trains.
    With ``choose`` each layer's weight method is chosen by timing (see the module
    docstring); otherwise the first candidate is taken.

    Raises:
        ValueError: the pass recorded no trainable layer.
    """
    groups, shared = _record_pass(model, run, batch_dim)
    if not groups:
        raise ValueError("capture_floor: the pass trained no layer with a per-sample rule")
    batch = groups[0][1][0].batch_size
    ref = groups[0][0].params[0][1]
    device, dtype = ref.device, opmath(ref.dtype)
    layers = []
    with torch.no_grad():
        for rec, calls, mask in groups:
            work = _layer_work(rec, calls, mask, batch_dim)
            work.shared = any(id(p) in shared and mask.get(n) for n, p in rec.params)
            work.can_drop_weight_grad = work.can_drop_weight_grad and not work.shared
            if choose:
                work.choose(device)
            else:
                work.method = next(iter(work.candidates()), None)
            layers.append(work)
    notes = []
    generic = [w.name or "<root>" for w in layers if w.kind == "generic"]
    if generic:
        notes.append("generic-path layers (per-sample gradients taken as given, only their "
                     f"norms and sums timed): {', '.join(generic)}")
    tied = [w.name for w in layers if w.shared]
    if tied:
        notes.append("layers sharing a parameter (each use counted alone, cross terms left "
                     f"out): {', '.join(tied)}")
    work = FloorWork(layers, batch, device, dtype, max_grad_norm, notes)
    with torch.no_grad():
        work()  # once untimed: allocations, and a failing method fails here
    return work
