"""The modelsec-fast command end to end on small subsets, and its one-line errors."""

import gzip
import json
import os
import subprocess
import sys

import pytest
import torch

from modelsec_fast.app.checkpoint import FORMAT
from modelsec_fast.app.cli import main
from modelsec_fast.app.demo import DEMO_SETTINGS
from modelsec_fast.state import read_checkpoint, write_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--train-size", "300", "--test-size", "100", "--epochs", "2", "--no-progress",
         "--threads", "1"]


def _raw(path):
    """The fields of a CLI checkpoint, read through the one state module."""
    return read_checkpoint(path, kind=FORMAT)


def run(argv, capsys):
    """main(argv) in-process; returns (status, stdout, stderr)."""
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "model.pt")
    assert main(["train", *SMALL, "--checkpoint", path, "--quiet"]) == 0
    return path


def test_train_writes_auditable_checkpoint_and_json(tmp_path, capsys):
    path = str(tmp_path / "m.pt")
    status, out, _ = run(["train", *SMALL, "--checkpoint", path, "--json", "-", "--quiet"], capsys)
    assert status == 0
    summary = json.loads(out)
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["privacy"] is None
    ckpt = _raw(path)
    assert ckpt["complete"] and ckpt["member_mask"].shape == (300,)
    assert int(ckpt["member_mask"].sum()) == summary["members"]
    from modelsec_fast.data import load_dataset

    full, pool = load_dataset("digits"), load_dataset("digits", train_size=300, test_size=100)
    assert torch.equal(full.x_train[ckpt["member_indices"]], pool.x_train[ckpt["member_mask"]])
    assert 0 < summary["members"] < 300  # fair coin per record


@pytest.mark.parametrize("dp", [False, True])
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, capsys, monkeypatch, dp):
    from modelsec_fast.app.checkpoint import ModelCheckpoint

    args = ["train", "--train-size", "200", "--test-size", "50", "--epochs", "3",
            "--no-progress", "--threads", "1", "--quiet"]
    if dp:
        args += ["--noise-multiplier", "1.0", "--accountant", "rdp"]
    whole, part = str(tmp_path / "whole.pt"), str(tmp_path / "part.pt")
    assert main(args + ["--checkpoint", whole]) == 0

    original_save, saves = ModelCheckpoint.save, []

    def save_then_interrupt(self, path):
        original_save(self, path)
        saves.append(self.complete)
        if len(saves) == 3:  # the recipe-only save, then epochs 1 and 2
            raise KeyboardInterrupt  # as if Ctrl-C after epoch 2

    monkeypatch.setattr(ModelCheckpoint, "save", save_then_interrupt)
    assert main(args + ["--checkpoint", part]) == 130
    monkeypatch.setattr(ModelCheckpoint, "save", original_save)
    interrupted = _raw(part)
    assert not interrupted["complete"] and len(interrupted["history"]) == 2
    capsys.readouterr()

    status, out, _ = run(["train", "--resume", part, "--json", "-", "--quiet", "--no-progress",
                          "--threads", "1"], capsys)
    assert status == 0
    summary = json.loads(out)
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    a, b = _raw(whole), _raw(part)
    assert b["complete"]
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    if dp:
        assert a["privacy"]["steps"] == b["privacy"]["steps"] == 3 * summary["history"][0]["steps"]
        assert a["privacy"]["epsilon"] == pytest.approx(b["privacy"]["epsilon"])


def test_adversarial_training_resumes_from_trainer_state(tmp_path, capsys, monkeypatch):
    import modelsec_fast.defenses.adversarial_training as at

    args = ["train", "--train-size", "150", "--test-size", "50", "--epochs", "3", "--adv",
            "fgsm_rs", "--eps", "0.1", "--no-progress", "--threads", "1", "--quiet"]
    whole, part = str(tmp_path / "whole.pt"), str(tmp_path / "part.pt")
    assert main(args + ["--checkpoint", whole]) == 0
    original, calls = at.write_checkpoint, []

    def save_then_interrupt(path, state, *, kind):
        original(path, state, kind=kind)
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(at, "write_checkpoint", save_then_interrupt)
    assert main(args + ["--checkpoint", part]) == 130
    monkeypatch.setattr(at, "write_checkpoint", original)
    capsys.readouterr()
    status, _, err = run(["evaluate", part, "--quiet"], capsys)
    assert "holds no weights yet" in _one_line_error(status, err)
    assert main(["train", "--resume", part, "--quiet", "--no-progress", "--threads", "1"]) == 0
    a, b = _raw(whole), _raw(part)
    assert b["complete"] and len(b["history"]) == 3
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key


def test_evaluate_json_and_adversarial_examples(checkpoint, tmp_path, capsys):
    adv = str(tmp_path / "adv.pt")
    status, out, _ = run(["evaluate", checkpoint, "--eps", "0.05,0.1", "--steps", "3",
                          "--attacks", "fgsm,pgd", "--save-adversarial", adv, "--json", "-",
                          "--quiet", "--threads", "1"], capsys)
    assert status == 0
    result = json.loads(out)
    assert set(result["robust_accuracy"]) == {"0.05", "0.1"}
    assert result["robust_accuracy"]["0.1"] <= result["clean_accuracy"]
    saved = torch.load(adv)
    assert saved["adversarial"]["0.1"].shape == (100, 1, 8, 8)
    assert (saved["adversarial"]["0.05"] - 0).abs().max() <= 1.0


def test_audit_json_parses(checkpoint, tmp_path, capsys):
    status, out, _ = run(["audit", checkpoint, "--shadows", "2", "--json",
                          str(tmp_path / "a.json"), "--out", str(tmp_path), "--quiet",
                          "--no-progress", "--threads", "1"], capsys)
    assert status == 0 and "LiRA online" in out
    audit = json.load(open(tmp_path / "a.json"))
    assert audit["membership"]["num_shadow"] == 2
    assert [a["attack"] for a in audit["membership"]["attacks"]] == [
        "loss threshold", "LiRA offline", "LiRA online"]
    assert os.path.getsize(tmp_path / "mi_roc.png") > 1000
    assert audit["report"] == str(tmp_path / "report.md")
    text = open(tmp_path / "report.md").read()
    assert "## Privacy: what an attacker can infer" in text and "](mi_roc.png)" in text


def test_audit_of_dp_checkpoint_with_canary(tmp_path, capsys):
    path = str(tmp_path / "dp.pt")
    assert main(["train", "--train-size", "200", "--test-size", "50", "--epochs", "2",
                 "--epsilon", "2", "--accountant", "rdp", "--no-progress", "--threads", "1",
                 "--quiet", "--checkpoint", path]) == 0
    status, out, _ = run(["audit", path, "--shadows", "2", "--canary", "--json", "-", "--quiet",
                          "--no-progress"], capsys)
    assert status == 0
    audit = json.loads(out)
    canary = audit["canary_audit"]
    assert canary["claimed_epsilon"] == pytest.approx(audit["privacy"]["epsilon"], rel=0.05)
    assert canary["epsilon_lower_bound"] < canary["claimed_epsilon"]
    assert (canary["m"], canary["r"], canary["beta"]) == (1000, 200, 0.05)
    status, _, err = run(["audit", path.replace("dp.pt", "none.pt"), "--canary"], capsys)
    _one_line_error(status, err)


def test_epsilon_both_directions(capsys):
    status, out, _ = run(["epsilon", "--noise-multiplier", "1.1", "--sample-rate", "0.01",
                          "--steps", "500", "--accountant", "rdp", "--json"], capsys)
    assert status == 0
    eps = json.loads(out)["results"][0]["epsilon"]
    status, out, _ = run(["epsilon", "--epsilon", str(eps), "--sample-rate", "0.01",
                          "--steps", "500", "--accountant", "rdp", "--json"], capsys)
    assert status == 0
    assert json.loads(out)["results"][0]["noise_multiplier"] == pytest.approx(1.1, rel=0.02)


def test_demo_quick_writes_report_and_plots(tmp_path, capsys):
    out_dir = str(tmp_path / "report")
    status, out, _ = run(["demo", "--quick", "--shadows", "2", "--out", out_dir,
                          "--no-progress", "--quiet"], capsys)
    assert status == 0 and out.strip() == os.path.join(out_dir, "report.md")
    report = json.load(open(os.path.join(out_dir, "report.json")))
    sections = report["sections"]
    assert list(sections) == ["settings", "models", "robustness", "minimum_norm", "accountant",
                              "membership", "canary_audit", "poisoning", "stealing",
                              "inversion"]
    assert all(s["status"] == "ok" for s in sections.values()), sections
    assert len(sections["models"]["result"]["models"]) == 3
    assert len(sections["robustness"]["result"]["models"]) == 3
    assert sections["settings"]["result"]["shadow_models"] == 2
    assert sections["canary_audit"]["result"]["detected_violation"] is False
    assert sections["robustness"]["figures"] == ["accuracy_vs_eps.png"]
    minimum_norm = sections["minimum_norm"]
    assert (list(minimum_norm["result"]["models"])
            == list(sections["robustness"]["result"]["models"]))
    assert minimum_norm["figures"] == ["minimum_norm_L2.png", "minimum_norm_Linf.png"]
    n_query, queries = DEMO_SETTINGS["query_attacks"][1]
    for kind in ("score_based", "decision_based"):  # SPSA and HopSkipJump on every model
        results = minimum_norm["result"][kind]
        assert list(results) == list(minimum_norm["result"]["models"])
        assert all(r["n_samples"] == n_query and max(r["queries"]) <= queries
                   for r in results.values())
    assert len(minimum_norm["result"]["masking_checks"]) == 2 * 3
    poisoning = sections["poisoning"]["result"]
    assert poisoning["backdoor"]["asr"] > 0.9 and poisoning["dp_sweep"] is None
    assert poisoning["dp_sweep_skipped"].startswith("quick mode")
    assert sections["poisoning"]["figures"] == ["poisoning_detection_roc.png",
                                                "poisoning_nc_anomaly.png"]
    for name in ("accuracy_vs_eps.png", "epsilon_vs_steps.png", "mi_roc.png", "report.md",
                 "stealing_fidelity.png", "inversion_reconstructions.png", "report.html"):
        assert os.path.getsize(os.path.join(out_dir, name)) > 500
    text = open(os.path.join(out_dir, "report.md")).read()
    assert "shadow models per audited model (LiRA): 2" in text and "## One-run canary" in text
    assert "### Query-based attacks: the check for gradient masking" in text
    assert "| HopSkipJump | decisions |" in text
    for name in ("accuracy_vs_eps.png", "epsilon_vs_steps.png", "mi_roc.png"):
        assert f"]({name})" in text


# ----------------------------------------------------------------------------- bad input
def _one_line_error(status, err):
    assert status == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("modelsec-fast: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_missing_dataset_path(tmp_path, capsys):
    status, _, err = run(["train", "--data", str(tmp_path / "missing"), "--quiet"], capsys)
    assert "not found" in _one_line_error(status, err)


def test_corrupt_idx(tmp_path, capsys):
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(tmp_path / f"{stem}.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x03\x00\x00\x00\x05garbage")
    status, _, err = run(["train", "--data", str(tmp_path), "--quiet"], capsys)
    assert "corrupt IDX" in _one_line_error(status, err)


def test_unknown_model(capsys):
    status, _, err = run(["train", "--model", "resnet9000", "--quiet"], capsys)
    assert "unknown model 'resnet9000'" in _one_line_error(status, err)


def test_checkpoint_from_another_architecture(checkpoint, tmp_path, capsys):
    raw = _raw(checkpoint)
    raw["recipe"]["model"] = "small_cnn"  # weights of an MLP under a CNN's name
    foreign = str(tmp_path / "foreign.pt")
    write_checkpoint(foreign, raw, kind=FORMAT)
    status, _, err = run(["evaluate", foreign, "--quiet"], capsys)
    assert "do not fit model 'small_cnn'" in _one_line_error(status, err)
    status, _, err = run(["audit", foreign, "--quiet"], capsys)
    _one_line_error(status, err)
    status, _, err = run(["evaluate", checkpoint, "--model", "small_cnn", "--quiet"], capsys)
    assert "holds model 'mlp'" in _one_line_error(status, err)
    status, _, err = run(["train", "--resume", checkpoint, "--model", "small_cnn"], capsys)
    assert "same architecture" in _one_line_error(status, err)


def test_not_a_checkpoint_and_wrong_input_shape(checkpoint, tmp_path, capsys):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a torch file")
    status, _, err = run(["audit", str(path)], capsys)
    assert "not a torch file" in _one_line_error(status, err)
    torch.save({"weights": 1}, path)
    status, _, err = run(["evaluate", str(path)], capsys)
    assert "not a modelsec_fast checkpoint" in _one_line_error(status, err)
    import numpy as np

    other = str(tmp_path / "five.npz")
    np.savez(other, x_train=np.zeros((4, 5, 5), np.uint8), y_train=np.arange(4),
             x_test=np.zeros((3, 5, 5), np.uint8), y_test=np.arange(3))
    status, _, err = run(["evaluate", checkpoint, "--data", other], capsys)
    assert "is for inputs 1x8x8, the data has 1x5x5" in _one_line_error(status, err)


class _OpensAFileWhenUnpickled:
    """A pickle payload: full unpickling would call open(marker, "w")."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_checkpoint_that_runs_code_is_refused_unexecuted(tmp_path, capsys):
    """audit/evaluate load checkpoints with weights_only: a pickled call never runs."""
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"format": "modelsec_fast.checkpoint/1", "recipe": _OpensAFileWhenUnpickled(
        str(marker))}, path)
    for command in ("audit", "evaluate"):
        status, _, err = run([command, str(path)], capsys)
        assert "refused: it holds a pickled object" in _one_line_error(status, err)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["torch", "envelope"])
def test_resume_refuses_a_pickled_trainer_side_file_unexecuted(tmp_path, monkeypatch, how):
    """A valid interrupted run.pt beside a malicious run.pt.trainer: exit 2, one line,
    and the payload never runs (it did, through torch.load(weights_only=False))."""
    from modelsec_fast.app.checkpoint import ModelCheckpoint

    run_pt = str(tmp_path / "run.pt")
    original = ModelCheckpoint.save

    def save_then_interrupt(self, path):
        original(self, path)
        raise KeyboardInterrupt  # after the recipe-only save, before any epoch

    monkeypatch.setattr(ModelCheckpoint, "save", save_then_interrupt)
    assert main(["train", "--train-size", "150", "--test-size", "50", "--epochs", "2", "--adv",
                 "fgsm_rs", "--eps", "0.1", "--no-progress", "--quiet",
                 "--checkpoint", run_pt]) == 130
    monkeypatch.undo()
    marker = tmp_path / "pwned"
    payload = _OpensAFileWhenUnpickled(str(marker))
    if how == "torch":
        torch.save({"format": "modelsec_fast.state", "payload": payload}, run_pt + ".trainer")
    else:  # a well-formed envelope and checksum around the payload
        write_checkpoint(run_pt + ".trainer", {"model": payload}, kind="adversarial_trainer")
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-m", "modelsec_fast", "train", "--adv", "fgsm_rs",
                           "--resume", run_pt, "--no-progress", "--quiet", "--threads", "1"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"modelsec-fast: error: checkpoint {run_pt}.trainer: refused: "
                               "it holds a pickled object"), lines[0]
    assert not marker.exists()


def test_bad_flags_are_one_line(capsys):
    status, _, err = run(["train", "--dp"], capsys)
    assert "--epsilon" in _one_line_error(status, err)
    status, _, err = run(["train", "--eps", "0.1"], capsys)
    assert "--adv" in _one_line_error(status, err)
    status, _, err = run(["epsilon", "--sample-rate", "0.01", "--steps", "10"], capsys)
    _one_line_error(status, err)
    status, _, err = run(["nonsense"], capsys)
    _one_line_error(status, err)
    status, _, err = run(["bench"], capsys)  # benchmarks ship with the source tree only
    assert "invalid choice: 'bench'" in _one_line_error(status, err)
    status, _, err = run(["evaluate", "m.pt", "--eps", "0.1,-0.2"], capsys)
    assert "argument --eps: value must be >= 0, got -0.2" in _one_line_error(status, err)
    status, _, err = run(["epsilon", "--sample-rate", "1.5", "--steps", "10",
                          "--noise-multiplier", "1"], capsys)
    assert "argument --sample-rate: value must lie in (0, 1]" in _one_line_error(status, err)
    status, _, err = run(["audit", "m.pt", "--shadows", "1"], capsys)
    assert "argument --shadows: value must be >= 2, got 1" in _one_line_error(status, err)
    status, _, err = run(["train", "--device", "tpu"], capsys)
    _one_line_error(status, err)


def test_console_entry_runs_as_module(tmp_path):
    """python -m modelsec_fast: exit status 2 and no traceback on a missing dataset."""
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-m", "modelsec_fast", "train", "--data",
                           str(tmp_path / "none")], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("modelsec-fast: error:")
