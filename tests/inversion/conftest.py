"""One torch thread (tiny models on a shared machine)."""

from tests.audit.conftest import _one_thread  # noqa: F401  (autouse fixture)
