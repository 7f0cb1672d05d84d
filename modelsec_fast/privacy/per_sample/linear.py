"""nn.Linear on 2-D and sequence inputs.

Per-sample weight gradient of sample i: G_i^T A_i with A_i (T, d), G_i (T, p).
Norms by ghost norm ||a||^2 ||g||^2 (T = 1) or <A A^T, G G^T>, or by the
materialised G_i^T A_i when 2T^2 > p*d (mixed ghost clipping). Bias: ||sum_t g_t||^2.
A layer called k times in one forward has per-sample gradient sum_k G_ik^T A_ik:
the calls are concatenated along T, which keeps the cross terms exact. A call
whose G_i^T A_i will be materialised is reduced to it (and sum_t g_t) when it
is recorded (``compact``); such per-call parts add up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    LayerRule, add_part, batch_first, chunked_norm_pays, chunked_sq_norms, flat_rows,
    ghost_sq_norm, layout_meta, opmath, paired_rows, prefer_ghost, release, row_sq_norms,
    scale_rows, summed_parts)
from .capture import recorder_of
from .registry import register_rule, register_rule_by_name


class _LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, recorder):
        ctx.recorder = recorder
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_in = None
        if ctx.needs_input_grad[0]:
            grad_in = grad_out.matmul(weight.to(grad_out.dtype)).to(x.dtype)
        rec = ctx.recorder
        bdim = rec.state.batch_dim if x.dim() > 2 else 0
        rec.capture(ctx, (x, grad_out), x.shape[bdim] if x.dim() > 1 else 1,
                    ctx.needs_input_grad[1:3], layout_meta(x, bdim, sequence=x.dim() > 2))
        return grad_in, None, None, None


class _HiddenProductTap(torch.autograd.Function):
    """Identity on a (T, B, p) tensor whose gradient at step t is the output gradient of
    a recurrence's hidden product; see :func:`hidden_product`."""

    @staticmethod
    def forward(ctx, tapped, weight, bias, recorder, inputs):
        ctx.recorder, ctx.inputs = recorder, inputs
        return tapped.view_as(tapped)

    @staticmethod
    def backward(ctx, grad):
        ctx.recorder.capture(ctx, (torch.stack(ctx.inputs), grad), grad.shape[1],
                             ctx.needs_input_grad[1:3], {"batch_dim": 1})
        return grad, None, None, None, None


def hidden_product(module: nn.Linear, projected: torch.Tensor, *, additive: bool = True):
    """(projected, hh) for a recurrence that calls ``module`` on its state once per step.

    ``projected``: the (T, B, p) input projections; ``hh(t, h)`` computes ``module(h)`` at
    step t. Routed through the Linear rule, each step would run the rule's autograd
    Function in Python, forward and backward (about 65 us a call on 2 threads; the bench
    LSTM's step is 11-17% faster without them). When a DP engine routes ``module`` and
    grad mode is on, a step is instead a plain ``F.linear`` on the detached parameters,
    and a tap collects every step's output gradient, so its backward hands the rule the
    (T, B, d) inputs and (T, B, p) output gradients at once (the call the steps'
    concatenation along time gives, the same per-sample gradient sum_t g_t h_t^T). Steps
    are indexed, so a reverse direction works. ``additive``: the gates at step t are
    projected[t] + module(h) (LSTM, RNN), so the projections' gradient is that output
    gradient: the tap sits on them and shares the tensor the input projection's rule
    keeps. Otherwise (GRU's r * (W_hn h + b_hn)) each step adds its slot of a tapped zero
    tensor. Without an engine: ``(projected, module)`` unchanged.
    """
    rec = recorder_of(module)
    if rec is None or type(rec.rule) is not LinearRule or not torch.is_grad_enabled():
        return projected, lambda t, h: module(h)
    rec.prepare_forward()
    inputs = [None] * projected.shape[0]
    weight = module.weight.detach()
    bias = None if module.bias is None else module.bias.detach()
    tap = _HiddenProductTap.apply(projected if additive else torch.zeros_like(projected),
                                  module.weight, module.bias, rec, inputs)
    slots = None if additive else tap.unbind(0)

    def hh(t: int, h: torch.Tensor) -> torch.Tensor:
        # detached: h's graph leads back to the tap, whose context holds this list; a
        # reference cycle would keep each step's activations until the garbage collector ran
        inputs[t] = h.detach()
        out = F.linear(h, weight, bias)
        return out if slots is None else out + slots[t]

    return (tap if additive else projected), hh


def _as_sequence(t: torch.Tensor, batch_dim: int, acc) -> torch.Tensor:
    """(B, f) or (B, ..., f) (sample dim at batch_dim) -> (B, T, f) in ``acc``."""
    if t.dim() == 2:
        return t.to(acc).unsqueeze(1)
    t = batch_first(t, batch_dim)
    steps = 1
    for s in t.shape[1:-1]:
        steps *= s
    return t.reshape(t.shape[0], steps, t.shape[-1]).to(acc)


@register_rule(nn.Linear)
class LinearRule(LayerRule):
    def forward(self, module, recorder, input):
        if input.dim() < 2:
            raise ValueError(
                f"Linear layer {recorder.name!r}: per-sample clipping needs a batched "
                f"input (B, ..., in_features), got shape {tuple(input.shape)}")
        return _LinearFunction.apply(input, module.weight, module.bias, recorder)

    def _tensors(self, calls, batch_dim):
        acc = opmath(calls[0].tensors[1].dtype)
        # a call may carry its own layout (hidden_product's are time-major)
        a = [_as_sequence(c.tensors[0], c.meta.get("batch_dim", batch_dim), acc) for c in calls]
        g = [_as_sequence(c.tensors[1], c.meta.get("batch_dim", batch_dim), acc) for c in calls]
        if len(calls) == 1:
            return a[0], g[0]
        return torch.cat(a, dim=1), torch.cat(g, dim=1)

    def compact(self, module, call, mask, batch_dim):
        # Materialise now what sq_norms would materialise anyway (prefer_ghost is
        # monotone in T: a call that materialises alone does in any concatenation
        # of calls), unless the per-sample gradient is larger than A and G.
        x, grad = call.tensors
        steps = 1 if x.dim() == 2 else x.numel() // max(x.shape[-1] * call.batch_size, 1)
        d, p = x.shape[-1], grad.shape[-1]
        low_memory = call.meta.get("low_memory", False)
        if mask.get("weight") and (steps == 1 or p * d > steps * (p + d)
                                   or prefer_ghost(steps, p, d, batch=call.batch_size,
                                                   low_memory=low_memory)):
            return
        a, g = self._tensors([call], batch_dim)
        call.parts = {}
        if mask.get("weight"):
            call.parts["weight"] = torch.bmm(g.transpose(1, 2), a)
        if mask.get("bias"):
            call.parts["bias"] = g.sum(1)
        call.tensors = ()

    def sq_norms(self, module, calls, mask, batch_dim):
        cache = summed_parts(calls)
        raw = [c for c in calls if c.parts is None]
        if raw:
            a, g = self._tensors(raw, batch_dim)
            batch, steps, d = a.shape
            p = g.shape[2]
            sq = torch.zeros(batch, dtype=a.dtype, device=a.device)
            if mask.get("weight"):
                low_memory = raw[0].meta.get("low_memory", False)
                if "weight" in cache or (steps > 1 and not prefer_ghost(
                        steps, p, d, batch=batch, low_memory=low_memory)):
                    add_part(cache, "weight", torch.bmm(g.transpose(1, 2), a))
                elif steps == 1:
                    sq += row_sq_norms(a[:, 0]) * row_sq_norms(g[:, 0])
                    cache["a"], cache["g"] = a, g  # for book-keeping
                elif (low_memory and a.device.type == "cpu" and a.dtype != torch.float64
                      and chunked_norm_pays(steps, p, d)):
                    sq += chunked_sq_norms(a, g, bounded=True)
                    cache["a"], cache["g"] = a, g
                else:
                    sq += ghost_sq_norm(a, g)
                    cache["a"], cache["g"] = a, g
            if mask.get("bias"):
                add_part(cache, "bias", g[:, 0] if steps == 1 else g.sum(1))
        else:
            ref = next(iter(cache.values()))
            sq = torch.zeros(ref.shape[0], dtype=ref.dtype, device=ref.device)
        for name in ("weight", "bias"):
            if name in cache:
                sq += row_sq_norms(cache[name])
        if "g" not in cache:
            release(calls)
        return sq, cache

    def example_input(self, module):
        return torch.randn(2, module.in_features, dtype=module.weight.dtype,
                           device=module.weight.device)

    def per_sample_grads(self, module, calls, mask, batch_dim):
        parts = summed_parts(calls)
        raw = [c for c in calls if c.parts is None]
        if raw:
            a, g = self._tensors(raw, batch_dim)
            if mask.get("weight"):
                add_part(parts, "weight", torch.bmm(g.transpose(1, 2), a))
            if mask.get("bias"):
                add_part(parts, "bias", g.sum(1))
        release(calls)
        return parts

    def clipped_sums(self, module, calls, mask, batch_dim, cache, factors):
        out = {}
        if mask.get("weight"):
            if "weight" in cache:
                ps = cache["weight"]
                out["weight"] = (factors.to(ps.dtype) @ flat_rows(ps)).reshape(ps.shape[1:])
            else:
                rows_a, rows_g = paired_rows(cache["a"], scale_rows(cache["g"], factors))
                out["weight"] = rows_g.t() @ rows_a
        if mask.get("bias"):
            out["bias"] = factors.to(cache["bias"].dtype) @ cache["bias"]
        return out


class Conv1DRule(LinearRule):
    """transformers' ``Conv1D`` (GPT-2): a Linear layer whose weight is stored (in, out).

    Runs as ``F.linear(x, weight.t(), bias)``; every per-sample quantity is the
    Linear rule's, transposed back to the stored layout. Registered by name,
    so transformers is never imported here.
    """

    def forward(self, module, recorder, input):
        if input.dim() < 2:
            raise ValueError(
                f"Conv1D layer {recorder.name!r}: per-sample clipping needs a batched "
                f"input (B, ..., nx), got shape {tuple(input.shape)}")
        return _LinearFunction.apply(input, module.weight.t(), module.bias, recorder)

    def example_input(self, module):
        return torch.randn(2, module.weight.shape[0], dtype=module.weight.dtype,
                           device=module.weight.device)

    def per_sample_grads(self, module, calls, mask, batch_dim):
        parts = super().per_sample_grads(module, calls, mask, batch_dim)
        if "weight" in parts:
            parts["weight"] = parts["weight"].transpose(1, 2)
        return parts

    def clipped_sums(self, module, calls, mask, batch_dim, cache, factors):
        out = super().clipped_sums(module, calls, mask, batch_dim, cache, factors)
        if "weight" in out:
            out["weight"] = out["weight"].t()
        return out


register_rule_by_name("transformers.pytorch_utils.Conv1D")(Conv1DRule)
