"""Capture machinery: per-layer recorders, backward-pass grouping, the wrapper.

How a step flows:

1. ``attach(module)`` gives every supported layer an instance ``forward`` that
   runs the layer's rule (a custom autograd Function). Autograd therefore
   never computes those layers' weight gradients.
2. In backward, each Function hands its inputs/output gradient to its
   :class:`LayerRecorder`. The recorder keeps them only when the backward pass
   really accumulates into the layer's parameters: it asks the autograd engine
   whether the parameter's ``AccumulateGrad`` node will run. An attack's
   ``torch.autograd.grad(loss, x)`` or ``backward(inputs=[x])`` does not run
   it, so such passes leave no trace.
3. The first kept record of a pass queues a callback that runs when the whole
   backward pass has finished; it hands the pass's records to the bound
   DPOptimizer, which clips them as one micro-batch of samples.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from torch.utils._pytree import tree_flatten

from .base import Call
from .generic import GENERIC
from .registry import rule_for

_will_execute = torch._C._will_engine_execute_node

#: attribute set on every managed parameter: (CaptureState, qualified name)
OWNER_ATTR = "_modelsec_private_owner"


class LayerRecorder:
    """Links one layer to its rule and to the shared :class:`CaptureState`."""

    def __init__(self, state: "CaptureState", name: str, module: nn.Module, rule):
        self.state = state
        self.name = name
        self.module = module
        self.rule = rule
        self.params = rule.present_params(module)
        self._acc_nodes: dict[str, tuple[torch.Tensor, object]] = {}
        self.hook_handles: dict[str, object] = {}

    def param_names(self) -> list[str]:
        return [f"{self.name}.{n}" if self.name else n for n, _ in self.params]

    def watch_trainable(self) -> None:
        """Hook trainable parameters: a defined autograd gradient there bypassed the rule."""
        for pname, p in self.params:
            if p.requires_grad and pname not in self.hook_handles:
                full = f"{self.name}.{pname}" if self.name else pname
                state = self.state
                self.hook_handles[pname] = p.register_hook(
                    lambda grad, full=full: state.note_autograd_grad(full, grad))

    def prepare_forward(self) -> None:
        """Cache each trainable parameter's AccumulateGrad node (grad mode on)."""
        for pname, p in self.params:
            if p.requires_grad:
                cached = self._acc_nodes.get(pname)
                if cached is None or cached[0] is not p:
                    node = p.view_as(p).grad_fn.next_functions[0][0]
                    self._acc_nodes[pname] = (p, node)
                    self.watch_trainable()

    def capture_parts(self, ctx, parts: dict, batch_size: int, need) -> None:
        """From a generic-path tap's backward: one use's per-sample gradients, name -> (B, ...)."""
        pname = next(iter(parts))
        node = self._acc_nodes.get(pname)
        if not (bool(need) and node is not None and _will_execute(node[1])):
            return
        if not self._new_in_window(ctx):
            return
        call = Call((), batch_size, {}, parts=parts)
        self.state.add(self, call, {n: n in parts for n, _ in self.params})

    def _new_in_window(self, ctx) -> bool:
        window = self.state.window
        if getattr(ctx, "_modelsec_window", None) == window:
            self.state.fail(ValueError(
                f"layer {self.name or type(self.module).__name__!r}: a second backward "
                "pass went through the same forward call before optimizer.step(). "
                "The samples' gradients would be clipped separately and their "
                "sensitivity doubled; sum the losses and call backward once."))
            return False
        ctx._modelsec_window = window
        return True

    def capture(self, ctx, tensors: tuple, batch_size: int, needs, meta=None) -> None:
        """Called from a rule's backward: keep ``tensors`` if this pass trains the layer.

        ``needs`` are ``ctx.needs_input_grad`` entries aligned with ``self.params``.
        """
        mask = {}
        keep = False
        for (pname, _), need in zip(self.params, needs):
            node = self._acc_nodes.get(pname)
            ok = bool(need) and node is not None and _will_execute(node[1])
            mask[pname] = ok
            keep = keep or ok
        if not keep or not self._new_in_window(ctx):
            return
        call = Call(tensors, batch_size, {**(meta or {}), "low_memory": self.state.low_memory})
        with torch.no_grad():  # backward under create_graph runs with grad mode on
            self.rule.compact(self.module, call, mask, self.state.batch_dim)
        self.state.add(self, call, mask)


class CaptureState:
    """Records of the backward pass in progress, and the optimizer they go to."""

    def __init__(self, batch_dim: int = 0, low_memory: bool = False):
        self.batch_dim = batch_dim
        #: rules pick whichever per-sample norm method needs less memory (Call.meta)
        self.low_memory = low_memory
        self.recorders: list[LayerRecorder] = []
        self.sink = None
        self.window = 0
        self._pending: list[tuple[LayerRecorder, Call, dict]] = []
        self._queued = False
        self.leaked: set[str] = set()
        self.error: Exception | None = None
        #: samples in the model's current forward (its first batched tensor input)
        self.forward_batch: int | None = None
        self._input_storages: set[int] = set()
        #: id(parameter) of parameters used by several layers (tied weights)
        self.shared: set[int] = set()

    def note_forward(self, args, kwargs) -> None:
        """Record the batch size and input storages of the model's forward call."""
        leaves = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        self._input_storages = set()
        for t in leaves:
            try:
                self._input_storages.add(t.untyped_storage().data_ptr())
            except RuntimeError:  # tensors without storage (meta, some subclasses)
                pass
        self.forward_batch = None
        for t in leaves:  # sequence-first models (batch_dim 1) take (T, B, ...) inputs
            if t.dim() > self.batch_dim:
                self.forward_batch = int(t.shape[self.batch_dim])
                break

    def views_model_input(self, t: torch.Tensor) -> bool:
        """Whether ``t`` shares storage with a tensor the model's forward was given."""
        try:
            return t.untyped_storage().data_ptr() in self._input_storages
        except RuntimeError:
            return False

    def broadcast_input(self, rec: "LayerRecorder", args: tuple) -> tuple:
        """A layer input with batch 1 inside a batch of B: expand it over the batch.

        A position embedding called with (1, T) ids, its output broadcast over
        the samples, has a per-sample gradient (each sample's own output
        gradient), but the broadcast sums those before the layer sees them; an
        input expanded to (B, T) keeps them apart. One sample sliced out of
        the batch (a per-sample loop in forward) is refused instead.
        """
        batch = self.forward_batch
        if not args or batch is None or batch <= 1 or self.batch_dim != 0:
            return args
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] != 1:
            return args
        base = x._base
        if base is not None and base.dim() == x.dim() and base.shape[0] == batch:
            raise ValueError(
                f"layer {rec.name or type(rec.module).__name__!r} got one sample sliced "
                f"out of the batch of {batch} (a per-sample loop in forward?): per-sample "
                "clipping needs each layer to see the whole batch in one call")
        return (x.expand((batch,) + tuple(x.shape[1:])),) + tuple(args[1:])

    def note_autograd_grad(self, name: str, grad) -> None:
        """Leaf hook: a defined gradient here bypassed the layer's rule (unclipped)."""
        if grad is not None:
            self.leaked.add(name)

    def fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error

    def add(self, recorder: LayerRecorder, call: Call, mask: dict) -> None:
        if not self._queued:
            torch.autograd.Variable._execution_engine.queue_callback(self._commit_pass)
            self._queued = True
        self._pending.append((recorder, call, mask))

    def _commit_pass(self) -> None:
        self._queued = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        if self.sink is None:
            raise RuntimeError(
                "a private module ran a training backward pass, but no DPOptimizer "
                "holds its parameters (build one with PrivacyEngine.make_private)")
        self.sink.commit_pass(self, pending)

    def new_window(self) -> None:
        """Start a new accumulation window (called by zero_grad after a step)."""
        self.window += 1
        self._pending = []


class _Owner(tuple):
    """(CaptureState, name) tag on a managed parameter; a deep copy is unmanaged."""

    def __deepcopy__(self, memo):
        return None


class _PlainForward:
    """What a deep copy of a routed layer gets: the class forward, no engine."""

    def __init__(self, module: nn.Module):
        self._module = weakref.ref(module)

    def __call__(self, *args, **kwargs):
        module = self._module()
        return type(module).forward(module, *args, **kwargs)

    def __deepcopy__(self, memo):
        return _PlainForward(memo.get(id(self._module()), self._module()))


class _PrivateForward:
    """Instance-level ``forward`` that routes a layer through its rule."""

    def __init__(self, recorder: LayerRecorder):
        self.recorder = recorder

    def __deepcopy__(self, memo):
        # a copy of a private model (EMA, evaluation) is a plain model
        return _PlainForward(memo.get(id(self.recorder.module), self.recorder.module))

    def __call__(self, *args, **kwargs):
        rec = self.recorder
        module = rec.module
        if not torch.is_grad_enabled():
            return type(module).forward(module, *args, **kwargs)
        rec.prepare_forward()
        if rec.rule is not GENERIC:
            args = rec.state.broadcast_input(rec, args)
        return rec.rule.forward(module, rec, *args, **kwargs)


def recorder_of(module: nn.Module) -> LayerRecorder | None:
    """The recorder routing ``module`` through its rule, or None for a plain layer."""
    forward = module.__dict__.get("forward")
    return forward.recorder if isinstance(forward, _PrivateForward) else None


def attach(module: nn.Module, *, batch_dim: int = 0, low_memory: bool = False) -> CaptureState:
    """Route every layer of ``module`` that owns parameters through its rule.

    Layers without a rule whose own parameters are trainable take the generic
    path (:mod:`.generic`). A parameter used by several layers (tied weights)
    is recorded in ``state.shared``: its per-sample gradients from every use
    are summed before the norm. Returns the shared state. The validator
    (``ModuleValidator``) must have accepted ``module`` first. ``low_memory``:
    the rules choose the per-sample norm method that needs less memory
    (ghost norms, no kept per-sample gradients) over the faster one.
    """
    state = CaptureState(batch_dim, low_memory)
    for name, sub in module.named_modules():
        rule = rule_for(sub)
        if rule is None:
            if not any(p.requires_grad for p in sub.parameters(recurse=False)):
                continue
            rule = GENERIC
        if not rule.present_params(sub):
            continue
        if isinstance(sub.__dict__.get("forward"), _PrivateForward):
            raise ValueError(
                f"layer {name!r} is already attached to a privacy engine; "
                "call cleanup() on the previous private module first")
        rec = LayerRecorder(state, name, sub, rule)
        sub.forward = _PrivateForward(rec)
        for pname, p in rec.params:
            full = f"{name}.{pname}" if name else pname
            owner = getattr(p, OWNER_ATTR, None)
            if owner is not None:
                if owner[0] is not state:
                    raise ValueError(
                        f"parameter {full!r} is already managed by a privacy engine "
                        "(make_private called twice?)")
                state.shared.add(id(p))
                continue
            setattr(p, OWNER_ATTR, _Owner((state, full)))
        rec.watch_trainable()
        state.recorders.append(rec)
    state.pre_hook = module.register_forward_pre_hook(
        lambda mod, args, kwargs: state.note_forward(args, kwargs), with_kwargs=True)
    return state


def detach(state: CaptureState) -> None:
    """Undo :func:`attach`: restore class forwards and remove the hooks."""
    hook = getattr(state, "pre_hook", None)
    if hook is not None:
        hook.remove()
        state.pre_hook = None
    for rec in state.recorders:
        if isinstance(rec.module.__dict__.get("forward"), (_PrivateForward, _PlainForward)):
            del rec.module.forward
        for h in rec.hook_handles.values():
            h.remove()
        for _, p in rec.params:
            if hasattr(p, OWNER_ATTR):
                delattr(p, OWNER_ATTR)
    state.recorders = []


class PrivateModule(nn.Module):
    """The module returned by ``make_private``: forwards to the user's model.

    Like Opacus's ``GradSampleModule`` it holds the original model as
    ``_module`` (so ``state_dict`` keys carry a ``_module.`` prefix) and
    forwards unknown attributes to it. ``cleanup()`` restores the model.
    ``low_memory``: per-sample norms by whichever method needs less memory (the
    engine's ``grad_sample_mode="ghost"``), else by the faster one.
    """

    def __init__(self, module: nn.Module, *, batch_first: bool = True,
                 loss_reduction: str = "mean", low_memory: bool = False):
        super().__init__()
        self._module = module
        self.batch_first = batch_first
        self.loss_reduction = loss_reduction
        self.capture_state = attach(module, batch_dim=0 if batch_first else 1,
                                    low_memory=low_memory)

    def forward(self, *args, **kwargs):
        return self._module(*args, **kwargs)

    def __getattr__(self, item):
        try:
            return super().__getattr__(item)
        except AttributeError as err:
            if item == "_module":
                raise err
            return getattr(self._modules["_module"], item)

    def cleanup(self) -> nn.Module:
        """Detach the engine and return the plain model."""
        detach(self.capture_state)
        return self._module
