"""Benchmark of modelsec_fast.attacks against torchattacks 3.5.1, side by side.

Three sections, all in one process:

1. single attacks -- PGD-10, PGDL2-10 and APGD-100 on the Opacus MNIST CNN
   (batch 1024) and a CIFAR ResNet-18 (batch 128), random weights; labels are
   the model's own predictions so every sample is attacked by both libraries.
   The floor is the same number of forward + input-gradient passes with the
   parameters frozen (what any attack must pay); overhead = time / floor - 1. A second
   floor replays the iterates our attack actually visits (see _replayed_floor).
   The section ``paired`` times the same attacks with the floor interleaved
   pass by pass (``PairedFloor``), so that the host's drift cannot favour
   either side; it is the measure to use where one call takes minutes
   (ResNet-18 APGD-100 at b=128).
2. update -- the L-inf PGD update alone at 256x3x224x224: torchattacks' eager
   three lines against ``ops.sign_step_``.
3. evaluation -- robust accuracy (clean, then PGD-20 with 5 restarts, eps
   0.1) on 2,000 Fashion-MNIST test images with a freshly trained CNN:
   ``robust_accuracy`` against torchattacks' ``MultiAttack`` of 5 PGDs.
   Falls back to sklearn digits (and says so) if Fashion-MNIST is missing.

Times are medians over rounds whose canary (a 512x512 matmul timed every
round) was within 1.5x of its fastest, contenders interleaved in each round.

    python bench/bench_attacks.py [--device cpu|cuda] [--quick] [--json out.json]
        [--sections single,paired,update,eval]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import modelsec_fast.attacks as ma  # noqa: E402
from modelsec_fast import ops  # noqa: E402
from modelsec_fast.attacks.base import frozen_parameters  # noqa: E402
from modelsec_fast.evaluate import robust_accuracy  # noqa: E402
from modelsec_fast.models import OpacusMnistCNN, ResNet18, SmallCNN  # noqa: E402

CANARY_SLACK = 1.5


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Interleaved rounds: each round times the canary, then every contender once,
    in an order rotated from round to round.

    Records wall time and, on the CPU, the process's CPU time (all threads):
    other programs' load inflates wall time but hardly CPU time, so on a
    shared machine the CPU-time columns are the trustworthy ones.
    """

    def __init__(self, device, rounds, warmup=1):
        warmup = min(warmup, rounds)
        self.device, self.rounds, self.warmup = device, rounds, warmup
        a = torch.randn(512, 512, device=device)
        self._canary = lambda: a @ a

    def _once(self, fn):
        _sync(self.device)
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        _sync(self.device)
        return time.perf_counter() - t0, time.process_time() - c0

    def run(self, contenders: dict) -> dict:
        for fn in contenders.values():
            for _ in range(self.warmup):
                fn()
        canary, wall, cpu = [], {k: [] for k in contenders}, {k: [] for k in contenders}
        names = list(contenders)
        for r in range(self.rounds):
            canary.append(self._once(self._canary)[0])
            # Rotate the order each round: a contender's place in the round (after
            # which other work, with what left in the caches and the allocator)
            # otherwise biases it by a few percent.
            for name in names[r % len(names):] + names[:r % len(names)]:
                w, c = self._once(contenders[name])
                wall[name].append(w)
                cpu[name].append(c)
        fastest = min(canary)
        keep = [i for i, c in enumerate(canary) if c <= CANARY_SLACK * fastest] or list(range(len(canary)))
        out = {k: statistics.median(v[i] for i in keep) * 1e3 for k, v in wall.items()}
        if self.device.type == "cpu":
            out |= {f"{k}_cpu": statistics.median(v) * 1e3 for k, v in cpu.items()}
        out["_rounds_kept"] = f"{len(keep)}/{self.rounds}"
        return out


def _gradient_pass(model, x, y):
    """One floor pass: forward and input gradient at ``x`` (a leaf that requires grad)."""
    torch.autograd.grad(F.cross_entropy(model(x), y), x)


def _is_attack_pass(inp) -> bool:
    """Whether a model input is one of an attack's gradient passes (seen from a pre-hook)."""
    return torch.is_grad_enabled() and inp.requires_grad


def _floor(model, x, y, passes):
    """``passes`` forward + input-gradient passes, parameters frozen."""
    def run():
        with frozen_parameters(model):
            for _ in range(passes):
                _gradient_pass(model, x.detach().requires_grad_(True), y)
    return run


def _replayed_floor(model, attack, x, y):
    """The same forward + input-gradient passes, over the very iterates ``attack`` visits.

    The plain floor repeats the clean batch; the attack's inputs are fresh tensors each
    step, with their own allocations and activation values. Replaying them isolates what
    the attack adds on top of its passes (update, projection, bookkeeping).
    """
    iterates = []

    def record(_module, args):
        if _is_attack_pass(args[0]):
            iterates.append(args[0].detach().clone())

    handle = model.register_forward_pre_hook(record)
    try:
        attack(x, y)
    finally:
        handle.remove()

    def run():
        with frozen_parameters(model):
            for xi in iterates:
                _gradient_pass(model, xi.clone().requires_grad_(True), y)
    return run


class PairedFloor:
    """Interleave one floor pass before each of an attack's gradient passes.

    A forward pre-hook catches every grad-enabled forward whose input requires
    grad (the attack's gradient passes) and first runs one floor pass, frozen
    parameters, on a copy of that very iterate. Floor and attack then alternate
    pass by pass, so the host's drift (about 10% from minute to minute here)
    hits both alike, which timing the two one after the other cannot promise
    when each takes minutes. The attack's own time is its wall time minus the
    inserted passes; everything it does besides its passes (the clean forward,
    the random start, the updates, the bookkeeping) counts as overhead.
    """

    def __init__(self, model, device):
        self.model, self.device = model, device
        self._inside = False

    def _floor_pass(self, _module, args):
        inp = args[0]
        if self._inside or not _is_attack_pass(inp):
            return
        self._inside = True
        try:
            _sync(self.device)
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            with frozen_parameters(self.model):
                labels = torch.zeros(inp.shape[0], dtype=torch.long, device=inp.device)
                _gradient_pass(self.model, inp.detach().clone().requires_grad_(True), labels)
            _sync(self.device)
            t1 = time.perf_counter()
            self.passes.append(t1 - t0)
            self.marks.append((t0, t1, f0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt))
        finally:
            self._inside = False

    def run(self, attack_call) -> dict:
        """Times one ``attack_call()``; returns the attack's and the floor's seconds."""
        # Seconds of each floor pass, and its (start, end, minor faults at start, at end).
        self.passes, self.marks = [], []
        handle = self.model.register_forward_pre_hook(self._floor_pass)
        try:
            _sync(self.device)
            t0 = time.perf_counter()
            attack_call()
            _sync(self.device)
            total = time.perf_counter() - t0
        finally:
            handle.remove()
        floor = sum(self.passes)
        return {"attack_s": total - floor, "floor_s": floor, "passes": len(self.passes)}


def bench_paired(args, device, ta) -> list[dict]:
    """Single attacks with the floor interleaved pass by pass (see PairedFloor)."""
    rows = []
    for net_name, model, batch, x, y, cases in _single_cases(args, device, ta):
        paired = PairedFloor(model, device)
        _floor(model, x, y, 1)()  # warm-up; each attack pass follows a floor pass anyway
        for name, _passes, ours_atk, theirs_atk in cases:
            ours, theirs = ours_atk(), theirs_atk()
            row = {"model": net_name, "batch": batch, "attack": name}
            # Calls repeat until the attack's own time reaches --paired-seconds; the
            # overhead is over all of them (sum of attack time / sum of floor time).
            for label, atk in (("ours", ours), ("torchattacks", theirs)):
                runs = [paired.run(lambda: atk(x, y))]
                while sum(r["attack_s"] for r in runs) < args.paired_seconds:
                    runs.append(paired.run(lambda: atk(x, y)))
                attack_s = sum(r["attack_s"] for r in runs)
                floor_s = sum(r["floor_s"] for r in runs)
                row[f"{label}_s"] = attack_s / len(runs)
                row[f"{label}_floor_s"] = floor_s / len(runs)
                row[f"{label}_passes"] = runs[0]["passes"]
                row[f"{label}_calls"] = len(runs)
                row[f"{label}_overhead_pct"] = 100 * (attack_s / floor_s - 1)
            rows.append(row)
            print(f"  paired {net_name:<10} b={batch:<5} {name:<9} ours {row['ours_s'] * 1e3:.0f} ms "
                  f"vs its interleaved floor {row['ours_floor_s'] * 1e3:.0f} ms "
                  f"({row['ours_overhead_pct']:+.1f}%, {row['ours_calls']} calls of "
                  f"{row['ours_passes']} passes); "
                  f"torchattacks {row['torchattacks_s'] * 1e3:.0f} ms vs "
                  f"{row['torchattacks_floor_s'] * 1e3:.0f} ms "
                  f"({row['torchattacks_overhead_pct']:+.1f}%)", flush=True)
    return rows


def _single_cases(args, device, ta):
    """(net name, model, batch, x, y, cases) for the single-attack sections."""
    steps_apgd = 5 if args.quick else args.apgd_steps
    nets = [("MNIST CNN", OpacusMnistCNN((1, 28, 28)), (1, 28, 28), args.mnist_batch),
            ("ResNet-18", ResNet18((3, 32, 32)), (3, 32, 32), args.resnet_batch)]
    wanted = {"mnist": "MNIST CNN", "resnet": "ResNet-18"}
    nets = [n for n in nets if n[0] in {wanted[k] for k in args.nets.split(",")}]
    for net_name, model, shape, batch in nets:
        model = model.to(device).eval()
        torch.manual_seed(0)
        x = torch.rand(batch, *shape, device=device)
        with torch.no_grad():
            y = model(x).argmax(1)  # every sample "correct": both libraries attack all
        cases = [
            ("PGD-10", 10, lambda: ma.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10),
             lambda: ta.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10)),
            ("PGDL2-10", 10, lambda: ma.PGDL2(model, eps=1.0, alpha=0.2, steps=10),
             lambda: ta.PGDL2(model, eps=1.0, alpha=0.2, steps=10)),
            (f"APGD-{steps_apgd}", steps_apgd + 1,
             lambda: ma.APGD(model, eps=8 / 255, steps=steps_apgd),
             lambda: ta.APGD(model, eps=8 / 255, steps=steps_apgd)),
        ]
        keys = {"PGD-10": "pgd", "PGDL2-10": "pgdl2", f"APGD-{steps_apgd}": "apgd"}
        yield net_name, model, batch, x, y, [c for c in cases
                                             if keys[c[0]] in args.attacks.split(",")]


def bench_single(args, device, ta, timer) -> list[dict]:
    rows = []
    for net_name, model, batch, x, y, cases in _single_cases(args, device, ta):
        for name, passes, ours_atk, theirs_atk in cases:
            ours, theirs = ours_atk(), theirs_atk()
            res = timer.run({"floor": _floor(model, x, y, passes),
                             "floor_replay": _replayed_floor(model, ours, x, y),
                             "ours": lambda: ours(x, y), "torchattacks": lambda: theirs(x, y)})
            row = {"model": net_name, "batch": batch, "attack": name,
                   "ours_ms": res["ours"], "torchattacks_ms": res["torchattacks"],
                   "floor_ms": res["floor"], "rounds_kept": res["_rounds_kept"]}
            row["floor_replay_ms"] = res["floor_replay"]
            row["ours_overhead_replay_pct"] = 100 * (row["ours_ms"] / res["floor_replay"] - 1)
            row["ours_overhead_pct"] = 100 * (row["ours_ms"] / row["floor_ms"] - 1)
            row["torchattacks_overhead_pct"] = 100 * (row["torchattacks_ms"] / row["floor_ms"] - 1)
            cpu_note = ""
            if "ours_cpu" in res:
                for k in ("ours", "torchattacks", "floor"):
                    row[f"{k}_cpu_ms"] = res[f"{k}_cpu"]
                row["ours_cpu_overhead_pct"] = 100 * (res["ours_cpu"] / res["floor_cpu"] - 1)
                row["torchattacks_cpu_overhead_pct"] = 100 * (
                    res["torchattacks_cpu"] / res["floor_cpu"] - 1)
                cpu_note = (f" | CPU time: ours {res['ours_cpu']:.0f} ms "
                            f"({row['ours_cpu_overhead_pct']:+.1f}%), torchattacks "
                            f"{res['torchattacks_cpu']:.0f} ms "
                            f"({row['torchattacks_cpu_overhead_pct']:+.1f}%), floor "
                            f"{res['floor_cpu']:.0f} ms")
            rows.append(row)
            print(f"  {net_name:<10} b={batch:<5} {name:<9} wall: ours {row['ours_ms']:.0f} ms "
                  f"({row['ours_overhead_pct']:+.1f}% vs floor), torchattacks "
                  f"{row['torchattacks_ms']:.0f} ms ({row['torchattacks_overhead_pct']:+.1f}%), "
                  f"floor {row['floor_ms']:.0f} ms; ours vs replayed-iterates floor "
                  f"{row['floor_replay_ms']:.0f} ms: {row['ours_overhead_replay_pct']:+.1f}%"
                  f"{cpu_note}", flush=True)
    return rows


def bench_update(args, device, timer) -> dict:
    shape = (16, 3, 224, 224) if args.quick else (256, 3, 224, 224)
    torch.manual_seed(0)
    images = torch.rand(shape, device=device)
    grad = torch.randn(shape, device=device)
    adv = images.clone()
    eps, alpha = 8 / 255, 2 / 255

    def eager():  # torchattacks PGD's update, verbatim semantics
        a = adv.detach() + alpha * grad.sign()
        delta = torch.clamp(a - images, min=-eps, max=eps)
        return torch.clamp(images + delta, min=0, max=1).detach()

    res = timer.run({"ours": lambda: ops.sign_step_(adv, grad, images, alpha, eps),
                     "torchattacks": eager, "copy": lambda: adv.copy_(images)})
    if "ours_cpu" in res:
        print(f"  update CPU time: ours {res['ours_cpu']:.1f} ms, torchattacks "
              f"{res['torchattacks_cpu']:.1f} ms", flush=True)
    row = {"shape": "x".join(map(str, shape)), "ours_ms": res["ours"],
           "ours_cpu_ms": res.get("ours_cpu"), "torchattacks_cpu_ms": res.get("torchattacks_cpu"),
           "torchattacks_ms": res["torchattacks"], "copy_ms": res["copy"],
           "speedup": res["torchattacks"] / res["ours"], "native": ops.native_available(),
           "rounds_kept": res["_rounds_kept"]}
    print(f"  update {row['shape']}: ours {row['ours_ms']:.1f} ms, torchattacks "
          f"{row['torchattacks_ms']:.1f} ms ({row['speedup']:.1f}x), copy {row['copy_ms']:.1f} ms, "
          f"native={row['native']}", flush=True)
    return row


def _train(model, x, y, epochs, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 128):
            idx = order[i:i + 128]
            opt.zero_grad()
            loss_fn(model(x[idx].to(device)), y[idx].to(device)).backward()
            opt.step()
    return model.eval()


def bench_eval(args, device, ta, timer_rounds) -> dict:
    from modelsec_fast.data import DataError, load_dataset
    try:
        data = load_dataset("fashion-mnist", train_size=2000 if args.quick else 20000,
                            test_size=args.eval_n, seed=0)
        source = "fashion-mnist"
    except DataError as err:
        print(f"  Fashion-MNIST missing ({err}); falling back to sklearn digits", flush=True)
        data = load_dataset("digits", seed=0)
        source = "digits (Fashion-MNIST missing)"
    torch.manual_seed(0)
    model = SmallCNN(data.in_shape, data.num_classes).to(device)
    t0 = time.perf_counter()
    _train(model, data.x_train, data.y_train, 1 if args.quick else 2, device)
    train_s = time.perf_counter() - t0
    x, y = data.x_test[:args.eval_n].to(device), data.y_test[:args.eval_n].to(device)
    restarts, eps = args.eval_restarts, 0.1

    def ours():
        torch.manual_seed(1)
        r = robust_accuracy(model, (x, y), [ma.PGD(model, eps=eps, alpha=eps / 4, steps=20)],
                            restarts=restarts, batch_size=len(y), progress=False,
                            check_masking=False)
        return r.robust_accuracy

    def theirs():
        torch.manual_seed(1)
        multi = ta.MultiAttack([ta.PGD(model, eps=eps, alpha=eps / 4, steps=20)
                                for _ in range(restarts)])
        with torch.no_grad():
            clean = model(x).argmax(1) == y  # clean pass, as robust_accuracy does
        adv = multi(x, y)
        with torch.no_grad():
            return float(((model(adv).argmax(1) == y) & clean).float().mean())

    times = {"ours": [], "torchattacks": []}
    cpu_times = {"ours": [], "torchattacks": []}
    accs = {}
    for _ in range(timer_rounds):
        for name, fn in (("ours", ours), ("torchattacks", theirs)):
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            accs[name] = fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    row = {"data": source, "n": len(y), "restarts": restarts, "eps": eps, "train_s": train_s,
           "clean_accuracy": clean, "ours_s": statistics.median(times["ours"]),
           "torchattacks_s": statistics.median(times["torchattacks"]),
           "ours_robust_accuracy": accs["ours"], "torchattacks_robust_accuracy": accs["torchattacks"]}
    row["speedup"] = row["torchattacks_s"] / row["ours_s"]
    if device.type == "cpu":
        row["ours_cpu_s"] = statistics.median(cpu_times["ours"])
        row["torchattacks_cpu_s"] = statistics.median(cpu_times["torchattacks"])
        row["cpu_speedup"] = row["torchattacks_cpu_s"] / row["ours_cpu_s"]
    print(f"  eval {source} n={len(y)} clean {clean:.3f}: ours {row['ours_s']:.2f} s "
          f"(robust {accs['ours']:.3f}), torchattacks {row['torchattacks_s']:.2f} s "
          f"(robust {accs['torchattacks']:.3f}): {row['speedup']:.1f}x wall"
          + (f", {row['cpu_speedup']:.1f}x CPU time" if "cpu_speedup" in row else ""), flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    p.add_argument("--json", default=None, help="write the results to this path")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--sections", default="single,update,eval")
    p.add_argument("--mnist-batch", type=int, default=None)
    p.add_argument("--resnet-batch", type=int, default=None)
    p.add_argument("--apgd-steps", type=int, default=100)
    p.add_argument("--nets", default="mnist,resnet", help="single section: mnist, resnet or both")
    p.add_argument("--attacks", default="pgd,pgdl2,apgd", help="single section: which attacks")
    p.add_argument("--paired-seconds", type=float, default=20.0,
                   help="paired section: repeat each attack until its own time reaches this")
    p.add_argument("--eval-n", type=int, default=None)
    p.add_argument("--eval-restarts", type=int, default=5)
    p.add_argument("--eval-rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.mnist_batch = args.mnist_batch or (16 if args.quick else 1024)
    args.resnet_batch = args.resnet_batch or (2 if args.quick else 128)
    args.eval_n = args.eval_n or (100 if args.quick else 2000)
    if args.quick:
        args.eval_restarts = min(args.eval_restarts, 2)
        args.paired_seconds = 0.0  # one call per contender
    import torchattacks as ta
    timer = Timer(device, args.rounds)
    sections = set(args.sections.split(","))
    out = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                       "torchattacks": ta.__version__, "threads": torch.get_num_threads(),
                       "device": str(device), "native": ops.native_available()},
           "args": vars(args)}
    print(f"bench_attacks: device={device} native={ops.native_available()} "
          f"threads={torch.get_num_threads()} quick={args.quick}", flush=True)
    if "single" in sections:
        out["single"] = bench_single(args, device, ta, timer)
    if "paired" in sections:
        out["paired"] = bench_paired(args, device, ta)
    if "update" in sections:
        out["update"] = bench_update(args, device, timer)
    if "eval" in sections:
        out["eval"] = bench_eval(args, device, ta, 1 if args.quick else args.eval_rounds)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
