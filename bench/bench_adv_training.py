"""Adversarial training on Fashion-MNIST: accuracy floors and training-time ratios.

Trains one small CNN (``small_cnn``, width 16, 28x28) four ways at eps = 0.1:
undefended, FGSM-RS, PGD-AT and FGSM-RS under DP-SGD (eps_DP = 8, delta = 1e-5),
then evaluates clean accuracy and robust accuracy with
``modelsec_fast.evaluate.robust_accuracy`` (PGD-20 with 5 restarts plus
APGD-CE, per-sample worst case) on held-out test images.

Time ratios: one training step of each method on the same fixed batch is a
contender of ``bench/_harness.py`` (interleaved, rotated, canary-checked rounds;
``--rounds``); the ratio is to the standard step. Per-epoch time ratio = step-time
ratio, since every method takes the same batches. The real runs' wall-clock and
CPU training times are reported too.

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
import sys

import _harness as h
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from modelsec_fast.attacks import APGD, PGD
from modelsec_fast.data import load_dataset
from modelsec_fast.defenses import AdversarialTrainer
from modelsec_fast.evaluate import robust_accuracy
from modelsec_fast.models import build_model

EPS = 0.1
DP_EPSILON, DP_DELTA = 8.0, 1e-5


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

    def epoch():
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()

    times = [h.timed(epoch, device)[0].wall for _ in range(args.epochs)]
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
    per_attack = {name: rec.robust_accuracy for name, rec in result.per_attack.items()}
    return {"clean": result.clean_accuracy, "robust": result.robust_accuracy,
            "per_attack": per_attack}


def step_contenders(ds, args, device):
    """One training step of each method on one fixed batch: name -> callable."""
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
    return steps


def judge_floors(results, ratios, pgd_steps):
    """Floor name -> met, for the runs and ratios that were measured."""
    floors = {}
    for method in ("fgsm_rs", "pgd"):
        if method in results:
            floors[f"{method} clean >= 0.80"] = results[method]["clean"] >= 0.80
            floors[f"{method} robust >= 0.60"] = results[method]["robust"] >= 0.60
    if "standard" in results:
        floors["undefended robust < 0.10"] = results["standard"]["robust"] < 0.10
    if ratios:
        floors["fgsm_rs step <= 2.2x"] = ratios["fgsm_rs"] <= 2.2
        floors[f"pgd step <= {pgd_steps + 1.3:.1f}x"] = ratios["pgd"] <= pgd_steps + 1.3
    return floors


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="bench_adv_training.py", description=__doc__.split("\n\n")[0])
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="tqdm bars during training")
    p.add_argument("--no-timing", action="store_true", help="skip the step-time phase")
    p.add_argument("--only", default="standard,fgsm_rs,pgd,fgsm_rs_dp",
                   help="comma-separated subset of the four runs")
    args = h.parse_args(p, argv, rounds=15, quick_rounds=3)
    if args.quick:
        args.train_size, args.test_size, args.epochs = 1000, 200, 1
        args.restarts, args.eval_steps, args.apgd_steps = 1, 5, 5
    device = torch.device(args.device)
    report = h.Report("bench_adv_training", args)

    ds = _data(args, device)
    ds.x_train, ds.y_train = ds.x_train.to(device), ds.y_train.to(device)
    ds.x_test, ds.y_test = ds.x_test.to(device), ds.y_test.to(device)
    report.note(f"data: {ds.name}, train {len(ds.y_train)}, test {len(ds.y_test)}")

    ratios = {}
    if not args.no_timing:
        m = h.measure(step_contenders(ds, args, device), device=device, rounds=args.rounds)
        steps = report.section(f"training step on one batch of {args.batch_size}",
                               baseline="standard")
        for row in steps.add(m):
            ratios[row.contender] = row.ratio.median
        steps.print()

    runs = {"standard": lambda: train_standard(ds, args, device),
            "fgsm_rs": lambda: train_adversarial(ds, args, device, "fgsm_rs"),
            "pgd": lambda: train_adversarial(ds, args, device, "pgd"),
            "fgsm_rs_dp": lambda: train_fgsm_rs_private(ds, args, device)}
    labels = {"standard": "undefended", "fgsm_rs": "FGSM-RS",
              "pgd": f"PGD-AT ({args.pgd_steps} steps)", "fgsm_rs_dp": "FGSM-RS + DP-SGD (eps_DP=8)"}
    accuracy = report.section(
        f"accuracy after {args.epochs} epochs, robust = worst of PGD-{args.eval_steps}x"
        f"{args.restarts} and APGD-CE-{args.apgd_steps} at eps {EPS}",
        note="step x standard: from the step-time table (the DP run has no step contender)")
    results = {}
    for name in args.only.split(","):
        trained, (model, epoch_times, extra) = h.timed(runs[name], device)
        evaluated, scores = h.timed(lambda: evaluate(model, ds, args), device)
        results[name] = scores
        values = {"clean": scores["clean"], "robust": scores["robust"],
                  **{f"robust, {k}": v for k, v in scores["per_attack"].items()},
                  "step x standard": ratios.get(name),
                  "train s": trained.wall, "train CPU s": trained.cpu, "eval s": evaluated.wall}
        values.update({k: v for k, v in extra.items() if k != "history"})
        accuracy.add_row(labels={"model": labels[name]}, values=values)
        print(f"{name}: clean {scores['clean']:.3f}, robust {scores['robust']:.3f}, "
              f"train {trained.wall:.0f} s", flush=True)

    floors = report.section("floors (issue 6)")
    for floor, met in judge_floors(results, ratios, args.pgd_steps).items():
        floors.add_row(labels={"floor": floor}, values={"met": met})
    return report.finish()


if __name__ == "__main__":
    main()
