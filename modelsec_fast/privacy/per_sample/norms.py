"""LayerNorm, GroupNorm, InstanceNorm and RMSNorm (their affine parameters).

LayerNorm and GroupNorm run PyTorch's fused kernels through a custom Function
whose backward computes only the input gradient and records (x, g, mean, rstd).
For RMSNorm and InstanceNorm the normalisation itself (no affine) runs through
autograd as usual, and the affine map y = x_hat * w + b runs through a custom
Function that returns only the x_hat gradient and records (x_hat, g).
Per-sample gradients are small (one value per channel/feature), so they are
always materialised, when a call is recorded (``compact``), which frees its
tensors during the backward pass: dw_i = sum over the non-parameter dims of
x_hat * g, db_i = sum of g. Calls of one forward are summed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import math

from .base import CompactedRule, batch_first, layout_meta, opmath
from .registry import register_rule


class _AffineFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_hat, weight, bias, recorder, view_shape, bdim, sequence):
        ctx.recorder = recorder
        ctx.view_shape = view_shape
        ctx.bdim = bdim
        ctx.sequence = sequence
        w = weight.reshape(view_shape) if weight is not None else None
        ctx.save_for_backward(x_hat, w)
        y = x_hat * w if w is not None else x_hat
        if bias is not None:
            y = y + bias.reshape(view_shape)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x_hat, w = ctx.saved_tensors
        grad_in = None
        if ctx.needs_input_grad[0]:
            grad_in = grad_out * w.to(grad_out.dtype) if w is not None else grad_out
            grad_in = grad_in.to(x_hat.dtype)
        needs = []
        if w is not None:
            needs.append(ctx.needs_input_grad[1])
        needs.append(ctx.needs_input_grad[2])
        meta = layout_meta(x_hat, ctx.bdim, sequence=ctx.sequence)
        meta["bdim"] = ctx.bdim
        ctx.recorder.capture(ctx, (x_hat, grad_out), x_hat.shape[ctx.bdim], needs, meta)
        return grad_in, None, None, None, None, None, None


class _AffineNormRule(CompactedRule):
    """Shared per-sample math; subclasses say how to normalise and broadcast."""

    def normalise(self, module, x):
        raise RuntimeError("normalise not defined")

    def param_ndim(self, module) -> int:
        """Number of trailing dims of x covered by the parameter (channel-first: 0)."""
        return 0

    def forward(self, module, recorder, input):
        x_hat = self.normalise(module, input)
        ref = module.weight if getattr(module, "weight", None) is not None else module.bias
        nd = self.param_ndim(module)
        sequence = bool(nd) and input.dim() > nd + 1
        if nd:
            view_shape = tuple(ref.shape)
        else:
            view_shape = (ref.shape[0],) + (1,) * (input.dim() - 2)
        bdim = recorder.state.batch_dim if sequence else 0
        return _AffineFunction.apply(x_hat, getattr(module, "weight", None),
                                     getattr(module, "bias", None), recorder, view_shape, bdim,
                                     sequence)

    def _call_parts(self, module, call, mask):
        """The call's per-sample gradients, name -> (B, *param.shape)."""
        x_hat, g = call.tensors
        acc = opmath(g.dtype)
        bdim = call.meta["bdim"]
        x_hat, g = batch_first(x_hat, bdim).to(acc), batch_first(g, bdim).to(acc)
        b = g.shape[0]
        nd = self.param_ndim(module)
        if nd:
            shape = g.shape[-nd:]
            steps = math.prod(g.shape[1:g.dim() - nd])
            g3 = g.reshape(b, steps, *shape)
            x3 = x_hat.reshape(b, steps, *shape)
            dim = 1
        else:
            steps = math.prod(g.shape[2:])
            g3 = g.reshape(b, g.shape[1], steps)
            x3 = x_hat.reshape(b, g.shape[1], steps)
            dim = 2
        parts = {}
        if mask.get("weight"):
            parts["weight"] = torch.linalg.vecdot(x3, g3, dim=dim)
        if mask.get("bias"):
            parts["bias"] = g3.sum(dim)
        return parts

    def compact(self, module, call, mask, batch_dim):
        # per-sample gradients are a few values per channel: reduce the call now
        call.parts = self._call_parts(module, call, mask)
        call.tensors = ()

    def example_input(self, module):
        ref = module.weight if getattr(module, "weight", None) is not None else module.bias
        nd = self.param_ndim(module)
        shape = (2,) + (tuple(ref.shape) if nd else (ref.shape[0], 5))
        return torch.randn(shape, dtype=ref.dtype, device=ref.device)


class _LayerNormFunction(torch.autograd.Function):
    """Fused LayerNorm whose backward computes only the input gradient.

    Saves what PyTorch's LayerNorm saves (input, mean, rstd), not a normalised
    copy: x_hat is recomputed per call when its per-sample gradients are formed.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, recorder, normalized_shape, eps, bdim, sequence):
        y, mean, rstd = torch.ops.aten.native_layer_norm(x, normalized_shape, weight, bias, eps)
        ctx.recorder = recorder
        ctx.conf = (normalized_shape, bdim, sequence)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        shape, bdim, sequence = ctx.conf
        grad_in = None
        if ctx.needs_input_grad[0]:
            grad_in = torch.ops.aten.native_layer_norm_backward(
                grad_out.to(x.dtype), x, shape, mean, rstd, weight, bias,
                [True, False, False])[0]
        needs = [n for n, t in zip(ctx.needs_input_grad[1:3], (weight, bias)) if t is not None]
        meta = layout_meta(x, bdim, sequence=sequence)
        meta["bdim"] = bdim
        ctx.recorder.capture(ctx, (x, grad_out, mean, rstd), x.shape[bdim], needs, meta)
        return grad_in, None, None, None, None, None, None, None


@register_rule(nn.LayerNorm)
class LayerNormRule(_AffineNormRule):
    """dw_i = sum over steps of x_hat * g, x_hat = (x - mean) * rstd from the saved statistics."""

    def param_ndim(self, module):
        return len(module.normalized_shape)

    def forward(self, module, recorder, input):
        nd = len(module.normalized_shape)
        sequence = input.dim() > nd + 1
        bdim = recorder.state.batch_dim if sequence else 0
        return _LayerNormFunction.apply(input, module.weight, module.bias, recorder,
                                        list(module.normalized_shape), module.eps, bdim,
                                        sequence)

    def _call_parts(self, module, call, mask):
        x, g, mean, rstd = call.tensors
        acc = opmath(g.dtype)
        g = g.to(acc)
        parts = {}
        if mask.get("weight"):
            x_hat_g = (x.to(acc) - mean.to(acc)).mul_(rstd.to(acc)).mul_(g)
            parts["weight"] = self._sum_steps(module, x_hat_g, call.meta["bdim"])
        if mask.get("bias"):
            parts["bias"] = self._sum_steps(module, g, call.meta["bdim"])
        return parts

    def _sum_steps(self, module, t, bdim):
        """(..., *normalized_shape), sample dim at bdim -> (B, *normalized_shape)."""
        nd = len(module.normalized_shape)
        t = batch_first(t, bdim)
        steps = math.prod(t.shape[1:t.dim() - nd])
        return t.reshape(t.shape[0], steps, *t.shape[t.dim() - nd:]).sum(1)


@register_rule(nn.RMSNorm)
class RMSNormRule(_AffineNormRule):
    param_names = ("weight",)

    def param_ndim(self, module):
        return len(module.normalized_shape)

    def normalise(self, module, x):
        return F.rms_norm(x, module.normalized_shape, None, module.eps)


class _GroupNormFunction(torch.autograd.Function):
    """Fused GroupNorm whose backward computes only the input gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, recorder, groups, eps):
        batch, channels = x.shape[:2]
        hw = x.numel() // max(batch * channels, 1)
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, batch, channels, hw,
                                                groups, eps)
        ctx.recorder = recorder
        ctx.conf = (batch, channels, hw, groups)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, rstd = ctx.saved_tensors
        batch, channels, hw, groups = ctx.conf
        grad_in = None
        if ctx.needs_input_grad[0]:
            grad_in = torch.ops.aten.native_group_norm_backward(
                grad_out.to(x.dtype).contiguous(), x, mean, rstd, weight, batch, channels, hw,
                groups, [True, False, False])[0]
        needs = [n for n, t in zip(ctx.needs_input_grad[1:3], (weight, True)) if t is not None]
        ctx.recorder.capture(ctx, (x, grad_out, mean, rstd), batch, needs,
                             {"conf": ctx.conf})
        return grad_in, None, None, None, None, None


@register_rule(nn.GroupNorm)
class GroupNormRule(_AffineNormRule):
    """dw_i[c] = rstd_ig * (sum_t x g - mean_ig * sum_t g), without forming x_hat."""

    def forward(self, module, recorder, input):
        if input.dim() < 2:
            raise ValueError(f"GroupNorm layer {recorder.name!r}: needs a batched input")
        return _GroupNormFunction.apply(input, module.weight, module.bias, recorder,
                                        module.num_groups, module.eps)

    def _call_parts(self, module, call, mask):
        x, g, mean, rstd = call.tensors
        batch, channels, hw, groups = call.meta["conf"]
        acc = opmath(g.dtype)
        g3 = g.to(acc).reshape(batch, channels, hw)
        g_sum = g3.sum(2)
        parts = {}
        if mask.get("weight"):
            xg = torch.linalg.vecdot(x.to(acc).reshape(batch, channels, hw), g3, dim=2)
            per = channels // groups
            m = mean.to(acc).reshape(batch, groups).repeat_interleave(per, dim=1)
            r = rstd.to(acc).reshape(batch, groups).repeat_interleave(per, dim=1)
            parts["weight"] = r * (xg - m * g_sum)
        if mask.get("bias"):
            parts["bias"] = g_sum
        return parts


@register_rule(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
class InstanceNormRule(_AffineNormRule):
    def validate(self, module):
        if module.track_running_stats:
            return ["track_running_stats=True keeps batch statistics that are not "
                    "privatised; use track_running_stats=False (ModuleValidator.fix does)"]
        return []

    def normalise(self, module, x):
        return F.instance_norm(x, None, None, None, None, True, module.momentum or 0.0,
                               module.eps)
