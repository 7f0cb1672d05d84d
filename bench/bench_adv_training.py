"""Adversarial training on Fashion-MNIST: accuracy floors and training-time ratios.

Trains one small CNN (``small_cnn``, width 16, 28x28) four ways at eps = 0.1:
undefended, FGSM-RS, PGD-AT and FGSM-RS under DP-SGD (eps_DP = 8, delta = 1e-5),
then evaluates clean accuracy and robust accuracy with
``modelsec_fast.evaluate.robust_accuracy`` (PGD-20 with 5 restarts plus
APGD-CE, per-sample worst case) on held-out test images.

Time ratios: a separate phase times one training step of each method on the
same fixed batch, interleaved round by round with a 512x512 canary matmul;
rounds whose canary is > 1.5x its median are discarded (other processes), and
the ratios are medians.  Per-epoch time ratio = step-time ratio, since every
method takes the same batches.  Wall-clock epoch times of the real runs are
reported too.

Floors (issue 6): FGSM-RS and PGD-AT >= 80% clean and >= 60% robust; the
undefended model < 10% robust; FGSM-RS step <= 2.2x standard, PGD-AT step <=
(steps + 1.3)x standard.

Usage::

    python bench/bench_adv_training.py --json bench/out/adv_training.json
    python bench/bench_adv_training.py --quick          # seconds-long smoke run
    python bench/bench_adv_training.py --device cuda    # on a GPU machine

Sizes are chosen to fit minutes on 2 shared CPU cores (a subset of the
training set, few epochs); raise --train-size / --epochs on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modelsec_fast.attacks import APGD, PGD  # noqa: E402
from modelsec_fast.data import load_dataset  # noqa: E402
from modelsec_fast.defenses import AdversarialTrainer  # noqa: E402
from modelsec_fast.evaluate import robust_accuracy  # noqa: E402
from modelsec_fast.models import build_model  # noqa: E402

EPS = 0.1
DP_EPSILON, DP_DELTA = 8.0, 1e-5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _data(args, device):
    try:
        ds = load_dataset("fashion-mnist", train_size=args.train_size, test_size=args.test_size,
                          seed=args.seed)
    except ValueError as err:  # DataError: package missing -> the fallback
        print(f"Fashion-MNIST unavailable ({err}); using sklearn digits", file=sys.stderr)
        ds = load_dataset("digits", seed=args.seed)
    return ds


def _loader(ds, batch_size, seed):
    return DataLoader(TensorDataset(ds.x_train, ds.y_train), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def _new_model(ds, seed, device):
    torch.manual_seed(seed)
    return build_model("small_cnn", ds.in_shape, ds.num_classes, width=16).to(device)


def _one_cycle(opt, lr, total_steps):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total_steps, 1))


def train_standard(ds, args, device):
    model = _new_model(ds, args.seed, device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loader = _loader(ds, args.batch_size, args.seed)
    sched = _one_cycle(opt, args.lr, args.epochs * len(loader))
    times = []
    for _ in range(args.epochs):
        model.train()
        _sync(device)
        start = time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return model, times, {}


def train_adversarial(ds, args, device, method):
    model = _new_model(ds, args.seed, device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loader = _loader(ds, args.batch_size, args.seed)
    sched = _one_cycle(opt, args.lr, args.epochs * len(loader))
    options = {"steps": args.pgd_steps} if method == "pgd" else {}
    if method == "fgsm_rs":
        options["guard_data"] = (ds.x_test[:args.guard_size], ds.y_test[:args.guard_size])
    trainer = AdversarialTrainer(model, opt, method, eps=EPS, scheduler=sched,
                                 scheduler_step="batch", progress=args.progress, **options)
    history = trainer.fit(loader, args.epochs)
    return model, [r["train_time_s"] for r in history], {"history": history}


def train_fgsm_rs_private(ds, args, device):
    from modelsec_fast import PrivacyEngine

    model = _new_model(ds, args.seed, device)
    opt = torch.optim.Adam(model.parameters(), lr=args.dp_lr)
    engine = PrivacyEngine(accountant="rdp")
    model, opt, loader = engine.make_private_with_epsilon(
        module=model, optimizer=opt, data_loader=_loader(ds, args.dp_batch_size, args.seed),
        target_epsilon=DP_EPSILON, target_delta=DP_DELTA, epochs=args.epochs,
        max_grad_norm=args.dp_clip, noise_generator=torch.Generator().manual_seed(args.seed))
    # The guard picks weights with the public test split (not part of the private
    # training set), which keeps the DP guarantee (post-processing).
    trainer = AdversarialTrainer(model, opt, "fgsm_rs", eps=EPS, progress=args.progress,
                                 guard_data=(ds.x_test[:args.guard_size], ds.y_test[:args.guard_size]),
                                 validation_is_public=True, privacy_engine=engine, delta=DP_DELTA)
    history = trainer.fit(loader, args.epochs)
    extra = {"history": history, "noise_multiplier": opt.noise_multiplier,
             "epsilon": engine.get_epsilon(DP_DELTA), "accountant_steps": len(engine.accountant),
             "optimizer_steps": trainer.optimizer_steps}
    return model, [r["train_time_s"] for r in history], extra


def evaluate(model, ds, args):
    model.eval()
    attacks = [PGD(model, eps=EPS, alpha=2.5 * EPS / args.eval_steps, steps=args.eval_steps,
                   random_start=True),
               APGD(model, eps=EPS, steps=args.apgd_steps, loss="ce", seed=args.seed)]
    result = robust_accuracy(model, (ds.x_test, ds.y_test), attacks=attacks,
                             batch_size=500, restarts=args.restarts, progress=False,
                             check_masking=False, seed=args.seed)
    per_attack = {name: d.get("robust_accuracy") for name, d in result.per_attack.items()}
    return {"clean": result.clean_accuracy, "robust": result.robust_accuracy,
            "per_attack": per_attack}


def time_steps(ds, args, device):
    """Median step time of each method on one fixed batch, canary-filtered rounds."""
    xb = ds.x_train[:args.batch_size].to(device)
    yb = ds.y_train[:args.batch_size].to(device)
    steps = {}
    base = _new_model(ds, args.seed, device)

    standard_model = copy.deepcopy(base)
    standard_opt = torch.optim.Adam(standard_model.parameters(), lr=1e-4)

    def standard_step():
        standard_opt.zero_grad(set_to_none=True)
        F.cross_entropy(standard_model(xb), yb).backward()
        standard_opt.step()
    steps["standard"] = standard_step
    for method in ("fgsm_rs", "pgd"):
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        options = {"steps": args.pgd_steps} if method == "pgd" else {}
        trainer = AdversarialTrainer(model, opt, method, eps=EPS, guard=False,
                                     progress=False, **options)
        steps[method] = (lambda t=trainer: t.train_step(xb, yb))

    canary_a = torch.randn(512, 512, device=device)
    samples = {name: [] for name in steps}
    canary = []
    for name, fn in steps.items():  # warm-up
        fn()
    for _ in range(args.timing_rounds):
        _sync(device)
        start = time.perf_counter()
        canary_a @ canary_a
        _sync(device)
        canary.append(time.perf_counter() - start)
        for name, fn in steps.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    limit = 1.5 * statistics.median(canary)
    kept = [i for i, c in enumerate(canary) if c <= limit] or list(range(len(canary)))
    medians = {name: statistics.median([v[i] for i in kept]) for name, v in samples.items()}
    return medians, len(kept), len(canary)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--pgd-steps", type=int, default=3)
    p.add_argument("--dp-batch-size", type=int, default=256)
    p.add_argument("--dp-lr", type=float, default=2e-3)
    p.add_argument("--dp-clip", type=float, default=1.0)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--apgd-steps", type=int, default=20)
    p.add_argument("--guard-size", type=int, default=256)
    p.add_argument("--timing-rounds", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="tqdm bars during training")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-timing", action="store_true", help="skip the step-time phase")
    p.add_argument("--only", default="standard,fgsm_rs,pgd,fgsm_rs_dp",
                   help="comma-separated subset of the four runs")
    args = p.parse_args(argv)
    if args.quick:
        args.train_size, args.test_size, args.epochs = 1000, 200, 1
        args.restarts, args.eval_steps, args.apgd_steps, args.timing_rounds = 1, 5, 5, 3
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")

    wall_start = time.perf_counter()
    ds = _data(args, device)
    ds.x_train, ds.y_train = ds.x_train.to(device), ds.y_train.to(device)
    ds.x_test, ds.y_test = ds.x_test.to(device), ds.y_test.to(device)
    print(f"data: {ds.name}, train {len(ds.y_train)}, test {len(ds.y_test)}, "
          f"threads {torch.get_num_threads()}, device {device}", flush=True)

    medians, ratios, kept = {}, {}, 0
    if not args.no_timing:
        medians, kept, rounds = time_steps(ds, args, device)
        ratios = {k: v / medians["standard"] for k, v in medians.items()}
        print(f"step times (median of {kept}/{rounds} canary-clean rounds): "
              + ", ".join(f"{k} {v * 1e3:.1f} ms ({ratios[k]:.2f}x)" for k, v in medians.items()),
              flush=True)

    runs = {"standard": lambda: train_standard(ds, args, device),
            "fgsm_rs": lambda: train_adversarial(ds, args, device, "fgsm_rs"),
            "pgd": lambda: train_adversarial(ds, args, device, "pgd"),
            "fgsm_rs_dp": lambda: train_fgsm_rs_private(ds, args, device)}
    results = {}
    for name in args.only.split(","):
        started = time.perf_counter()
        model, epoch_times, extra = runs[name]()
        train_wall = time.perf_counter() - started
        scores = evaluate(model, ds, args)
        results[name] = {**scores, "epoch_times_s": epoch_times, "train_wall_s": train_wall,
                         "eval_wall_s": time.perf_counter() - started - train_wall,
                         **{k: v for k, v in extra.items() if k != "history"}}
        print(f"{name}: clean {scores['clean']:.3f}, robust {scores['robust']:.3f} "
              f"{scores['per_attack']}, train {train_wall:.0f}s", flush=True)

    floors = {
        "fgsm_rs clean >= 0.80": results.get("fgsm_rs", {}).get("clean", 0) >= 0.80,
        "fgsm_rs robust >= 0.60": results.get("fgsm_rs", {}).get("robust", 0) >= 0.60,
        "pgd clean >= 0.80": results.get("pgd", {}).get("clean", 0) >= 0.80,
        "pgd robust >= 0.60": results.get("pgd", {}).get("robust", 0) >= 0.60,
        "undefended robust < 0.10": results.get("standard", {}).get("robust", 1) < 0.10,
    }
    if ratios:
        floors["fgsm_rs time <= 2.2x"] = ratios["fgsm_rs"] <= 2.2
        floors[f"pgd time <= {args.pgd_steps + 1.3:.1f}x"] = ratios["pgd"] <= args.pgd_steps + 1.3
    # Floors whose run was not part of this invocation (--only) are not judged.
    ran = set(results)
    floors = {k: v for k, v in floors.items()
              if k.split()[0] not in ("fgsm_rs", "pgd", "undefended")
              or {"undefended": "standard"}.get(k.split()[0], k.split()[0]) in ran
              or "time" in k}
    labels = {"standard": "undefended", "fgsm_rs": "FGSM-RS", "pgd": f"PGD-AT ({args.pgd_steps} steps)",
              "fgsm_rs_dp": "FGSM-RS + DP-SGD (eps_DP=8)"}
    print("\n| model | clean | robust (worst of PGD-%dx%d, APGD-CE-%d) | step time vs standard | "
          "train wall s |" % (args.eval_steps, args.restarts, args.apgd_steps))
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        ratio = ratios.get(name if name != "fgsm_rs_dp" else "", float("nan"))
        ratio_s = f"{ratio:.2f}x" if ratio == ratio else "-"
        print(f"| {labels[name]} | {r['clean'] * 100:.1f}% | {r['robust'] * 100:.1f}% | {ratio_s} | "
              f"{r['train_wall_s']:.0f} |")
    print("\nfloors: " + ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in floors.items()))
    total = time.perf_counter() - wall_start
    print(f"total wall-clock {total:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"config": vars(args), "dataset": ds.name, "step_time_s": medians,
                       "step_time_ratio": ratios, "timing_rounds_kept": kept, "results": results,
                       "floors": floors, "total_wall_s": total}, fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
