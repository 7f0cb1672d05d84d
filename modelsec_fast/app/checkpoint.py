"""The ``train`` command's checkpoint: the weights with what an audit needs (the recipe,
the data and the members).

A membership audit must know which records trained the model and how it was
trained (to train LiRA's shadow models the same way), so the CLI's checkpoint
stores, next to the weights:

* the :class:`~modelsec_fast.app.recipe.TrainingRecipe`;
* the data spec (source, subset sizes, seed) that rebuilds the exact pool;
* ``member_mask``: bool over the pool (the dataset's train split), True for the
  records the model was trained on (``member_indices``: their positions in the
  source's full train split, for other tools), and how it was decided ("coin": an
  independent fair coin per record, "all": the whole pool, test split as the
  non-members);
* the training history, the DP facts, and (plain and DP-SGD recipes) the
  resumable training state of :mod:`modelsec_fast.state`.

The file is the state module's envelope (kind :data:`FORMAT`): atomic write,
sha256, read with ``weights_only=True`` only, one :class:`CheckpointError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from modelsec_fast.state import CheckpointError, check_same_model, read_checkpoint, write_checkpoint

from .recipe import TrainingRecipe

__all__ = ["FORMAT", "CheckpointError", "ModelCheckpoint", "load_checkpoint",
           "dataset_from_spec"]

# The kind of modelsec_fast.state checkpoint the CLI writes and reads.
FORMAT = "model_checkpoint"


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
    # The file it was read from, for error messages.
    source: str = field(default="(not saved)", compare=False, repr=False)

    def build_model(self, device="cpu") -> nn.Module:
        """A fresh model of the recipe's architecture with the saved weights, in eval mode.

        Raises:
            CheckpointError: no weights yet, or weights that do not fit the recorded
                architecture (the keys and shapes that differ are named).
        """
        if not self.model_state:
            raise CheckpointError(f"checkpoint {self.source}: holds no weights yet (its run "
                                  "stopped before the first epoch ended); resume it with "
                                  "`modelsec-fast train --resume`")
        model = self.recipe.build_model(self.in_shape, self.num_classes)
        check_same_model(self.model_state, model, source=self.source,
                         target=f"model {self.recipe.model!r} for inputs "
                                f"{'x'.join(map(str, self.in_shape))}")
        model.load_state_dict(self.model_state)
        return model.to(device).eval()

    def save(self, path: str) -> None:
        """Write the checkpoint to ``path`` atomically (see :mod:`modelsec_fast.state`)."""
        write_checkpoint(path, {
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
        }, kind=FORMAT)


def load_checkpoint(path: str) -> ModelCheckpoint:
    """Read a checkpoint written by the CLI.

    Raises:
        CheckpointError: missing file, not a torch file or not ours, truncated, a bad
            checksum, an old format, a pickled object that would run code (refused,
            nothing executed), or incomplete fields.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: not found")
    raw = read_checkpoint(path, kind=FORMAT)
    try:
        return ModelCheckpoint(
            recipe=TrainingRecipe.from_dict(raw["recipe"]), data=raw["data"],
            in_shape=tuple(raw["in_shape"]), num_classes=int(raw["num_classes"]),
            member_mask=raw["member_mask"].bool(), membership=raw["membership"],
            seed=int(raw["seed"]), model_state=raw["model_state"], history=raw["history"],
            privacy=raw["privacy"], complete=bool(raw["complete"]),
            resume_state=raw.get("resume_state"), member_indices=raw.get("member_indices"),
            source=path)
    except (KeyError, AttributeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: damaged (field {e})") from None


def dataset_from_spec(spec: dict):
    """The :class:`~modelsec_fast.data.Dataset` a checkpoint's data spec names
    (``source``, and optionally ``train_size``, ``test_size``, ``seed``): the same
    records in the same order as when the model was trained.

    Raises:
        DataError: the data is missing or corrupt.
    """
    from modelsec_fast.data import load_dataset

    return load_dataset(spec["source"], train_size=spec.get("train_size"),
                        test_size=spec.get("test_size"), seed=spec.get("seed", 0))
