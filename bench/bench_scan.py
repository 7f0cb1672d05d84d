"""Wall time of ``modelsec-fast scan`` per section, on a user-style model and data.

The scan is what a user runs on their own model: a factory in an importable module,
its state dict, a test split and a training pool with its membership mask, all in
``.npz`` files. This script plays that user: it trains :func:`fashion_cnn` (a small
CNN, defined here so that the scan imports it as ``bench_scan:fashion_cnn``) on a
fair-coin half of a Fashion-MNIST training subset, writes the files, then runs the
scan in this process, as the CLI would, at ``--budget standard`` and reports each
stage's wall time, its share and its status, with the whole scan's time. No anchor
offers a scan, so there is no ratio: the table says where a review's time goes.

``--quick`` scans the embedded digits example (``modelsec_fast.app.scan.example``)
at ``--budget quick`` without its training pool (no shadow models); without Fashion-MNIST (Debian's ``dataset-fashion-mnist``)
the full run does the same at ``--budget standard`` and says so.

    python bench/bench_scan.py [--quick] [--budget standard] [--train-size 10000]
        [--test-size 2000] [--json out.json] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import _harness as h
import numpy as np
import torch
from torch import nn

from modelsec_fast.data import FASHION_MNIST_DIR, load_dataset


def fashion_cnn() -> nn.Module:
    """A fresh, untrained CNN for (N, 1, 28, 28) images in [0, 1] -> 10 logits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))


# The factory's documented companion: how the scan retrains it (LiRA's shadow models).
fashion_cnn.training_recipe = {"epochs": 8, "batch_size": 128, "lr": 2e-3, "optimizer": "adam"}


def _write_user_files(out: str, train_size: int, test_size: int, seed: int = 0) -> dict:
    """Train the Fashion-MNIST model on half its pool; write what a user would hand the scan."""
    from modelsec_fast.app.scan.fitting import fit
    from modelsec_fast.app.scan.inputs import FitRecipe

    ds = load_dataset("fashion-mnist", train_size=train_size, test_size=test_size, seed=seed)
    member = np.random.default_rng(seed).random(len(ds.y_train)) < 0.5
    keep = torch.from_numpy(member)
    began = time.perf_counter()
    model = fit(fashion_cnn, FitRecipe(**fashion_cnn.training_recipe), ds.x_train[keep],
                ds.y_train[keep], seed=seed)
    fit_s = time.perf_counter() - began
    paths = {"weights": os.path.join(out, "fashion_cnn.pt"),
             "data": os.path.join(out, "fashion_test.npz"),
             "train_data": os.path.join(out, "fashion_pool.npz")}
    torch.save(model.state_dict(), paths["weights"])
    np.savez(paths["data"], x=ds.x_test.numpy(), y=ds.y_test.numpy())
    np.savez(paths["train_data"], x=ds.x_train.numpy(), y=ds.y_train.numpy(), member=member)
    with torch.no_grad():
        accuracy = float((model(ds.x_test).argmax(1) == ds.y_test).float().mean())
    return {"model": "bench_scan:fashion_cnn", **paths, "fit_s": fit_s, "accuracy": accuracy,
            "data_name": f"Fashion-MNIST ({train_size} training pool, half members; "
                         f"{test_size} test)"}


def _write_digits_files(out: str) -> dict:
    from modelsec_fast.app.scan.example import write_example

    paths = write_example(out)
    return {"model": "modelsec_fast.app.scan.example:digits_cnn",
            "weights": paths["digits_cnn.pt"], "data": paths["digits_test.npz"],
            "train_data": paths["digits_pool.npz"], "fit_s": None, "accuracy": None,
            "data_name": "sklearn digits (the README's example)"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=("quick", "standard", "thorough"), default=None,
                        help="the scan's --budget (default: standard; --quick: quick)")
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--test-size", type=int, default=2_000)
    args = h.parse_args(parser, argv, rounds=1, quick_rounds=1, threads=2)
    budget = args.budget or ("quick" if args.quick else "standard")
    report = h.Report("bench_scan", args)

    from modelsec_fast.app.scan.pipeline import ScanOptions, run_scan

    with tempfile.TemporaryDirectory() as work:
        if args.quick or not os.path.isdir(FASHION_MNIST_DIR):
            if not args.quick:
                report.note(f"Fashion-MNIST not found in {FASHION_MNIST_DIR} (apt-get install "
                            "dataset-fashion-mnist): scanning the digits example instead")
            user = _write_digits_files(work)
        else:
            user = _write_user_files(work, args.train_size, args.test_size)
        if args.quick:  # a smoke test: no training pool, so no shadow models
            user["train_data"] = None
        options = ScanOptions(model=user["model"], weights=user["weights"], data=user["data"],
                              train_data=user["train_data"], out=os.path.join(work, "report"),
                              budget=budget, device=args.device)
        # one scan, no warm-up: a scan is minutes of work, not a microbenchmark
        m = h.measure({"scan": lambda: run_scan(options, progress=False, log=print)},
                      device=args.device, rounds=1, warmup=0)
    result = m.results["scan"]
    total_s = m.wall("scan").median

    note = (f"{user['data_name']}; model {user['model']}"
            + (f" (trained in {user['fit_s']:.1f} s, test accuracy {100 * user['accuracy']:.1f}%)"
               if user["fit_s"] is not None else "")
            + f"; --budget {budget}; one scan in this process, loading and the report included")
    report.section("scan: the whole run").add(m)
    section = report.section("scan: wall time per stage", note=note)
    staged = sum(result.seconds.values())
    for key, seconds in result.seconds.items():
        status = ("failed" if key in result.failed else
                  "skipped" if key in result.skipped else "ran")
        section.add_row(labels={"stage": key},
                        values={"seconds": round(seconds, 2),
                                "share": f"{100 * seconds / total_s:.1f}%", "status": status})
    section.add_row(labels={"stage": "loading, summary and report"},
                    values={"seconds": round(total_s - staged, 2),
                            "share": f"{100 * (total_s - staged) / total_s:.1f}%"})
    report.finish()


if __name__ == "__main__":
    main()
