"""Checkpoint and resume: an interrupted run, resumed from its last epoch
checkpoint, ends bit-identical to an uninterrupted run with the same seeds."""

from __future__ import annotations

import pytest
import torch

from modelsec_fast import PrivacyEngine
from modelsec_fast.defenses import AdversarialTrainer
from modelsec_fast.models import build_model

from at_helpers import make_loader

EPOCHS = 3
SUBSET = 256  # keep each epoch short (4 batches)


def _setup(digits, method, seed, init_seed, path, private):
    torch.manual_seed(init_seed)
    model = build_model("small_cnn", (1, 8, 8), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = make_loader(digits.x_train[:SUBSET], digits.y_train[:SUBSET], batch_size=64, seed=seed)
    engine = None
    if private:
        engine = PrivacyEngine(accountant="rdp")
        model, opt, loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=0.8,
            max_grad_norm=1.0, noise_generator=torch.Generator().manual_seed(init_seed))
    sched = torch.optim.lr_scheduler.StepLR(opt.original_optimizer if private else opt, 1, 0.5)
    options = {"steps": 2} if method in ("pgd", "trades") else {}
    if method == "fgsm_rs":
        options["guard_data"] = (digits.x_test[:64], digits.y_test[:64])
        options["validation_is_public"] = True
    trainer = AdversarialTrainer(model, opt, method, eps=0.1, replays=2, progress=False,
                                 checkpoint_path=path, scheduler=sched, privacy_engine=engine,
                                 guard=method == "fgsm_rs", **options)
    return model, trainer, loader, engine


def _without_times(history):
    return [{k: v for k, v in r.items() if k != "train_time_s"} for r in history]


@pytest.mark.parametrize("method,private", [("pgd", False), ("free", False),
                                            ("fgsm_rs", False), ("pgd", True)])
def test_resume_after_interruption_equals_uninterrupted_run(digits, tmp_path, method, private):
    seed = 21
    print(f"seed={seed} method={method} private={private}")
    epochs = EPOCHS * 2 if method == "free" else EPOCHS  # free: 2 replays -> 3 passes
    torch.manual_seed(seed)
    model_a, trainer_a, loader_a, engine_a = _setup(digits, method, seed, seed,
                                                    tmp_path / "a.pt", private)
    history_a = trainer_a.fit(loader_a, epochs)

    torch.manual_seed(seed)
    model_b, trainer_b, loader_b, _ = _setup(digits, method, seed, seed, tmp_path / "b.pt", private)
    calls = {"n": 0}
    step = trainer_b.train_step
    interrupt_at = len(loader_b) + 3  # inside the second epoch

    def interrupted_step(*args):
        calls["n"] += 1
        if calls["n"] == interrupt_at:
            raise KeyboardInterrupt
        return step(*args)
    trainer_b.train_step = interrupted_step
    with pytest.raises(KeyboardInterrupt):
        trainer_b.fit(loader_b, epochs)

    # A fresh process: other initial weights, other global RNG state.
    torch.manual_seed(seed + 1000)
    model_c, trainer_c, loader_c, engine_c = _setup(digits, method, seed, seed + 1,
                                                    tmp_path / "b.pt", private)
    history_c = trainer_c.fit(loader_c, epochs, resume=True)

    assert _without_times(history_c) == _without_times(history_a)
    for (name, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        assert torch.equal(a, c), f"{name} differs after resume"
    assert trainer_c.optimizer_steps == trainer_a.optimizer_steps
    if private:
        assert len(engine_c.accountant) == len(engine_a.accountant) == trainer_a.optimizer_steps


def test_resume_rejects_a_checkpoint_of_another_configuration(digits, tmp_path):
    path = tmp_path / "ckpt.pt"
    _, trainer, loader, _ = _setup(digits, "pgd", 0, 0, path, False)
    trainer.fit(loader, 1)
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 8, 8), 10)
    other = AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "pgd",
                               eps=0.2, steps=2, checkpoint_path=path, progress=False)
    with pytest.raises(ValueError, match="same configuration"):
        other.fit(loader, 1, resume=True)


def test_resume_without_checkpoint_path_is_an_error(digits):
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 8, 8), 10)
    trainer = AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "pgd",
                                 eps=0.1, progress=False)
    with pytest.raises(ValueError, match="checkpoint_path"):
        trainer.fit(make_loader(digits.x_train, digits.y_train), 1, resume=True)
