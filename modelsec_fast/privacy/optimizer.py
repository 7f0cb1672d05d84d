"""DPOptimizer: Opacus's DP-SGD optimizer wrapper on the book-keeping engine.

What users observe, as in Opacus:

* ``p.grad`` after ``step()`` is the private gradient
  ``(sum_i c_i g_i + N(0, (sigma*C)^2)) / E[B]`` (``loss_reduction="mean"``;
  no division for ``"sum"``), with c_i = min(1, C / (n_i + 1e-6)) and n_i the
  per-sample gradient norm over all trainable parameters (flat clipping).
* Noise is added once per real step; ``signal_skip_step`` (used by
  ``BatchMemoryManager``) keeps clipped sums in ``p.summed_grad`` across
  physical batches of one logical batch.
* ``step()`` without a backward pass, or a backward pass after a step without
  ``zero_grad()``, raises ``ValueError``.

Differences from Opacus, on purpose:

* Between ``backward()`` and ``step()``, ``p.grad`` already holds the clipped
  sum of the pass (Opacus holds the unclipped sum there and per-sample copies in
  ``p.grad_sample``; we never build those).
* Several backward passes before one step are physical micro-batches of ONE
  logical Poisson batch: their clipped sums add up and are divided by E[B]
  (Opacus divides by k * E[B] and accounts one step of rate q, which is not a
  valid Poisson step when the k batches were sampled independently). When the
  data loader exposes ``batches_yielded``, the backward pass of a second logical
  batch before the step raises (as Opacus's does), and so does the step.
* When the data loader also exposes ``logical_batch_samples`` (our
  DPDataLoader does), a step must clip exactly that many samples. More or
  fewer means a ``batch_first`` that does not match the model, or samples
  duplicated or reshaped into the batch dimension; either breaks the
  sensitivity bound, so the step raises. Opacus has no such check.
* GradScaler: attach it (``attach_grad_scaler`` or ``make_private(grad_scaler=)``)
  so that norms are taken on unscaled gradients; call ``scaler.step(optimizer)``.
  A pass with a non-finite per-sample gradient leaves NaN in ``p.grad``, the
  scaler skips that step, and the step is not counted. Without a scaler, a
  non-finite per-sample gradient raises.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import torch
from torch.optim import Optimizer

from ..validation import check_non_negative, check_positive
from .per_sample.capture import OWNER_ATTR
from .per_sample.clipping import clip_pass

_ZERO_GRAD_MSG = (
    "Gradients haven't been cleared since the last optimizer step. In order to "
    "obtain privacy guarantees you must call optimizer.zero_grad() on each step")
_FOLDING_MSG = (
    "this step folds backward passes from several logical Poisson batches; several "
    "backward calls before one step must be splits of ONE logical batch (use "
    "BatchMemoryManager), otherwise the step is not a valid Poisson-sampled step and the "
    "reported epsilon would be wrong")


def _add_noise(grads, std, scale, generator, source):
    from modelsec_fast import ops  # lazy: keeps the import graph one-way and cheap
    ops.add_noise_(grads, std, scale=scale, generator=generator, source=source)


class DPOptimizer(Optimizer):
    """``torch.optim.Optimizer`` wrapper that clips per sample and adds noise.

    Args:
        optimizer: any torch optimizer over the parameters of a private module
            (one returned by ``PrivacyEngine.make_private``).
        noise_multiplier: sigma >= 0; the noise std is ``sigma * max_grad_norm``.
        max_grad_norm: clipping bound C > 0 on each sample's total gradient norm.
        expected_batch_size: public E[B], the divisor for ``loss_reduction="mean"``.
        loss_reduction: ``"mean"`` or ``"sum"``, the reduction of the training loss.
        generator: ``torch.Generator`` for the noise; when None, each step
            draws its noise key from torch's global generator, so
            ``torch.manual_seed`` reproduces a run, as in Opacus (checkpoints
            save that generator's state). Secure mode never reads either.
        secure_mode: draw noise from the ChaCha20 CSPRNG (``source="secure"``).
        clipping: ``"flat"`` (one C over all parameters) or ``"per_layer"``
            (``max_grad_norm`` a list with one C_k per trainable parameter, in
            the optimizer's order; each parameter is clipped by its own bound
            and the noise std is sigma * sqrt(sum C_k^2), as in Opacus).
        keep_grad_sample: also store each parameter's per-sample gradients
            as ``p.grad_sample`` (B, *p.shape) (Opacus's attribute; costs the
            memory of materialising them, so it is opt-in).
        accumulation: ``"logical"`` (several backward passes before a step
            are the physical parts of one logical batch: divide by E[B]) or
            ``"opacus"`` (k passes are k batches: divide by k * E[B], as
            Opacus does; ``make_private(poisson_sampling=False)`` sets it).

    Raises:
        ValueError / TypeError: bad hyperparameters, or parameters that no
            private module manages.
    """

    def __init__(self, optimizer: Optimizer, *, noise_multiplier: float,
                 max_grad_norm: float, expected_batch_size: Optional[int],
                 loss_reduction: str = "mean", generator=None, secure_mode: bool = False,
                 clipping: str = "flat", keep_grad_sample: bool = False,
                 accumulation: str = "logical", **kwargs):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"Unexpected value for loss_reduction: {loss_reduction!r} "
                             "(expected 'mean' or 'sum')")
        if clipping not in ("flat", "per_layer"):
            raise ValueError(f"clipping must be 'flat' or 'per_layer' here, got {clipping!r} "
                             "(adaptive clipping: AdaptiveClipDPOptimizer)")
        if accumulation not in ("logical", "opacus"):
            raise ValueError(f"accumulation must be 'logical' or 'opacus', got {accumulation!r}")
        self.noise_multiplier = check_non_negative("noise_multiplier", noise_multiplier)
        self.max_grad_norms = None
        if clipping == "per_layer":
            n_params = sum(p.requires_grad for g in optimizer.param_groups for p in g["params"])
            if not isinstance(max_grad_norm, (list, tuple)) or len(max_grad_norm) != n_params:
                raise ValueError(
                    f"clipping='per_layer' needs max_grad_norm as a list of one bound per "
                    f"trainable parameter ({n_params}), got {max_grad_norm!r}")
            self.max_grad_norms = [check_positive(f"max_grad_norm[{i}]", c)
                                   for i, c in enumerate(max_grad_norm)]
            max_grad_norm = math.sqrt(sum(c * c for c in self.max_grad_norms))
        elif isinstance(max_grad_norm, (list, tuple)):
            raise ValueError("a list max_grad_norm needs clipping='per_layer'; flat clipping "
                             f"takes one float, got {max_grad_norm!r}")
        self.max_grad_norm = check_positive("max_grad_norm", max_grad_norm)
        self.clipping = clipping
        self.keep_grad_sample = bool(keep_grad_sample)
        self.accumulation = accumulation
        if loss_reduction == "mean":
            if expected_batch_size is None:
                raise ValueError("You must provide expected batch size of the loss reduction is mean")
            check_positive("expected_batch_size", expected_batch_size)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.original_optimizer = optimizer
        self.loss_reduction = loss_reduction
        self.expected_batch_size = expected_batch_size
        self.noise_generator = generator
        self.secure_mode = bool(secure_mode)
        self.noise_source = "secure" if secure_mode else "philox"
        self.adds_noise = True
        self.grad_all_reduce: Optional[Callable[[list], None]] = None
        self.logical_batch_source = None
        self._step_hooks: list[Callable] = []
        self._step_skip_queue: list[bool] = []
        self._is_last_step_skipped = False
        self._grad_scaler = None
        self._layout_verified = False
        self._reset_window()
        self._fresh_passes = 0
        self._needs_zero_grad = False
        self._error: Optional[Exception] = None
        self._states = self._bind_states()
        for p in self.params:
            p.summed_grad = None

    # ------------------------------------------------------------ wiring
    def _bind_states(self):
        states = {}
        for p in self.params:
            owner = getattr(p, OWNER_ATTR, None)
            if owner is None:
                raise ValueError(
                    f"a trainable parameter of shape {tuple(p.shape)} is not managed by a "
                    "private module: build the optimizer over the parameters of the "
                    "module returned by PrivacyEngine.make_private (and make sure every "
                    "trainable layer has a per-sample rule; see ModuleValidator)")
            states[id(owner[0])] = owner[0]
        for state in states.values():
            state.sink = self
        return list(states.values())

    def _reset_window(self):
        self._passes = 0
        self._seen: set[int] = set()
        self._batches: dict = {}  # logical batch id -> its sample count (None: unknown)
        self._samples = 0
        self._layouts: set = set()
        self._nonfinite = False

    def attach_step_hook(self, fn: Callable[["DPOptimizer"], None]) -> None:
        """Call ``fn(optimizer)`` once per real (non-skipped) private step.

        Several hooks may be attached; they run after noise and scaling,
        before the inner optimizer's step (Opacus runs its single hook there).
        """
        self._step_hooks.append(fn)

    @property
    def step_hook(self):
        return self._step_hooks[-1] if self._step_hooks else None

    @property
    def generator(self):
        """Opacus's name for :attr:`noise_generator`."""
        return self.noise_generator

    def attach_grad_scaler(self, scaler) -> None:
        """Take per-sample norms on gradients unscaled by ``scaler``'s scale."""
        self._grad_scaler = scaler

    def signal_skip_step(self, do_skip: bool = True) -> None:
        """The next ``step()`` only accumulates clipped sums (Opacus semantics)."""
        self._step_skip_queue.append(do_skip)

    def _check_skip_next_step(self, pop_next: bool = True) -> bool:
        if self._step_skip_queue:
            return self._step_skip_queue.pop(0) if pop_next else self._step_skip_queue[0]
        return False

    # ------------------------------------------------- proxies (as Opacus)
    @property
    def params(self) -> list:
        return [p for g in self.original_optimizer.param_groups for p in g["params"]
                if p.requires_grad]

    @property
    def param_groups(self):
        return self.original_optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value):
        self.original_optimizer.param_groups = value

    @property
    def state(self):
        return self.original_optimizer.state

    @state.setter
    def state(self, value):
        self.original_optimizer.state = value

    @property
    def defaults(self):
        return self.original_optimizer.defaults

    @defaults.setter
    def defaults(self, value):
        self.original_optimizer.defaults = value

    @property
    def accumulated_iterations(self) -> int:
        """Backward passes (physical micro-batches) folded into the coming step."""
        return self._passes

    def state_dict(self):
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.original_optimizer.load_state_dict(state_dict)

    def __repr__(self):
        return self.original_optimizer.__repr__()

    # ------------------------------------------- called at end of backward
    def commit_pass(self, state, pending) -> None:
        """Clip one backward pass and add its clipped sums into ``p.grad``."""
        if self._needs_zero_grad:
            self._error = self._error or ValueError(_ZERO_GRAD_MSG)
            raise ValueError(_ZERO_GRAD_MSG)
        batch_id = getattr(self.logical_batch_source, "batches_yielded", None)
        if (self.accumulation == "logical" and batch_id is not None
                and any(b is not None and b != batch_id for b in self._batches)):
            # raised at the backward of the second batch, where Opacus raises too
            self._error = self._error or ValueError(_FOLDING_MSG)
            raise ValueError(_FOLDING_MSG)
        scale = 1.0
        if self._grad_scaler is not None and self._grad_scaler.is_enabled():
            scale = float(self._grad_scaler.get_scale())
        bound = self.max_grad_norm
        if self.max_grad_norms is not None:
            bound = {id(p): c for p, c in zip(self.params, self.max_grad_norms)}
        sums, norms, layout, per_sample = clip_pass(
            pending, max_grad_norm=bound, loss_reduction=self.loss_reduction, grad_scale=scale,
            batch_dim=state.batch_dim, shared=state.shared, materialise=self.keep_grad_sample)
        self.observe_norms(norms)
        if self.keep_grad_sample:
            for p, per in per_sample.values():
                per = per.to(p.dtype)
                old = getattr(p, "grad_sample", None)
                p.grad_sample = per if old is None else torch.cat([old, per])
        if norms.numel() and not bool(torch.isfinite(norms).all()):
            self._nonfinite = True
            if self._grad_scaler is None:
                bad = int((~torch.isfinite(norms)).nonzero()[0, 0])
                self._error = ValueError(
                    f"the per-sample gradient of sample {bad} has a non-finite norm "
                    "(NaN/Inf in the loss or activations). Refusing to clip it: fix the "
                    "model/data, or attach a GradScaler so the step is skipped")
                raise self._error
        with torch.no_grad():
            for p, g in sums:
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
                self._seen.add(id(p))
        self._passes += 1
        self._fresh_passes += 1
        self._samples += norms.numel()
        self._layouts.add(layout)
        src = self.logical_batch_source
        if src is not None:
            self._batches[getattr(src, "batches_yielded", None)] = getattr(
                src, "logical_batch_samples", None)

    def after_step(self) -> None:
        """Hook for subclasses: runs once per real step, after noise and the step hooks."""

    def gradient_noise_std(self) -> float:
        """Std of the Gaussian noise added to the clipped sum: sigma * C."""
        return self.noise_multiplier * self.max_grad_norm

    def observe_norms(self, norms: torch.Tensor) -> None:
        """Hook for subclasses: the unclipped per-sample norms of one backward pass."""

    @property
    def grad_samples(self) -> list:
        """Opacus's list of ``p.grad_sample`` (needs ``keep_grad_sample=True``)."""
        if not self.keep_grad_sample:
            raise AttributeError("per-sample gradients are kept only with "
                                 "keep_grad_sample=True (make_private(keep_grad_sample=True))")
        return [getattr(p, "grad_sample", None) for p in self.params]

    # ----------------------------------------------------------- the step
    def _check_before_step(self):
        if self._error is not None:
            raise self._error
        for state in self._states:
            if state.error is not None:
                raise state.error
            if state.leaked:
                names = ", ".join(sorted(state.leaked))
                raise ValueError(
                    f"parameters {names} received an ordinary (unclipped) autograd gradient: "
                    "they were used outside their layer's forward (e.g. functionally). "
                    "Their per-sample norms were not counted; refusing to step")
        if self._fresh_passes == 0:
            raise ValueError(
                "optimizer.step() was called without a backward pass since the last step "
                "(per-sample gradients are not initialized; call loss.backward() first)")
        if self._nonfinite:
            raise ValueError(
                "a backward pass since the last step had non-finite per-sample gradients; "
                "with a GradScaler, call scaler.step(optimizer) so the step is skipped")

    def _check_complete(self, params):
        missing = [p for p in params if id(p) not in self._seen]
        if missing:
            names = [getattr(p, OWNER_ATTR, (None, f"shape {tuple(p.shape)}"))[1] for p in missing]
            raise ValueError(
                f"trainable parameters {names} got no per-sample gradient in this step "
                "(not used in the forward, or used outside their layer). Freeze them "
                "with requires_grad_(False) or remove them from the optimizer")
        batch_ids = [b for b in self._batches if b is not None]
        if len(batch_ids) > 1:
            raise ValueError(_FOLDING_MSG)
        self._check_sample_count(self._batches[batch_ids[0]] if batch_ids else None)

    def _check_sample_count(self, expected: Optional[int]) -> None:
        """The step clipped as many samples as the data loader's batch holds."""
        batch_first = all(state.batch_dim == 0 for state in self._states)
        if expected is not None and expected != self._samples:
            raise ValueError(
                f"this step clipped {self._samples} per-sample gradients, but the data "
                f"loader's batch holds {expected} samples. Either batch_first={batch_first} "
                "does not match the model's sequence layout (the engine would clip time "
                "steps instead of samples), or samples were duplicated, reshaped into the "
                "batch dimension or dropped. Refusing the step: its sensitivity would not "
                "be max_grad_norm")
        if expected is not None and "distinct" in self._layouts:
            self._layout_verified = True
        elif "ambiguous" in self._layouts and not self._layout_verified:
            warnings.warn(
                f"batch_first={batch_first} cannot be verified on this step: the sequence "
                f"layers' sample and time dimensions both have size {self._samples}. A "
                "wrong batch_first would clip time steps instead of samples. The check "
                "needs the DPDataLoader of make_private and runs at the first step where "
                "the two sizes differ (Poisson batch sizes vary)", UserWarning, stacklevel=5)

    def pre_step(self, closure=None) -> bool:
        """Clip, noise and scale; False when the step is skipped (no inner step)."""
        self._check_before_step()
        params = self.params
        if self._check_skip_next_step():
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.summed_grad = p.grad if p.summed_grad is None else p.summed_grad + p.grad
                        p.grad = None
            self._is_last_step_skipped = True
            self._needs_zero_grad = True
            self._fresh_passes = 0
            return False
        self._check_complete(params)
        grads = []
        with torch.no_grad():
            for p in params:
                if p.summed_grad is not None:
                    p.grad = p.summed_grad if p.grad is None else p.grad.add_(p.summed_grad)
                    p.summed_grad = None
                grads.append(p.grad)
            std = self.gradient_noise_std() if self.adds_noise else 0.0
            scale = 1.0 / self.expected_batch_size if self.loss_reduction == "mean" else 1.0
            if self.accumulation == "opacus" and self.loss_reduction == "mean":
                scale /= max(self._fresh_passes, 1)  # Opacus: k passes are k batches
            if std > 0:
                _add_noise(grads, std, scale, self.noise_generator, self.noise_source)
            elif scale != 1.0:
                torch._foreach_mul_(grads, scale)
            if self.grad_all_reduce is not None:
                self.grad_all_reduce(grads)
        for fn in self._step_hooks:
            fn(self)
        self.after_step()
        self._is_last_step_skipped = False
        self._needs_zero_grad = True
        self._reset_window()
        self._fresh_passes = 0
        for state in self._states:
            state.new_window()
        return True

    def step(self, closure: Optional[Callable[[], float]] = None):
        if closure is not None:
            with torch.enable_grad():
                closure()
        if self.pre_step():
            return self.original_optimizer.step()
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear ``p.grad``; ``p.summed_grad`` survives a skipped step (Opacus)."""
        if not self._is_last_step_skipped:
            for p in self.params:
                p.summed_grad = None
            self._reset_window()
        self._fresh_passes = 0
        self._needs_zero_grad = False
        self._error = None
        for state in self._states:
            state.error = None
            state.leaked.clear()
        for p in self.params:
            if hasattr(p, "grad_sample"):
                p.grad_sample = None
        self.original_optimizer.zero_grad(set_to_none)
