"""Adversarial training: PGD-AT, FGSM with random start, Free AT and TRADES,
with or without DP-SGD.

::

    trainer = AdversarialTrainer(model, optimizer, method="fgsm_rs", eps=0.1)
    history = trainer.fit(train_loader, epochs=5, eval_loader=test_loader)

Methods (eps, alpha in pixel space [0, 1], L-inf):

* ``"pgd"`` (Madry et al. 2018): train on PGD examples, uniform random start,
  ``steps`` steps of size ``alpha`` (default ``2.5 * eps / steps``).
* ``"fgsm_rs"`` (Wong et al. 2020): one FGSM step of ``alpha = 1.25 * eps``
  from a uniform random start (the library's ``FFGSM``).  The
  catastrophic-overfitting guard is on by default (see
  :mod:`.overfitting_guard`).
* ``"free"`` (Shafahi et al. 2019): each minibatch is replayed ``replays``
  (= m) times; one backward pass gives both the weight gradient and the input
  gradient, which moves a perturbation carried across minibatches (step
  ``alpha``, default eps, through the fused ``ops.sign_step``).  ``fit(...,
  epochs)`` runs ``ceil(epochs / m)`` passes, so the number of gradient steps
  matches ``epochs`` ordinary epochs.
* ``"trades"`` (Zhang et al. 2019): PGD on the KL divergence from the clean
  prediction (through the attacks' ``loss=`` argument), then
  ``CE(f(x), y) + beta * KL(f(x) || f(x'))``.  The inner maximisation starts
  from a uniform random point of the eps-ball (the PGD attack's start) rather
  than the paper's ``0.001 * N(0, 1)``.

The attacks are the library's (:mod:`modelsec_fast.attacks`); the attack loss
is always summed per sample (``reduction="sum"``).  Normalised inputs: pass
``normalization=(mean, std)`` when the loader yields ``(x - mean) / std``; the
attacks are told with ``set_normalization_used`` and Free AT un-normalises the
same way, so eps is always in pixel units.

Under DP-SGD (the optimizer returned by ``PrivacyEngine.make_private``) the
adversarial batch is crafted per sample from the current model and the DP
step clips and noises the per-sample gradients of that batch.  The privacy
argument and the configurations that are refused are in
:mod:`.privacy_rules`.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ..validation import (PIXEL_HI, PIXEL_LO, check_in_range, check_input_pixels, check_int,
                          check_normalization, to_model_space, to_pixels)
from .free_at import CarriedPerturbation
from .overfitting_guard import (CatastrophicOverfittingWarning, OverfittingGuard,
                                accuracy_under_attack)
from .privacy_rules import check_private_setup, is_private_optimizer
from .trades import TradesAttackLoss, trades_loss_per_sample
from ..state import (CheckpointError, capture_training_state, read_checkpoint,
                     restore_training_state, write_checkpoint)

__all__ = ["AdversarialTrainer", "StepOutput", "METHODS"]

logger = logging.getLogger(__name__)

METHODS = ("pgd", "fgsm_rs", "free", "trades")
_CHECKPOINT_KIND = "adversarial_trainer"
# Held-out rows the overfitting guard attacks after each epoch (Wong et al.: one batch).
_GUARD_ROWS = 512


@dataclass
class StepOutput:
    """What one training step did.

    Attributes:
        loss: mean training loss over the batch (float; nan for an empty batch).
        correct: predictions on the training (adversarial) input that were right.
        size: batch size.
        adversarial: the batch the model was trained on, in model space
            (normalised if ``normalization`` was given); for Free AT the input
            of the last replay.
    """
    loss: float
    correct: int
    size: int
    adversarial: torch.Tensor


def _sum_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Summed, never averaged: each adversarial example must depend on its own record only.
    return F.cross_entropy(logits, labels, reduction="sum")




class AdversarialTrainer:
    """Train ``model`` on adversarial examples; optionally under DP-SGD.

    Args:
        model: the classifier (returns logits (B, K), K >= 2).  Under DP, the
            module returned by ``make_private``.
        optimizer: any ``torch.optim`` optimizer holding the model's trainable
            parameters, or the DP optimizer returned by ``make_private``.
        method: ``"pgd"``, ``"fgsm_rs"``, ``"free"`` or ``"trades"``.
        eps: L-inf radius in pixel space, in (0, 1].
        alpha: step size in pixel space, in (0, 1]; default ``2.5*eps/steps``
            (pgd, trades), ``1.25*eps`` (fgsm_rs), ``eps`` (free).
        steps: attack steps for pgd and trades (default 10); must be left
            unset for fgsm_rs and free.
        replays: Free AT's m (default 4), >= 1.
        beta: TRADES' robustness weight (default 6.0), >= 0.
        normalization: ``(mean, std)`` per channel if the loader yields
            normalised images and the model takes them.
        guard: catastrophic-overfitting guard; default on for fgsm_rs only.
        guard_data: ``(images, labels)`` held out from training for the guard.
            Default: the first batch of ``eval_loader``, else (not under DP)
            the first training batch, as Wong et al. do.
        guard_steps: PGD steps of the guard's check (default 10).
        guard_max_drop: collapse threshold, absolute drop of the guard's robust
            accuracy below its best (default 0.2).
        validation_is_public: under DP, the statement that ``guard_data`` and
            ``eval_loader`` hold public data (see :mod:`.privacy_rules`).
        eval_steps: PGD steps of the per-epoch evaluation (default 10).
        eval_max_batches: evaluate on at most this many ``eval_loader`` batches.
        privacy_engine: the ``PrivacyEngine`` (under DP): its accountant is
            saved in checkpoints, and with ``delta`` epsilon is reported.
        delta: DP delta for the per-epoch epsilon report.
        scheduler: an LR scheduler, stepped per ``scheduler_step``
            (``"epoch"`` or ``"batch"``; for Free AT a batch is one replay).
        checkpoint_path: file written at the end of every epoch (atomically).
        progress: show tqdm progress bars.

    Raises:
        ValueError / TypeError: an unknown method, eps or alpha out of range,
            a model without trainable parameters or with parameters the
            optimizer does not hold, Free AT under DP, and the errors listed
            in :meth:`fit`.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, method: str = "pgd", *,
                 eps: float = 8 / 255, alpha: float | None = None, steps: int | None = None,
                 replays: int = 4, beta: float = 6.0,
                 normalization: tuple[Sequence[float], Sequence[float]] | None = None,
                 guard: bool | None = None, guard_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                 guard_steps: int = 10, guard_max_drop: float = 0.2,
                 validation_is_public: bool = False,
                 eval_steps: int = 10, eval_max_batches: int | None = None,
                 privacy_engine=None, delta: float | None = None,
                 scheduler=None, scheduler_step: str = "epoch",
                 checkpoint_path: str | None = None, progress: bool = True):
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.model = model
        self.optimizer = optimizer
        self.device = self._check_model_and_optimizer(model, optimizer)
        self.private = is_private_optimizer(optimizer)

        self.eps = check_in_range("eps", eps, 0.0, PIXEL_HI - PIXEL_LO, low_open=True)
        if method in ("fgsm_rs", "free") and steps is not None:
            raise ValueError(f"steps is not used by method {method!r}; leave it unset")
        self.steps = check_int("steps", 10 if steps is None else steps, 1) \
            if method in ("pgd", "trades") else 1
        default_alpha = {"pgd": 2.5 * self.eps / self.steps, "trades": 2.5 * self.eps / self.steps,
                         "fgsm_rs": 1.25 * self.eps, "free": self.eps}[method]
        self.alpha = check_in_range("alpha", default_alpha if alpha is None else alpha,
                                    0.0, PIXEL_HI - PIXEL_LO, low_open=True)
        self.replays = check_int("replays", replays, 1)
        self.beta = check_in_range("beta", beta, 0.0, 1e6)
        self.normalization = check_normalization(normalization)

        self.guard_enabled = (method == "fgsm_rs") if guard is None else bool(guard)
        self.guard_steps = check_int("guard_steps", guard_steps, 1)
        self.guard_max_drop = check_in_range("guard_max_drop", guard_max_drop, 0.0, 1.0,
                                             low_open=True)
        self.guard_data = self._check_guard_data(guard_data)
        self.validation_is_public = bool(validation_is_public)
        self.eval_steps = check_int("eval_steps", eval_steps, 1)
        self.eval_max_batches = None if eval_max_batches is None \
            else check_int("eval_max_batches", eval_max_batches, 1)
        if self.private and method == "free":
            check_private_setup(method=method, guard=False, has_guard_data=False,
                                has_eval_loader=False, validation_is_public=False)

        self.privacy_engine = privacy_engine
        self.delta = None if delta is None else check_in_range("delta", delta, 0.0, 1.0,
                                                               low_open=True)
        if scheduler_step not in ("epoch", "batch"):
            raise ValueError(f"scheduler_step must be 'epoch' or 'batch', got {scheduler_step!r}")
        self.scheduler, self.scheduler_step = scheduler, scheduler_step
        self.checkpoint_path = checkpoint_path
        self.progress = bool(progress)

        self._trades_loss = TradesAttackLoss() if method == "trades" else None
        self.attack = self._build_training_attack()
        self.eval_attack = self._pgd(self.eval_steps)
        self._carried = CarriedPerturbation(self.eps, self.alpha, PIXEL_LO, PIXEL_HI) \
            if method == "free" else None
        self._guard: OverfittingGuard | None = None
        self._outputs_checked = False
        self.history: list[dict] = []
        self.optimizer_steps = 0
        self.stopped_reason: str | None = None

    # ------------------------------------------------------------ validation
    @staticmethod
    def _check_model_and_optimizer(model, optimizer) -> torch.device:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not all(hasattr(optimizer, a) for a in ("param_groups", "step", "zero_grad")):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no trainable parameters (all requires_grad=False); "
                             "adversarial training needs at least one")
        if any(p.is_meta for p in trainable):
            raise ValueError("the model has parameters on the meta device; materialise them "
                             "(e.g. model.to_empty(device=...) and initialise) before training")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in held]
        if missing:
            raise ValueError(
                f"the optimizer does not hold {len(missing)} trainable parameter(s) of the model "
                f"(e.g. {missing[0]!r}); build the optimizer from model.parameters()")
        devices = {p.device for p in trainable}
        if len(devices) != 1:
            raise ValueError(f"the model's parameters are spread over several devices {devices}; "
                             "adversarial training needs them on one device")
        return devices.pop()

    def _check_guard_data(self, guard_data):
        if guard_data is None:
            return None
        try:
            images, labels = guard_data
        except (TypeError, ValueError) as err:
            raise TypeError("guard_data must be a pair (images, labels) of tensors") from err
        self._check_batch(images, labels, "guard_data")
        if images.shape[0] == 0:
            raise ValueError("guard_data is empty; the guard needs at least one example")
        return images[:_GUARD_ROWS].to(self.device), labels[:_GUARD_ROWS].to(self.device)

    @staticmethod
    def _check_batch(images, labels, where: str) -> None:
        if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise TypeError(f"{where} must yield (images, labels) tensors, got "
                            f"({type(images).__name__}, {type(labels).__name__})")
        if not images.is_floating_point():
            raise TypeError(f"{where}: images must be floating point, got {images.dtype}")
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.dim() != 1:
            raise TypeError(f"{where}: labels must be an int64 tensor shaped (B,), "
                            f"got {labels.dtype} {tuple(labels.shape)}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")

    def _check_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One-time check that the model returns logits usable by the method."""
        if self._outputs_checked or labels.shape[0] == 0:
            return
        if logits.dim() != 2 or logits.shape[0] != labels.shape[0] or logits.shape[1] < 2:
            raise ValueError(f"the model must return logits shaped (B, K) with K >= 2, got "
                             f"{tuple(logits.shape)} for a batch of {labels.shape[0]}")
        if not logits.is_floating_point():
            raise ValueError(f"the model must return floating logits, got {logits.dtype}")
        if int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
            raise ValueError(f"labels must be in [0, {logits.shape[1]}), found "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        with torch.no_grad():
            rows = logits.detach().float()
            if bool((rows >= 0).all()) and torch.allclose(rows.sum(1), torch.ones_like(rows[:, 0])):
                raise ValueError("the model returns probabilities (rows are >= 0 and sum to 1); "
                                 "adversarial training and the attacks need logits, so remove "
                                 "the final softmax")
        self._outputs_checked = True

    # --------------------------------------------------------------- attacks
    def _configure(self, attack):
        if self.normalization is not None:
            attack.set_normalization_used(*self.normalization)
        return attack

    def _pgd(self, steps: int, loss=_sum_cross_entropy):
        from modelsec_fast.attacks import PGD

        return self._configure(PGD(self.model, eps=self.eps, alpha=2.5 * self.eps / steps,
                                   steps=steps, random_start=True, loss=loss))

    def _build_training_attack(self):
        from modelsec_fast.attacks import FFGSM, PGD

        if self.method == "pgd":
            return self._configure(PGD(self.model, eps=self.eps, alpha=self.alpha,
                                       steps=self.steps, random_start=True,
                                       loss=_sum_cross_entropy))
        if self.method == "trades":
            return self._configure(PGD(self.model, eps=self.eps, alpha=self.alpha,
                                       steps=self.steps, random_start=True,
                                       loss=self._trades_loss))
        if self.method == "fgsm_rs":
            return self._configure(FFGSM(self.model, eps=self.eps, alpha=self.alpha,
                                         loss=_sum_cross_entropy))
        return None  # Free AT steps through ops.sign_step inside the training step.

    # ------------------------------------------------------------- one step
    def _reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        # The DP engine undoes "mean" with the actual batch size; an empty batch sums to 0.
        reduction = getattr(self.optimizer, "loss_reduction", "mean") if self.private else "mean"
        if reduction == "sum" or per_sample.shape[0] == 0:
            return per_sample.sum()
        return per_sample.mean()

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """One training step (Free AT: one minibatch, ``replays`` optimizer steps).

        Args:
            images: float (B, ...) in [0, 1] (or normalised, see ``normalization``).
            labels: int64 (B,).
        Returns:
            :class:`StepOutput`.  Outside DP an empty batch takes no step;
            under DP it takes a noise-only step (Poisson sampling semantics).
        """
        self._check_batch(images, labels, "train_loader")
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True).long()
        if images.shape[0] == 0 and not self.private:
            return StepOutput(float("nan"), 0, 0, images)
        if self.method == "free":
            return self._free_step(images, labels)
        return self._attack_step(images, labels)

    def _attack_step(self, images, labels) -> StepOutput:
        if self.method == "trades":
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                clean = self.model(images)
            self.model.train(was_training)
            self._check_logits(clean, labels)
            self._trades_loss.clean_probs = F.softmax(clean.float(), dim=1)
        adversarial = self.attack(images, labels)
        self._trades_loss_release()

        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        adv_logits = self.model(adversarial)
        self._check_logits(adv_logits, labels)
        if self.method == "trades":
            per_sample = trades_loss_per_sample(self.model(images), adv_logits, labels, self.beta)
        else:
            per_sample = F.cross_entropy(adv_logits, labels, reduction="none")
        self._reduce(per_sample).backward()
        self._optimizer_step()
        correct = int((adv_logits.detach().argmax(1) == labels).sum())
        loss = float(per_sample.detach().mean()) if labels.shape[0] else float("nan")
        return StepOutput(loss, correct, int(labels.shape[0]), adversarial)

    def _trades_loss_release(self) -> None:
        if self._trades_loss is not None:
            self._trades_loss.clean_probs = None

    def _free_step(self, images, labels) -> StepOutput:
        pixels = to_pixels(images, self.normalization)
        check_input_pixels(pixels, unnormalised=self.normalization is not None,
                           hint="; pass normalization=(mean, std) if the loader normalises")
        self.model.train()
        total, correct = 0.0, 0
        for _ in range(self.replays):
            x_adv = self._carried.adversarial_input(pixels)
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model(to_model_space(x_adv, self.normalization))
            self._check_logits(logits, labels)
            per_sample = F.cross_entropy(logits, labels, reduction="none")
            per_sample.mean().backward()  # weight gradient and input gradient, one pass
            self._optimizer_step()
            self._carried.update(x_adv, pixels)
            total += float(per_sample.detach().mean())
            correct += int((logits.detach().argmax(1) == labels).sum())
            if self.scheduler is not None and self.scheduler_step == "batch":
                self.scheduler.step()
        return StepOutput(total / self.replays, round(correct / self.replays),
                          int(labels.shape[0]), to_model_space(x_adv.detach(), self.normalization))

    def _optimizer_step(self) -> None:
        self.optimizer.step()
        self.optimizer_steps += 1

    # ------------------------------------------------------------------ fit
    def fit(self, train_loader: Iterable, epochs: int, eval_loader: Iterable | None = None, *,
            resume: bool = False) -> list[dict]:
        """Train for ``epochs`` epochs (Free AT: ``ceil(epochs / replays)`` passes).

        After each epoch: evaluate clean and PGD robust accuracy on
        ``eval_loader`` (if given), run the overfitting guard (if on), log one
        line, and write the checkpoint (if ``checkpoint_path``).

        Args:
            train_loader: yields ``(images, labels)`` batches (extra items ignored).
            epochs: >= 1.
            eval_loader: optional, same batch format.
            resume: continue from ``checkpoint_path`` if that file exists
                (training state, optimizer, scheduler, RNG, accountant); the
                result equals an uninterrupted run.
        Returns:
            :attr:`history`, one dict per epoch: ``epoch``, ``train_loss``,
            ``train_accuracy`` (on the adversarial training inputs),
            ``train_time_s``, ``optimizer_steps``, and if available
            ``clean_accuracy``, ``robust_accuracy`` (eval), ``guard_robust_accuracy``,
            ``epsilon``.
        Raises:
            ValueError: ``epochs < 1``; a loader that yields no batches;
                ``resume`` without ``checkpoint_path``; under DP the refusals of
                :func:`.privacy_rules.check_private_setup`, and checkpointing
                without ``privacy_engine``.
            CheckpointError (a ValueError, from :mod:`modelsec_fast.state`):
                ``resume`` from a checkpoint that is not this trainer's, damaged,
                of an old format, of another configuration or model, or that
                holds a pickled object (refused; nothing in it is executed).
            CatastrophicOverfittingWarning (warning): the guard restored the
                best weights and training stopped early.
        """
        epochs = check_int("epochs", epochs, 1)
        passes = math.ceil(epochs / self.replays) if self.method == "free" else epochs
        if self.private:
            check_private_setup(method=self.method, guard=self.guard_enabled,
                                has_guard_data=self.guard_data is not None,
                                has_eval_loader=eval_loader is not None,
                                validation_is_public=self.validation_is_public)
            if self.checkpoint_path is not None and self.privacy_engine is None:
                raise ValueError("checkpointing under DP needs privacy_engine= so the accountant's "
                                 "state is saved; a resumed run would under-report epsilon")
        if resume and self.checkpoint_path is None:
            raise ValueError("resume=True needs checkpoint_path")
        start = 0
        if resume:
            start = self._load_checkpoint(train_loader, passes)
        if self.stopped_reason is not None:
            return self.history
        if self.guard_enabled and self._guard is None:
            self._guard = self._build_guard(train_loader, eval_loader)

        for epoch in range(start, passes):
            record = self._train_epoch(train_loader, epoch, passes)
            if eval_loader is not None:
                record["clean_accuracy"], record["robust_accuracy"] = self.evaluate(eval_loader)
            collapsed = False
            if self._guard is not None:
                record["guard_robust_accuracy"], collapsed = self._guard.check(self.model, epoch + 1)
            if self.privacy_engine is not None and self.delta is not None:
                record["epsilon"] = float(self.privacy_engine.get_epsilon(self.delta))
            if collapsed:
                self.stopped_reason = (
                    f"catastrophic overfitting after epoch {epoch + 1}: guard robust accuracy "
                    f"{record['guard_robust_accuracy']:.3f} fell more than {self.guard_max_drop:g} "
                    f"below its best {self._guard.best_robust_accuracy:.3f} (epoch "
                    f"{self._guard.best_epoch}); restored those weights and stopped")
                record["stopped"] = self.stopped_reason
            self.history.append(record)
            self._report(record, passes)
            if self.checkpoint_path is not None:
                self._save_checkpoint(train_loader, epoch + 1, passes)
            if collapsed:
                warnings.warn(self.stopped_reason, CatastrophicOverfittingWarning, stacklevel=2)
                break
        return self.history

    def _train_epoch(self, loader, epoch: int, passes: int) -> dict:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        batches = self._progress(loader, f"{self.method} epoch {epoch + 1}/{passes}")
        seen = examples = correct = 0
        loss_sum = 0.0
        started = time.perf_counter()
        for batch in batches:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError("train_loader must yield (images, labels) pairs, got "
                                f"{type(batch).__name__}")
            out = self.train_step(batch[0], batch[1])
            seen += 1
            if out.size:
                examples += out.size
                correct += out.correct
                loss_sum += out.loss * out.size
            if self.scheduler is not None and self.scheduler_step == "batch" \
                    and self.method != "free":
                self.scheduler.step()
            if hasattr(batches, "set_postfix") and out.size:
                batches.set_postfix(loss=f"{out.loss:.3f}", acc=f"{out.correct / out.size:.3f}")
        elapsed = time.perf_counter() - started
        if hasattr(batches, "close"):
            batches.close()
        if seen == 0:
            raise ValueError("train_loader yielded no batches; check the dataset and batch_size "
                             "(drop_last=True with fewer examples than batch_size yields none)")
        if self.scheduler is not None and self.scheduler_step == "epoch":
            self.scheduler.step()
        return {"epoch": epoch + 1, "method": self.method,
                "train_loss": loss_sum / examples if examples else float("nan"),
                "train_accuracy": correct / examples if examples else float("nan"),
                "train_time_s": elapsed, "batches": seen, "optimizer_steps": self.optimizer_steps}

    def evaluate(self, loader: Iterable) -> tuple[float, float]:
        """(clean accuracy, PGD-``eval_steps`` robust accuracy) on ``loader``, in [0, 1].

        Reads at most ``eval_max_batches`` batches.  Raises ValueError if the
        loader yields no examples.
        """
        clean = robust = total = batches = 0
        for batch in loader:
            if self.eval_max_batches is not None and batches >= self.eval_max_batches:
                break
            images, labels = batch[0], batch[1]
            self._check_batch(images, labels, "eval_loader")
            images, labels = images.to(self.device), labels.to(self.device).long()
            batches += 1
            if labels.shape[0] == 0:
                continue
            c, r = accuracy_under_attack(self.model, self.eval_attack, images, labels)
            n = int(labels.shape[0])
            clean, robust, total = clean + c * n, robust + r * n, total + n
        if total == 0:
            raise ValueError("eval_loader yielded no examples")
        return clean / total, robust / total

    def _build_guard(self, train_loader, eval_loader) -> OverfittingGuard:
        if self.guard_data is not None:
            images, labels = self.guard_data
        else:
            source = eval_loader if eval_loader is not None else train_loader
            where = "eval_loader" if eval_loader is not None else "train_loader"
            batch = next(iter(source), None)
            if batch is None:
                raise ValueError(f"{where} yielded no batches (needed for the overfitting guard)")
            self._check_batch(batch[0], batch[1], where)
            images = batch[0][:_GUARD_ROWS].to(self.device)
            labels = batch[1][:_GUARD_ROWS].to(self.device).long()
        return OverfittingGuard(self._pgd(self.guard_steps), images, labels, self.guard_max_drop)

    def _progress(self, loader, description: str):
        if not self.progress:
            return loader
        from tqdm.auto import tqdm

        return tqdm(loader, desc=description, leave=False, dynamic_ncols=True)

    def _report(self, record: dict, passes: int) -> None:
        parts = [f"epoch {record['epoch']}/{passes} [{self.method}]",
                 f"loss {record['train_loss']:.4f}", f"adv-train acc {record['train_accuracy']:.3f}",
                 f"time {record['train_time_s']:.1f}s"]
        for key, label in (("clean_accuracy", "clean"), ("robust_accuracy", "robust"),
                           ("guard_robust_accuracy", "guard robust"), ("epsilon", "eps_DP")):
            if key in record:
                parts.append(f"{label} {record[key]:.3f}")
        line = ", ".join(parts)
        logger.info(line)
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(line)

    # ----------------------------------------------------------- checkpoint
    def _config(self) -> dict:
        return {"method": self.method, "eps": self.eps, "alpha": self.alpha, "steps": self.steps,
                "replays": self.replays, "beta": self.beta, "private": self.private}

    def _accountant(self):
        """The accountant saved with the state: the privacy engine's, under DP."""
        return self.privacy_engine.accountant \
            if self.private and self.privacy_engine is not None else None

    def _save_checkpoint(self, train_loader, epochs_done: int, passes: int) -> None:
        own = {
            "config": self._config(), "epochs_done": epochs_done, "passes": passes,
            "history": self.history, "optimizer_steps": self.optimizer_steps,
            "stopped_reason": self.stopped_reason,
            "guard": None if self._guard is None else {
                **self._guard.state_dict(), "images": self._guard.images,
                "labels": self._guard.labels},
            "free": None if self._carried is None else self._carried.state_dict(),
        }
        state = capture_training_state(model=self.model, optimizer=self.optimizer,
                                       scheduler=self.scheduler, loader=train_loader,
                                       accountant=self._accountant(), extra=own)
        write_checkpoint(self.checkpoint_path, state, kind=_CHECKPOINT_KIND)

    def _load_checkpoint(self, train_loader, passes: int) -> int:
        path = self.checkpoint_path
        if not os.path.exists(path):
            logger.info("no checkpoint at %s; starting from scratch", path)
            return 0
        state = read_checkpoint(path, kind=_CHECKPOINT_KIND)
        own = state["extra"]
        if own.get("config") != self._config():
            raise CheckpointError(f"checkpoint {path}: written with {own.get('config')}, but this "
                                  f"trainer has {self._config()}; resume with the same "
                                  "configuration")
        if own["passes"] != passes:
            raise CheckpointError(f"checkpoint {path}: belongs to a run of {own['passes']} "
                                  f"passes, this fit asks for {passes}")
        restore_training_state(state, source=path, model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler, loader=train_loader,
                               accountant=self._accountant())
        self.history = list(own["history"])
        self.optimizer_steps = own["optimizer_steps"]
        self.stopped_reason = own["stopped_reason"]
        if own["guard"] is not None:
            guard = own["guard"]
            self._guard = OverfittingGuard(self._pgd(self.guard_steps),
                                           guard["images"].to(self.device),
                                           guard["labels"].to(self.device), self.guard_max_drop)
            self._guard.load_state_dict(guard)
        if own["free"] is not None:
            delta = own["free"]["delta"]
            self._carried.load_state_dict({"delta": None if delta is None else delta.to(self.device)})
        return int(own["epochs_done"])
