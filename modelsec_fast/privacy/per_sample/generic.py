"""The generic per-sample path: any parameter a layer owns without a rule.

A module with trainable parameters of its own (``recurse=False``) and no rule
(a custom module calling ``F.linear``, ``nn.Bilinear``, ``nn.EmbeddingBag``,
timm's root ``cls_token``/``pos_embed``, Opacus's ``SequenceBias``, ...) runs
its own forward with each such parameter replaced by a :class:`_Tapped`
stand-in. Only operations that touch a stand-in are intercepted; the rest of
the forward, children included, runs as usual. So the per-sample gradients
are those **of the forward that ran**: nothing is recomputed, no buffer is
updated twice, no dropout mask is redrawn.

An operation on a parameter p is made per-sample in one of two ways:

* **Broadcast** (the cheap formula): ``x + p``, ``x * p``, ``p.expand(B, ...)``,
  ``cat([p.expand(...), x])``, ``p.repeat`` that only broadcasts: p is
  replaced by a view broadcast over the batch whose backward receives the
  per-sample output gradients (:class:`_PerSampleTap`); an additive
  parameter's per-sample gradient is thus its output gradient summed over
  positions, with no extra forward.
* **Per-sample op** (``torch.func.vmap``): any other operation that has a
  batched argument (``F.linear(x, p)``, ``F.bilinear``, ``F.embedding_bag``,
  ...) runs once under ``vmap`` over the samples, each a batch of one, with
  p expanded to one copy per sample; the copies' gradients are the
  per-sample gradients. Operations on parameters alone (``p.t()``,
  ``p * 2``) are deferred and replayed inside that ``vmap``.

A parameter whose value leaves the forward without meeting the batch, or an
in-place update of one, is refused with the layer's name.
"""

from __future__ import annotations

import torch
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .base import CompactedRule, opmath

_ADD = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__,
        torch.sub, torch.Tensor.sub, torch.Tensor.__sub__, torch.Tensor.__rsub__,
        torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__,
        torch.div, torch.Tensor.div, torch.Tensor.__truediv__, torch.Tensor.__rtruediv__}
_EXPAND = {torch.Tensor.expand, torch.Tensor.expand_as}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_IN_PLACE_DUNDERS = {f"__i{op}__" for op in ("add", "sub", "mul", "truediv", "floordiv", "mod",
                                             "pow", "and", "or", "xor", "lshift", "rshift",
                                             "matmul")} | {"__setitem__"}


class _PerSampleTap(torch.autograd.Function):
    """p broadcast to ``shape`` (samples on ``bdim``); backward records per-sample gradients."""

    @staticmethod
    def forward(ctx, p, shape, bdim, recorder, pname):
        ctx.conf = (tuple(p.shape), tuple(shape), bdim, recorder, pname)
        return p.expand(shape)

    @staticmethod
    def backward(ctx, grad):
        p_shape, shape, bdim, recorder, pname = ctx.conf
        batch = shape[bdim]
        padded = (1,) * (len(shape) - len(p_shape)) + p_shape
        rest = padded[:bdim] + padded[bdim + 1:]
        per = grad.movedim(bdim, 0).sum_to_size((batch,) + rest)
        per = per.reshape((batch,) + p_shape).to(opmath(grad.dtype))
        recorder.capture_parts(ctx, {pname: per}, batch, ctx.needs_input_grad[0])
        return None, None, None, None, None


def _tap(p, shape, bdim, recorder, pname):
    return _PerSampleTap.apply(p, tuple(shape), bdim, recorder, pname)


class _Tapped(torch.Tensor):
    """Stand-in for a parameter (or a value computed from parameters alone).

    ``_plain``: the ordinary tensor (its gradient would bypass clipping, so it
    must never reach the loss); ``_leaves``: ((param, name), ...);
    ``_build(values)``: recomputes this value from per-leaf tensors.
    """

    @staticmethod
    def wrap(plain, leaves, build, ctx):
        t = plain.as_subclass(_Tapped)
        t._plain, t._leaves, t._build, t._ctx = plain, leaves, build, ctx
        return t

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, spec = tree_flatten((args, kwargs))
        tapped = [a for a in flat if isinstance(a, _Tapped)]
        ctx = tapped[0]._ctx
        with torch._C.DisableTorchFunctionSubclass():
            return ctx.handle(func, flat, spec, tapped)


class GenericContext:
    """One forward call of a generic-path module: the batch, the layout, the recorder."""

    def __init__(self, recorder, batch: int | None, bdim: int):
        self.recorder = recorder
        self.batch = batch
        self.bdim = bdim

    # ---------------------------------------------------------------- helpers
    def _batch_dim_of(self, t) -> int | None:
        """The sample dimension of a plain tensor argument, or None when unbatched."""
        if not isinstance(t, torch.Tensor) or isinstance(t, _Tapped) or self.batch is None:
            return None
        bdim = self.bdim if t.dim() > 2 else 0
        if t.dim() > bdim and t.shape[bdim] == self.batch:
            return bdim
        return None

    def _where(self):
        rec = self.recorder
        return f"layer {rec.name or '<root>'!r} ({type(rec.module).__name__})"

    def _names(self, tapped):
        return sorted({n for t in tapped for _, n in t._leaves})

    # ------------------------------------------------------------ dispatching
    def handle(self, func, flat, spec, tapped):
        name = getattr(func, "__name__", str(func))
        if (name.endswith("_") and not name.startswith("__")) or name in _IN_PLACE_DUNDERS:
            raise ValueError(
                f"{self._where()}: parameter(s) {self._names(tapped)} are updated in place "
                f"({name}) in forward: the generic per-sample path needs a forward that is "
                "a pure function of its inputs and parameters")
        batched = [i for i, a in enumerate(flat) if self._batch_dim_of(a) is not None]
        if not batched:
            out = self._broadcast(func, flat, spec) if func in _EXPAND | _CAT or \
                name == "repeat" else None
            if out is not None:
                return out
            return self._deferred(func, flat, spec, tapped)
        if func in _ADD | _CAT or name == "where":
            out = self._broadcast(func, flat, spec)
            if out is not None:
                return out
        return self._per_sample_op(func, flat, spec, batched)

    def _deferred(self, func, flat, spec, tapped):
        """An op on parameters alone: compute it now, replay it per sample later."""
        plain = [a._plain if isinstance(a, _Tapped) else a for a in flat]
        args, kwargs = tree_unflatten(plain, spec)
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            return out  # metadata (shape, dtype, ...)
        leaves = []
        for t in tapped:
            for leaf in t._leaves:
                if all(leaf[0] is not l[0] for l in leaves):
                    leaves.append(leaf)
        positions = [(i, a) for i, a in enumerate(flat) if isinstance(a, _Tapped)]

        def build(values, leaves=tuple(leaves)):
            rebuilt = list(flat)
            for i, a in positions:
                rebuilt[i] = a._build([values[_index(leaves, l)] for l in a._leaves])
            a2, k2 = tree_unflatten(rebuilt, spec)
            return func(*a2, **k2)

        return _Tapped.wrap(out, tuple(leaves), build, self)

    def _broadcast(self, func, flat, spec):
        """Raw parameters broadcast over the batch: tap them; None if not that case."""
        if any(isinstance(a, _Tapped) and len(a._leaves) != 1 or
               isinstance(a, _Tapped) and a._plain is not a._leaves[0][0] for a in flat):
            return None  # derived values go through the per-sample op
        name = getattr(func, "__name__", "")
        rec = self.recorder
        if func in _EXPAND or name == "repeat":
            target = self._expand_shape(func, flat, spec)
            if target is None:
                return None
            p, pname = flat[0]._leaves[0]
            return _tap(p, target, self._target_bdim(target), rec, pname)
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        if func in _CAT:
            shapes = [tuple(a.shape) for a in tensors if not isinstance(a, _Tapped)]
            args, kwargs = tree_unflatten(flat, spec)
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if not shapes:
                return None
            ref = shapes[0]
            bdim = self._target_bdim(ref)
            if ref[bdim] != self.batch or dim % len(ref) == bdim:
                return None
            new = []
            for a in flat:
                if isinstance(a, _Tapped):
                    p, pname = a._leaves[0]
                    if p.dim() != len(ref) or p.shape[bdim] != 1:
                        return None
                    shape = list(p.shape)
                    shape[bdim] = self.batch
                    a = _tap(p, shape, bdim, rec, pname)
                new.append(a)
            a2, k2 = tree_unflatten(new, spec)
            return func(*a2, **k2)
        try:
            shape = torch.broadcast_shapes(*[a.shape for a in tensors])
        except RuntimeError:
            return None
        bdim = self._target_bdim(shape)
        if len(shape) <= bdim or shape[bdim] != self.batch:
            return None
        new = []
        for a in flat:
            if isinstance(a, _Tapped):
                p, pname = a._leaves[0]
                lead = len(shape) - p.dim()
                if lead <= bdim and p.shape[bdim - lead] != 1:
                    return None
                a = _tap(p, shape, bdim, rec, pname)
            new.append(a)
        a2, k2 = tree_unflatten(new, spec)
        return func(*a2, **k2)

    def _target_bdim(self, shape) -> int:
        return self.bdim if len(shape) > 2 else 0

    def _expand_shape(self, func, flat, spec):
        args, kwargs = tree_unflatten(flat, spec)
        p = args[0]._leaves[0][0]
        if func is torch.Tensor.expand_as:
            sizes = tuple(args[1].shape)
        else:
            sizes = args[1:] if len(args) > 1 else kwargs.get("size", kwargs.get("sizes"))
            if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
                sizes = tuple(sizes[0])
            sizes = tuple(int(s) for s in sizes)
        lead = len(sizes) - p.dim()
        if lead < 0:
            return None
        padded = (1,) * lead + tuple(p.shape)
        if getattr(func, "__name__", "") == "repeat":
            target = tuple(s * r for s, r in zip(padded, sizes))
            if any(r != 1 and s != 1 for s, r in zip(padded, sizes)):
                return None  # a real tiling, not a broadcast
        else:
            target = tuple(padded[i] if s == -1 else s for i, s in enumerate(sizes))
        bdim = self._target_bdim(target)
        if self.batch is None or len(target) <= bdim or target[bdim] != self.batch \
                or padded[bdim] != 1:
            return None
        return target

    def _per_sample_op(self, func, flat, spec, batched):
        """Run ``func`` once under vmap: each sample a batch of one, parameters per sample."""
        rec = self.recorder
        leaves = []
        for a in flat:
            if isinstance(a, _Tapped):
                for leaf in a._leaves:
                    if all(leaf[0] is not l[0] for l in leaves):
                        leaves.append(leaf)
        taps = [_tap(p, (self.batch,) + tuple(p.shape), 0, rec, n) for p, n in leaves]
        dims = [self._batch_dim_of(a) for a in flat]
        inputs = [a.unsqueeze(d + 1) for a, d in zip(flat, dims) if d is not None]
        out_dim = max(d for d in dims if d is not None)
        tapped_at = [(i, a) for i, a in enumerate(flat) if isinstance(a, _Tapped)]

        def one_sample(values, xs):
            rebuilt = list(flat)
            it = iter(xs)
            for i, d in enumerate(dims):
                if d is not None:
                    rebuilt[i] = next(it)
            for i, a in tapped_at:
                rebuilt[i] = a._build([values[_index(leaves, l)] for l in a._leaves])
            a2, k2 = tree_unflatten(rebuilt, spec)
            return func(*a2, **k2)

        in_dims = ([0] * len(taps), [d for d in dims if d is not None])
        try:
            out = torch.func.vmap(one_sample, in_dims=in_dims, out_dims=out_dim,
                                  randomness="different")(taps, inputs)
        except Exception as err:
            raise ValueError(
                f"{self._where()}: has no per-sample rule, and its use of parameter(s) "
                f"{sorted(n for _, n in leaves)} in {getattr(func, '__name__', func)} cannot "
                f"run per sample under torch.func.vmap ({type(err).__name__}: {err}). The "
                "generic path needs a forward that is a pure function of its inputs and "
                "parameters; register a rule for this layer (per_sample.register_rule)"
            ) from err

        def squeeze(t):
            if isinstance(t, torch.Tensor) and t.dim() > out_dim + 1 \
                    and t.shape[out_dim + 1] == 1:
                return t.squeeze(out_dim + 1)
            if isinstance(t, torch.Tensor):
                raise ValueError(
                    f"{self._where()}: {getattr(func, '__name__', func)} on parameter(s) "
                    f"{sorted(n for _, n in leaves)} does not keep the samples apart (its "
                    "per-sample output lost the batch dimension)")
            return t

        return tree_map(squeeze, out)


def _index(leaves, leaf) -> int:
    for i, l in enumerate(leaves):
        if l[0] is leaf[0]:
            return i
    raise KeyError(leaf[1])


def _escaped(out) -> list:
    flat, _ = tree_flatten(out)
    return [t for t in flat if isinstance(t, _Tapped)]


class GenericRule(CompactedRule):
    """Per-sample gradients of a module's own parameters without a layer rule."""

    def present_params(self, module):
        return list(module.named_parameters(recurse=False))

    def forward(self, module, recorder, *args, **kwargs):
        state = recorder.state
        ctx = GenericContext(recorder, state.forward_batch, state.batch_dim)
        swapped = {}
        for pname, p in recorder.params:
            if p.requires_grad:
                swapped[pname] = _Tapped.wrap(p, ((p, pname),), lambda v: v[0], ctx)
        with _reparametrize_module(module, swapped):
            out = type(module).forward(module, *args, **kwargs)
        leaked = _escaped(out)
        if leaked:
            raise ValueError(
                f"{ctx._where()}: parameter(s) {ctx._names(leaked)} leave the forward "
                "without meeting the batch (an output that is the same for every "
                "sample has no per-sample gradient); add it to a batched tensor inside "
                "the module")
        return out

    def compact(self, module, call, mask, batch_dim):
        return  # parts are set at capture


GENERIC = GenericRule()
