"""nn.Conv1d / Conv2d / Conv3d with stride, padding, dilation and groups.

Per group, a convolution is a Linear layer over unfolded patches: A (B, T, d)
with d = C_in/groups * prod(kernel), G (B, T, p) with p = C_out/groups. Norms
come from the ghost norm per group (sum_groups <A_g A_g^T, G_g G_g^T>) when
2T^2 <= p*d, otherwise from per-sample weight gradients materialised by one
grouped convolution-weight gradient (groups = B * groups, no unfold). The
clipped sum is the convolution's own weight gradient of the factor-scaled
output gradient (book-keeping), or sum_i f_i * grad_i when materialised.
A layer called more than once in a forward is materialised per call and summed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import LayerRule, flat_rows, opmath, prefer_ghost, row_sq_norms, scale_rows
from .registry import register_rule

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_weight_grad(grad_out, x, weight_shape, stride, padding, dilation, groups):
    weight = grad_out.new_empty(weight_shape)
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, stride, padding, dilation, False,
        [0] * len(stride), groups, [False, True, False])[1]


class _ConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, recorder, stride, padding, dilation, groups):
        ctx.recorder = recorder
        ctx.conf = (stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight)
        return _CONV[weight.dim() - 2](x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        grad_in = None
        if ctx.needs_input_grad[0]:
            dt = grad_out.dtype
            grad_in = torch.ops.aten.convolution_backward(
                grad_out, x.to(dt), weight.to(dt), None, stride, padding, dilation, False,
                [0] * len(stride), groups, [True, False, False])[0].to(x.dtype)
        ctx.recorder.capture(ctx, (x, grad_out), x.shape[0], ctx.needs_input_grad[1:3],
                             {"conf": ctx.conf})
        return grad_in, None, None, None, None, None, None, None


def _unfold(x, kernel, stride, padding, dilation):
    """(B, C, *S) -> (B, C, *O, *K): every output position's receptive field."""
    n = len(kernel)
    if any(padding):
        pads = []
        for p in reversed(padding):
            pads += [p, p]
        x = F.pad(x, pads)
    for i in range(n):
        span = (kernel[i] - 1) * dilation[i] + 1
        x = x.unfold(2 + i, span, stride[i])
        if dilation[i] > 1:
            x = x[..., ::dilation[i]]
    return x


def _patches(x, kernel, stride, padding, dilation, groups):
    """Unfolded input per group: (B * groups, C_in/groups * prod(kernel), T).

    The row order (channel, kernel offsets) matches the weight's layout. 2-D
    (and 1-D, as 2-D of height 1) use ``F.unfold`` (im2col); 3-D uses strided views.
    """
    batch, c_in = x.shape[:2]
    n = len(kernel)
    if n == 1:
        a = F.unfold(x.unsqueeze(2), (1, kernel[0]), dilation=(1, dilation[0]),
                     padding=(0, padding[0]), stride=(1, stride[0]))
    elif n == 2:
        a = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    else:
        u = _unfold(x, kernel, stride, padding, dilation)  # (B, C, *O, *K)
        out_dims = list(range(2, 2 + n))
        k_dims = list(range(2 + n, 2 + 2 * n))
        u = u.permute([0, 1] + k_dims + out_dims)
        a = u.reshape(batch, c_in * math.prod(kernel), -1)
    return a.reshape(batch * groups, a.shape[1] // groups, a.shape[2])


@register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvRule(LayerRule):
    def forward(self, module, recorder, input):
        n = module.weight.dim() - 2
        if input.dim() != n + 2:
            raise ValueError(
                f"Conv layer {recorder.name!r}: per-sample clipping needs a batched "
                f"{n + 2}-D input, got shape {tuple(input.shape)}")
        padding = module.padding
        if module.padding_mode != "zeros" or isinstance(padding, str):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            input = F.pad(input, module._reversed_padding_repeated_twice, mode=mode)
            padding = (0,) * n
        return _ConvFunction.apply(input, module.weight, module.bias, recorder,
                                   tuple(module.stride), tuple(padding),
                                   tuple(module.dilation), module.groups)

    def sq_norms(self, module, calls, mask, batch_dim):
        acc = opmath(calls[0].tensors[1].dtype)
        weight = module.weight
        batch = calls[0].batch_size
        sq = torch.zeros(batch, dtype=acc, device=weight.device)
        cache = {}
        if mask.get("weight"):
            x, g = calls[0].tensors
            stride, padding, dilation, groups = calls[0].meta["conf"]
            steps = math.prod(g.shape[2:])
            p = weight.shape[0] // groups
            d = math.prod(weight.shape[1:])
            if (len(calls) == 1 and batch > 0
                    and prefer_ghost(steps, p, d, batch=batch, groups=groups)):
                a = _patches(x.to(acc), tuple(weight.shape[2:]), stride, padding, dilation,
                             groups)
                gg = g.to(acc).reshape(batch * groups, p, steps)
                aat = torch.bmm(a.transpose(1, 2), a)
                ggt = torch.bmm(gg.transpose(1, 2), gg)
                # (B*groups, T, T) -> per sample: sum over groups of <A_g A_g^T, G_g G_g^T>
                sq += torch.linalg.vecdot(aat.reshape(batch, -1), ggt.reshape(batch, -1))
            else:
                per_sample = None
                for c in calls:
                    ps = self._materialise(module, c.tensors[0].to(acc), c.tensors[1].to(acc),
                                           c.meta["conf"])
                    per_sample = ps if per_sample is None else per_sample + ps
                sq += row_sq_norms(per_sample)
                cache["weight"] = per_sample
        if mask.get("bias"):
            g_sum = None
            for c in calls:
                g = c.tensors[1].to(acc)
                s = g.reshape(batch, g.shape[1], math.prod(g.shape[2:])).sum(2)
                g_sum = s if g_sum is None else g_sum + s
            sq += row_sq_norms(g_sum)
            cache["bias"] = g_sum
        return sq, cache

    def clipped_sums(self, module, calls, mask, batch_dim, cache, factors):
        out = {}
        acc = factors.dtype
        if mask.get("weight"):
            if "weight" in cache:
                ps = cache["weight"]
                out["weight"] = (factors @ flat_rows(ps)).reshape(ps.shape[1:])
            else:
                x, g = calls[0].tensors
                stride, padding, dilation, groups = calls[0].meta["conf"]
                out["weight"] = _conv_weight_grad(scale_rows(g.to(acc), factors), x.to(acc),
                                                  tuple(module.weight.shape), stride, padding,
                                                  dilation, groups)
        if mask.get("bias"):
            out["bias"] = factors @ cache["bias"]
        return out
