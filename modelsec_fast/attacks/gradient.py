"""Shared machinery of the gradient attacks: the input gradient and the
iterate-and-project loop with optional per-sample early stopping.

Early stopping exists only for ``robust_accuracy`` (``Attack.run_for_evaluation``): a
plain attack call always runs every step on every sample, as torchattacks does.
"""

from __future__ import annotations

import torch

from .base import Attack
from .losses import resolve_loss, to_scalar

__all__ = ["GradientAttack", "success_mask"]


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

