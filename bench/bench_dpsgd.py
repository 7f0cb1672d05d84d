"""DP-SGD step time and memory: non-private vs Opacus (hooks, ghost, ew) vs ours.

Side by side in one process, round-robin over configurations so that machine
noise hits all of them alike. Each round first times a 512x512 matmul canary;
rounds whose canary is > 1.3x the fastest canary are discarded as noisy.
Reports the median wall-clock step time and its ratio to the non-private
step, the minimum process CPU time per step over rounds (more robust than wall
time on a shared machine; on a quiet machine the two agree up to threading),
and (with
``--memory``) the peak-RSS increase of a training run, measured in one fresh
subprocess per configuration (torch has no CPU memory API).

    python bench/bench_dpsgd.py --quick
    python bench/bench_dpsgd.py --memory --json bench/out/dpsgd.json
    python bench/bench_dpsgd.py --device cuda --models mlp,mnist_cnn
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIGS = ("nonprivate", "opacus_hooks", "opacus_ghost", "opacus_ew", "ours")
MODELS = ("mlp", "mnist_cnn", "cifar_gn", "transformer")
BATCH = {"mlp": 256, "mnist_cnn": 256, "cifar_gn": 128, "transformer": 32}


def build_model(name: str) -> nn.Module:
    from modelsec_fast.models import (MLP, CifarGroupNormCNN, OpacusMnistCNN,
                                      TransformerEncoderClassifier)
    if name == "mlp":
        return MLP((1, 28, 28), 10, hidden=(512, 256))
    if name == "mnist_cnn":
        return OpacusMnistCNN((1, 28, 28), 10)
    if name == "cifar_gn":
        return CifarGroupNormCNN((3, 32, 32), 10)
    if name == "transformer":
        return TransformerEncoderClassifier((128,), 2)  # embedding + 2 layers, seq 128
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def make_batch(name: str, batch: int, device):
    g = torch.Generator().manual_seed(0)
    if name == "transformer":
        x = torch.randint(0, 10000, (batch, 128), generator=g)
        y = torch.randint(0, 2, (batch,), generator=g)
    else:
        shape = (1, 28, 28) if name in ("mlp", "mnist_cnn") else (3, 32, 32)
        x = torch.rand((batch,) + shape, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
    return x.to(device), y.to(device)


def _loader(x, y, batch):
    from torch.utils.data import DataLoader, TensorDataset
    return DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=batch)


def make_step(config: str, name: str, device, batch: int):
    """A zero-argument callable doing one full training step of ``config``."""
    torch.manual_seed(0)
    model = build_model(name).to(device)
    x, y = make_batch(name, batch, device)
    loss_fn = nn.CrossEntropyLoss()
    if config == "nonprivate":
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step():
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        return step
    loader = _loader(torch.cat([x] * 4), torch.cat([y] * 4), batch)
    if config == "ours":
        from modelsec_fast import PrivacyEngine
        from modelsec_fast.privacy import ModuleValidator
        model = ModuleValidator.fix(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        pm, dpo, _ = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0, poisson_sampling=False)

        def step():
            dpo.zero_grad()
            loss_fn(pm(x), y).backward()
            dpo.step()
        return step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import opacus
        from opacus.validators import ModuleValidator as OpacusValidator
        model = OpacusValidator.fix(model).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        mode = config.split("_", 1)[1]
        engine = opacus.PrivacyEngine(accountant="rdp")
        if mode == "ghost":
            gm, dpo, crit, _ = engine.make_private(
                module=model, optimizer=opt, data_loader=loader, criterion=loss_fn,
                noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
                grad_sample_mode="ghost")

            def step():
                dpo.zero_grad()
                crit(gm(x), y).backward()
                dpo.step()
            return step
        gm, dpo, _ = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode=mode)

        def step():
            dpo.zero_grad()
            loss_fn(gm(x), y).backward()
            dpo.step()
        return step


def canary_ms(device) -> float:
    a = torch.randn(512, 512, device=device)
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 200.0


def time_model(name, configs, device, *, warmup, rounds, steps):
    batch = BATCH[name]
    steps_fns, errors = {}, {}
    for c in configs:
        try:
            steps_fns[c] = make_step(c, name, device, batch)
            for _ in range(warmup):
                steps_fns[c]()
        except Exception as err:  # an Opacus mode may not support a model
            errors[c] = f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
            steps_fns.pop(c, None)
    wall = {c: [] for c in steps_fns}
    cpu = {c: [] for c in steps_fns}
    canaries = []
    order = list(steps_fns)
    for r in range(rounds):
        canaries.append(canary_ms(device))
        for c in (order if r % 2 == 0 else order[::-1]):
            fn = steps_fns[c]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall[c].append((time.perf_counter() - t0) * 1000.0 / steps)
            cpu[c].append((time.process_time() - c0) * 1000.0 / steps)
        print(f"  {name}: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    best = min(canaries)
    keep = [i for i, cm in enumerate(canaries) if cm <= 1.3 * best] or list(range(rounds))
    result = {c: statistics.median([v[i] for i in keep]) for c, v in wall.items()}
    # contention only ever adds CPU time (cache misses, SMT): the minimum is the estimate
    cpu_ms = {c: min(v) for c, v in cpu.items()}
    return result, errors, {"rounds": rounds, "kept": len(keep), "canary_ms": canaries,
                            "cpu_ms": cpu_ms}


def _proc_status_kib(field: str):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def child_memory(name, config, device, steps):
    """Peak RSS increase (MiB) of ``steps`` training steps, in this fresh process.

    Linux: the VmHWM high-water mark, reset to the current RSS right before the
    steps (``/proc/self/clear_refs``). ``ru_maxrss`` is not used there because it
    survives exec, so a child would start at its parent's peak.
    """
    fn = make_step(config, name, device, BATCH[name])
    before = _proc_status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        peak = lambda: _proc_status_kib("VmHWM")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(steps):
        fn()
    print(json.dumps({"peak_rss_increase_mib": (peak() - before) / 1024.0}))


def measure_memory(name, config, device, steps):
    cmd = [sys.executable, __file__, "--child-memory", name, config, "--device", str(device),
           "--steps", str(steps), "--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)["peak_rss_increase_mib"]
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS per config")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child-memory", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_memory:
        warnings.simplefilter("ignore")
        child_memory(*args.child_memory, device, args.steps)
        return
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 1, 1
    models = [m for m in args.models.split(",") if m]
    configs = [c for c in args.configs.split(",") if c]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}; choose from {MODELS}")
    report = {"device": str(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "quick": args.quick, "models": {}}
    rows = []
    for m in models:
        times, errors, meta = time_model(m, configs, device, warmup=args.warmup,
                                         rounds=args.rounds, steps=args.steps)
        base = times.get("nonprivate")
        mem = {}
        if args.memory:
            for c in times:
                mem[c] = measure_memory(m, c, device, 3 if args.quick else 5)
        cpu = meta["cpu_ms"]
        cbase = cpu.get("nonprivate")
        entry = {"batch": BATCH[m], "step_ms": times, "cpu_ms": cpu, "errors": errors,
                 "meta": meta,
                 "ratio": {c: (t / base if base else None) for c, t in times.items()},
                 "cpu_ratio": {c: (t / cbase if cbase else None) for c, t in cpu.items()},
                 "peak_rss_increase_mib": mem}
        report["models"][m] = entry
        for c in configs:
            if c in times:
                ratio = f"{times[c] / base:.2f}x" if base else "-"
                cratio = f"{cpu[c] / cbase:.2f}x" if cbase else "-"
                mm = mem.get(c)
                rows.append((m, c, f"{times[c]:.2f}", ratio, f"{cpu[c]:.2f}", cratio,
                             "-" if mm is None else f"{mm:.0f}"))
            else:
                rows.append((m, c, "n/a", "-", "n/a", "-", errors.get(c, "")[:40]))
    head = ("model", "config", "step ms", "x nonpriv", "cpu ms (min)", "cpu x", "peak RSS +MiB")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(v).ljust(w) for v, w in zip(r, widths)))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
