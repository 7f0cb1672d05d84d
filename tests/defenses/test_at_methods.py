"""Each adversarial-training method raises PGD robust accuracy on digits by at
least 20 points over the undefended model (fixed seeds, eps = 0.15)."""

from __future__ import annotations

import pytest
import torch

from modelsec_fast.defenses import AdversarialTrainer
from modelsec_fast.models import build_model

from at_helpers import EPS, make_loader, pgd_accuracy, train_standard

EPOCHS = 4
FREE_EPOCHS = 8  # Free AT: 2 passes of m = 4 replays, the gradient steps of 8 epochs
MIN_GAIN = 0.20


def _undefended(digits, seed):
    torch.manual_seed(seed)
    model = build_model("small_cnn", (1, 8, 8), 10)
    train_standard(model, make_loader(digits.x_train, digits.y_train, seed=seed), EPOCHS)
    return pgd_accuracy(model, digits.x_test, digits.y_test)


def _defended(digits, method, seed, **options):
    torch.manual_seed(seed)
    model = build_model("small_cnn", (1, 8, 8), 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if method in ("pgd", "trades"):
        options.setdefault("steps", 5)  # keeps the CI test short; alpha = 2.5 * eps / 5
    trainer = AdversarialTrainer(model, opt, method, eps=EPS, progress=False, **options)
    epochs = FREE_EPOCHS if method == "free" else EPOCHS
    history = trainer.fit(make_loader(digits.x_train, digits.y_train, seed=seed), epochs)
    return pgd_accuracy(model, digits.x_test, digits.y_test), history


@pytest.fixture(scope="module")
def undefended(digits):
    return _undefended(digits, seed=0)


@pytest.mark.parametrize("method", ["pgd", "fgsm_rs", "free", "trades"])
def test_method_raises_pgd_robust_accuracy_by_20_points(digits, undefended, method):
    seed = 0
    print(f"seed={seed} method={method}")
    (clean, robust), history = _defended(digits, method, seed)
    base_clean, base_robust = undefended
    print(f"undefended clean={base_clean:.3f} robust={base_robust:.3f}; "
          f"{method} clean={clean:.3f} robust={robust:.3f}")
    assert robust >= base_robust + MIN_GAIN
    assert clean >= 0.8, "the defended model must still classify clean digits"
    expected_passes = FREE_EPOCHS // 4 if method == "free" else EPOCHS
    assert len(history) == expected_passes
    assert all(r["train_time_s"] > 0 for r in history)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pgd", "fgsm_rs", "free", "trades"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_method_gain_holds_across_seeds(digits, method, seed):
    print(f"seed={seed} method={method}")
    _, base_robust = _undefended(digits, seed)
    (_, robust), _ = _defended(digits, method, seed)
    print(f"undefended robust={base_robust:.3f}; {method} robust={robust:.3f}")
    assert robust >= base_robust + MIN_GAIN
