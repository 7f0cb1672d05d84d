"""Fixtures for the whole suite."""

import os
import random

import pytest
import torch


@pytest.fixture
def random_seed(request) -> int:
    """A fresh seed for a test that draws random shapes or values, printed (pytest shows
    it with a failure) so the failing draw can be replayed: MODELSEC_FAST_TEST_SEED=<seed>
    reruns the test with that seed. torch's global generator is seeded with it too."""
    fixed = os.environ.get("MODELSEC_FAST_TEST_SEED")
    seed = int(fixed) if fixed else random.SystemRandom().randrange(2**31)
    print(f"{request.node.nodeid}: random seed {seed} "
          f"(rerun with MODELSEC_FAST_TEST_SEED={seed})")
    torch.manual_seed(seed)
    return seed
