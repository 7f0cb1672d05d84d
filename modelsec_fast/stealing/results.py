"""Result records of the extraction attacks (Jagielski et al. 2020's metrics)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["BudgetPoint", "ExtractionResult", "ReLUExtractionResult"]


def _number(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


@dataclass(frozen=True)
class BudgetPoint:
    """One point of the fidelity-against-budget curve: a thief trained on the first
    ``queries`` answers; ``accuracy`` (true labels) and ``fidelity`` (agreement with
    the victim) on the held-out set, in [0, 1], None without one."""

    queries: int
    accuracy: float | None
    fidelity: float | None

    def to_json(self) -> dict:
        return {"queries": self.queries, "accuracy": _number(self.accuracy),
                "fidelity": _number(self.fidelity)}


@dataclass
class ExtractionResult:
    """What an extraction attack achieved.

    Attributes:
        attack: the attack's name.
        thief: the last thief trained (on every answer), in eval mode.
        curve: one :class:`BudgetPoint` per budget, increasing.
        queries_used: inputs the attack queried (exact, from the victim's counter).
        budget: the victim's budget.
        victim_output: what the victim answered ("probabilities", "labels", ...).
        settings: the attack's parameters.
        seconds: wall time of the attack, training included.
    """

    attack: str
    thief: nn.Module = field(repr=False)
    curve: list[BudgetPoint]
    queries_used: int
    budget: int
    victim_output: str
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def accuracy(self) -> float | None:
        """The final thief's held-out accuracy (None without a held-out set)."""
        return self.curve[-1].accuracy if self.curve else None

    @property
    def fidelity(self) -> float | None:
        """The final thief's agreement with the victim on held-out inputs."""
        return self.curve[-1].fidelity if self.curve else None

    def to_json(self) -> dict:
        return {"attack": self.attack, "queries_used": self.queries_used,
                "budget": self.budget, "victim_output": self.victim_output,
                "accuracy": _number(self.accuracy), "fidelity": _number(self.fidelity),
                "curve": [p.to_json() for p in self.curve], "settings": dict(self.settings),
                "seconds": self.seconds}

    def summary(self) -> str:
        fid = "n/a" if self.fidelity is None else f"{100 * self.fidelity:.1f}%"
        acc = "n/a" if self.accuracy is None else f"{100 * self.accuracy:.1f}%"
        return (f"{self.attack}: fidelity {fid}, accuracy {acc} with {self.queries_used} of "
                f"{self.budget} queries ({self.victim_output}), {self.seconds:.1f} s")


@dataclass
class ReLUExtractionResult:
    """Functionally equivalent extraction of a one-hidden-layer ReLU network.

    The recovered function is ``second(relu(first(x)))`` (+ ``skip(x)`` when some
    hidden units never change state in the searched region); ``first_weight`` (h, d)
    has unit-norm rows (the weights are identifiable up to permutation and a positive
    scale per hidden unit, which ``second_weight`` absorbs). From probabilities the
    outputs are centred log-probabilities, which give the victim's probabilities.

    Attributes:
        model: the recovered network (float64), returning the outputs described above.
        first_weight, first_bias, second_weight, second_bias: the recovered layers.
        units_found: hidden units found (h).
        max_error: the largest absolute difference from the victim's outputs on
            ``verify_points`` fresh random queries.
        queries_used: inputs queried, the verification included.
        fidelity: agreement with the victim on held-out inputs (None without a set).
        has_skip: whether a linear skip term was needed.
    """

    model: nn.Module = field(repr=False)
    first_weight: torch.Tensor = field(repr=False)
    first_bias: torch.Tensor = field(repr=False)
    second_weight: torch.Tensor = field(repr=False)
    second_bias: torch.Tensor = field(repr=False)
    units_found: int
    max_error: float
    queries_used: int
    budget: int
    verify_points: int
    fidelity: float | None = None
    has_skip: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"attack": "functionally_equivalent", "units_found": self.units_found,
                "max_error": self.max_error, "queries_used": self.queries_used,
                "budget": self.budget, "verify_points": self.verify_points,
                "fidelity": _number(self.fidelity), "has_skip": self.has_skip,
                "seconds": self.seconds}
