"""modelsec_fast.state: no load path runs a pickled payload, bad files get a one-line
error naming the file and the reason, and every load of the package is a safe one."""

import ast
import hashlib
import io
import pathlib
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelsec_fast import state
from modelsec_fast.state import (CheckpointError, capture_training_state, read_checkpoint,
                                 read_tensor_file, restore_training_state, write_checkpoint)

PACKAGE = pathlib.Path(state.__file__).parent


class _CreatesMarker:
    """A pickle payload: full unpickling calls open(marker, "w"), creating the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


# ----------------------------------------------------------------------------- payload files
def _evil_file(tmp_path, how: str, kind: str):
    """(path, marker): a file whose full unpickling would create ``marker``.

    how: "torch" (the payload in a plain torch file), "envelope" (a well-formed
    modelsec_fast.state envelope with a valid checksum around the payload),
    "pickle" (a bare pickle file).
    """
    marker, path = tmp_path / f"marker-{how}", tmp_path / f"evil-{how}.pt"
    payload = _CreatesMarker(marker)
    if how == "torch":
        torch.save({"format": state.FORMAT, "version": state.VERSION, "payload": payload}, path)
    elif how == "envelope":
        write_checkpoint(path, {"model": payload, "extra": payload}, kind=kind)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path, marker


@pytest.mark.parametrize("how", ["torch", "envelope", "pickle"])
def test_the_payloads_run_when_fully_unpickled(tmp_path, how):
    """The control: each payload file is live, so the refusals below are real."""
    path, marker = _evil_file(tmp_path, how, "any")
    if how == "pickle":
        pickle.loads(path.read_bytes())
    else:
        outer = torch.load(path, weights_only=False)
        if how == "envelope":
            torch.load(io.BytesIO(outer["payload"].numpy().tobytes()), weights_only=False)
    assert marker.exists()


def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def _load_state_read_checkpoint(path):
    read_checkpoint(path, kind="any")


def _load_state_read_tensor_file(path):
    read_tensor_file(path)


def _load_privacy_engine_checkpoint(path):
    from modelsec_fast import PrivacyEngine

    PrivacyEngine(accountant="rdp").load_checkpoint(path=path, module=_tiny_model())


def _load_privacy_checkpoint_function(path):
    from modelsec_fast.accountants import RDPAccountant
    from modelsec_fast.privacy.checkpoint import load_checkpoint

    load_checkpoint(path=path, module=_tiny_model(), accountant=RDPAccountant())


def _load_adversarial_trainer_resume(path):
    from modelsec_fast.defenses import AdversarialTrainer

    model = _tiny_model()
    loader = DataLoader(TensorDataset(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))),
                        batch_size=4)
    trainer = AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "fgsm_rs",
                                 eps=0.1, guard=False, progress=False, checkpoint_path=str(path))
    trainer.fit(loader, 1, resume=True)


def _load_cli_model_checkpoint(path):
    from modelsec_fast.app.checkpoint import load_checkpoint

    load_checkpoint(str(path))


def _load_adversarial_dataset(path):
    from modelsec_fast.attacks import PGD

    PGD.load(str(path))  # Attack.load is attacks.saving.load_adversarial


# Every function of the package that reads a file which could hold a pickle, with the
# kind of envelope it expects (None: it reads plain torch files, no envelope).
LOADERS = {
    "state.read_checkpoint": (_load_state_read_checkpoint, "any"),
    "state.read_tensor_file": (_load_state_read_tensor_file, None),
    "PrivacyEngine.load_checkpoint": (_load_privacy_engine_checkpoint, "privacy_engine"),
    "privacy.checkpoint.load_checkpoint": (_load_privacy_checkpoint_function, "privacy_engine"),
    "AdversarialTrainer.fit(resume=True)": (_load_adversarial_trainer_resume,
                                            "adversarial_trainer"),
    "app.checkpoint.load_checkpoint": (_load_cli_model_checkpoint, "model_checkpoint"),
    "Attack.load (attacks.saving.load_adversarial)": (_load_adversarial_dataset, None),
}
CASES = [(name, how) for name, (_, kind) in LOADERS.items()
         for how in (("torch", "envelope", "pickle") if kind else ("torch", "pickle"))]


@pytest.mark.parametrize("name,how", CASES)
def test_every_loader_refuses_a_pickled_payload_without_running_it(tmp_path, name, how):
    load, kind = LOADERS[name]
    path, marker = _evil_file(tmp_path, how, kind)
    with pytest.raises(CheckpointError) as caught:
        load(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    expected = "not a torch file" if how == "pickle" else "refused: it holds a pickled object"
    assert expected in message, message
    assert not marker.exists()


def test_an_npz_dataset_with_a_pickled_object_array_is_refused(tmp_path):
    """data.load_dataset reads .npz with allow_pickle=False."""
    from modelsec_fast.data import DataError, load_dataset

    marker, path = tmp_path / "marker-npz", tmp_path / "evil.npz"
    objects = np.empty(1, dtype=object)
    objects[0] = _CreatesMarker(marker)
    np.savez(path, x_train=objects, y_train=np.arange(1), x_test=objects, y_test=np.arange(1))
    with pytest.raises(DataError, match="cannot read .npz"):
        load_dataset(str(path))
    assert not marker.exists()
    np.load(path, allow_pickle=True)["x_train"]  # the control: this unpickles it
    assert marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "audit", "train --resume"])
@pytest.mark.parametrize("how", ["torch", "envelope", "pickle"])
def test_cli_commands_refuse_a_pickled_checkpoint_in_one_line(tmp_path, capsys, command, how):
    from modelsec_fast.app.cli import main

    path, marker = _evil_file(tmp_path, how, "model_checkpoint")
    argv = ["train", "--resume", str(path)] if command == "train --resume" else [command, str(path)]
    assert main(argv + ["--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    expected = "not a torch file" if how == "pickle" else "refused: it holds a pickled object"
    assert len(lines) == 1 and str(path) in lines[0] and expected in lines[0], lines
    assert not marker.exists()


# ----------------------------------------------------------------------------- the source
def _module_aliases(tree) -> dict:
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:  # import numpy as np -> np: numpy; import os.path -> os: os
                top = a.name.split(".")[0]
                aliases[a.asname or top] = a.name if a.asname else top
    return aliases


def _dotted(func, aliases) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return ""
    return ".".join([aliases.get(func.id, func.id)] + parts[::-1])


def _keyword_is(call, name, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
               for k in call.keywords)


_UNPICKLERS = ("pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal",
               "shelve")


def _unsafe_loads(path: pathlib.Path, tree) -> tuple[list[str], int]:
    """(problems, number of torch.load calls) in one module."""
    rel = path.relative_to(PACKAGE.parent).as_posix()
    aliases = _module_aliases(tree)
    problems, torch_loads = [], 0
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module.split(".")[0]
            names = {a.name for a in node.names}
            if base in _UNPICKLERS or (base in ("torch", "numpy") and names & {"load", "loads"}):
                problems.append(f"{where}: from {node.module} import {sorted(names)}")
        if isinstance(node, ast.ClassDef) and node.name == "CheckpointError" \
                and rel != "modelsec_fast/state.py":
            problems.append(f"{where}: a second class CheckpointError")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name in ("torch.load", "torch.serialization.load"):
            torch_loads += 1
            if rel != "modelsec_fast/state.py":
                problems.append(f"{where}: torch.load outside modelsec_fast/state.py")
            if not _keyword_is(node, "weights_only", True):
                problems.append(f"{where}: torch.load without weights_only=True")
        elif name == "numpy.load" and not _keyword_is(node, "allow_pickle", False):
            problems.append(f"{where}: np.load without allow_pickle=False")
        elif name.split(".")[0] in _UNPICKLERS and name.rsplit(".", 1)[-1] in (
                "load", "loads", "Unpickler"):
            problems.append(f"{where}: {name} unpickles")
    return problems, torch_loads


def test_every_load_in_the_package_is_safe_and_torch_load_lives_in_state_py():
    problems, torch_loads = [], 0
    for path in sorted(PACKAGE.rglob("*.py")):
        found, count = _unsafe_loads(path, ast.parse(path.read_text(), str(path)))
        problems += found
        torch_loads += count
    assert not problems, "\n".join(problems)
    assert torch_loads >= 1  # the scan sees state.py's own load


@pytest.mark.parametrize("source,problem", [
    ("import torch\ntorch.load(p, weights_only=False)\n", "without weights_only=True"),
    ("import torch as t\nt.load(p)\n", "without weights_only=True"),
    ("import numpy as np\nnp.load(p)\n", "allow_pickle=False"),
    ("import pickle\npickle.loads(b)\n", "unpickles"),
    ("from pickle import load\n", "from pickle import"),
    ("class CheckpointError(ValueError):\n    pass\n", "a second class CheckpointError"),
])
def test_the_source_scan_finds_each_unsafe_load(source, problem):
    problems, _ = _unsafe_loads(PACKAGE / "some_module.py", ast.parse(source))
    assert any(problem in p for p in problems), problems


def test_one_checkpoint_error_for_the_whole_package():
    from modelsec_fast.app import checkpoint as cli_checkpoint
    from modelsec_fast.privacy import checkpoint as privacy_checkpoint

    assert privacy_checkpoint.CheckpointError is cli_checkpoint.CheckpointError is CheckpointError
    assert issubclass(CheckpointError, ValueError)


# ----------------------------------------------------------------------------- bad input
def _model(width=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))


def _saved(tmp_path, model=None, kind="test"):
    path = tmp_path / "ckpt.pt"
    write_checkpoint(path, capture_training_state(model=model or _model()), kind=kind)
    return path


def _one_line_error(path, call, reason):
    with pytest.raises(CheckpointError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(f"checkpoint {path}: {reason}"), message
    return message


def test_round_trip_restores_the_model_and_extra_entries(tmp_path):
    model = _model()
    path = tmp_path / "ckpt.pt"
    write_checkpoint(path, capture_training_state(model=model, extra={"epoch": 3}), kind="test")
    other = _model()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    extra = restore_training_state(read_checkpoint(path, kind="test"), source=path, model=other)
    assert extra == {"epoch": 3}
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_a_truncated_file(tmp_path):
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-200])
    _one_line_error(path, lambda: read_checkpoint(path, kind="test"), "truncated or damaged")


def test_a_flipped_byte_fails_the_checksum(tmp_path):
    path = _saved(tmp_path)
    envelope = torch.load(path, weights_only=True)
    envelope["payload"][len(envelope["payload"]) // 2] ^= 0xFF  # a well-formed file, altered
    torch.save(envelope, path)
    _one_line_error(path, lambda: read_checkpoint(path, kind="test"), "bad checksum")


def test_a_foreign_torch_file(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(_model().state_dict(), path)
    _one_line_error(path, lambda: read_checkpoint(path, kind="test"),
                    "not a modelsec_fast checkpoint")


def test_another_kind_and_a_newer_version(tmp_path):
    path = _saved(tmp_path, kind="adversarial_trainer")
    _one_line_error(path, lambda: read_checkpoint(path, kind="privacy_engine"),
                    "holds a 'adversarial_trainer' state, not a 'privacy_engine' one")
    envelope = torch.load(path, weights_only=True)
    torch.save(dict(envelope, version=state.VERSION + 1), path)
    _one_line_error(path, lambda: read_checkpoint(path, kind="adversarial_trainer"),
                    f"format version {state.VERSION + 1}")


def test_another_architecture_names_the_keys_and_shapes_and_changes_nothing(tmp_path):
    path = _saved(tmp_path, _model(width=4))
    other = _model(width=5)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    saved = read_checkpoint(path, kind="test")
    message = _one_line_error(path, lambda: restore_training_state(saved, source=path, model=other),
                              "another architecture")
    assert "0.weight 4x3 float32 vs 5x3 float32" in message
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_adversarial_trainer_resume_from_another_architecture(tmp_path):
    from modelsec_fast.defenses import AdversarialTrainer

    path = tmp_path / "at.pt"
    loader = DataLoader(TensorDataset(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))),
                        batch_size=4)

    def trainer(hidden):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        return AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "fgsm_rs",
                                  eps=0.1, guard=False, progress=False, checkpoint_path=str(path))

    trainer(16).fit(loader, 1)
    message = _one_line_error(path, lambda: trainer(8).fit(loader, 1, resume=True),
                              "another architecture")
    assert "1.weight 16x64 float32 vs 8x64 float32" in message


def _legacy_privacy_v1(path):
    payload = io.BytesIO()
    torch.save({"module_state_dict": _model().state_dict(), "user": {}}, payload)
    payload = payload.getvalue()
    torch.save({"format": "modelsec_fast.checkpoint", "version": 1,
                "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, path)
    return lambda: _load_privacy_checkpoint_function(path)


def _legacy_cli(path):
    torch.save({"format": "modelsec_fast.checkpoint/1", "recipe": {"model": "mlp"},
                "model_state": {}, "complete": False,
                "resume_state": {"rng": {"numpy": np.random.get_state()}}}, path)
    return lambda: _load_cli_model_checkpoint(path)


def _legacy_adversarial_trainer(path):
    import random

    torch.save({"format": "modelsec_fast.AdversarialTrainer/1", "config": {}, "model": {},
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                        "numpy": np.random.get_state(), "loader": []}}, path)
    return lambda: _load_adversarial_trainer_resume(path)


@pytest.mark.parametrize("legacy,fmt", [
    (_legacy_privacy_v1, "modelsec_fast.checkpoint"),
    (_legacy_cli, "modelsec_fast.checkpoint/1"),
    (_legacy_adversarial_trainer, "modelsec_fast.AdversarialTrainer/1"),
])
def test_old_formats_name_the_format_and_the_version_that_reads_them(tmp_path, legacy, fmt):
    path = tmp_path / "old.pt"
    load = legacy(path)
    message = _one_line_error(path, load, f"old format {fmt!r}")
    assert "modelsec_fast 0.1.0" in message and repr(state.FORMAT) in message


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(state.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(path, capture_training_state(model=_model(5)), kind="test")
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_the_numpy_rng_state_round_trips_through_a_safe_load(tmp_path):
    """NumPy's state is the one non-torch type a checkpoint holds; the safe load allows it."""
    np.random.seed(5)
    path = tmp_path / "ckpt.pt"
    write_checkpoint(path, capture_training_state(model=_model()), kind="test")
    expected = np.random.rand(3)
    np.random.seed(6)
    restore_training_state(read_checkpoint(path, kind="test"), source=path, model=_model())
    assert np.array_equal(np.random.rand(3), expected)
