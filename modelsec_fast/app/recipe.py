"""A training recipe that can be replayed: the target model's and LiRA's shadow models'.

LiRA assumes the shadow models are trained exactly as the target was, so the
recipe is data (a :class:`TrainingRecipe` stored in every checkpoint of the
``train`` command) and :func:`modelsec_fast.app.training.train_model` replays
it on any subset of the data. What is audited is what was trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from modelsec_fast.models import build_model, check_model_name
from modelsec_fast.validation import (check_choice, check_in_range, check_int,
                                      check_non_negative, check_positive)

__all__ = ["ADV_METHODS", "OPTIMIZERS", "TrainingRecipe", "replay_recipe"]

ADV_METHODS = ("fgsm_rs", "pgd", "free", "trades")
OPTIMIZERS = ("adam", "sgd")


@dataclass
class TrainingRecipe:
    """Everything needed to train a model again the same way.

    Units: ``adv_eps`` is an L-infinity radius in pixel space [0, 1];
    ``delta`` is DP's delta; ``max_grad_norm`` is the per-sample clipping bound C.
    Exactly one of ``noise_multiplier`` / ``target_epsilon`` is set when ``dp``.
    """

    model: str = "mlp"
    model_options: dict = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    dp: bool = False
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "pld"
    adv: str | None = None
    adv_eps: float = 0.1
    adv_steps: int = 7

    def validate(self) -> "TrainingRecipe":
        """Check ranges and combinations; returns self.

        Raises:
            TypeError: a field of the wrong kind (a float epoch count, say).
            ValueError: a value out of range or a combination that cannot run; the
                message names the field and the value.
        """
        check_model_name(self.model)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_positive("lr", self.lr)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.adv is not None:
            check_choice("adv", self.adv, ADV_METHODS)
            check_in_range("adv_eps", self.adv_eps, 0.0, 1.0, low_open=True,
                           reason=" (an L-inf radius in pixel space)")
            check_int("adv_steps", self.adv_steps, 1)
        if self.dp:
            if (self.noise_multiplier is None) == (self.target_epsilon is None):
                raise ValueError("DP training needs exactly one of a noise multiplier "
                                 "or a target epsilon")
            if self.noise_multiplier is not None:
                check_non_negative("noise_multiplier", self.noise_multiplier)
            else:
                check_positive("target_epsilon", self.target_epsilon)
            check_in_range("delta", self.delta, 0.0, 1.0, low_open=True, high_open=True)
            check_positive("max_grad_norm", self.max_grad_norm)
            if self.adv == "free":
                raise ValueError("free adversarial training cannot run under DP-SGD: its "
                                 "replays of one sampled batch are not Poisson steps")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingRecipe":
        """The recipe of ``d`` (a :meth:`to_dict`); unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def build_model(self, in_shape, num_classes: int) -> nn.Module:
        """A freshly initialised model of this recipe's architecture (see
        :func:`modelsec_fast.models.build_model`)."""
        return build_model(self.model, in_shape, num_classes, **self.model_options)

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``mlp, 20 epochs, batch 64, adam lr 0.001``."""
        parts = [f"{self.model}, {self.epochs} epochs, batch {self.batch_size}, "
                 f"{self.optimizer} lr {self.lr:g}"]
        if self.dp:
            target = (f"sigma {self.noise_multiplier:g}" if self.noise_multiplier is not None
                      else f"target eps {self.target_epsilon:g}")
            parts.append(f"DP-SGD ({target}, delta {self.delta:g}, C {self.max_grad_norm:g}, "
                         f"{self.accountant} accountant)")
        if self.adv:
            parts.append(f"adversarial training {self.adv} at eps {self.adv_eps:g}")
        return "; ".join(parts)


def replay_recipe(recipe: TrainingRecipe, privacy: dict | None) -> TrainingRecipe:
    """The recipe that retrains "the same way": a target-epsilon DP recipe is pinned
    to the noise multiplier it calibrated to, so shadow models get the target's noise
    (and skip the calibration) whatever their own dataset size."""
    if not recipe.dp or recipe.noise_multiplier is not None or not privacy:
        return recipe
    return dataclasses.replace(recipe, noise_multiplier=float(privacy["noise_multiplier"]),
                               target_epsilon=None)
