"""MultiAttack: the per-sample worst case over several attacks (torchattacks API).

Each attack runs only on the samples that the previous ones failed to break;
a sample keeps the first adversarial example found.  Each attack is a plain
call, every step on every sample it gets, as in torchattacks: early stopping
within an attack lives only in :func:`modelsec_fast.evaluate.robust_accuracy`,
which is also the place for a robustness *number* with validity checks and
masking warnings.
"""

from __future__ import annotations

import torch

from .base import Attack

__all__ = ["MultiAttack"]


class MultiAttack(Attack):
    """Run ``attacks`` in order on the samples still correctly classified.

    Args:
        attacks: at least two attacks built on the same model.
        verbose: print the cumulative success rate after each attack.
    """

    def __init__(self, attacks, verbose: bool = False):
        attacks = list(attacks)
        if len(attacks) < 2:
            raise ValueError("MultiAttack needs at least two attacks")
        if not all(isinstance(a, Attack) for a in attacks):
            raise TypeError("MultiAttack takes modelsec_fast attacks")
        if len({id(a.model) for a in attacks}) != 1:
            raise ValueError("all attacks of a MultiAttack must use the same model")
        super().__init__("MultiAttack", attacks[0].model)
        self.attacks = attacks
        self.verbose = verbose

    def set_normalization_used(self, mean, std) -> None:
        super().set_normalization_used(mean, std)
        for atk in self.attacks:
            atk.set_normalization_used(mean, std)

    def set_model_training_mode(self, *args, **kwargs) -> None:
        super().set_model_training_mode(*args, **kwargs)
        for atk in self.attacks:
            atk.set_model_training_mode(*args, **kwargs)

    def forward(self, images, labels):  # the work happens in __call__ (user space)
        return images

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Worst-case adversarial images in the caller's space (normalised if declared)."""
        self._validate(images, labels)
        result = images.detach().clone()
        if images.shape[0] == 0:
            return result
        labels = labels.detach().long()
        todo = torch.arange(images.shape[0], device=images.device)
        rates = []
        for atk in self.attacks:
            adv = atk(images[todo], labels[todo])
            with self._attack_context(), torch.no_grad():
                broken = self.model(adv).argmax(1) != labels[todo]
            result[todo[broken]] = adv[broken]
            todo = todo[~broken]
            rates.append(1 - todo.numel() / images.shape[0])
            if todo.numel() == 0:
                break
        if self.verbose:
            print("Attack success rate: " + " | ".join(f"{100 * r:.2f} %" for r in rates))
        return result
