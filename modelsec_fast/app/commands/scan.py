"""``modelsec-fast scan``: a security review of the user's own model and data (the
pipeline is :func:`modelsec_fast.app.scan.pipeline.run_scan`)."""

from __future__ import annotations

import sys

from ..console import PROG, UsageError, log, progress_enabled

__all__ = ["run"]


def run(args) -> int:
    """Exit status 0 when every section ran (or was skipped with its reason), 1 when a
    section failed (the report still says which and why); a model or data file that
    cannot be used raises (status 2) after a partial report is written."""
    from ..scan.fitting import parse_recipe
    from ..scan.pipeline import ScanOptions, ScanStopped, run_scan

    lo, hi = args.input_range
    if (args.mean is None) != (args.std is None):
        raise UsageError("--mean and --std go together: give both or neither")
    if args.members is not None and args.train_data is None and not args.data:
        raise UsageError("--members needs the records it covers: --train-data or --data")
    options = ScanOptions(
        model=args.model, data=args.data, out=args.out, weights=args.weights,
        trust_model=args.trust_model, train_data=args.train_data, members=args.members,
        input_range=(lo, hi), mean=args.mean, std=args.std,
        eps_linf=args.eps[0] if args.eps else None,
        eps_l2=args.eps[1] if args.eps and len(args.eps) > 1 else None,
        budget=args.budget, recipe=parse_recipe(args.recipe) if args.recipe else None,
        device=args.device, seed=args.seed, max_records=args.max_records)
    try:
        result = run_scan(options, progress=progress_enabled(args),
                          log=lambda message: log(args, message), command=args.command_line,
                          raise_errors=args.debug)
    except ScanStopped as e:
        raise UsageError(f"{e} (partial report in {args.out})") from None
    print(result.files.html)
    for key in result.failed:
        print(f"{PROG}: report section {key!r} failed; the report says why", file=sys.stderr)
    return 1 if result.failed else 0
