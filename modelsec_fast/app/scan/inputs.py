"""What a scan stage receives: the user's model and data, already loaded and checked.

Conventions every stage can rely on:

* ``model`` takes inputs in *pixel space* (the user's normalisation, if any, is
  inside it), values in ``input_range``; it is in eval mode on ``device`` and
  returns logits of shape (N, ``num_classes``).
* ``x``/``y`` are the test examples the stage may attack or explain (at most
  ``budget.n_examples`` of them are used by the costly stages).
* Radii ``eps_linf``/``eps_l2`` are in pixel units.
* A stage that cannot run on these inputs (no members known, no factory for
  shadow training, non-image data) returns a ``SkippedSection`` with the reason;
  an error it raises is reported in its place by the scan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

__all__ = ["Budget", "BUDGETS", "FitRecipe", "MembershipData", "ScanInputs", "ScanStage"]


@dataclass(frozen=True)
class Budget:
    """How hard a scan works, set together by ``--budget``.

    ``n_examples``: test examples attacked/explained; ``attack_steps`` and
    ``restarts``: gradient attacks; ``shadow_models``: LiRA shadows (needs a
    factory); ``query_budgets``: extraction thief budgets (queries);
    ``optimisation_steps``: trigger reverse-engineering and inversion steps;
    ``attack_queries``: model queries per example of the query-based attacks (SPSA,
    HopSkipJump).
    """

    name: str
    n_examples: int
    attack_steps: int
    restarts: int
    shadow_models: int
    query_budgets: tuple[int, ...]
    optimisation_steps: int
    attack_queries: int = 1000


BUDGETS: dict[str, Budget] = {
    "quick": Budget("quick", n_examples=128, attack_steps=10, restarts=1, shadow_models=4,
                    query_budgets=(100, 400), optimisation_steps=50, attack_queries=500),
    "standard": Budget("standard", n_examples=500, attack_steps=50, restarts=2,
                       shadow_models=16, query_budgets=(250, 1000, 4000),
                       optimisation_steps=300, attack_queries=1000),
    "thorough": Budget("thorough", n_examples=2000, attack_steps=100, restarts=5,
                       shadow_models=64, query_budgets=(250, 1000, 4000, 16000),
                       optimisation_steps=1000, attack_queries=5000),
}


@dataclass(frozen=True)
class FitRecipe:
    """How to train a fresh ``factory()`` model the way the user's model was trained
    (``--recipe``, or the factory's ``training_recipe`` attribute): cross-entropy,
    ``optimizer`` "adam" or "sgd" (momentum 0.9) at learning rate ``lr``,
    ``epochs`` passes in shuffled batches of ``batch_size``."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0


@dataclass(frozen=True)
class MembershipData:
    """Records with known membership of the model's training set: ``x`` (pixel
    space), ``y`` (N,) int64 and ``is_member`` (N,) bool."""

    x: torch.Tensor
    y: torch.Tensor
    is_member: torch.Tensor


@dataclass
class ScanInputs:
    """The user's model and data for one scan (see the module docstring).

    ``factory``: a callable returning a fresh, untrained model of the user's
    architecture (pixel-space inputs, like ``model``), only when the user named
    one; stages that train from scratch (LiRA shadows, a thief of the same
    architecture) go without it or skip. Fine-tuning a copy of ``model``
    (trigger unlearning) needs only ``train``.
    ``train``: (x, y) training records when given. ``log``: one line per stage
    step (the scan decides whether it goes to a terminal or a log).
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    input_range: tuple[float, float]
    eps_linf: float
    eps_l2: float
    budget: Budget
    device: torch.device = torch.device("cpu")
    seed: int = 0
    is_image: bool = True
    train: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    membership: Optional[MembershipData] = None
    factory: Optional[Callable[[], nn.Module]] = None
    log: Callable[[str], None] = field(default=lambda message: None)
    recipe: Optional[FitRecipe] = None

    @property
    def can_retrain(self) -> bool:
        """Whether :meth:`train_fresh` can run: a factory and a training recipe."""
        return self.factory is not None and self.recipe is not None

    def train_fresh(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
        """A new ``factory()`` model trained on (x, y) by ``recipe`` (pixel space, eval
        mode, on ``device``); the shadow models of LiRA and trigger repair use it.

        Raises:
            ValueError: no factory or no recipe (check :attr:`can_retrain` first).
        """
        if not self.can_retrain:
            raise ValueError("retraining needs a model factory and a training recipe")
        from .fitting import fit

        return fit(self.factory, self.recipe, x, y, seed=seed, device=self.device)

    def in_unit_range(self) -> "ScanInputs":
        """These inputs seen in [0, 1]: the library's attacks work in that pixel range.

        The model is wrapped to map [0, 1] onto ``input_range``; ``x``, the training
        and membership records are mapped the other way and the radii divided by
        the range's width. Returns ``self`` when the range is already [0, 1].
        """
        lo, hi = self.input_range
        if (lo, hi) == (0.0, 1.0):
            return self
        width = hi - lo

        def unit(t):
            return (t - lo) / width

        membership = None if self.membership is None else MembershipData(
            unit(self.membership.x), self.membership.y, self.membership.is_member)
        return dataclasses.replace(
            self, model=_FromUnitRange(self.model, lo, hi).eval(), x=unit(self.x),
            input_range=(0.0, 1.0), eps_linf=self.eps_linf / width,
            eps_l2=self.eps_l2 / width,
            train=None if self.train is None else (unit(self.train[0]), self.train[1]),
            membership=membership,
            factory=None if self.factory is None else (
                lambda: _FromUnitRange(self.factory(), lo, hi)))

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from ``seed`` and ``salt``: each stage passes its
        own salt so that stages stay reproducible when others are skipped."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt)

    def attack_subset(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``budget.n_examples`` test examples, on ``device``."""
        n = min(self.budget.n_examples, len(self.x))
        return self.x[:n].to(self.device), self.y[:n].to(self.device)


ScanStage = Callable[[ScanInputs], object]
"""A scan stage: ``ScanInputs`` -> a report ``Section`` (typed loosely to keep
this module free of the report package)."""


class _FromUnitRange(nn.Module):
    """``model`` on inputs in [0, 1]: maps them onto [lo, hi] first."""

    def __init__(self, model: nn.Module, lo: float, hi: float):
        super().__init__()
        self.model, self.lo, self.width = model, lo, hi - lo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.lo + self.width * x)
