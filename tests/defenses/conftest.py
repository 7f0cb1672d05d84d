"""Fixtures for the adversarial-training tests (helpers live in at_helpers.py)."""

import pytest

from at_helpers import Digits, load_digits_split


@pytest.fixture(scope="session")
def digits() -> Digits:
    return load_digits_split()
