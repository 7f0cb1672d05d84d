"""What every poisoning attack shares: the poisoned-data record, the seeded choice of
which training samples to poison, and the lazily poisoned ``Dataset``.

An attack picks exactly ``round(rate * N)`` samples among its candidates (a
``torch.Generator`` seeded with ``seed``, so the same call always picks the same
samples), crafts a replacement image and label for each, and returns them in a
:class:`PoisonedData` record (tensors in) or a :class:`PoisonedDataset` (a
``Dataset`` in; only the poisoned items are stored, the rest are read from the
wrapped dataset).

Images are pixel-space tensors (N, C, H, W) in [0, 1]; labels int64 (N,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..validation import check_class, check_in_range, check_input_pixels, check_int

__all__ = ["PoisonedData", "PoisonedDataset", "PoisoningAttack", "TriggerAttack",
           "EvaluationSet", "MODES"]

# all-to-one: every poison gets the one target label; all-to-all: label y -> (y + 1) mod K.
MODES = ("all-to-one", "all-to-all")


@dataclass
class EvaluationSet:
    """Test inputs that measure an attack: ``x`` (M, ...) as the attacker would present
    them (triggered), their true labels ``y_true`` (M,) and the labels the attacker
    wants ``y_target`` (M,); ``y_true != y_target`` everywhere."""

    x: torch.Tensor
    y_true: torch.Tensor
    y_target: torch.Tensor


@dataclass
class PoisonedData:
    """A poisoned training set and what the attack did to it.

    Attributes:
        x: (N, C, H, W) float images after poisoning, pixel space [0, 1].
        y: (N,) int64 labels after poisoning.
        is_poison: (N,) bool, True exactly where the attack changed the sample.
        y_original: (N,) int64 labels before poisoning.
        attack: the attack's name.
        settings: the attack's parameters (rate, target, seed, trigger, ...), JSON-ready.
        details: figures the attack measured while crafting (e.g. Witches' Brew's
            alignment loss per restart), JSON-ready.
    """

    x: torch.Tensor
    y: torch.Tensor
    is_poison: torch.Tensor
    y_original: torch.Tensor
    attack: str
    settings: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def indices(self) -> torch.Tensor:
        """(P,) int64 positions of the poisoned samples, ascending."""
        return torch.nonzero(self.is_poison).flatten()

    @property
    def n_poison(self) -> int:
        return int(self.is_poison.sum())

    def dataset(self) -> torch.utils.data.TensorDataset:
        """The poisoned set as a ``TensorDataset`` of (image, label)."""
        return torch.utils.data.TensorDataset(self.x, self.y)

    def to_json(self) -> dict:
        """Counts, settings and details (no per-sample tensors)."""
        labels_changed = int((self.y != self.y_original).sum())
        by_class = torch.bincount(self.y[self.is_poison].cpu(),
                                  minlength=int(self.y.max()) + 1 if len(self.y) else 0)
        return {"attack": self.attack, "n": len(self.y), "n_poison": self.n_poison,
                "poison_rate": self.n_poison / max(len(self.y), 1),
                "labels_changed": labels_changed,
                "poisons_by_label": by_class.tolist(),
                "settings": dict(self.settings), "details": dict(self.details)}


class PoisonedDataset(torch.utils.data.Dataset):
    """``base`` with the items at ``indices`` replaced by (``x[j]``, ``y[j]``).

    Only the P poisoned items are held in memory; every other item is read from
    ``base``. ``is_poison`` is an (N,) bool tensor, ``record`` the attack's
    :class:`PoisonedData`-style metadata without the images (``to_json()``).
    """

    def __init__(self, base, indices: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 attack: str, settings: dict, details: dict | None = None):
        self.base = base
        self.is_poison = torch.zeros(len(base), dtype=torch.bool)
        self.is_poison[indices.cpu()] = True
        self._slot = {int(i): j for j, i in enumerate(indices.tolist())}
        self.x, self.y = x, y
        self.attack, self.settings, self.details = attack, dict(settings), dict(details or {})

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        j = self._slot.get(int(i))
        if j is None:
            return self.base[i]
        return self.x[j], self.y[j]

    def to_json(self) -> dict:
        return {"attack": self.attack, "n": len(self), "n_poison": int(self.is_poison.sum()),
                "poison_rate": float(self.is_poison.float().mean()) if len(self) else 0.0,
                "settings": dict(self.settings), "details": dict(self.details)}


def _kind(value) -> str:
    """A value's type, and its dtype for a tensor, for messages."""
    return f"{type(value).__name__} {value.dtype}" if isinstance(value, torch.Tensor) \
        else type(value).__name__


def check_images(x, y=None, name: str = "x") -> None:
    """TypeError/ValueError unless ``x`` is a float (N, C, H, W) tensor in [0, 1] and
    ``y`` (if given) an int64-like (N,) tensor of labels >= 0."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor of images (N, C, H, W) in [0, 1], "
                        f"got {_kind(x)}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be images shaped (N, C, H, W), got {tuple(x.shape)}")
    check_input_pixels(x, unnormalised=False)
    if y is None:
        return
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {_kind(y)}")
    if y.shape != x.shape[:1]:
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match {name}, "
                         f"got {tuple(y.shape)}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0, found {int(y.min())}")


def _dataset_labels(dataset) -> torch.Tensor:
    """The labels of a map-style dataset of (image, label) items, as int64 (N,)."""
    if isinstance(dataset, torch.utils.data.TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1].long().cpu()
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


class PoisoningAttack:
    """Base class: seeded selection of exactly ``round(rate * N)`` poisons.

    Subclasses set ``name``, implement :meth:`_candidates` (which samples may be
    poisoned) and :meth:`_craft` (their new images and labels), and may override
    :meth:`evaluation_set`.

    Args:
        rate: fraction of the training set to poison, in (0, 1].
        seed: seeds the choice of poisons and any random part of the attack.
        num_classes: number of classes; None: ``max(label) + 1`` of the data poisoned.
    """

    name = "poisoning"

    def __init__(self, rate: float, seed: int = 0, num_classes: int | None = None):
        self.rate = check_in_range("rate", rate, 0.0, 1.0, low_open=True,
                                   reason=" (a fraction of the training set)")
        self.seed = check_int("seed", seed, 0)
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, 2)
        self._classes_seen: int | None = None  # the class count of the last data poisoned

    # ------------------------------------------------------------------ subclass hooks
    def _candidates(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """(M,) int64 positions that may be poisoned; default: every sample."""
        return torch.arange(len(y))

    def _craft(self, x: torch.Tensor, y: torch.Tensor, num_classes: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """New images and labels for the chosen samples ``x`` (P, ...), ``y`` (P,)."""
        raise NotImplementedError

    def _check_labels(self, num_classes: int) -> None:
        """ValueError if a class argument (target, source) is outside [0, num_classes)."""

    def settings(self) -> dict[str, Any]:
        """The attack's parameters, JSON-ready."""
        return {"rate": self.rate, "seed": self.seed, "num_classes": self.num_classes}

    def details(self) -> dict[str, Any]:
        """What the last crafting measured (empty unless a subclass records something)."""
        return {}

    # ------------------------------------------------------------------ public
    def evaluation_set(self, x: torch.Tensor, y: torch.Tensor) -> EvaluationSet | None:
        """Test inputs that measure the attack (None: the attack has no success rate)."""
        return None

    def poison(self, x: torch.Tensor, y: torch.Tensor) -> PoisonedData:
        """Poison the training set (``x`` (N, C, H, W) in [0, 1], ``y`` (N,) int64).

        Returns:
            :class:`PoisonedData`; ``x`` and ``y`` are new tensors (the inputs are not
            modified), on the inputs' device.

        Raises:
            TypeError / ValueError: bad images or labels, a class argument outside the
                label range, or a rate that gives no poison or more poisons than candidates.
        """
        check_images(x, y)
        y = y.long()
        num_classes = self._resolve_classes(y)
        chosen = self._choose(y.cpu(), num_classes).to(y.device)
        generator = torch.Generator().manual_seed(self.seed + 1)
        x_new, y_new = self._craft(x[chosen], y[chosen], num_classes, generator)
        xp, yp = x.clone(), y.clone()
        xp[chosen] = x_new.to(xp.dtype)
        yp[chosen] = y_new.to(yp.device)
        is_poison = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        is_poison[chosen] = True
        return PoisonedData(xp, yp, is_poison, y.clone(), self.name, self._settings(num_classes),
                            self.details())

    def poison_dataset(self, dataset, labels: torch.Tensor | None = None) -> PoisonedDataset:
        """Poison a map-style dataset of (image, label) items without copying it.

        Only the chosen items are read and crafted; ``labels`` (N,) saves reading every
        item's label (a ``TensorDataset``'s are read directly).
        """
        y = (labels if labels is not None else _dataset_labels(dataset)).long().cpu()
        if len(y) != len(dataset):
            raise ValueError(f"labels must have {len(dataset)} entries, got {len(y)}")
        num_classes = self._resolve_classes(y)
        chosen = self._choose(y, num_classes)
        x_sel = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in chosen])
        check_images(x_sel, y[chosen], name="dataset images")
        generator = torch.Generator().manual_seed(self.seed + 1)
        x_new, y_new = self._craft(x_sel, y[chosen], num_classes, generator)
        return PoisonedDataset(dataset, chosen, x_new, y_new, self.name,
                               self._settings(num_classes), self.details())

    # ------------------------------------------------------------------ internals
    def _settings(self, num_classes: int) -> dict:
        out = self.settings()
        out["num_classes"] = num_classes
        return out

    def _resolve_classes(self, y: torch.Tensor) -> int:
        num_classes = self.num_classes if self.num_classes is not None else (
            int(y.max()) + 1 if len(y) else 0)
        if len(y) and int(y.max()) >= num_classes:
            raise ValueError(f"labels must be < num_classes = {num_classes}, found {int(y.max())}")
        self._check_labels(num_classes)
        self._classes_seen = num_classes
        return num_classes

    def _choose(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        n = int(round(self.rate * len(y)))
        if n < 1:
            raise ValueError(f"rate {self.rate:g} of {len(y)} samples rounds to 0 poisons; "
                             f"use a rate >= {0.5 / max(len(y), 1):.3g}")
        candidates = self._candidates(y, num_classes)
        if n > len(candidates):
            raise ValueError(f"rate {self.rate:g} asks for {n} poisons but only "
                             f"{len(candidates)} samples can be poisoned by {self.name} "
                             f"({self._candidate_rule()})")
        generator = torch.Generator().manual_seed(self.seed)
        pick = torch.randperm(len(candidates), generator=generator)[:n]
        return candidates[pick].sort().values

    def _candidate_rule(self) -> str:
        return "every sample"


class TriggerAttack(PoisoningAttack):
    """A backdoor attack: poisons carry a trigger and (dirty-label) a new label.

    Subclasses implement :meth:`apply_trigger`. ``mode`` is ``"all-to-one"`` (every
    poison labelled ``target``, drawn from the other classes) or ``"all-to-all"``
    (label y becomes (y + 1) mod K, drawn from every class).
    """

    def __init__(self, target: int = 0, rate: float = 0.1, mode: str = "all-to-one",
                 seed: int = 0, num_classes: int | None = None):
        super().__init__(rate, seed, num_classes)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.target = check_int("target", target, 0)
        if self.num_classes is not None:
            check_class("target", self.target, self.num_classes)

    def _check_labels(self, num_classes: int) -> None:
        check_class("target", self.target, num_classes)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "target": self.target, "mode": self.mode}

    def target_labels(self, y: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
        """The label the attacker wants for inputs of true label ``y`` (M,)."""
        if self.mode == "all-to-one":
            return torch.full_like(y, self.target)
        k = num_classes or self.num_classes or self._classes_seen
        if k is None:
            raise ValueError("all-to-all needs num_classes (pass it to the attack)")
        return (y + 1) % k

    def _candidates(self, y, num_classes):
        if self.mode == "all-to-one":
            return torch.nonzero(y != self.target).flatten()
        return torch.arange(len(y))

    def _candidate_rule(self) -> str:
        return (f"samples whose label is not the target {self.target}"
                if self.mode == "all-to-one" else "every sample")

    def _craft(self, x, y, num_classes, generator):
        return self.apply_trigger(x), self.target_labels(y, num_classes)

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) in [0, 1] with the trigger; a new tensor, same device."""
        raise NotImplementedError

    def evaluation_set(self, x: torch.Tensor, y: torch.Tensor) -> EvaluationSet:
        """Triggered test inputs whose true label differs from their target label."""
        check_images(x, y)
        y = y.long()
        k = self.num_classes or self._classes_seen or (int(y.max()) + 1 if len(y) else 1)
        targets = self.target_labels(y, k)
        keep = targets != y
        return EvaluationSet(self.apply_trigger(x[keep]), y[keep], targets[keep])
