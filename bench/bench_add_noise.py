"""add_noise_ against torch.randn + add_ on the same buffer, back to back, warm caches.

bench_ops.py interleaves every op, so add_noise_ there starts from caches that the
preceding 549 MB clip_and_noise has flushed. This is the steady state a DP optimizer
sees: the same parameter-sized buffer noised step after step.

    python bench/bench_add_noise.py --threads 1
"""

import argparse
import statistics
import time

import torch

import modelsec_fast.ops as ops


def median_ms(fn, calls=30, warmup=5):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--numel", type=int, default=535818, help="MLP 784-512-256-10 parameters")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.zeros(args.numel)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(512, 512)
    print(f"native={ops.native_available()} threads={args.threads} numel={args.numel}")
    for r in range(args.rounds):
        canary = median_ms(lambda: a @ a, calls=10)
        ours = median_ms(lambda: ops.add_noise_(x, 1.0, generator=g))
        eager = median_ms(lambda: x.add_(torch.randn(args.numel, generator=g)))
        print(f"round {r}: canary {canary:.2f} ms | add_noise_ {ours:.3f} ms | "
              f"randn + add_ {eager:.3f} ms | speedup {eager / ours:.2f}x")


if __name__ == "__main__":
    main()
