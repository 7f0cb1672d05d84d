"""The report sections of modelsec_fast.app.sections on small typed results: what each
renders, what it writes to report.json, and the demo with a failing analysis."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from modelsec_fast.app.cli import main
from modelsec_fast.app.report import BulletList, Figure, Paragraph, Table
from modelsec_fast.app.robustness import RobustCurve
from modelsec_fast.app.sections import (AccountantSection, CanaryAuditSection,
                                        MembershipSection, RobustnessSection)
from modelsec_fast.audit.canary import CanaryAuditResult
from modelsec_fast.audit.membership import membership_audit


def _of(blocks, kind):
    return [b for b in blocks if isinstance(b, kind)]


def test_robustness_section_has_a_column_per_radius_and_the_warnings(tmp_path):
    curve = RobustCurve(clean_accuracy=0.9, robust_accuracy={0.1: 0.5, 0.2: 0.125, 0.0: 0.9},
                        per_attack={0.1: {"fgsm": 0.6, "pgd": 0.5}, 0.2: {"fgsm": 0.2,
                                                                          "pgd": 0.125}},
                        warnings=["eps 0.2: gradient masking suspected"])
    section = RobustnessSection({"base": curve}, attacks=("fgsm", "pgd"), steps=7,
                                eps_grid=(0.0, 0.1, 0.2), n_test=40)
    blocks = section.blocks(str(tmp_path))
    (table,) = _of(blocks, Table)
    assert table.header == ("model", "clean acc.", "robust acc. at eps 0.1",
                            "robust acc. at eps 0.2")
    assert table.rows == (("base", "90.0%", "50.0%", "12.5%"),)
    assert "40 test examples" in _of(blocks, Paragraph)[0].text
    assert _of(blocks, BulletList)[0].items == (
        "warning: base: eps 0.2: gradient masking suspected",)
    (figure,) = _of(blocks, Figure)
    assert os.path.getsize(figure.path) > 1000
    result = json.loads(json.dumps(section.to_json()))
    assert result["models"]["base"]["robust_accuracy"] == {"0.1": 0.5, "0.2": 0.125, "0.0": 0.9}
    assert result["models"]["base"]["per_attack"]["0.2"] == {"fgsm": 0.2, "pgd": 0.125}


@pytest.fixture(scope="module")
def audits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    x, y = torch.rand(200, 1, 2, 2), torch.randint(0, 3, (200,))
    mask = torch.arange(200) % 2 == 0
    return {design: membership_audit(model, x, y, mask, design=design, delta=1e-5)
            for design in ("coin_flip", "split")}


@pytest.mark.parametrize("design", ["coin_flip", "split"])
def test_membership_section_reports_bounds_only_where_the_design_allows(tmp_path, audits,
                                                                        design):
    section = MembershipSection({"m": audits[design]}, not_audited={"other": "too slow"})
    blocks = section.blocks(str(tmp_path))
    (table,) = _of(blocks, Table)
    intro = _of(blocks, Paragraph)[0].text
    if design == "coin_flip":
        assert table.header[-1] == "epsilon lower bound" and "Clopper-Pearson" in intro
    else:
        assert "epsilon lower bound" not in table.header and "no epsilon lower bound" in intro
    assert table.rows[0][0] == "loss threshold"
    assert "other: not audited (too slow)" in _of(blocks, BulletList)[-1].items
    assert os.path.isfile(tmp_path / "mi_roc.png")
    assert section.to_json()["models"]["m"]["membership_design"] == design


def test_accountant_section_lists_each_dp_run(tmp_path):
    privacy = {"epsilon": 2.5, "delta": 1e-5, "accountant": "rdp", "noise_multiplier": 1.1,
               "sample_rate": 0.01, "steps": 300, "max_grad_norm": 1.0,
               "epsilon_curve": [(100, 1.2), (300, 2.5)]}
    blocks = AccountantSection({"dp": privacy}).blocks(str(tmp_path))
    assert _of(blocks, BulletList)[0].items == (
        "dp: epsilon = 2.500 at delta = 1e-05 (rdp accountant; noise multiplier 1.100, "
        "sample rate 0.0100, 300 steps, clipping bound 1)",)
    assert os.path.isfile(_of(blocks, Figure)[0].path)


@pytest.mark.parametrize("bound, verdict", [(0.5, "stays below the claim"),
                                            (3.0, "EXCEEDS the claim")])
def test_canary_section_states_the_verdict(bound, verdict):
    result = CanaryAuditResult(m=100, r=20, correct=15, beta=0.05, delta=1e-5,
                               epsilon_lower_bound=bound, claimed_epsilon=2.0,
                               noise_multiplier=1.0, sample_rate=0.1, steps=50,
                               max_grad_norm=1.0, backend="engine", fault=None,
                               scores=np.zeros(100), included=np.zeros(100, bool))
    section = CanaryAuditSection(result, "dp")
    text = " ".join(p.text for p in section.blocks("unused"))
    assert verdict in text and "m = 100" in text and "15 correct" in text
    assert section.to_json()["detected_violation"] is (bound > 2.0)
    assert "scores" not in section.to_json()


def test_demo_with_a_failing_analysis_writes_the_rest_and_exits_1(tmp_path, monkeypatch,
                                                                   capsys):
    from modelsec_fast.app import demo, robustness

    for name, quick in {"epochs": 2, "dp_epochs": 2, "adv_epochs": 1, "canary_m": 50,
                        "canary_r": 10, "max_sizes": (200, 60),
                        "poisoning": dict(epochs=2, strip_copies=2, nc_epochs=1, sweep_ks=(1,),
                                          sweep_epsilons=(1.0,), sweep_seeds=2,
                                          sweep_epochs=1)}.items():
        monkeypatch.setitem(demo.DEMO_SETTINGS, name, (demo.DEMO_SETTINGS[name][0], quick))

    def broken_curve(*args, **kwargs):
        raise RuntimeError("attack diverged")

    monkeypatch.setattr(robustness, "robust_curve", broken_curve)
    out = str(tmp_path / "report")
    assert main(["demo", "--quick", "--shadows", "2", "--out", out, "--no-progress",
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "report section 'robustness' failed" in err
    report = json.load(open(os.path.join(out, "report.json")))
    status = {k: s["status"] for k, s in report["sections"].items()}
    assert status == {"settings": "ok", "models": "ok", "robustness": "failed",
                      "accountant": "ok", "membership": "ok", "canary_audit": "ok",
                      "poisoning": "ok", "stealing": "ok", "inversion": "ok",
                      "minimum_norm": "ok"}
    assert report["sections"]["robustness"]["error"] == "RuntimeError: attack diverged"
    text = open(os.path.join(out, "report.md")).read()
    assert "## Robustness: accuracy under attack\n\n**Failed:** RuntimeError: attack diverged" \
        in text
    assert "## One-run canary audit of DP-SGD" in text
    assert not os.path.exists(os.path.join(out, "accuracy_vs_eps.png"))
