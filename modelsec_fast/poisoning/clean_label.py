"""Clean-label attacks: the poisons keep their true labels.

* :class:`LabelConsistent` (Turner, Tsipras, Madry 2019): target-class images made
  hard to classify by an adversarial perturbation (our PGD), then stamped with a
  trigger patch; at test time the patch alone sends inputs to the target class.
* :class:`WitchesBrew` (Geiping et al. 2021): gradient matching. A budget of
  adversarial-class training images gets an eps-bounded perturbation whose training
  gradient points where the gradient of "classify these target images as the
  adversarial class" points; a model retrained on the set then misclassifies the
  targets. No trigger at test time.

Units: ``eps`` and step sizes in pixel space [0, 1], L-infinity.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import PGD
from ..validation import (check_class, check_in_range, check_int, check_non_negative,
                          check_positive)
from .base import EvaluationSet, PoisoningAttack, TriggerAttack, check_images
from .training import eval_mode, model_device
from .triggers import BadNets

__all__ = ["LabelConsistent", "WitchesBrew"]


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Global torch RNG seeded inside, restored outside (PGD's random start draws from it)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class LabelConsistent(TriggerAttack):
    """Label-consistent backdoor (Turner et al. 2019), all-to-one, labels unchanged.

    ``round(rate * N)`` images of class ``target`` get an L-inf PGD perturbation
    (``steps`` steps of size ``alpha`` within ``eps``, against ``model``, away from
    their true label) and then the BadNets patch at ``amplitude`` (1: the patch
    replaces the pixels; 0.25: a quarter of the way from the perturbed pixels to
    the patch). :meth:`apply_trigger` stamps the full patch on test inputs.

    Args:
        model: a classifier trained on clean data (the attacker's surrogate).
        target: the class whose images are poisoned and which the trigger selects.
        rate: fraction of the whole training set, in (0, 1]; the target class must
            hold that many images.
        eps, alpha, steps: the PGD perturbation (pixel space, L-inf).
        size, position, pattern: the patch, as :class:`BadNets`.
        amplitude: patch strength on the poisons, in (0, 1].
        seed: seeds the choice of poisons and PGD's random start.
        batch_size: images per PGD call.
    """

    name = "LabelConsistent"

    def __init__(self, model: nn.Module, target: int = 0, rate: float = 0.05, *,
                 eps: float = 16 / 255, alpha: float | None = None, steps: int = 10,
                 size: int = 3, position="bottom-right", pattern="checkerboard",
                 amplitude: float = 1.0, seed: int = 0, num_classes: int | None = None,
                 batch_size: int = 512):
        super().__init__(target, rate, "all-to-one", seed, num_classes)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.eps = check_non_negative("eps", eps)
        self.alpha = (check_positive("alpha", alpha) if alpha is not None
                      else max(self.eps / 4, 1e-6))
        self.steps = check_int("steps", steps, 1)
        self.amplitude = check_in_range("amplitude", amplitude, 0.0, 1.0, low_open=True)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.patch = BadNets(target, rate, size=size, position=position, pattern=pattern,
                             seed=seed, num_classes=num_classes)

    def settings(self):
        patch = self.patch.settings()
        return {**super().settings(), "eps": self.eps, "alpha": self.alpha, "steps": self.steps,
                "amplitude": self.amplitude, "size": patch["size"],
                "position": patch["position"], "pattern": patch["pattern"]}

    def _candidates(self, y, num_classes):
        return torch.nonzero(y == self.target).flatten()

    def _candidate_rule(self):
        return f"images of the target class {self.target}"

    def apply_trigger(self, x):
        return self.patch.apply_trigger(x)

    def _craft(self, x, y, num_classes, generator):
        device = model_device(self.model)
        attack = PGD(self.model, eps=self.eps, alpha=self.alpha, steps=self.steps,
                     random_start=True)
        out = []
        with _seeded(self.seed + 3, device):
            for i in range(0, len(y), self.batch_size):
                xb = x[i:i + self.batch_size].to(device)
                yb = y[i:i + self.batch_size].to(device)
                out.append(attack(xb, yb).to(x.device))
        adv = torch.cat(out)
        stamped = self.patch.apply_trigger(adv)
        return adv + self.amplitude * (stamped - adv), y.clone()


class WitchesBrew(PoisoningAttack):
    """Witches' Brew gradient matching (Geiping et al. 2021), clean-label and targeted.

    Exactly ``round(rate * N)`` training images of class ``adversarial_label`` are
    perturbed, each by at most ``eps`` (L-inf) and kept in [0, 1]; every other sample
    and every label stays as it was. The perturbation minimises
    ``1 - cos(grad_theta L(poisons + delta), grad_theta L(targets, adversarial_label))``
    on ``model`` (in eval mode, restored after), by signed Adam (Adam on the sign of
    the gradient) for ``steps`` steps with the learning rate divided by 10 at 3/8,
    5/8 and 7/8 of them, projected after each step; the best of ``restarts`` random
    starts (lowest final loss) is kept.

    Args:
        model: the attacker's surrogate, trained on clean data.
        target_x: (T, C, H, W) test images the attacker wants misclassified.
        target_y: (T,) their true labels.
        adversarial_label: the class they should be classified as; the poisons are
            drawn from its training images. Must differ from every ``target_y``.
        rate: the budget, a fraction of the whole training set in (0, 1].
        eps: L-inf radius (pixel space).
        steps, restarts: optimisation length and random restarts (>= 1 each).
        lr: Adam's step in pixel units; None: ``0.1 * eps`` (the paper's tau = 0.1).
        seed: seeds the choice of poisons and the restarts' starting points.
    """

    name = "WitchesBrew"

    def __init__(self, model: nn.Module, target_x: torch.Tensor, target_y: torch.Tensor,
                 adversarial_label: int, *, rate: float = 0.01, eps: float = 16 / 255,
                 steps: int = 240, restarts: int = 8, lr: float | None = None,
                 seed: int = 0, num_classes: int | None = None):
        super().__init__(rate, seed, num_classes)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_images(target_x, target_y, name="target_x")
        if len(target_y) == 0:
            raise ValueError("target_x holds no image")
        self.model = model
        self.target_x, self.target_y = target_x.detach(), target_y.detach().long()
        self.adversarial_label = check_int("adversarial_label", adversarial_label, 0)
        if bool((self.target_y == self.adversarial_label).any()):
            raise ValueError(f"adversarial_label {self.adversarial_label} equals a target's "
                             "true label: the attack would have nothing to do")
        self.eps = check_positive("eps", eps)
        self.steps = check_int("steps", steps, 1)
        self.restarts = check_int("restarts", restarts, 1)
        self.lr = check_positive("lr", lr) if lr is not None else 0.1 * self.eps
        self._last: dict[str, Any] = {}
        if self.num_classes is not None:
            self._check_labels(self.num_classes)

    def _check_labels(self, num_classes):
        check_class("adversarial_label", self.adversarial_label, num_classes)
        if int(self.target_y.max()) >= num_classes:
            raise ValueError(f"target_y must be < num_classes = {num_classes}, "
                             f"found {int(self.target_y.max())}")

    def settings(self):
        return {**super().settings(), "adversarial_label": self.adversarial_label,
                "targets": len(self.target_y), "target_labels": self.target_y.tolist(),
                "eps": self.eps, "steps": self.steps, "restarts": self.restarts, "lr": self.lr}

    def details(self):
        return dict(self._last)

    def _candidates(self, y, num_classes):
        return torch.nonzero(y == self.adversarial_label).flatten()

    def _candidate_rule(self):
        return f"images of the adversarial class {self.adversarial_label}"

    def evaluation_set(self, x=None, y=None) -> EvaluationSet:
        """The target images, their true labels and the adversarial label (x, y unused)."""
        return EvaluationSet(self.target_x, self.target_y,
                             torch.full_like(self.target_y, self.adversarial_label))

    def _craft(self, x, y, num_classes, generator):
        device = model_device(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameter to match gradients on")
        xs, ys = x.to(device), y.to(device)
        losses: list[float] = []
        best_delta, best_loss = None, float("inf")
        with eval_mode(self.model):
            target_grad = torch.autograd.grad(
                F.cross_entropy(self.model(self.target_x.to(device)),
                                torch.full_like(self.target_y, self.adversarial_label).to(device)),
                params)
            target_grad = [g.detach() for g in target_grad]
            target_norm = torch.sqrt(sum((g * g).sum() for g in target_grad))
            for restart in range(self.restarts):
                start = (torch.rand(xs.shape, generator=generator, dtype=xs.dtype) * 2 - 1)
                delta, loss = self._brew(xs, ys, params, target_grad, target_norm,
                                         (start * self.eps).to(device))
                losses.append(loss)
                if loss < best_loss:
                    best_loss, best_delta = loss, delta
        self._last = {"alignment_loss_per_restart": losses, "best_restart": losses.index(best_loss),
                      "alignment_loss": best_loss}
        # The ball and [0, 1] once more in image space, so rounding cannot leave them.
        poisoned = torch.min(torch.max(xs + best_delta, xs - self.eps), xs + self.eps).clamp(0, 1)
        return poisoned.to(x.device), y.clone()

    def _alignment_loss(self, xs, ys, delta, params, target_grad, target_norm, create_graph):
        loss = F.cross_entropy(self.model(xs + delta), ys)
        grads = torch.autograd.grad(loss, params, create_graph=create_graph)
        dot = sum((g * t).sum() for g, t in zip(grads, target_grad))
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        return 1.0 - dot / (norm * target_norm + 1e-12)

    def _project_(self, delta: torch.Tensor, xs: torch.Tensor) -> None:
        """In place: delta into the eps-ball, and xs + delta into [0, 1]."""
        delta.clamp_(-self.eps, self.eps)
        delta.copy_((xs + delta).clamp_(0.0, 1.0) - xs)

    def _brew(self, xs, ys, params, target_grad, target_norm, start):
        delta = start.clone()
        with torch.no_grad():
            self._project_(delta, xs)
        delta.requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=self.lr)
        milestones = sorted({int(self.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)} - {0})
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
        for _ in range(self.steps):
            loss = self._alignment_loss(xs, ys, delta, params, target_grad, target_norm, True)
            grad, = torch.autograd.grad(loss, delta)
            delta.grad = grad.sign()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                self._project_(delta, xs)
        final = self._alignment_loss(xs, ys, delta.detach(), params, target_grad, target_norm,
                                     False)
        return delta.detach(), float(final)
