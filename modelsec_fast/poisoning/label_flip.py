"""Label flipping: the images stay, the labels lie."""

from __future__ import annotations

import torch

from ..validation import check_class
from .base import EvaluationSet, PoisoningAttack, check_images

__all__ = ["LabelFlip"]


class LabelFlip(PoisoningAttack):
    """Flip ``round(rate * N)`` labels.

    Random (``source=None``): each chosen sample, drawn from every class, gets a
    label drawn uniformly from the other classes. Targeted (``source`` and
    ``target`` given): the chosen samples, drawn from class ``source``, are
    relabelled ``target``; the rate is still a fraction of the whole set, so it
    must not ask for more samples than ``source`` has.

    Args:
        rate: fraction of the training set flipped, in (0, 1].
        source, target: both None (random flips) or both classes (targeted).
        seed: seeds the choice of samples and of the random labels.
        num_classes: None: taken from the labels.
    """

    name = "LabelFlip"

    def __init__(self, rate: float = 0.1, *, source: int | None = None,
                 target: int | None = None, seed: int = 0, num_classes: int | None = None):
        super().__init__(rate, seed, num_classes)
        if (source is None) != (target is None):
            raise ValueError("a targeted flip needs both source and target "
                             f"(got source={source!r}, target={target!r})")
        self.source, self.target = source, target
        if source is not None:
            if source == target:
                raise ValueError(f"source and target must differ, both are {source!r}")
            if self.num_classes is not None:
                self._check_labels(self.num_classes)

    @property
    def targeted(self) -> bool:
        return self.source is not None

    def _check_labels(self, num_classes):
        if self.targeted:
            check_class("source", self.source, num_classes)
            check_class("target", self.target, num_classes)

    def settings(self):
        return {**super().settings(), "kind": "targeted" if self.targeted else "random",
                "source": self.source, "target": self.target}

    def _candidates(self, y, num_classes):
        if self.targeted:
            return torch.nonzero(y == self.source).flatten()
        return torch.arange(len(y))

    def _candidate_rule(self):
        return f"samples of the source class {self.source}" if self.targeted else "every sample"

    def _craft(self, x, y, num_classes, generator):
        if self.targeted:
            return x, torch.full_like(y, self.target)
        # A uniform draw from the K - 1 other classes: shift by 1..K-1.
        shift = torch.randint(1, num_classes, (len(y),), generator=generator).to(y.device)
        return x, (y + shift) % num_classes

    def evaluation_set(self, x, y) -> EvaluationSet | None:
        """Targeted: the test images of class ``source``, wanted as ``target``. Random: None."""
        if not self.targeted:
            return None
        check_images(x, y)
        keep = y == self.source
        return EvaluationSet(x[keep], y[keep].long(), torch.full_like(y[keep].long(), self.target))
