"""Privacy-audit benchmark: LiRA vs the loss-threshold attack, and the canary audit.

Part 1, membership inference on a NON-private model (the full audit, >= 16
shadow models): a target MLP is trained on a fair-coin half of a pool; the
loss-threshold attack and LiRA (offline, online; Carlini et al. 2022) attack
it. Reported: AUC, TPR at 1% and 0.1% FPR (0.1% only with >= 1,000
non-members), Clopper-Pearson epsilon lower bounds, and the audit's wall and
CPU time (one run: it takes minutes).

Part 2, one-run canary audit (Steinke, Nasr, Jagielski 2023) of DP-SGD runs
at a claimed epsilon of 2 through the real PrivacyEngine: honest, noise off,
clipping off, each a contender of ``bench/_harness.py`` (``--rounds``). A
correct engine must stay below the claim; broken ones must not.

    python bench/bench_audit.py [--quick] [--device cpu|cuda] [--json out.json]
        [--data fashion-mnist|digits] [--shadows 16] [--pool 4000] [--threads 1]
"""

from __future__ import annotations

import argparse
import os

import _harness as h
import numpy as np
import torch

from modelsec_fast.data import FASHION_MNIST_DIR, load_dataset


def membership_part(args, report) -> None:
    from modelsec_fast.audit import membership_audit
    from modelsec_fast.app.recipe import TrainingRecipe
    from modelsec_fast.app.training import evaluate_accuracy, train_model

    sizes = {"fashion-mnist": (60000, 10000), "digits": (1348, 449)}.get(args.data, (None, None))
    ds = load_dataset(args.data, train_size=min(args.pool, sizes[0] or args.pool),
                      test_size=min(500, sizes[1] or 500), seed=0)
    members = torch.from_numpy(np.random.default_rng(0).random(len(ds.y_train)) < 0.5)
    recipe = TrainingRecipe(model="mlp", epochs=args.epochs, batch_size=64, lr=1e-3)

    def train_fn(x, y, seed):
        return train_model(recipe, x.to(args.device), y.to(args.device),
                           num_classes=ds.num_classes, seed=seed, device=args.device).model

    target_time, target = h.timed(lambda: train_fn(ds.x_train[members], ds.y_train[members], 0),
                                  args.device)
    audit_time, audit = h.timed(lambda: membership_audit(
        target, ds.x_train.to(args.device), ds.y_train.to(args.device), members,
        train_fn=train_fn, num_shadow=args.shadows, seed=1000, progress=not args.no_progress),
        args.device)
    accuracy = evaluate_accuracy(target, ds.x_test.to(args.device), ds.y_test.to(args.device))
    bounds = {b.attack: b.epsilon_lower_bound for b in audit.epsilon_bounds}
    section = report.section(
        "membership inference against a non-private target",
        note=f"{ds.describe()}; {recipe.describe()}; {audit.n_members} members / "
             f"{audit.n_nonmembers} non-members; {args.shadows} shadow models"
             + "".join(f"\n{n}" for n in audit.notes))
    for a in audit.attacks:
        section.add_row(labels={"attack": a.name},
                        values={"AUC": a.auc, "TPR @ 1% FPR": a.tpr_at_fpr[0.01],
                                "TPR @ 0.1% FPR": a.tpr_at_fpr[0.001],
                                "eps lower bound": bounds[a.name]})
    cost = report.section("membership audit cost (one run)")
    cost.add_row(labels={"data": args.data},
                 values={"target test accuracy": accuracy, "target train s": target_time.wall,
                         "audit s": audit_time.wall, "audit CPU s": audit_time.cpu,
                         "s per shadow": audit_time.wall / args.shadows, "shadows": args.shadows})


def canary_part(args, report) -> None:
    from modelsec_fast.accountants import get_noise_multiplier
    from modelsec_fast.audit import canary_audit_dp_sgd

    ds = load_dataset("digits", train_size=500, seed=0)
    q, steps = (0.1, 100) if args.quick else (0.05, 400)
    m, r = (400, 100) if args.quick else (2000, 1000)
    sigma = get_noise_multiplier(target_epsilon=2.0, target_delta=1e-5, sample_rate=q,
                                 steps=steps)

    def run(fault):
        return lambda: canary_audit_dp_sgd(
            x=ds.x_train, y=ds.y_train, num_classes=ds.num_classes, noise_multiplier=sigma,
            sample_rate=q, steps=steps, m=m, r=r, model="mlp", model_options={"hidden": (64,)},
            fault=fault, seed=0, device=args.device)

    measured = h.measure({"honest": run(None), "no_noise": run("no_noise"),
                          "no_clipping": run("no_clipping")},
                         device=args.device, rounds=args.rounds, warmup=0)
    section = report.section(
        "one-run canary audit of DP-SGD", baseline="honest",
        note=f"m={m} canaries, r={r} guesses, beta=0.05; sigma={sigma:.3f}, q={q}, {steps} steps")
    for row in section.add(measured):
        res = measured.results[row.contender]
        row.values.update({"correct": f"{res.correct} / {r}",
                           "eps lower bound": res.epsilon_lower_bound,
                           "claimed eps": res.claimed_epsilon,
                           "verdict": "VIOLATION detected" if res.detected else "consistent"})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="bench_audit.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="fashion-mnist (default if installed) "
                        "or digits")
    parser.add_argument("--shadows", type=int, default=None, help="default 16 (quick: 4)")
    parser.add_argument("--pool", type=int, default=None,
                        help="training pool size (default 4000, quick 600)")
    parser.add_argument("--epochs", type=int, default=None, help="default 20 (quick: 5)")
    parser.add_argument("--no-progress", action="store_true")
    args = h.parse_args(parser, argv, rounds=3, quick_rounds=1, threads=1)
    if args.data is None:
        args.data = "fashion-mnist" if os.path.isdir(FASHION_MNIST_DIR) and not args.quick \
            else "digits"
    args.shadows = args.shadows or (4 if args.quick else 16)
    args.pool = args.pool or (600 if args.quick else 4000)
    args.epochs = args.epochs or (5 if args.quick else 20)
    report = h.Report("bench_audit", args)
    membership_part(args, report)
    canary_part(args, report)
    return report.finish()


if __name__ == "__main__":
    main()
