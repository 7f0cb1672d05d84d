"""``modelsec-fast scan`` end to end: every stage runs or says why it did not, a failing
stage is reported in its place (exit 1), and each bad input stops the scan with one line
naming the file and the problem (exit 2) and a partial report."""

import json
import os

import numpy as np
import pytest
import torch

from modelsec_fast.app.cli import main
from modelsec_fast.app.scan.stages import STAGES, StageSpec, run_stage
from tests.app.scan.conftest import FACTORY

STAGE_KEYS = [s.key for s in STAGES]


def test_quick_scan_of_an_exported_model_on_npz_runs_every_stage_or_says_why(exported_scan):
    status, stdout, stderr, seconds, out, report = exported_scan
    assert status == 0, stderr
    assert stdout.strip() == os.path.join(out, "report.html")
    assert list(report["sections"]) == ["summary", *STAGE_KEYS]
    for key, section in report["sections"].items():
        assert section["status"] in ("ok", "skipped"), (key, section)
        if section["status"] == "skipped":
            assert section["reason"], key
    robustness = report["sections"]["robustness"]["result"]
    assert set(robustness["results"]) == {"Linf", "L2"}
    assert robustness["eps"]["Linf"] == pytest.approx(8 / 255)
    assert 0.5 < robustness["results"]["Linf"]["clean_accuracy"] <= 1.0
    membership = report["sections"]["membership"]["result"]["models"]["your model"]
    assert [a["attack"] for a in membership["attacks"]] == ["loss threshold"]
    assert "LiRA" not in json.dumps(membership["attacks"])
    threats = report["sections"]["summary"]["result"]["threats"]
    assert [t["section"] for t in threats] == STAGE_KEYS
    with_rules = {t["section"]: t["verdict"] for t in threats if t["verdict"]}
    assert {"robustness", "stealing", "backdoor", "minimum_norm",
            "explanations"} <= set(with_rules), threats
    for key, verdict in with_rules.items():
        assert verdict["verdict"] in ("at risk", "no finding", "inconclusive"), key
        assert verdict["measured"] and verdict["threshold"] and verdict["source"], key
    minimum_norm = report["sections"]["minimum_norm"]["result"]
    quick = 500  # the quick budget's queries per example
    assert minimum_norm["max_queries"] == quick and minimum_norm["eps"] == {
        "L2": pytest.approx(0.5), "Linf": pytest.approx(8 / 255)}
    spsa, hsj = (minimum_norm[k]["model"] for k in ("score_based", "decision_based"))
    assert spsa["attack"] == "SPSA" and hsj["attack"] == "HopSkipJump"
    assert spsa["n_samples"] == hsj["n_samples"] == minimum_norm["n_examples"]
    assert 0 < max(spsa["queries"]) <= quick and 0 < max(hsj["queries"]) <= quick
    assert [c["attack"] for c in minimum_norm["masking_checks"]] == ["SPSA", "HopSkipJump"]
    for name in ("report.html", "report.md", "robustness_vs_eps.png", "mi_roc.png"):
        assert os.path.getsize(os.path.join(out, name)) > 500, name
    assert "[scan] Evasion: robust accuracy: ok" in stderr  # a log line per stage, no bar


def test_quick_scan_of_the_test_model_stays_under_a_minute(exported_scan):
    """CPU seconds of the one-thread scan: its wall time on an idle machine."""
    status, _, _, seconds, _, report = exported_scan
    assert status == 0
    assert seconds < 60, report["sections"]["summary"]["result"]["settings"]["stage_seconds"]


def test_factory_scan_with_a_recipe_runs_lira(scan_assets, tmp_path, capsys):
    p = scan_assets["paths"]
    pool = str(tmp_path / "pool.npz")
    np.savez(pool, x=scan_assets["pool_x"], y=scan_assets["pool_y"],
             member=scan_assets["member"])
    out = str(tmp_path / "report")
    status = main(["scan", "--model", FACTORY, "--weights", p["weights.pt"], "--data",
                   p["test.npz"], "--train-data", pool, "--recipe", "epochs=3,lr=3e-3",
                   "--budget", "quick", "--eps", "0.05,0.5", "--out", out, "--quiet"])
    assert status == 0, capsys.readouterr().err
    report = json.load(open(os.path.join(out, "report.json")))
    audit = report["sections"]["membership"]["result"]["models"]["your model"]
    assert [a["attack"] for a in audit["attacks"]] == ["loss threshold", "LiRA offline",
                                                    "LiRA online"]
    assert audit["num_shadow"] == 4  # the quick budget's shadow models
    assert audit["n_members"] == int(scan_assets["member"].sum())
    assert report["sections"]["robustness"]["result"]["eps"] == {"Linf": 0.05, "L2": 0.5}


def test_a_failing_stage_is_reported_in_its_place_and_exits_1(scan_assets, tmp_path, capsys,
                                                              monkeypatch):
    import modelsec_fast.app.scan.robustness as robustness

    def fail(inputs):
        raise RuntimeError("attack exploded")

    monkeypatch.setattr(robustness, "run", fail)
    p = scan_assets["paths"]
    out = str(tmp_path / "report")
    status = main(["scan", "--model", p["model.pt2"], "--trust-model", "--data", p["test.npz"],
                   "--budget", "quick", "--out", out, "--quiet"])
    err = capsys.readouterr().err
    assert status == 1 and "report section 'robustness' failed" in err
    sections = json.load(open(os.path.join(out, "report.json")))["sections"]
    assert sections["robustness"] == {"title": "Evasion: robust accuracy", "status": "failed",
                                      "error": "RuntimeError: attack exploded", "figures": [],
                                      "result": {}}
    assert sections["summary"]["result"]["threats"][0]["status"] == "failed"
    assert sections["membership"]["status"] == "skipped"  # the rest still ran


def test_a_stage_missing_from_the_build_is_skipped_but_a_missing_dependency_fails(
        tmp_path, monkeypatch):
    import modelsec_fast.app.scan as scan_package

    (tmp_path / "needs_missing.py").write_text("import a_package_that_is_not_installed\n"
                                               "def run(inputs):\n    pass\n")
    monkeypatch.setattr(scan_package, "__path__", [*scan_package.__path__, str(tmp_path)])
    absent = run_stage(StageSpec("absent", "Absent", "no_such_stage", "x"), inputs=None)
    assert absent.reason == ("not in this build of modelsec_fast (no module "
                             "modelsec_fast.app.scan.no_such_stage)")
    broken = run_stage(StageSpec("broken", "Broken", "needs_missing", "x"), inputs=None)
    assert broken.error == ("ModuleNotFoundError: No module named "
                            "'a_package_that_is_not_installed'")


# ----------------------------------------------------------------------------- bad input
def _bad_inputs(assets, tmp):
    """name -> (arguments, text the error line must hold)."""
    p = assets["paths"]
    garbage = tmp / "model.bin"
    garbage.write_bytes(b"\x00garbage, not a model")
    other_weights = tmp / "other.pt"
    torch.save(torch.nn.Linear(64, 10).state_dict(), other_weights)
    wrong_shape = tmp / "wrong_shape.npz"
    np.savez(wrong_shape, x=np.zeros((5, 3, 5, 5), np.float32), y=np.zeros(5, np.int64))
    wrong_labels = tmp / "wrong_labels.npz"
    np.savez(wrong_labels, x=assets["x_test"][:5], y=np.array([0, 1, 12, 3, 4]))
    short_mask = tmp / "short_mask.npy"
    np.save(short_mask, np.ones(10, bool))
    folder = tmp / "images"
    for label in ("0", "1"):
        (folder / label).mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "0" / "a.png")
    (folder / "1" / "b.png").write_bytes(b"not a png at all")
    model = ["--model", p["model.pt2"], "--trust-model"]
    return {
        "neither format": (["--model", str(garbage), "--data", p["test.npz"]],
                           f"{garbage}: not a model file this scan reads"),
        "factory not importable": (["--model", "no_such_package.models:net", "--weights",
                                    p["weights.pt"], "--data", p["test.npz"]],
                                   "cannot import no_such_package.models"),
        "state dict does not fit": (["--model", FACTORY, "--weights", str(other_weights),
                                     "--data", p["test.npz"]],
                                    f"{other_weights}: does not fit {FACTORY}'s model"),
        "data shape does not fit": ([*model, "--data", str(wrong_shape)],
                                    f"{wrong_shape}: records of shape (3, 5, 5) do not fit"),
        "labels outside the classes": ([*model, "--data", str(wrong_labels)],
                                       f"{wrong_labels}: labels go up to 12 but the model has "
                                       "10 classes"),
        "mask of the wrong length": ([*model, "--data", p["test.npz"], "--train-data",
                                      p["pool.npz"], "--members", str(short_mask)],
                                     f"{short_mask}: membership mask has 10 entries but "
                                     f"{p['pool.npz']} has 300 records"),
        "unreadable image": ([*model, "--data", str(folder)],
                             f"{folder / '1' / 'b.png'}: unreadable image"),
        "untrusted export": (["--model", p["model.pt2"], "--data", p["test.npz"]],
                             "pass --trust-model only for a file you trust"),
    }


BAD_INPUTS = ["neither format", "factory not importable", "state dict does not fit",
              "data shape does not fit", "labels outside the classes", "mask of the wrong length",
              "unreadable image", "untrusted export"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_one_line_exit_2_and_only_a_partial_report(case, scan_assets, tmp_path,
                                                                   capsys):
    args, expected = _bad_inputs(scan_assets, tmp_path)[case]
    out = tmp_path / "out"
    status = main(["scan", *args, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("modelsec-fast: error: "), err
    assert expected in err and "Traceback" not in err
    assert sorted(os.listdir(out)) == ["report.html", "report.json", "report.md"]
    sections = json.load(open(out / "report.json"))["sections"]
    assert list(sections) == ["stopped"] and expected in sections["stopped"]["error"]
    assert sections["stopped"]["error"].startswith("while ")


def test_a_malicious_pt2_is_refused_without_trust_model(scan_assets, tmp_path, capsys):
    """A .pt2 whose pickle writes a marker file: torch.export.load runs it (the control),
    the scan without --trust-model never reads it."""
    import io
    import zipfile

    marker = tmp_path / "MARKER"

    class WritesMarker:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = io.BytesIO()
    torch.save(WritesMarker(), payload)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(scan_assets["paths"]["model.pt2"]) as src, \
            zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("weights/model_weights_config.json"):
                config = json.loads(data)
                for entry in config["config"].values():
                    entry["use_pickle"] = True  # the loader unpickles these entries
                data = json.dumps(config).encode()
            elif "/data/weights/weight_" in info.filename:
                data = payload.getvalue()
            dst.writestr(info, data)
    status = main(["scan", "--model", str(evil), "--data", scan_assets["paths"]["test.npz"],
                   "--out", str(tmp_path / "out"), "--quiet"])
    assert status == 2 and "--trust-model" in capsys.readouterr().err
    assert not marker.exists()
    with pytest.raises(Exception):
        torch.export.load(str(evil))
    assert marker.exists()  # the control: loading it does run the pickle


def test_csv_scan_attacks_scaled_features_through_the_unscaled_model(tmp_path, capsys):
    """Tabular data: each feature scaled to [0, 1] (recorded), the model sees raw units."""
    generator = np.random.default_rng(0)
    weight = generator.normal(size=(3, 4))
    features = generator.normal(size=(60, 4)) * [1, 10, 100, 0.1] + [0, 50, -20, 3]
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(weight / [1, 10, 100, 0.1], dtype=torch.float32))
        model.bias.copy_(torch.tensor(-(weight / [1, 10, 100, 0.1]) @ [0, 50, -20, 3],
                                      dtype=torch.float32))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with torch.no_grad():
        labels = model(torch.tensor(features, dtype=torch.float32)).numpy()
    rows = ["f1,f2,f3,f4,label"] + [",".join(map(str, [*f, int(np.argmax(s))]))
                                    for f, s in zip(features, labels)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "report"
    status = main(["scan", "--model", "tests.app.scan.scan_factories:tabular_linear",
                   "--weights", str(tmp_path / "w.pt"), "--data", str(tmp_path / "t.csv"),
                   "--budget", "quick", "--out", str(out), "--quiet"])
    assert status == 0, capsys.readouterr().err
    report = json.load(open(out / "report.json"))
    settings = report["sections"]["summary"]["result"]["settings"]
    np.testing.assert_allclose(settings["feature_scaling"]["min"], features.min(0), rtol=1e-5)
    robustness = report["sections"]["robustness"]["result"]
    assert robustness["results"]["Linf"]["clean_accuracy"] == 1.0  # the raw-unit model
    assert list(robustness["results"]["Linf"]["per_attack"]) == ["APGD-CE", "APGD-DLR", "FAB"]


def test_progress_is_a_bar_on_a_terminal_and_log_lines_otherwise(monkeypatch):
    import io

    from modelsec_fast.app.scan.pipeline import _StageProgress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for terminal in (True, False):
        stream = Terminal() if terminal else io.StringIO()
        monkeypatch.setattr("sys.stderr", stream)
        lines = []
        with _StageProgress(True, lines.append) as progress:
            progress.start("Evasion")
            for step in range(50):
                progress.message(f"step {step}")
            progress.done("Evasion", 1.0, "ok")
        if terminal:
            assert lines == [] and "Evasion" in stream.getvalue()
        else:
            assert stream.getvalue() == ""
            assert lines == ["[scan] Evasion: started",
                             *[f"[scan] step {s}" for s in range(50)],
                             "[scan] Evasion: ok (1.0 s)"]


def test_the_readme_scan_commands_name_real_flags_and_the_example_files():
    """The README's scan commands parse, and name the files the example module writes
    (running them end to end takes minutes: the factory and .pt2 paths run above)."""
    import re
    import shlex

    from modelsec_fast.app.cli import build_parser
    from modelsec_fast.app.scan import example

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    text = open(os.path.join(root, "README.md")).read().replace("\\\n", " ")
    commands = [line.split("#")[0] for line in text.splitlines()
                if line.startswith("modelsec-fast scan ")]
    assert len(commands) == 2
    written = {"digits_cnn.pt", "digits_cnn.pt2", "digits_test.npz", "digits_pool.npz"}
    assert written <= set(re.findall(r"'(digits_\w+\.\w+)'", open(example.__file__).read()) +
                          re.findall(r'"(digits_\w+\.\w+)"', open(example.__file__).read()))
    assert "python3 -m modelsec_fast.app.scan.example example/" in text
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        for path in (args.weights, args.data, args.train_data):
            if path is not None:
                assert path.startswith("example/") and os.path.basename(path) in written
        if args.model.endswith(".pt2"):
            assert args.trust_model
        else:
            assert args.model == "modelsec_fast.app.scan.example:digits_cnn"


def test_records_without_a_channel_axis_get_the_one_the_model_needs(scan_assets, tmp_path):
    """IDX images are (N, H, W); a convolution needs (N, 1, H, W): test and training
    records both get the axis, and the number of classes comes from the output."""
    from modelsec_fast.app.scan.pipeline import ScanOptions, _Loader
    from tests.app.scan.scan_factories import tiny_conv

    torch.save(tiny_conv().state_dict(), tmp_path / "conv.pt")
    images = np.round(scan_assets["x_test"][:, 0] * 255).astype(np.uint8)
    for split, n in (("t10k", 30), ("train", 50)):
        for kind, array in (("images-idx3", images[:n]),
                            ("labels-idx1", scan_assets["y_test"][:n].astype(np.uint8))):
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in array.shape)
            (tmp_path / f"{split}-{kind}-ubyte").write_bytes(header + array.tobytes())
    options = ScanOptions(model="tests.app.scan.scan_factories:tiny_conv",
                          weights=str(tmp_path / "conv.pt"), data=str(tmp_path),
                          train_data=str(tmp_path), out=str(tmp_path / "out"), budget="quick")
    inputs, described = _Loader(options, lambda message: None).load()
    assert inputs.x.shape == (30, 1, 8, 8) and inputs.train[0].shape == (50, 1, 8, 8)
    assert inputs.num_classes == 10 and described["input_shape"] == [1, 8, 8]
    assert inputs.membership.is_member.tolist() == [True] * 50 + [False] * 30
    torch.testing.assert_close(inputs.x, torch.from_numpy(images[:30, None] / 255).float())
