"""DeepFool (Moosavi-Dezfooli et al. 2016), L2 and L-inf, batched over samples, top-k classes.

Each step linearises the model around the current point and moves to the
nearest linearised boundary between the label ``y`` and one of the candidate
classes ``k``: with ``f_k = z_k - z_y`` and ``w_k = grad f_k``, the class with
the smallest ``|f_k| / ||w_k||_*`` wins (``||.||_*`` the dual norm: L2 for L2,
L1 for L-inf) and the step is ``|f_k| / ||w_k||_2^2 * w_k`` (L2) or
``|f_k| / ||w_k||_1 * sign(w_k)`` (L-inf).  As in the authors' reference code the
steps accumulate in ``r``, the iterate is ``clamp(x + (1 + overshoot) * r, 0, 1)``
and a sample stops at its first misclassified iterate.

Inside the box: gradient components that would push a pixel already at 0 or 1
further out are dropped, so the step spends its length on pixels that can move
(on images with many saturated pixels the plain step keeps growing in clamped
directions and stalls).

The candidates are the ``top_k - 1`` classes with the largest clean logits
besides the label (ART's ``nb_grads`` idea): a step costs one forward and
``top_k - 1`` input-gradient passes for the whole batch, never a full Jacobian
per sample.  On an affine classifier one step lands exactly
``(1 + overshoot)`` times the distance to the boundary away.

Units: pixel space [0, 1]; the returned examples are the first misclassified
iterates, or the last iterate where none was reached in ``steps``.
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
        overshoot: the accumulated step is scaled by ``1 + overshoot`` (>= 0). Default 0.02.
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
        r_tot = torch.zeros_like(images)
        active = torch.arange(images.shape[0], device=images.device)
        x, y, cand = images, labels, None
        scale = 1.0 + self.overshoot
        for step in range(self.steps + 1):
            adv, logits = self._forward_at(x, r_tot, scale)
            if step == 0:
                self.check_labels_against_logits(logits, y)
                warn_if_probabilities(logits, self.attack)
                cand = self._candidates(logits.detach(), y)
            done = logits.detach().argmax(1) != y
            rows = None  # rows of the gradients to keep, when done samples stay in the graph
            n_done = int(done.sum())
            if n_done:
                result[active[done]] = adv.detach()[done]
                keep = ~done
                active, x, y, cand, r_tot = active[keep], x[keep], y[keep], cand[keep], r_tot[keep]
                if active.numel() == 0:
                    return result
                if step < self.steps and 2 * n_done * cand.shape[1] > active.numel():
                    # A fresh forward on the rest costs less than backward passes through the done.
                    adv, logits = self._forward_at(x, r_tot, scale)
                else:
                    rows, logits = keep, logits[keep]
            if step == self.steps:
                break
            with torch.enable_grad():
                diffs = logits.gather(1, cand) - logits.gather(1, y[:, None])       # (B, k)
                grads = []
                for j in range(cand.shape[1]):
                    grad, = torch.autograd.grad(diffs[:, j].sum(), adv,
                                                retain_graph=j + 1 < cand.shape[1])
                    grads.append(grad if rows is None else grad[rows])
            grads = torch.stack(grads)
            # Directions the box blocks (pixels at 0 pushed down, at 1 pushed up) move nothing.
            point = adv.detach() if rows is None else adv.detach()[rows]
            blocked = ((point <= 0) & (grads < 0)) | ((point >= 1) & (grads > 0))
            r_tot = r_tot + self._step(diffs.detach(), grads.masked_fill(blocked, 0.0))
        result[active] = torch.clamp(x + scale * r_tot, 0.0, 1.0)
        return result

    def _forward_at(self, x, r_tot, scale) -> tuple[torch.Tensor, torch.Tensor]:
        """(the iterate clamp(x + scale * r_tot, 0, 1) as a leaf that requires grad, its logits)."""
        adv = torch.clamp(x + scale * r_tot, 0.0, 1.0).requires_grad_(True)
        with torch.enable_grad():
            return adv, self.get_logits(adv)
