"""Models for the poisoning tests, trained once per session on the embedded digits.

A small CNN (``small_cnn``) is trained on the training split minus a held-out
defender's share (clean data for STRIP, Neural Cleanse and the mitigations): once on
the clean split and once with BadNets at a 10% rate (target 0, 3x3 checkerboard).

The threshold tests run on ``SEED`` (0). ``MODELSEC_POISONING_SEED=s pytest
tests/poisoning`` reruns them on seed s (split, poisons, weights, defences): they were
checked on seeds 1-5 too (see the report of issue 14).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import pytest
import torch
from torch import nn

from modelsec_fast.data import Dataset, load_dataset
from modelsec_fast.models import build_model
from modelsec_fast.poisoning import BadNets, PoisonedData, train_classifier

SEED = int(os.environ.get("MODELSEC_POISONING_SEED", "0"))
TARGET = 0
DEFENDER = 270  # held-out clean training images (20% of the 1,348)


@contextlib.contextmanager
def one_thread():
    """One torch thread: the models are tiny, and on a shared 2-core host a second
    intra-op thread makes small ops far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _one_thread_per_module():
    with one_thread():
        yield


def fresh_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", (1, 8, 8), 10)


@dataclasses.dataclass
class Setup:
    data: Dataset
    seed: int
    x_def: torch.Tensor   # the defender's clean images (DEFENDER, 1, 8, 8)
    y_def: torch.Tensor
    x_train: torch.Tensor  # the victim's clean training split
    y_train: torch.Tensor
    attack: BadNets
    poisoned: PoisonedData
    backdoored: nn.Module
    clean: nn.Module

    @property
    def x_test(self):
        return self.data.x_test

    @property
    def y_test(self):
        return self.data.y_test


def build_setup(seed: int) -> Setup:
    data = load_dataset("digits")
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(seed))
    held, rest = order[:DEFENDER], order[DEFENDER:]
    x_train, y_train = data.x_train[rest], data.y_train[rest]
    attack = BadNets(TARGET, 0.1, size=3, seed=seed)
    poisoned = attack.poison(x_train, y_train)
    backdoored = train_classifier(fresh_cnn(seed), poisoned.x, poisoned.y, epochs=20,
                                  batch_size=64, seed=seed)
    clean = train_classifier(fresh_cnn(seed), x_train, y_train, epochs=20, batch_size=64,
                             seed=seed)
    return Setup(data, seed, data.x_train[held], data.y_train[held], x_train, y_train, attack,
                 poisoned, backdoored, clean)


@pytest.fixture(scope="session")
def setup() -> Setup:
    with one_thread():
        return build_setup(SEED)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")
