"""The bodies of the ``modelsec-fast`` subcommands, one module each; every module's
``run(args) -> int`` takes the parsed arguments and returns the exit status
(:mod:`modelsec_fast.app.cli` builds the parser, imports only the module of the
command it runs, and handles errors)."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import audit, demo, epsilon, evaluate, train

__all__ = ["audit", "demo", "epsilon", "evaluate", "train"]
