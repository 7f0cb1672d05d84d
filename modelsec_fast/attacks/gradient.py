"""Shared machinery of the gradient attacks: the input gradient and the
iterate-and-project loop with optional per-sample early stopping.

Early stopping exists only for ``robust_accuracy`` (``Attack.run_for_evaluation``): a
plain attack call always runs every step on every sample, as torchattacks does.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..validation import to_model_space, to_pixels
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


Rows = dict  # field name -> tensor with one row per sample


def _cat(a: Rows | None, b: Rows | None) -> Rows | None:
    if a is None or b is None:
        return b if a is None else a
    return {k: torch.cat([a[k], b[k]]) for k in a}


def _select(rows: Rows, index: torch.Tensor) -> Rows:
    return {k: v[index] for k, v in rows.items()}


def _count(rows: Rows | None) -> int:
    return 0 if rows is None else rows["idx"].numel()


class EvaluationPool:
    """A gradient attack run over a stream of samples with every pass's batch kept full.

    For :func:`modelsec_fast.evaluate.robust_accuracy`: each sample gets up to
    ``runs`` runs of ``attack`` (``attack.steps`` steps each, a fresh start each),
    one after the other, and leaves at its first adversarial iterate that
    ``verify`` confirms (or after its last run).  The batch of a pass holds up to
    ``batch_size`` samples in any stage of any run: as soon as samples leave,
    waiting ones (from later chunks of the data) take their places, so the
    passes stay full instead of shrinking with every break and every restart.

    A sample whose iterate the pass found adversarial, or whose run ended, steps
    aside until ``verify`` has checked its example; checks go in batches of a
    quarter of ``batch_size`` (all at the end), not one small forward per pass.
    A refused claim resumes its run where it stopped; a run that ended without a
    break restarts (or the sample leaves unbroken after its last run).

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
        self._check_size = max(1, batch_size // 4)
        self._waiting: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._n_waiting = 0
        self._rows: Rows | None = None      # in the passes
        self._checks: Rows | None = None    # stepped aside, awaiting verify
        self._resume: Rows | None = None    # checked and refused: back into the passes first
        self._checked_labels = False
        #: sample-passes (forward + input gradient) spent so far.
        self.passes = 0

    def add(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        """Queue samples (caller space, on the model's device) with their int64 ids."""
        if images.shape[0]:
            self._waiting.append((images.detach(), labels.detach().long(), index))
            self._n_waiting += images.shape[0]

    def __len__(self) -> int:
        """Samples waiting, in the passes or awaiting a check."""
        return self._n_waiting + _count(self._rows) + _count(self._checks) + _count(self._resume)

    def _take_waiting(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = [torch.cat(col) for col in zip(*self._waiting)]
        taken = [p[:n] for p in parts]
        rest = [p[n:] for p in parts]
        self._waiting = [tuple(rest)] if rest[0].shape[0] else []
        self._n_waiting = rest[0].shape[0]
        return tuple(taken)

    def _start(self, rows: Rows) -> Rows:
        """``rows`` at the start of a run: a fresh start (and targets), step 0."""
        rows["adv"] = self.attack._start(rows["x"])
        rows["step"] = torch.zeros_like(rows["y"])
        targets = self.attack._targets(rows["x"], rows["y"])
        if targets is not None:
            rows["t"] = targets
        return rows

    def _refill(self) -> None:
        """Fill the passes up to ``batch_size``: resumed samples first, then new ones."""
        room = self.batch_size - _count(self._rows)
        if room > 0 and self._resume is not None:
            n = min(room, _count(self._resume))
            back = torch.arange(_count(self._resume), device=self._resume["idx"].device)
            self._rows = _cat(self._rows, _select(self._resume, back[:n]))
            self._resume = _select(self._resume, back[n:]) if n < back.numel() else None
            room -= n
        if room > 0 and self._n_waiting:
            xc, y, idx = self._take_waiting(room)
            new = {"xc": xc, "x": to_pixels(xc, self.attack._normalization()), "y": y, "idx": idx,
                   "run": torch.zeros_like(y), "done_passes": torch.zeros_like(y)}
            self._rows = _cat(self._rows, self._start(new))

    def _pass(self) -> None:
        """One forward + input-gradient pass of every sample in the passes, one step each;
        samples with a claimed break or an ended run step aside for a check."""
        attack, rows = self.attack, self._rows
        grad, logits = attack.input_gradient(rows["adv"], rows["y"], rows.get("t"),
                                             check=not self._checked_labels)
        self._checked_labels = True
        self.passes += rows["idx"].numel()
        rows["done_passes"] += 1
        claimed = success_mask(logits, rows["y"], rows.get("t"))
        any_claimed = bool(claimed.any())
        before = rows["adv"].detach().clone() if any_claimed else None
        rows["adv"] = attack._step_(rows["adv"].detach(), grad, rows["x"])  # may be in place
        rows["step"] += 1
        aside = claimed | (rows["step"] == attack.steps)
        if not any_claimed and not bool(aside.any()):
            return
        out = aside.nonzero().flatten()
        checks = _select(rows, out)
        # The example to check: the claimed iterate, else the run's last one.
        checks["candidate"] = checks["adv"] if before is None else torch.where(
            _rows_view(claimed[out], before), before[out], checks["adv"])
        self._checks = _cat(self._checks, checks)
        keep = (~aside).nonzero().flatten()
        self._rows = _select(rows, keep) if keep.numel() else None

    def _check(self, left: list[PoolOutcome]) -> None:
        """Verify every sample awaiting a check; broken and finished ones go to ``left``."""
        attack, checks = self.attack, self._checks
        self._checks = None
        adv = to_model_space(checks.pop("candidate"), attack._normalization())
        broken = self.verify(adv, checks["xc"], checks["y"])
        ended = checks["step"] >= attack.steps
        last = ~broken & ended & (checks["run"] + 1 >= self.runs)
        leave = broken | last
        if bool(leave.any()):
            out = leave.nonzero().flatten()
            left.append(PoolOutcome(
                checks["idx"][out], checks["y"][out], broken[out],
                torch.where(_rows_view(broken[out], adv), adv[out], checks["xc"][out]),
                checks["done_passes"][out]))
        resume = (~broken & ~ended).nonzero().flatten()     # a refused claim: its run goes on
        again = (~broken & ended & ~last).nonzero().flatten()  # an ended run: the next one
        back = _select(checks, resume) if resume.numel() else None
        if again.numel():
            restart = _select(checks, again)
            restart["run"] += 1
            back = _cat(back, self._start(restart))
        self._resume = _cat(self._resume, back)

    def run(self, flush: bool) -> PoolOutcome | None:
        """Make passes while the pool is full (or, with ``flush``, until it is empty).

        Returns the samples that left (None if none did).
        """
        left: list[PoolOutcome] = []
        with self.attack._attack_context(), self.attack.pixel_space():
            while True:
                self._refill()
                full = _count(self._rows) >= self.batch_size
                if _count(self._checks) >= self._check_size or (
                        not full and self._checks is not None and (flush or self._resume is None)):
                    self._check(left)
                    continue
                if _count(self._rows) == 0 or not (full or flush):
                    break
                self._pass()
        if not left:
            return None
        return PoolOutcome(*(torch.cat(parts) for parts in zip(*(
            (o.index, o.labels, o.broken, o.adv, o.passes) for o in left))))


def _rows_view(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape((-1,) + (1,) * (like.dim() - 1))
