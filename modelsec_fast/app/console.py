"""What the command bodies share: the one-line usage error and how they talk to
the terminal (progress lines on stderr, results on stdout)."""

from __future__ import annotations

import sys

__all__ = ["PROG", "UsageError", "log", "one_line", "progress_enabled"]

PROG = "modelsec-fast"


class UsageError(ValueError):
    """Bad command-line input; printed as one line, exit status 2."""


def progress_enabled(args) -> bool:
    """Whether progress bars are wanted (``--no-progress`` turns them off)."""
    return not getattr(args, "no_progress", False)


def log(args, message: str) -> None:
    """A progress line on stderr, unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def one_line(error: BaseException) -> str:
    """``error`` as one line: its message with whitespace collapsed, or its type's name."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
