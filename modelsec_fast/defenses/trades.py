"""TRADES losses (Zhang et al., ICML 2019).

Training loss per sample::

    CE(f(x_i), y_i) + beta * KL( softmax f(x_i) || softmax f(x_i') )

where ``x_i'`` maximises the KL term inside the eps-ball.  The attack gets the
KL term through the attacks' custom-loss argument (:class:`TradesAttackLoss`),
summed over the batch so each example depends on its own record only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["TradesAttackLoss", "kl_per_sample", "trades_loss_per_sample"]


def kl_per_sample(adv_logits: torch.Tensor, clean_probs: torch.Tensor) -> torch.Tensor:
    """``KL(clean_probs || softmax(adv_logits))`` per row, shape (B,), float32+.

    ``clean_probs`` may carry gradient (training) or not (attack).
    """
    log_adv = F.log_softmax(adv_logits.float(), dim=1)
    clean_probs = clean_probs.float()
    # xlogy: 0 * log 0 = 0 for classes with zero clean probability.
    return (torch.xlogy(clean_probs, clean_probs) - clean_probs * log_adv).sum(dim=1)


class TradesAttackLoss:
    """The attack's loss: KL from fixed clean probabilities, summed over the batch.

    Set :attr:`clean_probs` to ``softmax(f(x))`` (B, K), computed without
    gradient, before each attack call.  Labels are ignored (TRADES' inner
    maximisation is label-free).
    """

    def __init__(self):
        self.clean_probs: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.clean_probs is None:
            raise RuntimeError("TradesAttackLoss.clean_probs must be set before the attack runs")
        if self.clean_probs.shape != logits.shape:
            raise ValueError(
                f"TRADES attack: the logits {tuple(logits.shape)} do not match the clean "
                f"probabilities {tuple(self.clean_probs.shape)}; the attack must be called on "
                "the whole batch whose clean probabilities were set")
        return kl_per_sample(logits, self.clean_probs).sum()


def trades_loss_per_sample(clean_logits: torch.Tensor, adv_logits: torch.Tensor,
                           labels: torch.Tensor, beta: float) -> torch.Tensor:
    """TRADES training loss per sample, shape (B,); gradient flows through both logits."""
    natural = F.cross_entropy(clean_logits, labels, reduction="none")
    robust = kl_per_sample(adv_logits, F.softmax(clean_logits.float(), dim=1))
    return natural + beta * robust
