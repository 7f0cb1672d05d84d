"""nn.Conv1d / Conv2d / Conv3d with stride, padding, dilation and groups.

Per group, a convolution is a Linear layer over unfolded patches: A (B, T, d)
with d = C_in/groups * prod(kernel), G (B, T, p) with p = C_out/groups. Norms
come from the ghost norm per group (sum_groups <A_g A_g^T, G_g G_g^T>) when
``prefer_ghost`` says so (small T), otherwise, for a 1-D or 2-D fp32 layer on
the CPU called once, from the native fused kernel (``ops._conv_weight_grad_norms``:
per-sample GEMMs over patches gathered block by block, the norm taken from
registers, the per-sample gradient written only when kept), and else from
per-sample weight gradients materialised chunk by chunk of samples
(cache-sized chunks, see ``CHUNK_BYTES``), by one grouped convolution-weight
gradient per chunk (groups = n * groups, no unfold) or, for the shapes where
that kernel is slow, per-sample GEMMs over the chunk's patches
(``_per_sample_method``). The clipped sum is the convolution's own weight
gradient of the factor-scaled output gradient (book-keeping: one batched
kernel, the non-private cost), or sum_i f_i * grad_i from the kept per-sample
gradients when those are small or T is large (``_keep_per_sample``; never in
the low-memory mode), or, after a ghost norm (in the low-memory mode only on
small maps, ``SMALL_MAP_STEPS``), one GEMM over its patches. A layer called
more than once in a forward has its per-call per-sample gradients summed
before the norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from modelsec_fast import ops

from .base import (CHUNK_BYTES, MATERIALISE_BUDGET, LayerRule, flat_rows, ghost_sq_norm,
                   opmath, prefer_ghost, release, row_sq_norms, scale_rows)
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


#: keep the materialised per-sample gradients for the clipped sum (a (B,) x
#: (B, p d) product) when they take at most this many bytes...
KEEP_SMALL_BYTES = 2 << 20
#: ...or when the output map has at least this many positions T: keeping costs
#: a few memory passes per per-sample entry, the book-keeping recomputation T
#: multiply-adds per entry (one batched weight gradient)
KEEP_MIN_STEPS = 128

#: output maps of at most this many positions take the ghost norm and the GEMM over
#: its patches in the low-memory mode too: the patches are then small (at most
#: 4 B d), and the alternatives are slow there (ResNet-18's 1x1 maps on the CPU:
#: the fused kernel 22 ms and oneDNN's weight gradient 42 ms, against 1 + 2 ms)
SMALL_MAP_STEPS = 4

#: per-sample weight-gradient methods (see ``_per_sample_method``)
GROUPED, GROUPED_NHWC, PATCHES = "grouped", "grouped_nhwc", "patches"


def _fused_applies(calls, acc) -> bool:
    """Use the native fused kernel: one call, 1-D or 2-D, fp32, CPU, native library loaded.

    Where it applies it was faster than every materialised method on each layer
    shape of bench/bench_conv_norms.py (the benchmark CNNs' and ResNet-18's).
    """
    x = calls[0].tensors[0]
    return (len(calls) == 1 and acc == torch.float32 and x.device.type == "cpu"
            and x.dim() in (3, 4) and ops.native_available())


def _fused_sq_norms(call, weight_shape, keep):
    """(B,) squared norms (and the (B, *weight_shape) gradients when ``keep``) of one
    1-D or 2-D call by the native kernel, which forms no per-sample gradient unless kept."""
    x, g = call.tensors
    stride, padding, dilation, groups = call.meta["conf"]
    kernel = tuple(weight_shape[2:])
    if x.dim() == 3:  # 1-D as 2-D of height 1
        x, g = x.unsqueeze(2), g.unsqueeze(2)
        kernel, stride, padding, dilation = ((1,) + kernel, (1,) + stride, (0,) + padding,
                                             (1,) + dilation)
    sq, grads = ops._conv_weight_grad_norms(x.float(), g.float(), kernel, stride, padding,
                                            dilation, groups, keep=keep)
    return sq, (grads.reshape((x.shape[0],) + tuple(weight_shape)) if keep else None)


def _per_sample_method(x, g, weight_shape, conf):
    """How to materialise one chunk's per-sample weight gradients.

    Default: one grouped convolution-weight gradient (the samples folded into
    the groups), which runs oneDNN's kernel without an im2col copy. Two 2-D
    CPU cases where oneDNN's grouped kernel is slow take another path: at most
    2 input and 16 output channels per group, where its channels-last kernel
    is faster; and patches of at most 32 entries (e.g. RGB 3x3), where the
    patch matrices are small enough that per-sample GEMMs over cache-sized
    chunks beat it. The thresholds were tuned on the benchmark CNNs' layer
    shapes (bench/bench_dpsgd.py); tests/privacy/test_conv_methods.py checks
    that the three paths agree.
    """
    if x.device.type != "cpu" or x.dim() != 4:
        return GROUPED
    groups = conf[3]
    c_in_g, c_out_g = weight_shape[1], weight_shape[0] // groups
    if c_in_g <= 2 and c_out_g <= 16:
        return GROUPED_NHWC
    if c_in_g * math.prod(weight_shape[2:]) <= 32:
        return PATCHES
    return GROUPED


def _grouped_weight_grads(x, g, weight_shape, conf, channels_last=False):
    """(n, *weight_shape): one convolution-weight gradient with n * groups groups.

    Input (1, n*C_in, *S), output gradient (1, n*C_out, *O).
    """
    stride, padding, dilation, groups = conf
    n, c_in = x.shape[:2]
    c_out = g.shape[1]
    xs = x.reshape((1, n * c_in) + tuple(x.shape[2:]))
    gs = g.reshape((1, n * c_out) + tuple(g.shape[2:]))
    if channels_last:
        xs = xs.contiguous(memory_format=torch.channels_last)
        gs = gs.contiguous(memory_format=torch.channels_last)
    gw = _conv_weight_grad(gs, xs, (n * c_out,) + tuple(weight_shape[1:]),
                           stride, padding, dilation, n * groups)
    return gw.reshape((n,) + tuple(weight_shape))


def _shifted_patches(x, kernel, stride, padding, dilation, groups):
    """2-D patches (n * groups, C_in/groups * kh * kw, T) from kh * kw strided slices.

    Same layout as ``_patches``; one vectorised copy per kernel offset instead
    of im2col's per-row loops.
    """
    n, c_in = x.shape[:2]
    if any(padding):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    out_h = (x.shape[2] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    out_w = (x.shape[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    cols = []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            h0, w0 = i * dilation[0], j * dilation[1]
            cols.append(x[:, :, h0:h0 + stride[0] * (out_h - 1) + 1:stride[0],
                          w0:w0 + stride[1] * (out_w - 1) + 1:stride[1]])
    a = torch.stack(cols, 2)  # (n, C_in, kh*kw, out_h, out_w)
    return a.reshape(n * groups, c_in // groups * kernel[0] * kernel[1], out_h * out_w)


def _patch_weight_grads(x, g, weight_shape, conf):
    """(n, *weight_shape) as per-sample (and per-group) GEMMs A_i G_i^T."""
    stride, padding, dilation, groups = conf
    n = x.shape[0]
    a = _shifted_patches(x, tuple(weight_shape[2:]), stride, padding, dilation, groups)
    gg = g.reshape(n * groups, weight_shape[0] // groups, a.shape[2])
    ps_t = torch.bmm(a, gg.transpose(1, 2))  # (n*groups, d, p): the fast operand order
    return ps_t.transpose(1, 2).reshape((n,) + tuple(weight_shape))


def _patch_weighted_sum(a, g, factors, weight_shape, groups):
    """sum_i f_i G_i A_i^T from the ghost norm's patches a (B * groups, d, T): one GEMM
    per group over all samples' positions.

    Where the ghost norm is chosen T is small, and there oneDNN's convolution weight
    gradient is slow on the CPU (ResNet-18's 1x1 maps: 42 ms, against 1.6 ms here).
    """
    batch, steps, d = g.shape[0], a.shape[2], a.shape[1]
    p = weight_shape[0] // groups
    gs = scale_rows(g, factors).reshape(batch, groups, p, steps)
    ag = a.reshape(batch, groups, d, steps)
    w = torch.bmm(gs.permute(1, 2, 0, 3).reshape(groups, p, batch * steps),
                  ag.permute(1, 0, 3, 2).reshape(groups, batch * steps, d))
    return w.reshape(weight_shape)


def _per_sample_weight_grads(x, g, weight_shape, conf, method):
    """(n, *weight_shape) per-sample weight gradients of the n samples of x, g."""
    if method == PATCHES:
        return _patch_weight_grads(x, g, weight_shape, conf)
    return _grouped_weight_grads(x, g, weight_shape, conf,
                                 channels_last=method == GROUPED_NHWC)


def _chunk_size(calls, weight_shape, acc, method):
    """Samples per chunk so that one chunk's working set is about CHUNK_BYTES.

    CPU only: on accelerators one whole-batch kernel beats many small launches.
    """
    x, g = calls[0].tensors
    if x.device.type != "cpu":
        return max(1, x.shape[0])
    per_sample = (math.prod(x.shape[1:]) + math.prod(g.shape[1:])) * len(calls)
    if method == GROUPED_NHWC:  # their channels-last copies
        per_sample *= 2
    per_sample += 2 * math.prod(weight_shape)
    if method == PATCHES:  # the patch tensor, d * T per sample
        per_sample += (math.prod(weight_shape[1:]) * math.prod(g.shape[2:])
                       * calls[0].meta["conf"][3])
    item = torch.empty((), dtype=acc).element_size()
    # the kernels split a chunk over the threads: the budget is per thread
    return max(1, CHUNK_BYTES * torch.get_num_threads() // (per_sample * item))


def _keep_per_sample(batch, weight, steps, acc, low_memory=False):
    """Keep the per-sample gradients for the clipped sum (True) or book-keep (False,
    always in the low-memory mode)."""
    numel = batch * weight.numel()
    if low_memory or numel > MATERIALISE_BUDGET:
        return False
    item = torch.empty((), dtype=acc).element_size()
    return numel * item <= KEEP_SMALL_BYTES or steps >= KEEP_MIN_STEPS


def _materialised_sq_norms(calls, weight_shape, acc, sq, *, keep):
    """Add per-sample squared weight-gradient norms into sq (B,), chunk by chunk.

    A layer called several times has per-sample gradient = sum over its calls.
    Returns the (B, *weight_shape) per-sample gradients when ``keep``, else None.
    """
    batch = sq.shape[0]
    if _fused_applies(calls, sq.dtype):
        part, kept = _fused_sq_norms(calls[0], weight_shape, keep)
        sq += part
        return kept
    kept = sq.new_empty((batch,) + weight_shape) if keep else None
    x0, g0 = calls[0].tensors
    method = _per_sample_method(x0, g0, weight_shape, calls[0].meta["conf"])
    chunk = _chunk_size(calls, weight_shape, acc, method)
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        ps = None
        for c in calls:
            x, g = c.tensors
            part = _per_sample_weight_grads(x[start:stop].to(acc), g[start:stop].to(acc),
                                            weight_shape, c.meta["conf"], method)
            ps = part if ps is None else ps.add_(part)
        sq[start:stop] += row_sq_norms(ps)
        if keep:
            kept[start:stop] = ps
    return kept


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
        if mask.get("weight") and batch > 0:
            x, g = calls[0].tensors
            stride, padding, dilation, groups = calls[0].meta["conf"]
            steps = math.prod(g.shape[2:])
            p = weight.shape[0] // groups
            d = math.prod(weight.shape[1:])
            low_memory = calls[0].meta.get("low_memory", False)
            # the ghost norm's patches (B, T, d) outweigh the fused kernel's per-thread
            # blocks: in the low-memory mode the fused kernel wins where it applies,
            # except on small maps
            small_map = steps <= SMALL_MAP_STEPS
            fused_first = low_memory and not small_map and _fused_applies(calls, acc)
            if len(calls) == 1 and not fused_first and prefer_ghost(
                    steps, p, d, batch=batch, groups=groups, low_memory=low_memory):
                a = _patches(x.to(acc), tuple(weight.shape[2:]), stride, padding, dilation,
                             groups)
                gg = g.to(acc).reshape(batch * groups, p, steps)
                # per sample: sum over groups of <A_g A_g^T, G_g G_g^T> (clamped, guarded)
                sq += ghost_sq_norm(a.transpose(1, 2), gg.transpose(1, 2)).reshape(
                    batch, groups).sum(1)
                if not low_memory or small_map:
                    cache["patches"] = a  # the clipped sum is then one GEMM over them
            else:
                kept = _materialised_sq_norms(calls, tuple(weight.shape), acc, sq,
                                              keep=_keep_per_sample(batch, weight, steps, acc,
                                                                    low_memory))
                if kept is not None:
                    cache["weight"] = kept
        if mask.get("bias"):
            g_sum = None
            for c in calls:
                g = c.tensors[1].to(acc)
                s = g.reshape(batch, g.shape[1], math.prod(g.shape[2:])).sum(2)
                g_sum = s if g_sum is None else g_sum + s
            sq += row_sq_norms(g_sum)
            cache["bias"] = g_sum
        if "weight" in cache or not mask.get("weight"):
            release(calls)  # the clipped sums need only the cache
        return sq, cache

    def example_input(self, module):
        n = module.weight.dim() - 2
        size = [(k - 1) * d + 1 + s for k, d, s in
                zip(module.kernel_size, module.dilation, module.stride)]
        return torch.randn(2, module.in_channels, *size[:n], dtype=module.weight.dtype,
                           device=module.weight.device)

    def per_sample_grads(self, module, calls, mask, batch_dim):
        acc = opmath(calls[0].tensors[1].dtype)
        batch = calls[0].batch_size
        parts = {}
        if mask.get("weight"):
            sq = torch.zeros(batch, dtype=acc, device=module.weight.device)
            parts["weight"] = _materialised_sq_norms(calls, tuple(module.weight.shape), acc, sq,
                                                     keep=True)
        if mask.get("bias"):
            parts["bias"] = sum(c.tensors[1].to(acc).reshape(batch, c.tensors[1].shape[1], -1)
                                .sum(2) for c in calls)
        release(calls)
        return parts

    def clipped_sums(self, module, calls, mask, batch_dim, cache, factors):
        out = {}
        acc = factors.dtype
        if mask.get("weight"):
            if "weight" in cache:
                ps = cache["weight"]
                out["weight"] = (factors @ flat_rows(ps)).reshape(ps.shape[1:])
            elif "patches" in cache:
                out["weight"] = _patch_weighted_sum(cache["patches"], calls[0].tensors[1].to(acc),
                                                    factors, tuple(module.weight.shape),
                                                    calls[0].meta["conf"][3])
            else:
                # book-keeping: the layer's own weight gradient of the factor-scaled
                # output gradient, summed over the layer's calls
                total = None
                for c in calls:
                    x, g = c.tensors
                    stride, padding, dilation, groups = c.meta["conf"]
                    gw = _conv_weight_grad(scale_rows(g.to(acc), factors), x.to(acc),
                                           tuple(module.weight.shape), stride, padding,
                                           dilation, groups)
                    total = gw if total is None else total + gw
                out["weight"] = total
        if mask.get("bias"):
            out["bias"] = factors @ cache["bias"]
        return out
