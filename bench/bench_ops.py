"""Benchmark of the fused ops against the eager sequences they replace.

For each case, in one process and one run: the native kernel, the pure-PyTorch
reference (the fallback path), the eager Opacus sequence (norms -> clamp ->
einsum -> randn -> add) or the eager torchattacks update, and a plain copy_ of
the same number of bytes. Reports the median ms over rounds whose canary
(a 512x512 matmul timed in each round) was not slowed by other load, the
effective GB/s over the minimal bytes (inputs read once, outputs written once),
and the ratio to the copy_.

    python bench/bench_ops.py [--device cpu|cuda] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from modelsec_fast import ops

CANARY_SLACK = 1.5  # rounds whose canary is slower than 1.5x the fastest are discarded


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Interleaved rounds: each round times the canary, then every contender once."""

    def __init__(self, device, rounds, warmup=2):
        self.device, self.rounds, self.warmup = device, rounds, warmup
        a = torch.randn(512, 512, device=device)
        self._canary = lambda: a @ a

    def _once(self, fn):
        _sync(self.device)
        t0 = time.perf_counter()
        fn()
        _sync(self.device)
        return time.perf_counter() - t0

    def run(self, contenders: dict) -> dict:
        for fn in contenders.values():
            for _ in range(self.warmup):
                fn()
        canary, times = [], {k: [] for k in contenders}
        for _ in range(self.rounds):
            canary.append(self._once(self._canary))
            for name, fn in contenders.items():
                times[name].append(self._once(fn))
        fastest = min(canary)
        keep = [i for i, c in enumerate(canary) if c <= CANARY_SLACK * fastest] or list(range(len(canary)))
        return {k: statistics.median(v[i] for i in keep) * 1e3 for k, v in times.items()} | {
            "_rounds_kept": len(keep), "_rounds": self.rounds}


def _with_path(native: bool, fn):
    """Runs fn on the native path or on the reference (fallback) path."""
    def call():
        if native:
            os.environ.pop("MODELSEC_FAST_DISABLE_NATIVE", None)
        else:
            os.environ["MODELSEC_FAST_DISABLE_NATIVE"] = "1"
        try:
            return fn()
        finally:
            os.environ.pop("MODELSEC_FAST_DISABLE_NATIVE", None)
    return call


def _copy_of(nbytes, device):
    """copy_ that moves nbytes in total (half read, half written)."""
    n = max(1, nbytes // 8)
    src, dst = torch.empty(n, device=device), torch.empty(n, device=device)
    return lambda: dst.copy_(src)


def bench_sign_step(shape, device, timer, with_reference):
    x_orig = torch.rand(shape, device=device)
    x_adv = (x_orig + 0.01 * torch.randn(shape, device=device)).clamp(0, 1)
    grad = torch.randn(shape, device=device)
    alpha, eps = 2 / 255, 8 / 255
    work = x_adv.clone()

    def eager():  # the torchattacks PGD update
        adv = x_adv + alpha * grad.sign()
        delta = torch.clamp(adv - x_orig, min=-eps, max=eps)
        return torch.clamp(x_orig + delta, min=0, max=1).detach()

    nbytes = 4 * x_adv.numel() * x_adv.element_size()  # read 3, write 1
    contenders = {
        "native": _with_path(True, lambda: ops.sign_step(x_adv, grad, x_orig, alpha, eps)),
        "native_inplace": _with_path(True, lambda: ops.sign_step_(work, grad, x_orig, alpha, eps)),
        "eager": eager,
        "copy_": _copy_of(nbytes, device),
    }
    if with_reference:
        contenders["reference"] = _with_path(False, lambda: ops.sign_step(x_adv, grad, x_orig, alpha, eps))
    return "sign_step", "x".join(map(str, shape)), nbytes, "eager", timer.run(contenders)


def _mlp_param_shapes(total):
    if total > 100_000:  # 784-512-256-10 MLP: 535,818 parameters
        return [(512, 784), (512,), (256, 512), (256,), (10, 256), (10,)]
    return [(32, 784), (32,), (10, 32), (10,)]  # 784-32-10 MLP: 25,450 parameters


def bench_clip_and_noise(batch, params, device, timer, with_reference):
    grads = [torch.randn((batch,) + s, device=device) for s in _mlp_param_shapes(params)]
    n_params = sum(g[0].numel() for g in grads)
    max_norm, std = 1.0, 1.1
    gen = torch.Generator(device=device).manual_seed(0)

    def eager():  # the Opacus sequence: norms -> clamp -> einsum -> randn -> add
        norms = torch.stack([g.reshape(batch, -1).norm(2, dim=-1) for g in grads], dim=1).norm(2, dim=1)
        factors = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        out = []
        for g in grads:
            s = torch.einsum("i,i...", factors, g)
            s.add_(torch.normal(0.0, std, s.shape, device=device, generator=gen))
            out.append(s)
        return out

    nbytes = (batch + 1) * n_params * 4
    contenders = {
        "native": _with_path(True, lambda: ops.clip_and_noise(grads, max_norm, std)),
        "eager": eager,
        "copy_": _copy_of(nbytes, device),
    }
    if with_reference:
        contenders["reference"] = _with_path(False, lambda: ops.clip_and_noise(grads, max_norm, std))
    return "clip_and_noise", f"B={batch} P={n_params}", nbytes, "eager", timer.run(contenders)


def bench_add_noise(params, device, timer, with_reference):
    x = torch.zeros(params, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    nbytes = 2 * params * 4
    contenders = {
        "native": _with_path(True, lambda: ops.add_noise_(x, 1.0)),
        "eager": lambda: x.add_(torch.randn(params, device=device, generator=gen)),
        "copy_": _copy_of(nbytes, device),
    }
    if with_reference:
        contenders["reference"] = _with_path(False, lambda: ops.add_noise_(x, 1.0))
    return "add_noise_", f"P={params}", nbytes, "eager", timer.run(contenders)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="small sizes, few rounds (seconds)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--no-reference", action="store_true", help="skip the slow reference path")
    ap.add_argument("--json", default=None, help="write results to this JSON file")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not ops.native_available():
        print("warning: native library not available; 'native' rows run the reference")
    rounds = args.rounds or (3 if args.quick else 9)
    timer = Timer(device, rounds)
    ref = not args.no_reference
    if args.quick:
        cases = [lambda: bench_sign_step((64, 3, 32, 32), device, timer, ref),
                 lambda: bench_clip_and_noise(32, 25_450, device, timer, ref),
                 lambda: bench_add_noise(65_536, device, timer, ref)]
    else:
        cases = [lambda: bench_sign_step((1024, 1, 28, 28), device, timer, ref),
                 lambda: bench_sign_step((256, 3, 32, 32), device, timer, ref),
                 lambda: bench_sign_step((256, 3, 224, 224), device, timer, ref),
                 lambda: bench_clip_and_noise(256, 25_450, device, timer, ref),
                 lambda: bench_clip_and_noise(256, 535_818, device, timer, ref),
                 lambda: bench_add_noise(535_818, device, timer, ref)]
    rows = []
    print(f"device={device} threads={torch.get_num_threads()} native={ops.native_available()} "
          f"rounds={rounds} (median of rounds kept by the canary)")
    header = f"{'op':<15}{'size':<22}{'contender':<16}{'ms':>10}{'GB/s':>9}{'x copy_':>9}{'speedup':>9}"
    print(header)
    print("-" * len(header))
    for case in cases:
        op, size, nbytes, baseline, res = case()
        for name, ms in res.items():
            if name.startswith("_"):
                continue
            row = {"op": op, "size": size, "contender": name, "ms": ms,
                   "gbps": nbytes / (ms * 1e-3) / 1e9, "ratio_to_copy": ms / res["copy_"],
                   "speedup_vs_eager": res[baseline] / ms, "rounds_kept": res["_rounds_kept"]}
            rows.append(row)
            print(f"{op:<15}{size:<22}{name:<16}{ms:>10.3f}{row['gbps']:>9.1f}"
                  f"{row['ratio_to_copy']:>9.2f}{row['speedup_vs_eager']:>9.2f}")
    if args.json:
        from modelsec_fast import _native
        meta = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                "native": ops.native_available(), "build": _native.build_info(),
                "cpu": platform.processor() or platform.machine(), "quick": args.quick, "rounds": rounds}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
