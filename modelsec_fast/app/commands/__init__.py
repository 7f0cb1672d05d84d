"""The bodies of the ``modelsec-fast`` subcommands, one module each; every module's
``run(args) -> int`` takes the parsed arguments and returns the exit status
(:mod:`modelsec_fast.app.cli` builds the parser and handles errors)."""

__all__ = ["demo", "train", "evaluate", "audit", "epsilon"]
