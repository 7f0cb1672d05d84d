"""DeepFool (Moosavi-Dezfooli et al. 2016), L2 and L-inf, batched over samples, top-k classes.

Each step linearises the model at the current iterate ``p`` and moves to the
nearest linearised boundary between the label ``y`` and one of the candidate
classes ``k``: with ``f_k = z_k - z_y`` and ``w_k = grad f_k``, the class with
the smallest ``|f_k| / ||w_k||_*`` wins (``||.||_*`` the dual norm: L2 for L2,
L1 for L-inf) and the step is ``|f_k| / ||w_k||_2^2 * w_k`` (L2) or
``|f_k| / ||w_k||_1 * sign(w_k)`` (L-inf).  The iterate stays in the box:
``p <- clamp(p + step, 0, 1)`` (as ART's and torchattacks').  The overshoot
scales the accumulated perturbation, as in the authors' reference code and
ART: the candidate example is ``clamp(x + (1 + overshoot) * (p - x), 0, 1)``,
tested after every step, and a sample stops at its first misclassified one.

Why clamp rather than drop the components the box blocks: a step whose pixels
partly saturate falls short of the linearised boundary, so the iterate creeps
up to the curved boundary and is re-linearised on the way; a full step in the
free pixels overshoots it (on a Fashion-MNIST CNN, 1-7 steps and a median L2
about 10% below that of the full step).  With ``overshoot = 0`` the creeping
iterate may approach the boundary without crossing it (ART's behaviour too):
use a small positive overshoot.

The candidates are the ``top_k - 1`` classes with the largest clean logits
besides the label (ART's ``nb_grads`` idea): a step costs one forward at the
candidate example, one at the iterate and ``top_k - 1`` input-gradient passes
for the samples still running, never a full Jacobian per sample.  On an affine
classifier one step lands exactly ``(1 + overshoot)`` times the distance to the
boundary away (while the box does not bind).

Units: pixel space [0, 1]; the returned examples are the first misclassified
candidates, or the last candidate where none was reached in ``steps``.
"""

from __future__ import annotations

import torch

from ..validation import check_choice, check_int, check_non_negative
from .minimum_norm import MinimumNormAttack, warn_if_probabilities

__all__ = ["DeepFool"]

_GUARD = 1e-12


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


class DeepFool(MinimumNormAttack):
    """DeepFool, untargeted (torchattacks' arguments plus ``norm`` and ``top_k``).

    Args:
        model: the classifier (returns logits; probabilities get a warning).
        steps: maximum steps per sample (>= 1). Default 50.
        overshoot: the accumulated perturbation is scaled by ``1 + overshoot`` (>= 0;
            0 may leave samples just short of the boundary). Default 0.02.
        norm: "L2" or "Linf". Default "L2".
        top_k: classes considered, the label included (>= 2); fewer when the
            model has fewer classes. Default 10.

    Raises:
        ValueError: steps or top_k out of range, overshoot < 0, an unknown norm.
    """

    def __init__(self, model, steps: int = 50, overshoot: float = 0.02, norm: str = "L2",
                 top_k: int = 10):
        super().__init__("DeepFool", model)
        self.steps = check_int("steps", steps, 1, allow_integral_float=True)
        self.overshoot = check_non_negative("overshoot", overshoot)
        self.norm = check_choice("norm", norm, ("L2", "Linf"))
        self.top_k = check_int("top_k", top_k, 2, allow_integral_float=True)
        self.supported_mode = ["default"]

    def _candidates(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """int64 (B, k - 1): the other classes with the largest clean logits."""
        k = min(self.top_k, logits.shape[1]) - 1
        others = logits.scatter(1, labels[:, None], float("-inf"))
        return others.topk(k, dim=1).indices

    def _step(self, diffs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """The step (B, ...) to the nearest linearised boundary.

        diffs: (B, k) values ``z_c - z_y`` (negative while correctly classified);
        grads: (k, B, ...) their input gradients.
        """
        flat = grads.flatten(2)
        dual = flat.norm(dim=2) if self.norm == "L2" else flat.abs().sum(2)    # (k, B)
        distance = diffs.abs().t() / dual.clamp_min(_GUARD)                      # (k, B)
        best = distance.argmin(0)                                                # (B,)
        cols = torch.arange(best.numel(), device=best.device)
        w = grads[best, cols]                                                    # (B, ...)
        size = diffs.abs()[cols, best]
        if self.norm == "L2":
            scale = size / dual[best, cols].pow(2).clamp_min(_GUARD)
            return w * _view(scale, w)
        return w.sign() * _view(size / dual[best, cols].clamp_min(_GUARD), w)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        result = images.clone()
        active = torch.arange(images.shape[0], device=images.device)
        x, y, p, cand = images, labels, images.clone(), None
        scale = 1.0 + self.overshoot
        for step in range(self.steps + 1):
            candidate = torch.clamp(x + scale * (p - x), 0.0, 1.0)
            with torch.no_grad():
                logits = self.get_logits(candidate)
            if step == 0:
                self.check_labels_against_logits(logits, y)
                warn_if_probabilities(logits, self.attack)
                cand = self._candidates(logits, y)
            done = logits.argmax(1) != y
            result[active[done]] = candidate[done]
            if step == self.steps:
                result[active] = candidate
                break
            keep = ~done
            active, x, y, p, cand = active[keep], x[keep], y[keep], p[keep], cand[keep]
            if active.numel() == 0:
                break
            p = torch.clamp(p + self._step(*self._linearise(p, y, cand)), 0.0, 1.0)
        return result

    def _linearise(self, p, y, cand) -> tuple[torch.Tensor, torch.Tensor]:
        """(diffs (B, k) ``z_c - z_y`` at ``p``, their input gradients (k, B, ...))."""
        point = p.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.get_logits(point)
            diffs = logits.gather(1, cand) - logits.gather(1, y[:, None])
            grads = [torch.autograd.grad(diffs[:, j].sum(), point,
                                         retain_graph=j + 1 < cand.shape[1])[0]
                     for j in range(cand.shape[1])]
        return diffs.detach(), torch.stack(grads)
