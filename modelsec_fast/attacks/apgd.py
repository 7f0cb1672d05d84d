"""Auto-PGD (Croce & Hein 2020): APGD (CE or DLR loss) and APGDT (targeted DLR).

APGD is PGD without a step size to tune: it starts at ``2 * eps``, adds
momentum (0.75), and at checkpoints halves a sample's step and restarts it
from its best point when the loss stopped improving.  Checkpoints follow the
paper: the first after 22% of the steps, then intervals shrinking by 3% of
the steps down to 6%.  A step is halved when (1) the loss increased in at
most ``rho`` of the steps since the last checkpoint, or (2) the step was not
halved at the last checkpoint and the best loss has not improved since.

The attack makes ``steps + 1`` gradient evaluations per restart (the start
point and each step), like torchattacks and AutoAttack.  Randomness comes from
a private ``torch.Generator`` seeded with ``seed`` on every call, so a call is
reproducible and torch's global RNG is left alone.

Units: ``eps`` in pixel space [0, 1] in the norm given by ``norm``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import ops
from ..validation import check_choice, check_int, check_non_negative, check_positive
from .gradient import GradientAttack, success_mask
from .losses import dlr_loss, dlr_targeted_loss, per_sample_loss
from .restarts import RestartRun, restart_on_unbroken

__all__ = ["APGD", "APGDT"]

# (logits, labels, targets or None) -> per-sample value to maximise, (B,).
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

_NORMS = ("Linf", "L2")
_L2_GUARD = 1e-12


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _l2_norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(p=2, dim=1)


def random_start(x: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A random point on the eps sphere around ``x``, clamped to [0, 1]."""
    if norm == "Linf":
        t = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype).mul_(2).sub_(1)
        scale = t.flatten(1).abs().amax(1).clamp_min(_L2_GUARD)
    else:
        t = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        scale = _l2_norms(t) + _L2_GUARD
    return (x + t * _view(eps / scale, x)).clamp_(0.0, 1.0)


def project_(v: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """In place: project ``v`` onto the eps ball around ``x``, then clamp to [0, 1]."""
    v.sub_(x)
    if norm == "Linf":
        v.clamp_(-eps, eps)
    else:
        n = _l2_norms(v)
        v.mul_(_view(torch.where(n > eps, eps / n.clamp_min(_L2_GUARD), torch.ones_like(n)), v))
    return v.add_(x).clamp_(0.0, 1.0)


class _RunState:
    """Per-sample tensors of one APGD run, compacted together when samples stop."""

    FIELDS = ("index", "x", "y", "t", "sx", "zero", "spare", "adv", "prev", "grad", "best",
              "grad_best", "loss_best", "loss_prev", "step", "n_increase", "loss_at_check",
              "reduced_at_check")

    def __init__(self, **tensors):
        for name in self.FIELDS:
            setattr(self, name, tensors.get(name))

    def keep(self, mask: torch.Tensor) -> None:
        for name in self.FIELDS:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                setattr(self, name, value[mask])


class _APGDBase(GradientAttack):
    """The APGD loop shared by APGD and APGDT."""

    supports_early_stop = True

    def _setup(self, norm, eps, steps, n_restarts, seed, eot_iter, rho):
        self.norm = check_choice("norm", norm, _NORMS)
        self.eps = check_non_negative("eps", eps)
        self.steps = check_int("steps", steps, 1, allow_integral_float=True)
        self.n_restarts = check_int("n_restarts", n_restarts, 1, allow_integral_float=True)
        self.seed = check_int("seed", seed)
        self.eot_iter = check_int("eot_iter", eot_iter, 1, allow_integral_float=True)
        self.rho = check_positive("rho", rho)
        self.thr_decr = self.rho  # torchattacks' attribute name
        self.steps_2 = max(int(0.22 * self.steps), 1)
        self.steps_min = max(int(0.06 * self.steps), 1)
        self.size_decr = max(int(0.03 * self.steps), 1)

    # ---------------------------------------------------------- evaluations
    def _evaluate(self, adv, y, t, objective: Objective, check=False):
        """Gradient, per-sample loss and logits at ``adv`` (EOT-averaged)."""
        grad = loss_sum = logits = None
        for _ in range(self.eot_iter):
            adv.requires_grad_(True)
            with torch.enable_grad():
                logits = self.get_logits(adv)
                if check:
                    self.check_labels_against_logits(logits, y)
                    check = False
                loss = per_sample_loss(objective(logits, y, t), adv.shape[0], self.attack)
                g, = torch.autograd.grad(loss.sum(), adv)
            adv.requires_grad_(False)
            grad = g if grad is None else grad.add_(g)
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        if self.eot_iter > 1:
            grad.div_(self.eot_iter)
            loss_sum = loss_sum / self.eot_iter
        return grad, loss_sum, logits.detach()

    def _advance(self, s: _RunState, momentum: float) -> None:
        """Move to the next iterate: projected step, then momentum, projected again.

        L-inf works in place over three buffers, so no step allocates a new
        image-sized tensor: the new point is written over ``s.spare``, then adv
        becomes prev and the old prev the spare.
        """
        if self.norm == "Linf":
            if s.spare is None or s.spare.shape != s.adv.shape:
                s.spare = torch.empty_like(s.adv)
            z = ops.sign_step_(s.spare.copy_(s.adv), s.grad, s.x, s.step, self.eps, 0.0, 1.0)
        else:
            z = ops.l2_step(s.adv, s.grad, s.x, s.step, self.eps, 0.0, 1.0)
        if momentum != 1.0:
            # adv + m (z - adv) + (1 - m)(adv - prev) = m z + 2(1 - m) adv - (1 - m) prev
            z.mul_(momentum).add_(s.adv, alpha=2.0 * (1.0 - momentum))
            z.sub_(s.prev, alpha=1.0 - momentum)
            if self.norm == "Linf":
                # sign(0) = 0: the fused step with a zero gradient is the L-inf projection.
                if s.zero is None or s.zero.shape != z.shape:
                    s.zero = torch.zeros_like(z)
                ops.sign_step_(z, s.zero, s.x, 1.0, self.eps, 0.0, 1.0)
            else:
                project_(z, s.x, self.eps, self.norm)
        s.spare = s.prev if self.norm == "Linf" else None
        s.prev, s.adv = s.adv, z

    # ------------------------------------------------------------- one run
    def _single_run(self, x, y, t, objective: Objective, success_targets, gen,
                    early_stop: bool, out_adv, out_fooled, out_best, out_loss):
        """One APGD run on (x, y); writes results into the ``out_*`` tensors.

        ``success_targets``: targets that define success (None: misclassification).
        ``out_adv``/``out_fooled``: first adversarial point found per sample;
        ``out_best``/``out_loss``: highest-loss point per sample (max over runs).
        """
        n = x.shape[0]
        adv = random_start(x, self.eps, self.norm, gen)
        grad, loss, logits = self._evaluate(adv, y, t, objective, check=True)
        st = _RunState(index=torch.arange(n, device=x.device), x=x, y=y, t=t,
                       sx=success_targets, adv=adv, prev=adv.clone(), grad=grad,
                       best=adv.clone(), grad_best=grad.clone(), loss_best=loss.clone(),
                       loss_prev=loss,
                       step=torch.full((n,), 2.0 * self.eps, device=x.device, dtype=x.dtype),
                       n_increase=torch.zeros(n, device=x.device),
                       loss_at_check=loss.clone(),
                       reduced_at_check=torch.ones(n, dtype=torch.bool, device=x.device))
        self._record_success(st, logits, out_adv, out_fooled, early_stop)
        interval, counter = self.steps_2, 0
        for i in range(self.steps):
            if st.index.numel() == 0:
                break
            self._advance(st, 1.0 if i == 0 else 0.75)
            st.grad, loss, logits = self._evaluate(st.adv, st.y, st.t, objective)
            st.n_increase += (loss > st.loss_prev).float()
            st.loss_prev = loss
            improved = loss > st.loss_best
            rows = improved.nonzero().squeeze(1)
            if rows.numel():  # copy only the improved samples' rows, in place
                st.best.index_copy_(0, rows, st.adv.index_select(0, rows))
                st.grad_best.index_copy_(0, rows, st.grad.index_select(0, rows))
            st.loss_best = torch.where(improved, loss, st.loss_best)
            self._record_success(st, logits, out_adv, out_fooled, early_stop)
            counter += 1
            if counter == interval:
                self._checkpoint(st, interval)
                counter = 0
                interval = max(interval - self.size_decr, self.steps_min)
        self._save_best(st, out_best, out_loss)

    def _checkpoint(self, st: _RunState, interval: int) -> None:
        few_increases = st.n_increase <= self.rho * interval
        stalled = ~st.reduced_at_check & (st.loss_at_check >= st.loss_best)
        reduce = few_increases | stalled
        st.reduced_at_check = reduce
        st.loss_at_check = st.loss_best.clone()
        st.n_increase = torch.zeros_like(st.n_increase)
        if bool(reduce.any()):
            mask = _view(reduce, st.adv)
            st.step = torch.where(reduce, st.step / 2.0, st.step)
            st.adv = torch.where(mask, st.best, st.adv)
            st.grad = torch.where(mask, st.grad_best, st.grad)

    @staticmethod
    def _save_best(st: _RunState, out_best, out_loss) -> None:
        better = st.loss_best > out_loss[st.index]
        if bool(better.any()):
            idx = st.index[better]
            out_best[idx] = st.best[better]
            out_loss[idx] = st.loss_best[better]

    @staticmethod
    def _record_success(st: _RunState, logits, out_adv, out_fooled, early_stop):
        """Keep the first adversarial iterate; drop finished samples if early_stop."""
        done = success_mask(logits, st.y, st.sx) & ~out_fooled[st.index]
        if bool(done.any()):
            out_adv[st.index[done]] = st.adv[done]
            out_fooled[st.index[done]] = True
        if early_stop:
            alive = ~out_fooled[st.index]
            if not bool(alive.all()):
                st.keep(alive)

    # ----------------------------------------------------------- restarts
    def _run_restarts(self, x, y, early_stop: bool, plan, success_targets=None):
        """Run ``plan`` = [todo -> (objective, t, success_targets)] over restarts.

        Each entry runs ``n_restarts`` times, only on samples not yet fooled.
        Returns (adv, fooled): the first adversarial point where found, else
        the highest-loss point.
        """
        with torch.no_grad():
            logits = self.get_logits(x)
        self.check_labels_against_logits(logits, y)
        out_adv = x.clone()
        out_best = x.clone()
        # Points already misclassified (or at their target) are not attacked.
        out_fooled = success_mask(logits, y, success_targets)

        def run(r: RestartRun) -> None:
            objective, t, sx = r.stage(r.index)
            sub_adv, sub_fooled, sub_best = r.results
            # Losses of different objectives are not comparable: each run starts its
            # best-loss record afresh, so samples still unbroken keep the latest run's best point.
            sub_loss = torch.full((r.index.numel(),), -math.inf, device=x.device)
            self._single_run(x[r.index], y[r.index], t, objective, sx, r.generator, early_stop,
                             sub_adv, sub_fooled, sub_best, sub_loss)

        restart_on_unbroken([out_adv, out_fooled, out_best], lambda: ~out_fooled, run,
                            n_restarts=self.n_restarts, seed=self.seed, stages=plan)
        return torch.where(_view(out_fooled, x), out_adv, out_best), out_fooled


class APGD(_APGDBase):
    """APGD with the cross-entropy or DLR loss, L-inf or L2 (torchattacks API).

    Args:
        model: the classifier (returns logits).
        norm: "Linf" or "L2". Default "Linf".
        eps: budget in pixel space (>= 0). Default 8/255.
        steps: iterations per restart (>= 1). Default 10 (AutoAttack uses 100).
        n_restarts: random restarts, each on the samples not yet broken. Default 1.
        seed: seed of the private generator of the random starts. Default 0.
        loss: "ce", "dlr" (needs >= 3 classes) or a callable
            ``(logits, labels) -> (B,)`` per-sample loss to maximise. Default "ce".
        eot_iter: gradients averaged per step (for randomised models). Default 1.
        rho: step-halving threshold of checkpoint condition 1. Default 0.75.
        verbose: accepted for torchattacks compatibility (prints nothing).

    Returns, per sample, the first adversarial point found, else the point of
    highest loss (torchattacks returns the clean image there; the robust
    accuracy is the same, and the highest-loss point is more useful for
    adversarial training).  Targeted modes are supported ("dlr" becomes the
    targeted DLR loss, needing >= 4 classes).
    """

    def __init__(self, model, norm: str = "Linf", eps: float = 8 / 255, steps: int = 10,
                 n_restarts: int = 1, seed: int = 0, loss="ce", eot_iter: int = 1,
                 rho: float = 0.75, verbose: bool = False):
        super().__init__("APGD", model, loss="ce" if loss is None else loss)
        self._setup(norm, eps, steps, n_restarts, seed, eot_iter, rho)
        self.loss_name = loss if isinstance(loss, str) else "custom"
        self.verbose = verbose
        self.supported_mode = ["default", "targeted"]

    def _objective_for(self, targets):
        loss = self.loss
        if targets is None:
            return lambda logits, y, t: loss(logits, y)
        if loss is dlr_loss:
            return lambda logits, y, t: dlr_targeted_loss(logits, y, t)
        return lambda logits, y, t: -loss(logits, t)

    def _attack(self, images, labels, early_stop):
        targets = self._targets(images, labels)

        def plan(todo):
            t = targets[todo] if targets is not None else None
            return self._objective_for(targets), t, t

        adv, _ = self._run_restarts(images, labels, early_stop, [plan], targets)
        return adv

    def forward(self, images, labels):
        return self._attack(images, labels, early_stop=False)

    def _forward_eval(self, images, labels):
        return self._attack(images, labels, early_stop=True)


class APGDT(_APGDBase):
    """APGD-T: APGD on the targeted DLR loss towards each of the top classes.

    For ``k = 2 .. n_target_classes + 1`` the target is the class with the
    k-th largest logit at the clean image; each target gets ``n_restarts``
    runs on the samples not yet misclassified.  Success means
    misclassification (AutoAttack's use of APGD-T).

    Args:
        model, norm, eps, steps, n_restarts, seed, eot_iter, rho, verbose: as :class:`APGD`.
        n_classes: number of classes of the model (torchattacks' argument); the
            default target count is ``n_classes - 1``. Default 10.
        n_target_classes: number of target classes (AutoAttack's "standard"
            uses 9). Default ``n_classes - 1``.
        loss: None (targeted DLR, needs >= 4 classes) or a callable
            ``(logits, targets) -> (B,)`` per-sample loss that is *minimised*
            towards the target (e.g. cross-entropy with reduction="none").
    """

    def __init__(self, model, norm: str = "Linf", eps: float = 8 / 255, steps: int = 10,
                 n_restarts: int = 1, seed: int = 0, eot_iter: int = 1, rho: float = 0.75,
                 verbose: bool = False, n_classes: int = 10, n_target_classes: int | None = None,
                 loss=None):
        super().__init__("APGDT", model, loss=loss if loss is not None else "ce")
        self.custom_loss = loss is not None
        if loss is not None and isinstance(loss, str):
            raise ValueError("APGDT's loss is the targeted DLR (loss=None) or a callable")
        self._setup(norm, eps, steps, n_restarts, seed, eot_iter, rho)
        self.n_classes = check_int("n_classes", n_classes, 2, allow_integral_float=True)
        self.n_target_classes = check_int(
            "n_target_classes", self.n_classes - 1 if n_target_classes is None else n_target_classes,
            1, allow_integral_float=True)
        if self.n_target_classes > self.n_classes - 1:
            raise ValueError(f"n_target_classes must be <= n_classes - 1 = {self.n_classes - 1}, "
                             f"got {self.n_target_classes}")
        self.verbose = verbose
        self.supported_mode = ["default"]

    def _attack(self, images, labels, early_stop):
        with torch.no_grad():
            clean_logits = self.get_logits(images)
        k_classes = clean_logits.shape[1]
        if self.n_classes > k_classes:
            raise ValueError(f"n_classes={self.n_classes} but the model outputs {k_classes} logits")
        if not self.custom_loss and k_classes < 4:
            raise ValueError(
                f"the targeted DLR loss needs at least 4 classes, the model has {k_classes}; "
                "pass a callable loss")
        ranking = clean_logits.argsort(dim=1, descending=True)
        loss = self.loss

        def objective(logits, y, t):
            if self.custom_loss:
                return -loss(logits, t)
            return dlr_targeted_loss(logits, y, t)

        def plan_for(k):
            return lambda todo: (objective, ranking[todo, k - 1], None)

        plans = [plan_for(k) for k in range(2, self.n_target_classes + 2)]
        adv, _ = self._run_restarts(images, labels, early_stop, plans)
        return adv

    def forward(self, images, labels):
        return self._attack(images, labels, early_stop=False)

    def _forward_eval(self, images, labels):
        return self._attack(images, labels, early_stop=True)
