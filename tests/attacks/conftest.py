"""The trained-model fixtures of the attack tests (built once per process in trained.py).

Tests of modelsec_fast/evaluate.py (tests/test_evaluate*.py) import these fixtures.
"""

import pytest

from tests.attacks import trained
from tests.attacks.trained import Trained


@pytest.fixture(scope="session")
def digits():
    return trained.digits()


@pytest.fixture(scope="session")
def digits_cnn() -> Trained:
    return trained.digits_cnn()


@pytest.fixture(scope="session")
def digits_mlp() -> Trained:
    return trained.digits_mlp()
