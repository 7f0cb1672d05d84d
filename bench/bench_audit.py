"""Privacy-audit benchmark: LiRA vs the loss-threshold attack, and the canary audit.

Part 1, membership inference on a NON-private model (the full audit, >= 16
shadow models): a target MLP is trained on a fair-coin half of a pool; the
loss-threshold attack and LiRA (offline, online; Carlini et al. 2022) attack
it. Reported: AUC, TPR at 1% and 0.1% FPR (0.1% only with >= 1,000
non-members), Clopper-Pearson epsilon lower bounds, and wall times.

Part 2, one-run canary audit (Steinke, Nasr, Jagielski 2023) of DP-SGD runs
at a claimed epsilon of 2 through the real PrivacyEngine: honest, noise off,
clipping off. A correct engine must stay below the claim; broken ones must not.

    python bench/bench_audit.py [--quick] [--device cpu|cuda] [--json out.json]
        [--data fashion-mnist|digits] [--shadows 16] [--pool 4000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from modelsec_fast.data import FASHION_MNIST_DIR, load_dataset  # noqa: E402


def _fmt(v):
    return "not measurable" if v is None else f"{100 * v:.2f}%"


def membership_part(args) -> dict:
    from modelsec_fast.audit.membership import membership_audit
    from modelsec_fast.audit.recipe import TrainingRecipe, evaluate_accuracy, train_model

    sizes = {"fashion-mnist": (60000, 10000), "digits": (1348, 449)}.get(args.data, (None, None))
    ds = load_dataset(args.data, train_size=min(args.pool, sizes[0] or args.pool),
                      test_size=min(500, sizes[1] or 500), seed=0)
    members = torch.from_numpy(np.random.default_rng(0).random(len(ds.y_train)) < 0.5)
    recipe = TrainingRecipe(model="mlp", epochs=args.epochs, batch_size=64, lr=1e-3)

    def train_fn(x, y, seed):
        return train_model(recipe, x.to(args.device), y.to(args.device),
                           num_classes=ds.num_classes, seed=seed, device=args.device).model

    started = time.perf_counter()
    target = train_fn(ds.x_train[members], ds.y_train[members], 0)
    target_time = time.perf_counter() - started
    started = time.perf_counter()
    audit = membership_audit(target, ds.x_train.to(args.device), ds.y_train.to(args.device),
                             members, train_fn=train_fn, num_shadow=args.shadows, seed=1000,
                             progress=not args.no_progress)
    audit_time = time.perf_counter() - started
    bounds = {b.attack: b.epsilon_lower_bound for b in audit.epsilon_bounds}
    rows = [{"attack": a.name, "auc": a.auc, "tpr_at_1pct_fpr": a.tpr_at_fpr[0.01],
             "tpr_at_0.1pct_fpr": a.tpr_at_fpr[0.001], "epsilon_lower_bound": bounds[a.name]}
            for a in audit.attacks]
    return {
        "data": ds.describe(), "members": audit.n_members, "nonmembers": audit.n_nonmembers,
        "recipe": recipe.describe(), "shadows": args.shadows,
        "target_test_accuracy": evaluate_accuracy(target, ds.x_test.to(args.device),
                                                  ds.y_test.to(args.device)),
        "target_train_time_s": target_time, "audit_time_s": audit_time,
        "seconds_per_shadow": audit_time / args.shadows, "rows": rows, "notes": audit.notes,
    }


def canary_part(args) -> dict:
    from modelsec_fast.accountants import get_noise_multiplier
    from modelsec_fast.audit.canary import canary_audit_dp_sgd

    ds = load_dataset("digits", train_size=500, seed=0)
    q, steps = (0.1, 100) if args.quick else (0.05, 400)
    m, r = (400, 100) if args.quick else (2000, 1000)
    sigma = get_noise_multiplier(target_epsilon=2.0, target_delta=1e-5, sample_rate=q,
                                 steps=steps)
    rows = []
    for fault in (None, "no_noise", "no_clipping"):
        started = time.perf_counter()
        res = canary_audit_dp_sgd(x=ds.x_train, y=ds.y_train, num_classes=ds.num_classes,
                                  noise_multiplier=sigma, sample_rate=q, steps=steps, m=m, r=r,
                                  model="mlp", model_options={"hidden": (64,)}, fault=fault,
                                  seed=0, device=args.device)
        rows.append({"run": fault or "honest", "correct": res.correct,
                     "epsilon_lower_bound": res.epsilon_lower_bound,
                     "claimed_epsilon": res.claimed_epsilon, "detected": res.detected,
                     "seconds": time.perf_counter() - started})
    return {"m": m, "r": r, "beta": 0.05, "sample_rate": q, "steps": steps,
            "noise_multiplier": sigma, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--data", default=None, help="fashion-mnist (default if installed) "
                        "or digits")
    parser.add_argument("--shadows", type=int, default=None, help="default 16 (quick: 4)")
    parser.add_argument("--pool", type=int, default=None,
                        help="training pool size (default 4000, quick 600)")
    parser.add_argument("--epochs", type=int, default=None, help="default 20 (quick: 5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    torch.set_num_threads(args.threads)
    if args.data is None:
        args.data = "fashion-mnist" if os.path.isdir(FASHION_MNIST_DIR) and not args.quick \
            else "digits"
    args.shadows = args.shadows or (4 if args.quick else 16)
    args.pool = args.pool or (600 if args.quick else 4000)
    args.epochs = args.epochs or (5 if args.quick else 20)

    started = time.perf_counter()
    result = {"device": args.device, "threads": args.threads, "quick": args.quick,
              "torch": torch.__version__, "membership": membership_part(args),
              "canary": canary_part(args)}
    result["total_seconds"] = time.perf_counter() - started

    mi = result["membership"]
    print(f"\nMembership inference, non-private target ({mi['recipe']}), {mi['data']}: "
          f"{mi['members']} members / {mi['nonmembers']} non-members, {mi['shadows']} shadow "
          f"models; target test accuracy {100 * mi['target_test_accuracy']:.1f}%")
    print("| attack | AUC | TPR @ 1% FPR | TPR @ 0.1% FPR | eps lower bound |")
    print("|---|---:|---:|---:|---:|")
    for row in mi["rows"]:
        print(f"| {row['attack']} | {row['auc']:.4f} | {_fmt(row['tpr_at_1pct_fpr'])} | "
              f"{_fmt(row['tpr_at_0.1pct_fpr'])} | {row['epsilon_lower_bound']:.3f} |")
    print(f"audit {mi['audit_time_s']:.1f} s ({mi['seconds_per_shadow']:.2f} s per shadow model)")
    ca = result["canary"]
    print(f"\nOne-run canary audit (m={ca['m']}, r={ca['r']}, beta={ca['beta']}), DP-SGD "
          f"sigma={ca['noise_multiplier']:.3f}, q={ca['sample_rate']}, {ca['steps']} steps")
    print("| run | correct / r | eps lower bound | claimed eps | verdict | seconds |")
    print("|---|---:|---:|---:|---|---:|")
    for row in ca["rows"]:
        verdict = "VIOLATION detected" if row["detected"] else "consistent"
        print(f"| {row['run']} | {row['correct']} / {ca['r']} | {row['epsilon_lower_bound']:.3f}"
              f" | {row['claimed_epsilon']:.3f} | {verdict} | {row['seconds']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
