"""The catastrophic-overfitting guard of FGSM-RS.

Constructed collapse: two healthy FGSM-RS epochs, then a deliberately huge
optimizer step size (the LR scheduler multiplies the learning rate by 1e4),
which wrecks the weights; PGD robust accuracy on the held-out batch falls to
chance.  The guard must warn, restore the weights of its best epoch and stop.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from modelsec_fast.defenses import AdversarialTrainer, CatastrophicOverfittingWarning
from modelsec_fast.models import build_model

from at_helpers import make_loader

GUARD_EPS = 0.1
HEALTHY_EPOCHS = 2


def _trainer(digits, seed, lr_multiplier_after_healthy):
    torch.manual_seed(seed)
    model = build_model("small_cnn", (1, 8, 8), 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda epoch: 1.0 if epoch < HEALTHY_EPOCHS else lr_multiplier_after_healthy)
    trainer = AdversarialTrainer(model, opt, "fgsm_rs", eps=GUARD_EPS, progress=False,
                                 guard_data=(digits.x_test[:256], digits.y_test[:256]),
                                 scheduler=sched)
    return model, trainer


def test_guard_restores_best_weights_and_stops_on_collapse(digits):
    seed = 5
    print(f"seed={seed}")
    model, trainer = _trainer(digits, seed, lr_multiplier_after_healthy=1e4)
    snapshots = []
    original_check = trainer._build_guard

    def spy_build(*args):
        guard = original_check(*args)
        check = guard.check

        def spying_check(m, epoch):
            snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
            return check(m, epoch)
        guard.check = spying_check
        return guard
    trainer._build_guard = spy_build

    with pytest.warns(CatastrophicOverfittingWarning, match="catastrophic overfitting"):
        history = trainer.fit(make_loader(digits.x_train, digits.y_train, seed=seed), epochs=6)
    accs = [r["guard_robust_accuracy"] for r in history]
    print("guard robust accuracy per epoch:", accs)
    assert len(history) < 6, "training must stop at the collapse"
    assert "stopped" in history[-1]
    best = max(range(len(accs) - 1), key=lambda i: accs[i])
    assert accs[-1] < accs[best] - 0.2
    restored = model.state_dict()
    for name, value in snapshots[best].items():
        torch.testing.assert_close(restored[name], value, rtol=0, atol=0)
    assert trainer.stopped_reason is not None


def test_guard_stays_quiet_on_healthy_training(digits):
    seed = 5
    print(f"seed={seed}")
    _, trainer = _trainer(digits, seed, lr_multiplier_after_healthy=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CatastrophicOverfittingWarning)
        history = trainer.fit(make_loader(digits.x_train, digits.y_train, seed=seed), epochs=3)
    assert len(history) == 3 and all("stopped" not in r for r in history)
    assert history[-1]["guard_robust_accuracy"] > 0.3
