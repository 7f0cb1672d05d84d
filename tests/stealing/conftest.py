"""One torch thread (tiny models on a shared machine) and the digits victim."""

import pytest

from tests.audit.conftest import _one_thread  # noqa: F401  (autouse fixture)
from tests.stealing.stealing_helpers import digits_victim


@pytest.fixture
def victim_setup():
    """(victim model, pool x, pool y, data): see ``digits_victim``."""
    return digits_victim()
