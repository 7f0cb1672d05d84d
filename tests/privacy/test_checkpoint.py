"""Checkpoints: round trip, atomic write, corrupt files, another model."""

import io
import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from modelsec_fast.accountants import PLDAccountant, RDPAccountant
from modelsec_fast.privacy.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from modelsec_fast.privacy.sampling import DPDataLoader


class _DPOptimizerStandIn:
    """The DPOptimizer attributes that checkpoints use, over a real torch optimizer."""

    def __init__(self, params, noise_source="philox"):
        self.inner = torch.optim.Adam(params, lr=0.01)
        self.noise_generator = torch.Generator().manual_seed(123)
        self.noise_source = noise_source
        self.noise_multiplier = 1.1
        self.max_grad_norm = 0.7

    @property
    def param_groups(self):
        return self.inner.param_groups

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def _setup(seed, width=4):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))
    opt = _DPOptimizerStandIn(model.parameters())
    loss = model(torch.randn(5, 3)).square().sum()
    loss.backward()
    opt.inner.step()  # gives Adam non-trivial state
    acc = RDPAccountant()
    for sigma in (1.0, 1.0, 1.3):
        acc.step(noise_multiplier=sigma, sample_rate=0.1)
    loader = DPDataLoader(TensorDataset(torch.randn(20, 3)), sample_rate=0.1, steps=10)
    next(iter(loader))
    return model, opt, acc, loader


def test_round_trip_restores_every_part_of_the_state(tmp_path):
    path = tmp_path / "ckpt.pt"
    model, opt, acc, loader = _setup(0)
    torch.randn(7, generator=opt.noise_generator)  # advance the noise stream
    save_checkpoint(path=path, module=model, optimizer=opt, accountant=acc, data_loader=loader,
                    checkpoint_dict={"epoch": 3})
    expected_noise = torch.randn(5, generator=opt.noise_generator)
    expected_global = torch.rand(3)

    model2, opt2, acc2, loader2 = _setup(1)
    opt2.noise_multiplier, opt2.max_grad_norm = 9.0, 9.0
    # never silent: a noise multiplier set at construction is replaced by the saved one
    with pytest.warns(UserWarning, match=r"noise_multiplier 9.0 -> 1.1, max_grad_norm 9.0 -> 0.7"):
        user = load_checkpoint(path=path, module=model2, optimizer=opt2, accountant=acc2,
                               data_loader=loader2)

    assert user == {"epoch": 3}
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.inner.state_dict()["state"], opt2.inner.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    assert (opt2.noise_multiplier, opt2.max_grad_norm) == (1.1, 0.7)
    assert torch.equal(torch.randn(5, generator=opt2.noise_generator), expected_noise)
    assert torch.equal(torch.rand(3), expected_global)
    assert acc2.history == acc.history
    assert loader2.state_dict() == loader.state_dict()


def test_file_object_target_works(tmp_path):
    model, opt, acc, _ = _setup(0)
    buffer = io.BytesIO()
    save_checkpoint(path=buffer, module=model, optimizer=opt, accountant=acc)
    buffer.seek(0)
    model2, opt2, acc2, _ = _setup(1)
    load_checkpoint(path=buffer, module=model2, optimizer=opt2, accountant=acc2)
    assert acc2.history == acc.history


def test_secure_mode_noise_generator_is_neither_saved_nor_restored(tmp_path):
    path = tmp_path / "ckpt.pt"
    model, _, acc, _ = _setup(0)
    opt = _DPOptimizerStandIn(model.parameters(), noise_source="secure")
    save_checkpoint(path=path, module=model, optimizer=opt, accountant=acc)
    opt2 = _DPOptimizerStandIn(model.parameters(), noise_source="secure")
    opt2.noise_generator.manual_seed(777)
    before = opt2.noise_generator.get_state()
    load_checkpoint(path=path, module=model, optimizer=opt2, accountant=acc)
    assert torch.equal(opt2.noise_generator.get_state(), before)


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    model, opt, acc, _ = _setup(0)
    save_checkpoint(path=path, module=model, optimizer=opt, accountant=acc)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    acc.step(noise_multiplier=2.0, sample_rate=0.1)
    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path=path, module=model, optimizer=opt, accountant=acc)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]  # no temporary file left behind


@pytest.mark.parametrize("damage,reason", [
    ("truncate", "truncated or damaged"),
    ("flip_payload_byte", "bad checksum"),
    ("garbage", "not a torch file"),
    ("empty", "empty or truncated"),
])
def test_corrupt_files_raise_a_clear_error(tmp_path, damage, reason):
    path = tmp_path / "ckpt.pt"
    model, opt, acc, _ = _setup(0)
    save_checkpoint(path=path, module=model, optimizer=opt, accountant=acc)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_payload_byte":
        # the payload is most of the file, and the zip container does not check it
        data[len(data) // 2] ^= 0xFF
    elif damage == "garbage":
        data = bytearray(os.urandom(256))
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    history = list(acc.history)
    with pytest.raises(CheckpointError, match=f"^checkpoint {path}: {reason}"):
        load_checkpoint(path=path, module=model, optimizer=opt, accountant=acc)
    assert acc.history == history  # nothing was changed


def test_a_plain_torch_file_is_not_taken_for_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    model, _, acc, _ = _setup(0)
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="not a modelsec_fast checkpoint"):
        load_checkpoint(path=path, module=model, accountant=acc)


def test_missing_file_raises_file_not_found(tmp_path):
    model, _, acc, _ = _setup(0)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(path=tmp_path / "nope.pt", module=model, accountant=acc)


def test_checkpoint_of_another_model_is_refused_and_names_the_difference(tmp_path):
    path = tmp_path / "ckpt.pt"
    model, opt, acc, _ = _setup(0, width=4)
    save_checkpoint(path=path, module=model, optimizer=opt, accountant=acc)
    other, other_opt, other_acc, _ = _setup(0, width=5)
    original = [p.clone() for p in other.parameters()]
    with pytest.raises(CheckpointError,
                       match=r"another architecture.*0\.weight 4x3 float32 vs 5x3 float32"):
        load_checkpoint(path=path, module=other, optimizer=other_opt, accountant=other_acc)
    assert all(torch.equal(a, b) for a, b in zip(original, other.parameters()))
    renamed = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Identity(), nn.Linear(4, 2))
    with pytest.raises(CheckpointError,
                       match="another architecture.*missing from the checkpoint: 3.weight"):
        load_checkpoint(path=path, module=renamed, accountant=other_acc)


def test_checkpoint_of_another_accountant_or_dataset_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    model, opt, acc, loader = _setup(0)
    save_checkpoint(path=path, module=model, optimizer=opt, accountant=acc, data_loader=loader)
    with pytest.raises(ValueError, match="mechanism"):
        load_checkpoint(path=path, module=model, accountant=PLDAccountant())
    other_loader = DPDataLoader(TensorDataset(torch.randn(21, 3)), sample_rate=0.1, steps=10)
    with pytest.raises(ValueError, match="num_samples"):
        load_checkpoint(path=path, module=model, accountant=RDPAccountant(), data_loader=other_loader)


def test_saving_between_physical_batches_of_one_logical_batch_is_refused(tmp_path):
    model, opt, acc, _ = _setup(0)
    next(model.parameters()).summed_grad = torch.zeros(1)
    with pytest.raises(ValueError, match="middle of a logical batch"):
        save_checkpoint(path=tmp_path / "c.pt", module=model, optimizer=opt, accountant=acc)
    assert not (tmp_path / "c.pt").exists()


def test_an_accountant_is_required():
    model, opt, _, _ = _setup(0)
    with pytest.raises(ValueError, match="accountant"):
        save_checkpoint(path=io.BytesIO(), module=model, optimizer=opt)


def test_weights_only_false_is_refused_before_reading(tmp_path):
    model, opt, acc, _ = _setup(0)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path=path, module=model, optimizer=opt, accountant=acc)
    with pytest.raises(ValueError, match="weights_only=False is not supported.*run any code"):
        load_checkpoint(path=path, module=model, accountant=acc, weights_only=False)
