"""Adversarial attacks with torchattacks 3.5.1's calling convention.

Switching from torchattacks is one import line::

    # import torchattacks as ta
    import modelsec_fast.attacks as ta
    adv = ta.PGD(model, eps=8/255, alpha=2/255, steps=10)(images, labels)

Classes: FGSM, FFGSM, BIM, PGD, PGDL2, APGD, APGDT, FAB, Square and
MultiAttack (fixed eps); CW and DeepFool (minimum norm, gradient), SPSA
(score-based) and HopSkipJump (decision-based, minimum norm); the EOT and
BPDA wrappers for adaptive attacks on defended models.  Every gradient attack
takes ``loss=``.  Units are pixel space [0, 1].  Minimum-norm attacks report
their distances with ``atk.evaluate(images, labels)`` (a
:class:`MinimumNormResult`).  For a robustness evaluation use
:func:`modelsec_fast.evaluate.robust_accuracy`.
"""

from .adaptive import BPDA, EOT
from .apgd import APGD, APGDT
from .base import Attack
from .cw import CW
from .deepfool import DeepFool
from .fab import FAB
from .fgsm import FFGSM, FGSM
from .hopskipjump import HopSkipJump
from .losses import dlr_loss, dlr_targeted_loss, margin_loss
from .minimum_norm import MinimumNormAttack, MinimumNormResult
from .multiattack import MultiAttack
from .pgd import BIM, PGD, PGDL2
from .spsa import SPSA
from .square import Square

__all__ = [
    "Attack", "APGD", "APGDT", "FAB", "FGSM", "FFGSM", "BIM", "PGD", "PGDL2", "Square", "MultiAttack",
    "CW", "DeepFool", "SPSA", "HopSkipJump", "EOT", "BPDA", "MinimumNormAttack",
    "MinimumNormResult", "dlr_loss", "dlr_targeted_loss", "margin_loss",
]
