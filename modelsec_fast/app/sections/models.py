"""The models a run trained: recipe, clean accuracy, DP epsilon and training time."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..recipe import TrainingRecipe
from ..report.document import Block, Table
from .formatting import percent

__all__ = ["TrainingSummary", "ModelsSection"]


@dataclass
class TrainingSummary:
    """One trained model: its ``recipe``, ``clean_accuracy`` in [0, 1] on the test
    set, ``train_time_s`` (wall seconds), per-epoch ``history`` and the DP facts
    ``privacy`` (None without DP-SGD; see :class:`~modelsec_fast.app.training.TrainedModel`)."""

    recipe: TrainingRecipe
    clean_accuracy: float
    train_time_s: float
    history: list[dict] = field(default_factory=list)
    privacy: dict | None = None

    def to_json(self) -> dict:
        return {"recipe": self.recipe.to_dict(), "recipe_text": self.recipe.describe(),
                "clean_accuracy": self.clean_accuracy, "train_time_s": self.train_time_s,
                "history": self.history, "privacy": self.privacy}


@dataclass
class ModelsSection:
    """``models``: display label -> :class:`TrainingSummary`, in report order."""

    models: dict[str, TrainingSummary]
    key = "models"
    title = "Models"

    def to_json(self) -> dict:
        return {"models": {label: m.to_json() for label, m in self.models.items()}}

    def blocks(self, figure_dir: str) -> list[Block]:
        rows = []
        for label, m in self.models.items():
            p = m.privacy
            dp = f"{p['epsilon']:.2f} (delta {p['delta']:g})" if p and "epsilon" in p else "none"
            rows.append((label, m.recipe.describe(), percent(m.clean_accuracy), dp,
                         f"{m.train_time_s:.1f} s"))
        return [Table(("model", "recipe", "clean acc.", "DP epsilon", "train time"), rows,
                      align="llrrr")]
