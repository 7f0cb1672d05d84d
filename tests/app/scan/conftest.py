"""Shared scan fixtures: a tiny MLP trained on the embedded digits, saved in every model
format the scan reads, and its data as .npz (built once per session, in seconds)."""

import json
import os
import time
import warnings

import numpy as np
import pytest
import torch

from tests.app.scan.scan_factories import tiny_mlp

FACTORY = "tests.app.scan.scan_factories:tiny_mlp"
EXPORT_BATCH = 16  # a static batch size, so the adapter must split and pad
N_TEST, N_POOL = 120, 300


@pytest.fixture(scope="session")
def scan_assets(tmp_path_factory):
    """name -> path: state dict, .pt2, TorchScript, test and pool .npz, and the arrays."""
    out = tmp_path_factory.mktemp("scan_assets")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures start before the modules' one-thread fixture
    try:
        return _write_assets(out)
    finally:
        torch.set_num_threads(threads)


def _write_assets(out):
    from modelsec_fast.app.scan.fitting import fit
    from modelsec_fast.app.scan.inputs import FitRecipe
    from modelsec_fast.data import load_dataset

    ds = load_dataset("digits")
    pool_x, pool_y = ds.x_train[:N_POOL], ds.y_train[:N_POOL]
    member = np.random.default_rng(0).random(N_POOL) < 0.5
    model = fit(tiny_mlp, FitRecipe(epochs=30, lr=3e-3), pool_x[torch.from_numpy(member)],
                pool_y[torch.from_numpy(member)], seed=0)
    paths = {k: str(out / k) for k in ("weights.pt", "model.pt2", "model.ts", "test.npz",
                                        "pool.npz", "members.npy")}
    torch.save(model.state_dict(), paths["weights.pt"])
    torch.export.save(torch.export.export(model, (ds.x_test[:EXPORT_BATCH],)), paths["model.pt2"])
    with warnings.catch_warnings():  # TorchScript is deprecated, and still a format users have
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(model, ds.x_test[:4]), paths["model.ts"])
    x_test, y_test = ds.x_test[:N_TEST].numpy(), ds.y_test[:N_TEST].numpy()
    np.savez(paths["test.npz"], x=x_test, y=y_test)
    np.savez(paths["pool.npz"], x=pool_x.numpy(), y=pool_y.numpy())
    np.save(paths["members.npy"], member)
    return {"paths": paths, "model": model, "x_test": x_test, "y_test": y_test, "dir": out,
            "pool_x": pool_x.numpy(), "pool_y": pool_y.numpy(), "member": member}


def run_main(args):
    """(exit status, stdout, stderr, CPU seconds) of the CLI's ``main(ARGS)`` in this
    process (CPU time: on a shared machine, wall time measures the neighbours)."""
    import contextlib
    import io

    from modelsec_fast.app.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()  # --threads sets it for the whole process
    started = time.process_time()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = main(list(args))
    finally:
        torch.set_num_threads(threads)
    return status, stdout.getvalue(), stderr.getvalue(), time.process_time() - started


@pytest.fixture(scope="session")
def exported_scan(scan_assets, tmp_path_factory):
    """``scan --budget quick`` of the .pt2 on the .npz with a membership pool: (status,
    stdout, stderr, CPU seconds, out dir, report.json)."""
    out = str(tmp_path_factory.mktemp("scan_report") / "report")
    p = scan_assets["paths"]
    status, stdout, stderr, seconds = run_main(
        ["scan", "--model", p["model.pt2"], "--trust-model", "--data", p["test.npz"],
         "--train-data", p["pool.npz"], "--members", p["members.npy"], "--budget", "quick",
         "--out", out, "--no-progress", "--threads", "1"])  # one thread: CPU time = wall time
    report = json.load(open(os.path.join(out, "report.json"))) if os.path.exists(
        os.path.join(out, "report.json")) else None
    return status, stdout, stderr, seconds, out, report
