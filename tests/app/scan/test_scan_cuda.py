"""`modelsec-fast scan --device cuda` runs every stage (where CUDA exists: bench/gpu_check.sh)."""

import json
import os

import pytest
import torch

from modelsec_fast.app.cli import main
from tests.app.scan.conftest import FACTORY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


def test_quick_scan_on_cuda_runs_every_stage(scan_assets, tmp_path, capsys):
    p = scan_assets["paths"]
    out = str(tmp_path / "report")
    status = main(["scan", "--model", FACTORY, "--weights", p["weights.pt"], "--data",
                   p["test.npz"], "--budget", "quick", "--device", "cuda", "--out", out,
                   "--quiet"])
    assert status == 0, capsys.readouterr().err  # a failed stage exits 1
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["sections"]["robustness"]["result"]
