"""FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020), L-inf and L2.

FAB looks for the *smallest* adversarial perturbation.  At each step it
linearises the decision boundary between the true class and one other class
(the closest one, or a fixed target in FAB-T), projects both the current
iterate and the original image onto that hyperplane inside the box [0, 1],
and moves to a convex combination of the two projections, slightly past the
boundary (``eta``).  Once adversarial, it steps back towards the original
image (``beta``) to shrink the perturbation.  A sample counts as broken when
an adversarial point within ``eps`` was found.

The box-constrained projection is solved exactly: with ``c = b - w.t`` the
minimal-norm ``d`` with ``w.(t + d) = b`` and ``0 <= t + d <= 1`` is
``d_i = sign(w_i) min(lam, room_i)`` (L-inf) or ``d_i = w_i min(lam, room_i/|w_i|)``
(L2), with ``lam`` found from the sorted breakpoints of the piecewise-linear,
non-decreasing map ``lam -> w.d(lam)`` (one sort and one search per sample).

FAB follows no loss: it is driven by the logit differences, so it takes no
``loss=`` argument.  Units: ``eps`` in pixel space [0, 1], in ``norm``.
"""

from __future__ import annotations

import math

import torch

from ..validation import (check_choice, check_in_range, check_int, check_non_negative,
                          check_positive)
from .base import Attack
from .restarts import RestartRun, restart_on_unbroken

__all__ = ["FAB", "project_onto_hyperplane_in_box"]

_FAR = 1e10


def project_onto_hyperplane_in_box(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                                   norm: str) -> torch.Tensor:
    """Minimal-norm ``d`` (per row) with ``w.(t + d) = b`` and ``t + d`` in [0, 1].

    Args:
        t: (N, D) points in [0, 1]; w: (N, D) normals; b: (N,) offsets.
        norm: "Linf" or "L2" (the norm minimised).
    Returns:
        (N, D).  If the hyperplane is out of the box's reach, the box corner
        that gets closest to it.
    """
    c = b - (w * t).sum(1)
    flip = torch.where(c < 0, -1.0, 1.0).to(t.dtype)
    w = w * flip[:, None]
    c = c * flip
    room = torch.where(w > 0, 1.0 - t, t).clamp_min(0.0)
    absw = w.abs()
    if norm == "Linf":
        weight, breaks = absw, room
    else:
        weight = w * w
        breaks = torch.where(absw > 0, room / absw.clamp_min(1e-30), torch.zeros_like(room))
    breaks = torch.where(weight > 0, breaks, torch.zeros_like(breaks))
    order = breaks.argsort(dim=1)
    r = breaks.gather(1, order)
    a = weight.gather(1, order)
    cum_ar = (a * r).cumsum(1)
    cum_a = a.cumsum(1)
    total = cum_a[:, -1:]
    reach = cum_ar + r * (total - cum_a)  # value of w.d at each breakpoint
    k = torch.searchsorted(reach.contiguous(), c[:, None].contiguous()).clamp_max(r.shape[1])
    prev = (k - 1).clamp_min(0)
    base_ar = torch.where(k > 0, cum_ar.gather(1, prev), torch.zeros_like(c[:, None]))
    base_a = torch.where(k > 0, cum_a.gather(1, prev), torch.zeros_like(c[:, None]))
    remaining = (total - base_a).clamp_min(1e-30)
    lam = (c[:, None] - base_ar) / remaining
    lam = torch.where(k >= r.shape[1], r[:, -1:], lam).clamp_min(0.0)
    if norm == "Linf":
        d = torch.sign(w) * torch.minimum(lam, room)
    else:
        d = w * torch.minimum(lam, breaks)
    return d


def _norm_of(d: torch.Tensor, norm: str) -> torch.Tensor:
    flat = d.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


class FAB(Attack):
    """FAB and FAB-T (``multi_targeted=True``), torchattacks' arguments.

    Args:
        model: the classifier (returns logits).
        norm: "Linf" or "L2". Default "Linf".
        eps: budget in pixel space (>= 0); only points within it are returned. Default 8/255.
        steps: iterations per restart and target (>= 1). Default 10 (AutoAttack: 100).
        n_restarts: runs per target; runs after the first start at a random point. Default 1.
        alpha_max: largest weight on the original image's projection. Default 0.1.
        eta: overshoot past the linearised boundary (>= 1). Default 1.05.
        beta: backward step towards the original after a success, in (0, 1]. Default 0.9.
        verbose: accepted for torchattacks compatibility (prints nothing).
        seed: seed of the private generator of the random starts. Default 0.
        multi_targeted: FAB-T: target each of the top ``n_target_classes`` other classes.
        n_classes: number of classes (torchattacks' argument). Default 10.
        n_target_classes: FAB-T's number of targets (AutoAttack: 9). Default n_classes - 1.

    Untargeted FAB needs one backward pass per class at every step; FAB-T and
    the targeted modes need one.  Returns, per sample, the smallest adversarial
    point found within ``eps``, else the clean image (torchattacks semantics).
    """

    def __init__(self, model, norm: str = "Linf", eps: float = 8 / 255, steps: int = 10,
                 n_restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9, verbose: bool = False, seed: int = 0,
                 multi_targeted: bool = False, n_classes: int = 10,
                 n_target_classes: int | None = None):
        super().__init__("FAB", model)
        self.norm = check_choice("norm", norm, ("Linf", "L2"))
        self.eps = check_non_negative("eps", eps)
        self.steps = check_int("steps", steps, 1, allow_integral_float=True)
        self.n_restarts = check_int("n_restarts", n_restarts, 1, allow_integral_float=True)
        self.alpha_max = check_non_negative("alpha_max", alpha_max)
        self.eta = check_positive("eta", eta)
        self.beta = check_in_range("beta", beta, 0.0, 1.0, low_open=True)
        self.verbose = verbose
        self.seed = check_int("seed", seed)
        self.multi_targeted = bool(multi_targeted)
        self.n_classes = check_int("n_classes", n_classes, 2, allow_integral_float=True)
        self.n_target_classes = check_int(
            "n_target_classes", self.n_classes - 1 if n_target_classes is None else n_target_classes,
            1, allow_integral_float=True)
        self.supported_mode = ["default", "targeted"]

    # --------------------------------------------------------- linearisation
    def _linearise_all(self, x: torch.Tensor, y: torch.Tensor):
        """df (N, K): z_l - z_y (inf at y); dg (N, K, D): their input gradients."""
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = self.get_logits(x)
            k = logits.shape[1]
            grads = []
            for cls in range(k):
                g, = torch.autograd.grad(logits[:, cls].sum(), x, retain_graph=cls < k - 1)
                grads.append(g.flatten(1))
        jac = torch.stack(grads, 1)
        logits = logits.detach()
        rows = torch.arange(x.shape[0], device=x.device)
        df = logits - logits[rows, y][:, None]
        dg = jac - jac[rows, y][:, None, :]
        df[rows, y] = _FAR
        return df, dg

    def _linearise_target(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
                          against_top: bool = False):
        """df (N, 1): z_t - z_y; dg (N, 1, D) its input gradient.

        ``against_top``: use the current strongest class other than ``t`` as
        ``y`` (reaching a target means beating every other class).
        """
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = self.get_logits(x)
            rows = torch.arange(x.shape[0], device=x.device)
            if against_top:
                y = logits.detach().scatter(1, t[:, None], float("-inf")).argmax(1)
            diff = logits[rows, t] - logits[rows, y]
            g, = torch.autograd.grad(diff.sum(), x)
        return diff.detach()[:, None], g.flatten(1)[:, None, :]

    @torch.no_grad()
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.get_logits(x).argmax(1)

    # ---------------------------------------------------------------- a run
    def _single_run(self, x0, y, t, gen, random_init: bool, res: torch.Tensor,
                    best: torch.Tensor, early_stop: bool, reach_target: bool = False) -> None:
        """One FAB run; improves ``best``/``res`` (smallest adversarial norm) in place.

        Success: prediction != ``y``, or == ``t`` when ``reach_target``.
        """
        n = x0.shape[0]
        shape = (n,) + (1,) * (x0.dim() - 1)
        flat0 = x0.flatten(1)
        x1 = x0.clone()
        if random_init:
            if self.norm == "Linf":
                noise = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype) * 2 - 1
            else:
                noise = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
            radius = torch.minimum(res, torch.full_like(res, self.eps)).reshape(shape)
            x1 = (x0 + 0.5 * radius * noise / _norm_of(noise, self.norm).clamp_min(1e-12)
                  .reshape(shape)).clamp(0, 1)
        active = torch.arange(n, device=x0.device)
        for _ in range(self.steps):
            if early_stop:
                keep = res[active] > self.eps
                active = active[keep]
                x1 = x1[keep]
                if active.numel() == 0:
                    return
            xa, ya, flat_a = x0[active], y[active], flat0[active]
            if t is None:
                df, dg = self._linearise_all(x1, ya)
            else:
                df, dg = self._linearise_target(x1, ya, t[active], against_top=reach_target)
            if self.norm == "Linf":
                dist = df.abs() / (dg.abs().sum(-1) + 1e-12)
            else:
                dist = df.abs() / (dg.norm(dim=-1) + 1e-12)
            pick = dist.argmin(1)
            rows = torch.arange(active.numel(), device=x0.device)
            w = dg[rows, pick]
            flat1 = x1.flatten(1)
            b = (w * flat1).sum(1) - df[rows, pick]
            d = project_onto_hyperplane_in_box(torch.cat([flat1, flat_a]), torch.cat([w, w]),
                                               torch.cat([b, b]), self.norm)
            d1, d2 = d[:active.numel()], d[active.numel():]
            a1 = _norm_of(d1, self.norm).clamp_min(1e-8)
            a2 = _norm_of(d2, self.norm).clamp_min(1e-8)
            alpha = (a1 / (a1 + a2)).clamp(0.0, self.alpha_max)[:, None]
            new = ((flat1 + self.eta * d1) * (1 - alpha) + (flat_a + self.eta * d2) * alpha)
            x1 = new.clamp(0, 1).reshape(xa.shape)
            pred = self._predict(x1)
            is_adv = pred == t[active] if reach_target else pred != ya
            if bool(is_adv.any()):
                size = _norm_of(x1 - xa, self.norm)
                better = is_adv & (size < res[active])
                idx = active[better]
                best[idx] = x1[better]
                res[idx] = size[better]
                back = xa + (x1 - xa) * self.beta
                x1 = torch.where(is_adv.reshape((-1,) + (1,) * (x1.dim() - 1)), back, x1)

    # --------------------------------------------------------------- driver
    def _attack(self, images: torch.Tensor, labels: torch.Tensor, early_stop: bool):
        with torch.no_grad():
            logits = self.get_logits(images)
        self.check_labels_against_logits(logits, labels)
        k = logits.shape[1]
        if self.multi_targeted and self.n_classes > k:
            raise ValueError(f"n_classes={self.n_classes} but the model outputs {k} logits")
        reach_target = self.targeted
        if self.targeted:
            targets = self.get_target_label(images, labels)
            self.check_labels_against_logits(logits, targets)
            target_sets = [targets]
            # In targeted modes the call's labels may be the targets themselves:
            # linearise against the clean prediction instead.
            labels = logits.argmax(1)
        elif self.multi_targeted:
            ranking = logits.argsort(dim=1, descending=True)
            target_sets = [ranking[:, j] for j in range(1, self.n_target_classes + 1)]
        else:
            target_sets = [None]
        # Untargeted and FAB-T: success is misclassification (AutoAttack's use
        # of FAB-T); targeted modes: reaching the target.
        res = torch.full((images.shape[0],), math.inf, device=images.device)
        already = (logits.argmax(1) == targets) if reach_target else (logits.argmax(1) != labels)
        res[already] = 0.0
        best = images.clone()

        def run(r: RestartRun) -> None:
            t = None if r.stage is None else r.stage[r.index]
            sub_res, sub_best = r.results
            # A restart after the first starts from a random point.
            self._single_run(images[r.index], labels[r.index], t, r.generator, r.restart > 0,
                             sub_res, sub_best, early_stop, reach_target)

        restart_on_unbroken([res, best], lambda: res > self.eps, run,
                            n_restarts=self.n_restarts, seed=self.seed, stages=target_sets)
        found = (res <= self.eps) & (res > 0)
        return torch.where(found.reshape((-1,) + (1,) * (images.dim() - 1)), best, images)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._attack(images, labels, early_stop=False)

    def _forward_eval(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._attack(images, labels, early_stop=True)
