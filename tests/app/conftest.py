"""One torch thread for the CLI tests, as for the audit tests (the same fixture: their
models are tiny, and on a shared 2-core machine a second intra-op thread makes small
ops far slower). Module-scoped and autouse; see tests/audit/conftest.py."""

from tests.audit.conftest import _one_thread  # noqa: F401  (autouse fixture)
