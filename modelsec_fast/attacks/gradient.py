"""Shared machinery of the gradient attacks: the input gradient and the
iterate-and-project loop with optional per-sample early stopping.

Early stopping exists only for ``robust_accuracy`` (``Attack.run_for_evaluation``): a
plain attack call always runs every step on every sample, as torchattacks does.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .base import Attack
from .losses import resolve_loss, to_scalar

__all__ = ["GradientAttack", "success_mask", "EvaluationPool", "PoolOutcome"]


def success_mask(logits: torch.Tensor, labels: torch.Tensor,
                 targets: torch.Tensor | None) -> torch.Tensor:
    """Bool (B,): misclassified (untargeted) or classified as the target."""
    pred = logits.argmax(1)
    return pred == targets if targets is not None else pred != labels


class GradientAttack(Attack):
    """An attack that follows the input gradient of ``loss`` (torchattacks sign).

    Subclasses provide ``_start(images)`` (the first iterate) and
    ``_step_(adv, grad, images) -> adv`` (one projected update, in place when
    possible) and set ``self.steps``; the loop itself lives here.
    """

    def __init__(self, name, model, loss=None):
        super().__init__(name, model)
        self.loss = resolve_loss(loss)

    def _objective(self, logits: torch.Tensor, labels: torch.Tensor,
                   targets: torch.Tensor | None) -> torch.Tensor:
        if targets is not None:
            return -to_scalar(self.loss(logits, targets))
        return to_scalar(self.loss(logits, labels))

    def input_gradient(self, adv: torch.Tensor, labels: torch.Tensor,
                       targets: torch.Tensor | None,
                       check: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(gradient of the objective w.r.t. ``adv``, detached logits).

        ``check``: validate the logits' shape and the label range first (done
        on the first step only, since it synchronises with the device).
        """
        adv.requires_grad_(True)
        with torch.enable_grad():
            logits = self.get_logits(adv)
            if check:
                self.check_labels_against_logits(logits, labels)
                if targets is not None:
                    self.check_labels_against_logits(logits, targets)
            cost = self._objective(logits, labels, targets)
        grad, = torch.autograd.grad(cost, adv, retain_graph=False, create_graph=False)
        return grad, logits.detach()

    def _targets(self, images, labels):
        return self.get_target_label(images, labels) if self.targeted else None

    def _start(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()

    def _step_(self, adv, grad, images) -> torch.Tensor:
        """One projected update of ``adv`` (B, ...) given the objective's gradient."""
        raise TypeError(f"{type(self).__name__} defines no update step")

    def _iterate(self, images: torch.Tensor, labels: torch.Tensor,
                 early_stop: bool) -> torch.Tensor:
        targets = self._targets(images, labels)
        adv = self._start(images)
        if not early_stop:
            for step in range(self.steps):
                grad, _ = self.input_gradient(adv, labels, targets, check=step == 0)
                adv = self._step_(adv.detach(), grad, images)
            return adv
        return self._iterate_early_stop(images, labels, targets, adv)

    def _iterate_early_stop(self, images, labels, targets, adv) -> torch.Tensor:
        """Run the loop, freezing each sample at its first adversarial iterate."""
        result = adv.clone()
        active = torch.arange(images.shape[0], device=images.device)
        x, y, t = images, labels, targets
        for step in range(self.steps):
            grad, logits = self.input_gradient(adv, y, t, check=step == 0)
            adv = adv.detach()
            done = success_mask(logits, y, t)
            if bool(done.any()):
                result[active[done]] = adv[done]
                keep = ~done
                active, adv, grad, x, y = active[keep], adv[keep], grad[keep], x[keep], y[keep]
                t = t[keep] if t is not None else None
                if active.numel() == 0:
                    return result
            adv = self._step_(adv, grad, x)
        result[active] = adv
        return result

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._iterate(images, labels, early_stop=False)

    def _forward_eval(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._iterate(images, labels, early_stop=True)


def uniform_linf_start(images: torch.Tensor, eps: float) -> torch.Tensor:
    """``clamp(images + U(-eps, eps), 0, 1)`` drawn from torch's global RNG."""
    noise = torch.empty_like(images).uniform_(-eps, eps)
    return torch.clamp(images + noise, min=0, max=1)



@dataclasses.dataclass
class PoolOutcome:
    """Samples that left an :class:`EvaluationPool`, in caller space.

    Attributes:
        index: int64 (n,), the ids given to :meth:`EvaluationPool.add`.
        labels: int64 (n,), their labels.
        broken: bool (n,): a verified adversarial example was found.
        adv: (n, ...) that example where broken, else the image.
        passes: int64 (n,), gradient passes each sample took (its floor: every
            pass of every run when it survived, the passes until it broke otherwise).
    """

    index: torch.Tensor
    labels: torch.Tensor
    broken: torch.Tensor
    adv: torch.Tensor
    passes: torch.Tensor


class EvaluationPool:
    """A gradient attack run over a stream of samples with every pass's batch kept full.

    For :func:`modelsec_fast.evaluate.robust_accuracy`: each sample gets up to
    ``runs`` runs of ``attack`` (``attack.steps`` steps each, a fresh start each),
    one after the other, and leaves at its first adversarial iterate that
    ``verify`` confirms (or after its last run).  The batch of a pass holds up to
    ``batch_size`` samples in any stage of any run: as soon as samples leave,
    waiting ones (from later chunks of the data) take their places, so the
    passes stay full instead of shrinking with every break and every restart.

    Each sample's steps are the attack's own (``_start``, ``input_gradient``,
    ``_step_``): per sample the same iterates as a call of
    :meth:`Attack.run_for_evaluation` per run, given the same random starts.

    Args:
        attack: a :class:`GradientAttack` (its steps, start, update and loss).
        runs: runs per sample (>= 1).
        batch_size: samples per pass.
        verify: ``(adv, images, labels) -> bool (n,)``, caller space: whether
            each claimed example really is adversarial (range, ball, eval-mode
            prediction).  Only verified examples count as broken.
    """

    def __init__(self, attack: "GradientAttack", runs: int, batch_size: int,
                 verify: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]):
        self.attack, self.runs, self.batch_size, self.verify = attack, runs, batch_size, verify
        self._waiting: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._n_waiting = 0
        self._rows: dict[str, torch.Tensor] | None = None
        self._checked = False
        #: sample-passes (forward + input gradient) spent so far.
        self.passes = 0

    def add(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        """Queue samples (caller space, on the model's device) with their int64 ids."""
        if images.shape[0]:
            self._waiting.append((images.detach(), labels.detach().long(), index))
            self._n_waiting += images.shape[0]

    def __len__(self) -> int:
        """Samples waiting or in the pool."""
        return self._n_waiting + (0 if self._rows is None else self._rows["idx"].numel())

    def _take_waiting(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = [torch.cat(col) for col in zip(*self._waiting)]
        taken = [p[:n] for p in parts]
        rest = [p[n:] for p in parts]
        self._waiting = [tuple(rest)] if rest[0].shape[0] else []
        self._n_waiting = rest[0].shape[0]
        return tuple(taken)

    def _start_rows(self, rows: dict[str, torch.Tensor], sub: torch.Tensor | None) -> None:
        """(Re)start the runs of ``rows`` (all, or those at ``sub``): fresh start, step 0."""
        x = rows["x"] if sub is None else rows["x"][sub]
        y = rows["y"] if sub is None else rows["y"][sub]
        adv = self.attack._start(x)
        targets = self.attack._targets(x, y)
        if sub is None:
            rows["adv"], rows["step"] = adv, torch.zeros_like(rows["y"])
            if targets is not None:
                rows["t"] = targets
        else:
            rows["adv"][sub] = adv
            rows["step"][sub] = 0
            if targets is not None:
                rows["t"][sub] = targets

    def _refill(self) -> None:
        have = 0 if self._rows is None else self._rows["idx"].numel()
        room = self.batch_size - have
        if room <= 0 or not self._n_waiting:
            return
        xc, y, idx = self._take_waiting(room)
        new = {"xc": xc, "x": self.attack.to_pixels(xc), "y": y, "idx": idx,
               "run": torch.zeros_like(y), "done_passes": torch.zeros_like(y)}
        self._start_rows(new, None)
        if self._rows is None:
            self._rows = new
        else:
            self._rows = {k: torch.cat([self._rows[k], new[k]]) for k in new}

    def run(self, flush: bool) -> PoolOutcome | None:
        """Make passes while the pool is full (or, with ``flush``, until it is empty).

        Returns the samples that left (None if none did).
        """
        attack, steps = self.attack, self.attack.steps
        left: list[PoolOutcome] = []
        with attack._attack_context(), attack.pixel_space():
            while True:
                self._refill()
                rows = self._rows
                n = 0 if rows is None else rows["idx"].numel()
                if n == 0 or (n < self.batch_size and not flush):
                    break
                grad, logits = attack.input_gradient(rows["adv"], rows["y"], rows.get("t"),
                                                     check=not self._checked)
                self._checked = True
                self.passes += n
                rows["done_passes"] += 1
                # Claimed breaks (the iterate just seen) and finished runs (after this step).
                claimed = success_mask(logits, rows["y"], rows.get("t"))
                any_claimed = bool(claimed.any())
                before = rows["adv"].detach().clone() if any_claimed else None
                rows["adv"] = attack._step_(rows["adv"].detach(), grad, rows["x"])  # may be in place
                rows["step"] += 1
                ends = rows["step"] == steps
                check = claimed | ends
                leave = broken = torch.zeros_like(claimed)
                if any_claimed or bool(ends.any()):
                    candidate = rows["adv"] if before is None else \
                        torch.where(_rows_view(claimed, before), before, rows["adv"])
                    sub = check.nonzero().flatten()
                    ok = self.verify(attack.from_pixels(candidate[sub]), rows["xc"][sub],
                                     rows["y"][sub])
                    broken = torch.zeros_like(claimed)
                    broken[sub[ok]] = True
                    rows["adv"][sub[ok]] = candidate[sub[ok]]
                    # A claim the check refused goes on stepping, unless its run is over.
                    over = ends & ~broken
                    last = over & (rows["run"] + 1 >= self.runs)
                    again = (over & ~last).nonzero().flatten()
                    if again.numel():
                        rows["run"][again] += 1
                        self._start_rows(rows, again)
                    leave = broken | last
                if bool(leave.any()):
                    out = leave.nonzero().flatten()
                    left.append(PoolOutcome(
                        rows["idx"][out], rows["y"][out], broken[out],
                        torch.where(_rows_view(broken[out], rows["xc"][out]),
                                    attack.from_pixels(rows["adv"][out]), rows["xc"][out]),
                        rows["done_passes"][out]))
                    keep = (~leave).nonzero().flatten()
                    self._rows = {k: v[keep] for k, v in rows.items()}
        if not left:
            return None
        return PoolOutcome(*(torch.cat(parts) for parts in zip(*(
            (o.index, o.labels, o.broken, o.adv, o.passes) for o in left))))


def _rows_view(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape((-1,) + (1,) * (like.dim() - 1))
