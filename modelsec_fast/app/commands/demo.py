"""``modelsec-fast demo``: train, attack and audit three models and write the report
(the pipeline is :func:`modelsec_fast.app.demo.run_demo`)."""

from __future__ import annotations

import sys

from ..console import PROG, log, progress_enabled

__all__ = ["run"]


def run(args) -> int:
    """Exit status 0, or 1 when a section of the report failed (the report is still
    written and says which, and why)."""
    from ..demo import run_demo

    files = run_demo(data=args.data, out=args.out, quick=args.quick,
                     target_epsilon=args.target_epsilon, delta=args.delta, adv=args.adv,
                     shadows=args.shadows, model=args.model, seed=args.seed,
                     device=args.device, progress=progress_enabled(args),
                     log=lambda message: log(args, message), command=args.command_line,
                     raise_errors=args.debug)
    print(files.markdown)
    for key in files.failed:
        print(f"{PROG}: report section {key!r} failed; the report says why", file=sys.stderr)
    return 1 if files.failed else 0
