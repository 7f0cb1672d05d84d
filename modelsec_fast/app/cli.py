"""The ``modelsec-fast`` command (also ``python -m modelsec_fast``).

Subcommands:

* ``demo``: train a baseline, a DP-SGD model and an adversarially trained model
  on the embedded digits, attack them, audit their privacy and write a report
  with plots into ``--out`` (the pipeline lives in :mod:`modelsec_fast.demo`).
* ``train``: train one model (``--dp``, ``--adv``), save a checkpoint that
  records its members so ``audit`` can run on it; ``--resume`` continues one.
* ``evaluate``: clean and robust accuracy of a checkpoint (FGSM, PGD, APGD).
* ``audit``: membership inference (loss threshold, LiRA with shadow models) on a
  checkpoint; ``--canary`` adds the one-run canary audit of its DP-SGD recipe.
* ``epsilon``: accountant calculator, epsilon from sigma or sigma from epsilon.
* ``bench``: run the benchmark scripts and print their tables.

Bad input (a missing or corrupt dataset, an unknown model, a checkpoint that
does not fit) prints one line ``modelsec-fast: error: ...`` and exits with
status 2, without a traceback (set ``MODELSEC_FAST_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from modelsec_fast.demo import (DEFAULT_ATTACKS, check_model_name, membership_split,
                                robust_curve, run_demo, shadow_trainer, whole_batches_rate)

__all__ = ["main", "build_parser", "UsageError"]

PROG = "modelsec-fast"


class UsageError(ValueError):
    """Bad command-line input; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message):
        raise UsageError(message)


# ----------------------------------------------------------------------------- helpers
def _progress_enabled(args) -> bool:
    return not getattr(args, "no_progress", False)


def _log(args, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _float_list(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v < 0 or not math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers, got {text!r}")
    return values


def _attack_list(text: str) -> list[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in DEFAULT_ATTACKS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"attacks must be a comma-separated subset of {','.join(DEFAULT_ATTACKS)}, "
            f"got {text!r}")
    return names


def _load_data(spec: dict):
    from modelsec_fast.data import load_dataset

    return load_dataset(spec["source"], train_size=spec.get("train_size"),
                        test_size=spec.get("test_size"), seed=spec.get("seed", 0))


def _write_json(obj, destination: str | None) -> None:
    """Write ``obj`` as strict JSON to a file, or to stdout for "-"."""
    from modelsec_fast.report import strict_json

    text = strict_json(obj)
    if destination in (None, "-"):
        print(text)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
        with open(destination, "w") as f:
            f.write(text + "\n")


# ----------------------------------------------------------------------------- train
def _recipe_from_args(args):
    from modelsec_fast.audit.recipe import TrainingRecipe

    dp = args.dp or args.epsilon is not None or args.noise_multiplier is not None
    if args.epsilon is not None and args.noise_multiplier is not None:
        raise UsageError("give either --epsilon (target) or --noise-multiplier, not both")
    if dp and args.epsilon is None and args.noise_multiplier is None:
        raise UsageError("--dp needs --epsilon TARGET or --noise-multiplier SIGMA")
    if args.eps is not None and args.adv is None:
        raise UsageError("--eps is the adversarial-training radius: it needs --adv")
    check_model_name(args.model)
    recipe = TrainingRecipe(
        model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer, dp=dp, noise_multiplier=args.noise_multiplier,
        target_epsilon=args.epsilon, delta=args.delta, max_grad_norm=args.max_grad_norm,
        accountant=args.accountant, adv=args.adv,
        adv_eps=args.eps if args.eps is not None else 0.1, adv_steps=args.adv_steps)
    return recipe.validate()


def cmd_train(args) -> int:
    from modelsec_fast.audit.checkpoint import ModelCheckpoint, load_checkpoint
    from modelsec_fast.audit.recipe import evaluate_accuracy, train_model

    if args.resume:
        ckpt = load_checkpoint(args.resume)
        if args.model_given and args.model != ckpt.recipe.model:
            raise UsageError(f"checkpoint {args.resume} holds model {ckpt.recipe.model!r}, not "
                             f"{args.model!r}: resume with the same architecture")
        if ckpt.complete:
            ckpt.build_model()  # fails in one line if the weights do not fit
            _log(args, f"{args.resume} is already complete ({ckpt.recipe.epochs} epochs); "
                       "nothing to resume")
            return 0
        recipe, data_spec, seed, mask = ckpt.recipe, ckpt.data, ckpt.seed, ckpt.member_mask
        membership = ckpt.membership
        target = args.checkpoint or args.resume
        resume_state = ckpt.resume_state
        if resume_state is not None:
            ckpt.build_model()
        _log(args, f"resuming {args.resume} with its own recipe, data and members "
                   "(other training flags are ignored)")
    else:
        recipe = _recipe_from_args(args)
        data_spec = {"source": args.data, "train_size": args.train_size,
                     "test_size": args.test_size, "seed": args.seed}
        seed, membership = args.seed, args.membership
        target = args.checkpoint
        resume_state, mask = None, None
    ds = _load_data(data_spec)
    if mask is None:
        mask = membership_split(len(ds.y_train), membership, seed)
    elif len(mask) != len(ds.y_train):
        raise UsageError(f"checkpoint's member mask covers {len(mask)} records but the data "
                         f"has {len(ds.y_train)}; was the dataset changed?")
    _log(args, f"data: {ds.describe()}; training on {int(mask.sum())} members ({membership})")
    _log(args, f"recipe: {recipe.describe()}")
    x, y = ds.x_train[mask], ds.y_train[mask]

    def checkpoint_of(trained, complete):
        return ModelCheckpoint(
            recipe=recipe, data=data_spec, in_shape=ds.in_shape, num_classes=ds.num_classes,
            member_mask=mask, membership=membership, seed=seed,
            model_state={k: v.detach().cpu() for k, v in trained.model.state_dict().items()},
            history=trained.history, privacy=trained.privacy, complete=complete,
            resume_state=None if complete else trained.state,
            member_indices=ds.train_indices[mask])

    def save_epoch(trained):
        if target:
            checkpoint_of(trained, complete=False).save(target)

    if target and not args.resume:
        # Recipe, data and members first, so an interrupted run can always be resumed
        # (adversarial training keeps its per-epoch state in TARGET.trainer).
        ModelCheckpoint(recipe=recipe, data=data_spec, in_shape=ds.in_shape,
                        num_classes=ds.num_classes, member_mask=mask, membership=membership,
                        seed=seed, model_state={}, complete=False,
                        member_indices=ds.train_indices[mask]).save(target)
    started = time.perf_counter()
    # Adversarial training keeps its resumable per-epoch state next to the checkpoint.
    trainer_state = ((args.resume or target) + ".trainer") if (target and recipe.adv) else None
    trained = train_model(recipe, x, y, num_classes=ds.num_classes, seed=seed,
                          progress=_progress_enabled(args), device=args.device,
                          resume_state=resume_state, on_epoch_end=save_epoch,
                          trainer_state_path=trainer_state, resume=bool(args.resume))
    elapsed = time.perf_counter() - started
    if target:
        checkpoint_of(trained, complete=True).save(target)
        if trainer_state and os.path.exists(trainer_state):
            os.remove(trainer_state)  # the run is complete: nothing left to resume
    summary = {
        "checkpoint": target,
        "recipe": recipe.to_dict(),
        "data": ds.describe(),
        "members": int(mask.sum()),
        "membership": membership,
        "train_time_s": elapsed,
        "train_accuracy": evaluate_accuracy(trained.model, x, y),
        "test_accuracy": evaluate_accuracy(trained.model, ds.x_test.to(args.device),
                                           ds.y_test.to(args.device)),
        "privacy": trained.privacy,
        "history": trained.history,
    }
    if args.json:
        _write_json(summary, args.json)
    line = (f"test accuracy {100 * summary['test_accuracy']:.2f}% "
            f"(train {100 * summary['train_accuracy']:.2f}%), {elapsed:.1f} s")
    if trained.privacy:
        line += f"; DP epsilon {trained.privacy['epsilon']:.3f} at delta {recipe.delta:g}"
    if target:
        line += f"; checkpoint {target}"
    _log(args, line)
    return 0


# ----------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    import torch

    from modelsec_fast.audit.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    if args.model is not None and args.model != ckpt.recipe.model:
        raise UsageError(f"checkpoint {args.checkpoint} holds model {ckpt.recipe.model!r}, "
                         f"not {args.model!r}")
    spec = dict(ckpt.data)
    if args.data is not None:
        spec = {"source": args.data, "train_size": None, "test_size": None, "seed": 0}
    if args.test_size is not None:
        spec["test_size"] = args.test_size
    ds = _load_data(spec)
    if tuple(ds.in_shape) != tuple(ckpt.in_shape):
        raise UsageError(f"checkpoint {args.checkpoint} is for inputs "
                         f"{'x'.join(map(str, ckpt.in_shape))}, the data has "
                         f"{'x'.join(map(str, ds.in_shape))}")
    model = ckpt.build_model(args.device)
    eps_grid = args.eps or [ckpt.recipe.adv_eps if ckpt.recipe.adv else 0.1]
    x, y = ds.x_test.to(args.device), ds.y_test.to(args.device)
    curve = robust_curve(model, x, y, eps_grid, attacks=args.attacks, steps=args.steps,
                         seed=args.seed, batch_size=args.batch_size,
                         keep_adversarial=args.save_adversarial is not None)
    result = {"checkpoint": args.checkpoint, "data": ds.describe(), "attacks": args.attacks,
              "steps": args.steps, **{k: v for k, v in curve.items() if k != "adversarial"}}
    if args.save_adversarial:
        os.makedirs(os.path.dirname(os.path.abspath(args.save_adversarial)), exist_ok=True)
        torch.save({"labels": y.cpu(), "adversarial": curve.get("adversarial", {}),
                    "eps": eps_grid, "attacks": args.attacks}, args.save_adversarial)
        result["adversarial_examples"] = args.save_adversarial
    if args.json:
        _write_json(result, args.json)
    _log(args, f"clean accuracy {100 * curve['clean_accuracy']:.2f}%")
    for eps in eps_grid:
        if eps:
            per_attack = ", ".join(f"{k} {100 * v:.1f}%"
                                   for k, v in curve["per_attack"][str(eps)].items())
            _log(args, f"eps {eps:g}: robust accuracy "
                       f"{100 * curve['robust_accuracy'][str(eps)]:.2f}% ({per_attack})")
    for w in curve["warnings"]:
        _log(args, f"warning: {w}")
    return 0


# ----------------------------------------------------------------------------- audit
def _audit_population(ckpt, ds):
    """(x, y, member_mask, design) over which membership is attacked."""
    import torch

    if ckpt.membership == "coin":
        return ds.x_train, ds.y_train, ckpt.member_mask, "coin_flip"
    x = torch.cat([ds.x_train, ds.x_test])
    y = torch.cat([ds.y_train, ds.y_test])
    mask = torch.cat([torch.ones(len(ds.y_train), dtype=torch.bool),
                      torch.zeros(len(ds.y_test), dtype=torch.bool)])
    return x, y, mask, "split"


def cmd_audit(args) -> int:
    from modelsec_fast.audit.checkpoint import load_checkpoint
    from modelsec_fast.audit.membership import membership_audit

    if args.shadows < 2:
        raise UsageError(f"--shadows must be >= 2 (LiRA needs in and out models), got "
                         f"{args.shadows}")
    if args.shadows < 16:
        _log(args, f"warning: {args.shadows} shadow models; LiRA's per-example statistics "
                   "need >= 16 (Carlini et al. use 64-256) for a reliable audit")
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.build_model(args.device)
    ds = _load_data(ckpt.data)
    if len(ckpt.member_mask) != len(ds.y_train):
        raise UsageError(f"checkpoint's member mask covers {len(ckpt.member_mask)} records but "
                         f"its data now has {len(ds.y_train)}")
    x, y, mask, design = _audit_population(ckpt, ds)
    _log(args, f"auditing {args.checkpoint}: {int(mask.sum())} members, "
               f"{int((~mask).sum())} non-members, {args.shadows} shadow models "
               f"({ckpt.recipe.describe()})")
    started = time.perf_counter()
    audit = membership_audit(model, x, y, mask,
                             train_fn=shadow_trainer(ckpt.recipe, ckpt.privacy, ds.num_classes,
                                                      args.device),
                             num_shadow=args.shadows, design=design,
                             delta=ckpt.recipe.delta, seed=args.seed,
                             progress=_progress_enabled(args))
    result = {"checkpoint": args.checkpoint, "recipe": ckpt.recipe.to_dict(),
              "audit_time_s": time.perf_counter() - started, "membership": audit.to_dict(),
              "privacy": ckpt.privacy}
    if args.canary:
        result["canary_audit"] = _canary_for_recipe(ckpt.recipe, ckpt.privacy, ds, args)
    if args.out:
        from modelsec_fast.report import plot_mi_roc

        os.makedirs(args.out, exist_ok=True)
        result["roc_plot"] = plot_mi_roc(
            {os.path.basename(args.checkpoint): {a.name: (a.fpr.tolist(), a.tpr.tolist())
                                                 for a in audit.attacks}},
            os.path.join(args.out, "mi_roc.png"))
    if args.json:
        _write_json(result, args.json)
    human = sys.stderr if args.json == "-" else sys.stdout  # keep stdout pure JSON
    print(audit.table(), file=human)
    for note in audit.notes:
        print(f"note: {note}", file=human)
    if args.canary:
        print(result["canary_audit"]["summary"], file=human)
    return 0


def _canary_for_recipe(recipe, privacy, ds, args) -> dict:
    """One-run canary audit replaying a DP recipe's sigma, q and steps."""
    from modelsec_fast.audit.canary import canary_audit_dp_sgd

    if not recipe.dp or not privacy:
        raise UsageError("--canary audits a DP-SGD run: the checkpoint was not trained with --dp")
    res = canary_audit_dp_sgd(x=ds.x_train, y=ds.y_train, num_classes=ds.num_classes,
                              noise_multiplier=privacy["noise_multiplier"],
                              max_grad_norm=privacy["max_grad_norm"],
                              sample_rate=whole_batches_rate(privacy["sample_rate"]),
                              steps=privacy["steps"], delta=privacy["delta"],
                              accountant=privacy["accountant"], model=recipe.model,
                              model_options=recipe.model_options, seed=args.seed)
    return res.to_dict() | {"summary": res.summary()}


# ----------------------------------------------------------------------------- epsilon
def cmd_epsilon(args) -> int:
    from modelsec_fast.accountants import create_accountant, get_noise_multiplier

    if not 0 < args.sample_rate <= 1:
        raise UsageError(f"--sample-rate must be in (0, 1], got {args.sample_rate}")
    if (args.steps is None) == (args.epochs is None):
        raise UsageError("give exactly one of --steps or --epochs")
    steps = args.steps if args.steps is not None else math.ceil(args.epochs / args.sample_rate)
    if (args.noise_multiplier is None) == (args.epsilon is None):
        raise UsageError("give exactly one of --noise-multiplier (-> epsilon) or "
                         "--epsilon (-> noise multiplier)")
    accountants = ["rdp", "pld"] if args.accountant == "all" else [args.accountant]
    rows = []
    for name in accountants:
        if args.noise_multiplier is not None:
            if args.noise_multiplier <= 0:
                raise UsageError("--noise-multiplier must be > 0 (sigma 0 gives no privacy)")
            acct = create_accountant(name)
            acct.history = [(args.noise_multiplier, args.sample_rate, steps)]
            rows.append({"accountant": name, "noise_multiplier": args.noise_multiplier,
                         "epsilon": float(acct.get_epsilon(args.delta))})
        else:
            sigma = get_noise_multiplier(target_epsilon=args.epsilon, target_delta=args.delta,
                                         sample_rate=args.sample_rate, steps=steps,
                                         accountant=name)
            rows.append({"accountant": name, "epsilon": args.epsilon,
                         "noise_multiplier": float(sigma)})
    result = {"sample_rate": args.sample_rate, "steps": steps, "delta": args.delta,
              "results": rows}
    if args.json:
        _write_json(result, "-")
        return 0
    print(f"q = {args.sample_rate:g}, {steps} steps, delta = {args.delta:g}")
    for r in rows:
        print(f"  {r['accountant']:>4}: sigma = {r['noise_multiplier']:.4f} -> "
              f"epsilon = {r['epsilon']:.4f}")
    return 0


# ----------------------------------------------------------------------------- bench
def _bench_dir() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(here), "bench")


def cmd_bench(args) -> int:
    import subprocess
    import tempfile

    folder = _bench_dir()
    if not os.path.isdir(folder):
        raise UsageError(f"benchmark scripts not found at {folder}: they ship with the source "
                         "tree (git clone), not the wheel")
    available = sorted(f[len("bench_"):-3] for f in os.listdir(folder)
                       if f.startswith("bench_") and f.endswith(".py"))
    names = args.names or available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UsageError(f"unknown benchmark {', '.join(unknown)}; available: "
                         f"{', '.join(available) or 'none'}")
    status = 0
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, os.path.join(folder, f"bench_{name}.py"), "--device",
                   args.device, "--json", os.path.join(tmp, "out.json")]
            if args.quick:
                cmd.append("--quick")
            print(f"== bench_{name}: {' '.join(cmd[1:])}", flush=True)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (os.path.dirname(folder), env.get("PYTHONPATH")) if p)
            done = subprocess.run(cmd, env=env)
            if done.returncode != 0:
                print(f"bench_{name} failed with status {done.returncode}", file=sys.stderr)
                status = 1
    return status


# ----------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    """Train baseline, DP-SGD and adversarial models, attack, audit, write the report
    (the pipeline is :func:`modelsec_fast.demo.run_demo`)."""
    _, paths = run_demo(data=args.data, out=args.out, quick=args.quick,
                        target_epsilon=args.target_epsilon, delta=args.delta, adv=args.adv,
                        shadows=args.shadows, model=args.model, seed=args.seed,
                        device=args.device, progress=_progress_enabled(args),
                        log=lambda message: _log(args, message),
                        command=f"{PROG} demo" + (" --quick" if args.quick else ""))
    print(paths["markdown"])
    return 0


# ----------------------------------------------------------------------------- parser
def _add_common(p, *, device=True, threads=None):
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=_positive_int, default=threads,
                   help="CPU threads for torch (default: " +
                   ("1, since the demo's small models gain nothing from more" if threads
                    else "torch's default") + ")")
    if device:
        p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--quiet", action="store_true", help="only print results")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Fast, verified AI-model security for PyTorch: "
                     "DP-SGD, adversarial attacks and training, privacy audits.")
    from modelsec_fast import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    demo = sub.add_parser("demo", help="train, attack and audit three models; write a report")
    demo.add_argument("--data", default="digits",
                      help="digits (default, offline), fashion-mnist, an IDX dir or an .npz")
    demo.add_argument("--out", default="report", help="output folder (default ./report)")
    demo.add_argument("--quick", action="store_true", help="smaller run, under a minute")
    demo.add_argument("--target-epsilon", type=float, default=4.0,
                      help="DP-SGD model's target epsilon (default 4)")
    demo.add_argument("--delta", type=float, default=1e-5, help="DP delta (default 1e-5)")
    demo.add_argument("--adv", default="fgsm_rs", choices=("fgsm_rs", "pgd", "trades", "free"),
                      help="adversarial-training method (default fgsm_rs)")
    demo.add_argument("--shadows", type=_positive_int, default=None,
                      help="LiRA shadow models per audited model (default 16; quick 8)")
    demo.add_argument("--model", default="mlp", help="architecture (default mlp)")
    _add_common(demo, threads=1)
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train one model and save an auditable checkpoint")
    train.add_argument("--data", default="digits", help="digits, fashion-mnist, IDX dir or .npz")
    train.add_argument("--train-size", type=_positive_int, help="subset of the train split")
    train.add_argument("--test-size", type=_positive_int, help="subset of the test split")
    train.add_argument("--membership", choices=("coin", "all"), default="coin",
                       help="coin (default): each training-split record joins by a fair coin, "
                            "so audits can bound epsilon; all: the whole split")
    train.add_argument("--model", default="mlp", help="architecture (default mlp)")
    train.add_argument("--epochs", type=_positive_int, default=20)
    train.add_argument("--batch-size", type=_positive_int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    train.add_argument("--dp", action="store_true", help="train with DP-SGD")
    train.add_argument("--epsilon", type=float, help="DP target epsilon (implies --dp)")
    train.add_argument("--noise-multiplier", type=float, help="DP noise multiplier (implies --dp)")
    train.add_argument("--delta", type=float, default=1e-5)
    train.add_argument("--max-grad-norm", type=float, default=1.0)
    train.add_argument("--accountant", choices=("pld", "rdp", "prv"), default="pld")
    train.add_argument("--adv", choices=("fgsm_rs", "pgd", "free", "trades"),
                       help="adversarial training method")
    train.add_argument("--eps", type=float, help="adversarial-training L-inf radius (pixel space)")
    train.add_argument("--adv-steps", type=_positive_int, default=7,
                       help="attack steps for --adv pgd/trades (default 7)")
    train.add_argument("--checkpoint", help="save the model here (written every epoch)")
    train.add_argument("--resume", help="continue the run saved in this checkpoint")
    train.add_argument("--json", help="write a JSON summary here ('-' for stdout)")
    _add_common(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="clean and robust accuracy of a checkpoint")
    ev.add_argument("checkpoint")
    ev.add_argument("--data", help="evaluate on this dataset's test split instead")
    ev.add_argument("--test-size", type=_positive_int, help="subset of the test split")
    ev.add_argument("--model", help="expected architecture (checked against the checkpoint)")
    ev.add_argument("--attacks", type=_attack_list, default=list(DEFAULT_ATTACKS),
                    help="comma-separated subset of fgsm,pgd,apgd (default all)")
    ev.add_argument("--eps", type=_float_list,
                    help="comma-separated L-inf radii (default the training eps or 0.1)")
    ev.add_argument("--steps", type=_positive_int, default=20, help="PGD/APGD steps (default 20)")
    ev.add_argument("--batch-size", type=_positive_int, default=512)
    ev.add_argument("--save-adversarial", help="save the worst-case adversarial examples (.pt)")
    ev.add_argument("--json", help="write the metrics as JSON here ('-' for stdout)")
    _add_common(ev)
    ev.set_defaults(func=cmd_evaluate)

    au = sub.add_parser("audit", help="membership-inference audit of a checkpoint")
    au.add_argument("checkpoint")
    au.add_argument("--shadows", type=int, default=16, help="LiRA shadow models (default 16)")
    au.add_argument("--canary", action="store_true",
                    help="also run the one-run canary audit of the checkpoint's DP-SGD recipe")
    au.add_argument("--out", help="folder for the ROC plot")
    au.add_argument("--json", help="write the audit as JSON here ('-' for stdout)")
    _add_common(au)
    au.set_defaults(func=cmd_audit)

    ep = sub.add_parser("epsilon", help="DP accountant calculator")
    ep.add_argument("--noise-multiplier", type=float, help="sigma -> epsilon")
    ep.add_argument("--epsilon", type=float, help="target epsilon -> sigma")
    ep.add_argument("--sample-rate", type=float, required=True, help="Poisson rate q")
    ep.add_argument("--steps", type=_positive_int, help="number of DP-SGD steps")
    ep.add_argument("--epochs", type=float, help="epochs (steps = epochs / q)")
    ep.add_argument("--delta", type=float, default=1e-5)
    ep.add_argument("--accountant", choices=("pld", "rdp", "prv", "all"), default="pld")
    ep.add_argument("--json", action="store_true", help="print JSON")
    ep.set_defaults(func=cmd_epsilon)

    be = sub.add_parser("bench", help="run benchmark scripts and print their tables")
    be.add_argument("names", nargs="*", help="benchmarks to run (default all): e.g. dpsgd audit")
    be.add_argument("--quick", action="store_true", help="seconds-long smoke runs")
    be.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    be.set_defaults(func=cmd_bench)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``modelsec-fast`` console script; returns the exit status."""
    from modelsec_fast.data import DataError
    from modelsec_fast.state import CheckpointError

    parser = build_parser()
    debug = os.environ.get("MODELSEC_FAST_DEBUG") == "1"
    try:
        args = parser.parse_args(argv)
        if hasattr(args, "model"):
            args.model_given = args.model is not None and any(
                a == "--model" or a.startswith("--model=") for a in (argv or sys.argv[1:]))
        import torch

        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        device = getattr(args, "device", "cpu")
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise UsageError(f"--device must be cpu or cuda, got {device!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("--device cuda, but this torch build sees no CUDA device")
        return int(args.func(args) or 0)
    except (UsageError, DataError, CheckpointError) as e:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ValueError as e:  # library validation of user-supplied values
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
