"""Single-step L-inf attacks: FGSM (Goodfellow et al. 2015) and FFGSM, FGSM
with a random start (Wong et al. 2020, "Fast is better than free").

Units: ``eps`` and ``alpha`` in pixel space [0, 1], L-inf norm.
"""

from __future__ import annotations

import torch

from .. import ops
from ..validation import check_non_negative, check_positive
from .gradient import GradientAttack

__all__ = ["FGSM", "FFGSM"]


class FGSM(GradientAttack):
    """FGSM: ``clamp(x + eps * sign(grad loss), 0, 1)``.

    With the default loss the result is bit-identical to torchattacks 3.5.1's
    FGSM (fp32, CPU).

    Args:
        model: the classifier (returns logits).
        eps: L-inf budget in pixel space (>= 0). Default 8/255.
        loss: None (mean cross-entropy), or a callable ``(logits, labels)``
            returning a scalar or per-sample (B,) values (summed).

    Example::

        >>> adv = FGSM(model, eps=8/255)(images, labels)
    """

    stochastic = False

    def __init__(self, model, eps: float = 8 / 255, loss=None):
        super().__init__("FGSM", model, loss)
        self.eps = check_non_negative("eps", eps)
        self.steps = 1
        self.supported_mode = ["default", "targeted"]

    def _step_(self, adv, grad, images):
        # torchattacks' exact expression: images + eps * sign(grad), clamped.
        return torch.clamp(images + self.eps * grad.sign(), min=0, max=1)


class FFGSM(GradientAttack):
    """FGSM from a uniform random start (Wong et al. 2020).

    ``x0 = clamp(x + U(-eps, eps), 0, 1)``, then one step of size ``alpha``
    projected onto the eps ball and [0, 1].  The start is drawn from torch's
    global RNG (seed it with ``torch.manual_seed``).

    Args:
        model: the classifier.
        eps: L-inf budget in pixel space (>= 0). Default 8/255.
        alpha: step size (> 0). Default 10/255.
        loss: as in :class:`FGSM`.
    """

    stochastic = True

    def __init__(self, model, eps: float = 8 / 255, alpha: float = 10 / 255, loss=None):
        super().__init__("FFGSM", model, loss)
        self.eps = check_non_negative("eps", eps)
        self.alpha = check_positive("alpha", alpha)
        self.steps = 1
        self.supported_mode = ["default", "targeted"]

    def _start(self, images):
        # torchattacks draws randn_like before uniform_: the same RNG use keeps
        # the start identical to torchattacks' FFGSM under the same seed.
        noise = torch.randn_like(images).uniform_(-self.eps, self.eps)
        return torch.clamp(images + noise, min=0, max=1)

    def _step_(self, adv, grad, images):
        return ops.sign_step_(adv, grad, images, self.alpha, self.eps, 0.0, 1.0)
