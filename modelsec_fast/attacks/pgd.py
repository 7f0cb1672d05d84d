"""Iterative gradient attacks: BIM, PGD (L-inf) and PGDL2 (Madry et al. 2018).

Each step is one fused op from :mod:`modelsec_fast.ops` (``sign_step_`` or
``l2_step``); the gradient is taken w.r.t. the input only.  Units: ``eps``
and ``alpha`` in pixel space [0, 1], in the attack's norm.
"""

from __future__ import annotations

import torch

from .. import ops
from ..validation import check_int, check_non_negative, check_positive
from .gradient import GradientAttack, uniform_linf_start

__all__ = ["BIM", "PGD", "PGDL2"]


class PGD(GradientAttack):
    """PGD, L-inf (Madry et al. 2018), torchattacks' arguments and semantics.

    ``x_{k+1} = clamp(x + clamp(x_k + alpha * sign(grad) - x, -eps, eps), 0, 1)``
    for ``steps`` steps, from ``x`` or (``random_start``) from
    ``clamp(x + U(-eps, eps), 0, 1)`` drawn from torch's global RNG.  With
    ``random_start=False`` and the default loss the result is bit-identical to
    torchattacks 3.5.1's PGD (fp32, CPU); with a random start it matches too
    under the same ``torch.manual_seed``.

    Args:
        model: the classifier (returns logits).
        eps: L-inf budget (>= 0). Default 8/255.
        alpha: step size (> 0). Default 2/255.
        steps: number of steps (>= 1). Default 10.
        random_start: start from a uniform point of the eps ball. Default True.
        loss: None (mean cross-entropy, as torchattacks), or a callable
            ``(logits, labels)`` returning a scalar (any reduction) or (B,)
            values (summed).  Targeted modes maximise ``-loss(logits, targets)``.
    """

    def __init__(self, model, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = True, loss=None):
        super().__init__("PGD", model, loss)
        self.eps = check_non_negative("eps", eps)
        self.alpha = check_positive("alpha", alpha)
        self.steps = check_int("steps", steps, 1, allow_integral_float=True)
        self.random_start = bool(random_start)
        self.supported_mode = ["default", "targeted"]

    @property
    def stochastic(self) -> bool:
        return self.random_start

    def _start(self, images):
        if self.random_start:
            return uniform_linf_start(images, self.eps)
        return images.clone()

    def _step_(self, adv, grad, images):
        return ops.sign_step_(adv, grad, images, self.alpha, self.eps, 0.0, 1.0)


class BIM(PGD):
    """BIM / iterative FGSM (Kurakin et al. 2017): PGD without random start.

    Args as :class:`PGD` (no ``random_start``).  ``steps=0`` picks the paper's
    ``int(min(255 * eps + 4, 1.25 * 255 * eps))`` (torchattacks' rule).
    """

    def __init__(self, model, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 loss=None):
        eps = check_non_negative("eps", eps)
        if isinstance(steps, int) and not isinstance(steps, bool) and steps == 0:
            steps = max(1, int(min(eps * 255 + 4, 1.25 * eps * 255)))
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=False,
                         loss=loss)
        self.attack = "BIM"


class PGDL2(GradientAttack):
    """PGD in the L2 norm, torchattacks' arguments and semantics.

    Each step moves ``alpha`` along ``grad / (||grad||_2 + eps_for_division)``,
    projects the perturbation onto the L2 ball of radius ``eps`` and clamps to
    [0, 1].  The random start is ``r * eps * z / ||z||`` with z Gaussian and
    r ~ U(0, 1) (torchattacks' draw, global RNG).

    Args:
        model: the classifier.
        eps: L2 budget in pixel space (>= 0). Default 1.0.
        alpha: step length (> 0). Default 0.2.
        steps: number of steps (>= 1). Default 10.
        random_start: start from a random point of the ball. Default True.
        eps_for_division: gradient-norm guard (> 0). Default 1e-10.
        loss: as in :class:`PGD`.
    """

    norm = "L2"

    def __init__(self, model, eps: float = 1.0, alpha: float = 0.2, steps: int = 10,
                 random_start: bool = True, eps_for_division: float = 1e-10, loss=None):
        super().__init__("PGDL2", model, loss)
        self.eps = check_non_negative("eps", eps)
        self.alpha = check_positive("alpha", alpha)
        self.steps = check_int("steps", steps, 1, allow_integral_float=True)
        self.random_start = bool(random_start)
        self.eps_for_division = check_positive("eps_for_division", eps_for_division)
        self.supported_mode = ["default", "targeted"]

    @property
    def stochastic(self) -> bool:
        return self.random_start

    def _start(self, images):
        adv = images.clone()
        if not self.random_start:
            return adv
        b = images.shape[0]
        shape = (b,) + (1,) * (images.dim() - 1)
        delta = torch.empty_like(images).normal_()
        norms = delta.reshape(b, -1).norm(p=2, dim=1).reshape(shape)
        radius = torch.zeros_like(norms).uniform_(0, 1)
        delta *= radius / norms * self.eps
        return torch.clamp(adv + delta, min=0, max=1)

    def _step_(self, adv, grad, images):
        if self.eps_for_division == 1e-10:
            return ops.l2_step(adv, grad, images, self.alpha, self.eps, 0.0, 1.0)
        b = adv.shape[0]
        shape = (b,) + (1,) * (adv.dim() - 1)
        gnorm = grad.reshape(b, -1).norm(p=2, dim=1).reshape(shape) + self.eps_for_division
        delta = adv + self.alpha * (grad / gnorm) - images
        dnorm = delta.reshape(b, -1).norm(p=2, dim=1).reshape(shape)
        factor = torch.where(dnorm > self.eps, self.eps / dnorm, torch.ones_like(dnorm))
        return torch.clamp(images + delta * factor, min=0, max=1)
