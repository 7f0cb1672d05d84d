"""add_noise_ against torch.randn + add_ on the same buffer, back to back, warm caches.

bench_ops.py interleaves every op, so add_noise_ there starts from caches that the
preceding 549 MB clip_and_noise has flushed. This is the steady state a DP optimizer
sees: the same parameter-sized buffer noised step after step. Each sample is the
mean of ``--calls`` calls in a row; rounds are interleaved (``bench/_harness.py``).

    python bench/bench_add_noise.py [--threads 1] [--numel 535818] [--calls 30] [--quick]
"""

from __future__ import annotations

import argparse

import _harness as h
import torch

import modelsec_fast.ops as ops


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="bench_add_noise.py", description=__doc__.splitlines()[0])
    p.add_argument("--numel", type=int, default=535818, help="MLP 784-512-256-10 parameters")
    p.add_argument("--calls", type=int, default=30, help="calls in a row per sample")
    args = h.parse_args(p, argv, rounds=9, quick_rounds=2, threads=1)
    device = torch.device(args.device)
    if args.quick:
        args.numel, args.calls = min(args.numel, 65_536), min(args.calls, 5)
    report = h.Report("bench_add_noise", args)
    x = torch.zeros(args.numel, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    m = h.measure({"add_noise_": lambda: ops.add_noise_(x, 1.0, generator=g),
                   "randn + add_": lambda: x.add_(torch.randn(args.numel, device=device,
                                                              generator=g))},
                  device=device, rounds=args.rounds, warmup=5, repeat=args.calls)
    section = report.section("add_noise_, steady state", baseline="randn + add_",
                             note=f"native={ops.native_available()}, numel={args.numel}, "
                                  f"{args.calls} calls in a row per sample")
    section.add(m, labels={"numel": args.numel})
    return report.finish()


if __name__ == "__main__":
    main()
