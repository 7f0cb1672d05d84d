"""Model checkpoints that carry what an audit needs: the recipe, the data and the members.

A membership audit must know which records trained the model and how it was
trained (to train LiRA's shadow models the same way), so the CLI's checkpoint
stores, next to the weights:

* the :class:`~modelsec_fast.audit.recipe.TrainingRecipe`;
* the data spec (source, subset sizes, seed) that rebuilds the exact pool;
* ``member_mask``: bool over the pool (the dataset's train split), True for the
  records the model was trained on (``member_indices``: their positions in the
  source's full train split, for other tools), and how it was decided ("coin": an
  independent fair coin per record, "all": the whole pool, test split as the
  non-members);
* the training history, the DP facts, and (plain and DP-SGD recipes) the
  resumable training state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from .recipe import TrainingRecipe, build

__all__ = ["FORMAT", "CheckpointError", "ModelCheckpoint", "load_checkpoint",
           "MEMBERSHIP_MODES"]

FORMAT = "modelsec_fast.checkpoint/1"
MEMBERSHIP_MODES = ("coin", "all")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, foreign or does not fit; one-line message."""


@dataclass
class ModelCheckpoint:
    """Everything the CLI saves about one trained model (see module doc)."""

    recipe: TrainingRecipe
    data: dict
    in_shape: tuple
    num_classes: int
    member_mask: torch.Tensor
    membership: str
    seed: int
    model_state: dict
    history: list = field(default_factory=list)
    privacy: dict | None = None
    complete: bool = True
    resume_state: dict | None = None
    member_indices: torch.Tensor | None = None

    def build_model(self, device="cpu") -> nn.Module:
        """A fresh model of the recipe's architecture with the saved weights, in eval mode.

        Raises:
            CheckpointError: the weights do not fit the recorded architecture.
        """
        if not self.model_state:
            raise CheckpointError("the checkpoint holds no weights yet (its run stopped before "
                                  "the first epoch ended); resume it with "
                                  "`modelsec-fast train --resume`")
        model = build(self.recipe, self.in_shape, self.num_classes)
        try:
            model.load_state_dict(self.model_state)
        except RuntimeError as e:
            lines = str(e).strip().splitlines()
            detail = (lines[1] if len(lines) > 1 else lines[0]).strip()
            raise CheckpointError(
                f"checkpoint weights do not fit model {self.recipe.model!r} for inputs "
                f"{'x'.join(map(str, self.in_shape))}: {detail}") from None
        return model.to(device).eval()

    def save(self, path: str) -> None:
        from modelsec_fast.atomic_file import save_atomically

        save_atomically({
            "format": FORMAT,
            "recipe": self.recipe.to_dict(),
            "data": dict(self.data),
            "in_shape": list(self.in_shape),
            "num_classes": self.num_classes,
            "member_mask": self.member_mask.bool(),
            "member_indices": self.member_indices,
            "membership": self.membership,
            "seed": self.seed,
            "model_state": self.model_state,
            "history": self.history,
            "privacy": self.privacy,
            "complete": self.complete,
            "resume_state": self.resume_state,
        }, path)


def _numpy_uint32_array_globals() -> list:
    """What unpickling a numpy uint32 array needs (numpy's RNG state in a resume state),
    taken from numpy itself so it holds for numpy 1 and 2."""
    import numpy as np

    reconstruct = np.zeros(1, dtype=np.uint32).__reduce__()[0]
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: str) -> ModelCheckpoint:
    """Read a checkpoint written by the CLI.

    Raises:
        CheckpointError: missing file, not a torch file, not ours, or incomplete fields.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        # weights_only: a checkpoint handed to `audit` or `evaluate` may come from anyone,
        # and full unpickling would run whatever code it holds. Ours hold only tensors,
        # numbers, strings, containers of them and numpy's RNG state (a uint32 array).
        with torch.serialization.safe_globals(_numpy_uint32_array_globals()):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"{path}: not a readable torch checkpoint "
                              f"({type(e).__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a modelsec-fast checkpoint (expected format "
                              f"{FORMAT!r}; train one with `modelsec-fast train`)")
    try:
        return ModelCheckpoint(
            recipe=TrainingRecipe.from_dict(raw["recipe"]), data=raw["data"],
            in_shape=tuple(raw["in_shape"]), num_classes=int(raw["num_classes"]),
            member_mask=raw["member_mask"].bool(), membership=raw["membership"],
            seed=int(raw["seed"]), model_state=raw["model_state"], history=raw["history"],
            privacy=raw["privacy"], complete=bool(raw["complete"]),
            resume_state=raw.get("resume_state"), member_indices=raw.get("member_indices"))
    except (KeyError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged modelsec-fast checkpoint (field {e})") from None
