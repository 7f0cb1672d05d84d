"""Neural Cleanse (flags the BadNets target, no class of a clean model), its
mitigations and fine-pruning: every mitigation reports the clean-accuracy change and
flags a repair that destroys it."""

from __future__ import annotations

import math

import pytest
import torch

from modelsec_fast.defenses.fine_pruning import fine_pruning
from modelsec_fast.defenses.neural_cleanse import NeuralCleanse, anomaly_index, prune, unlearn

from tests.poisoning.conftest import TARGET


def _nc(model, setup):
    return NeuralCleanse(model, epochs=10, seed=setup.seed).reverse_engineer(
        setup.x_def, setup.y_def)


@pytest.fixture(scope="module")
def nc_backdoored(setup):
    return _nc(setup.backdoored, setup)


def test_neural_cleanse_flags_the_badnets_target(setup, nc_backdoored):
    r = nc_backdoored
    print(f"seed {setup.seed}: indices {[round(v, 2) for v in r.anomaly_index]}, "
          f"relative {[round(v, 2) for v in r.relative_norms]}")
    assert r.flagged == [TARGET]
    assert r.anomaly_index[TARGET] > 2.0
    assert len(r.l1_norms) == len(r.anomaly_index) == 10  # every class reported
    assert r.l1_norms[TARGET] == min(r.l1_norms)
    assert r.success[TARGET] >= 0.99 and all(r.reached)
    assert r.masks.shape == (10, 1, 8, 8) and r.patterns.shape == (10, 1, 8, 8)
    doc = r.to_json()
    assert "masks" not in doc and doc["flagged"] == [TARGET]


def test_neural_cleanse_flags_no_class_of_a_clean_model(setup):
    setup.clean.train()
    try:
        r = _nc(setup.clean, setup)
        assert setup.clean.training  # mode restored
    finally:
        setup.clean.eval()
    print(f"seed {setup.seed}: indices {[round(v, 2) for v in r.anomaly_index]}, "
          f"relative {[round(v, 2) for v in r.relative_norms]}")
    assert r.flagged == []


def test_anomaly_index_by_hand():
    values = torch.tensor([10.0, 11.0, 12.0, 9.0, 3.0])
    # median 10, |deviations| 0 1 2 1 7 -> MAD 1 -> scale 1.4826
    torch.testing.assert_close(anomaly_index(values),
                               torch.tensor([0.0, 1, 2, 1, 7], dtype=torch.float64) / 1.4826)
    flat = anomaly_index(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    assert flat.tolist()[:3] == [0.0, 0.0, 0.0] and math.isinf(flat.tolist()[3])


def test_unlearning_removes_the_backdoor_and_reports_the_clean_cost(setup, nc_backdoored):
    result = unlearn(setup.backdoored, nc_backdoored, setup.x_def, setup.y_def, seed=0,
                     test=(setup.x_test, setup.y_test), attack=setup.attack)
    m = result.metrics
    print(f"seed {setup.seed}: {result.verdict}")
    assert m.asr >= 0.95 and m.defended.asr <= 0.2
    assert result.clean_accuracy_drop == pytest.approx(-m.delta_clean_accuracy)
    assert result.clean_accuracy_drop < 0.05 and not result.destroys_clean_accuracy
    assert 0.8 <= m.der <= 1.0
    assert result.model is not setup.backdoored  # the caller's model is untouched
    assert backdoor_asr(setup.backdoored, setup) >= 0.95
    doc = result.to_json()
    assert "model" not in doc and doc["metrics"]["defended"]["asr"] == m.defended.asr


def backdoor_asr(model, setup):
    from modelsec_fast.poisoning import backdoor_metrics

    return backdoor_metrics(model, setup.x_test, setup.y_test, setup.attack).asr


def test_a_repair_that_destroys_clean_accuracy_is_flagged(setup, nc_backdoored):
    result = unlearn(setup.backdoored, nc_backdoored, setup.x_def, setup.y_def, seed=0,
                     lr=1.0, epochs=3, test=(setup.x_test, setup.y_test), attack=setup.attack)
    assert result.clean_accuracy_drop > 0.4
    assert result.destroys_clean_accuracy and result.verdict.startswith("FAILED")


def test_pruning_zeroes_channels_and_reports(setup, nc_backdoored):
    result = prune(setup.backdoored, nc_backdoored, setup.x_def, setup.y_def,
                   test=(setup.x_test, setup.y_test), attack=setup.attack)
    pruned = result.details["pruned_channels"]
    assert result.settings["layer"] == "features.4" and len(pruned) >= 1
    conv = dict(result.model.named_modules())["features.4"]
    assert float(conv.weight.detach()[pruned].abs().sum()) == 0.0
    assert float(conv.bias.detach()[pruned].abs().sum()) == 0.0
    assert result.metrics.defended.asr < result.metrics.asr
    assert result.clean_accuracy_drop <= result.max_clean_drop or result.destroys_clean_accuracy


def test_fine_pruning_keeps_pruned_channels_zero_through_fine_tuning(setup):
    result = fine_pruning(setup.backdoored, setup.x_def, setup.y_def, epochs=2, seed=0,
                          test=(setup.x_test, setup.y_test), attack=setup.attack)
    pruned = result.details["pruned_channels"]
    assert len(pruned) >= 1
    conv = dict(result.model.named_modules())[result.settings["layer"]]
    assert float(conv.weight.detach()[pruned].abs().sum()) == 0.0
    assert result.details["clean_accuracy_after_pruning"] >= (
        result.metrics.clean_accuracy - 0.04 - 0.15)  # pruning stayed near its budget
    assert isinstance(result.verdict, str) and result.metrics.der is not None


def test_bad_input(setup, nc_backdoored):
    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        fine_pruning(setup.backdoored, setup.x_def, setup.y_def, layer="conv9")
    with pytest.raises(ValueError, match="pruning needs a convolution or a Linear layer"):
        fine_pruning(setup.backdoored, setup.x_def, setup.y_def, layer="features.1")
    with pytest.raises(ValueError, match="fraction must lie in"):
        unlearn(setup.backdoored, nc_backdoored, setup.x_def, setup.y_def, fraction=0.0)
    with pytest.raises(ValueError, match="num_classes must be >= 3"):
        NeuralCleanse(setup.backdoored).reverse_engineer(setup.x_def, num_classes=2)
    with pytest.raises(ValueError, match="cost_multiplier must be > 1"):
        NeuralCleanse(setup.backdoored, cost_multiplier=1.0)


def test_cost_schedule_follows_the_paper():
    """lambda stays 0 until `patience` successful checks, is then init_cost, doubles
    after `patience` more, and falls by 2 ** 1.5 after `patience` failed checks."""
    nc = NeuralCleanse(torch.nn.Identity(), init_cost=1e-3, cost_multiplier=2.0, patience=3)
    cost = torch.zeros(2, dtype=torch.float64)
    up = torch.zeros(2, dtype=torch.long)
    down = torch.zeros(2, dtype=torch.long)
    history = []
    # class 0 always succeeds; class 1 succeeds 3 times, then fails 6 times.
    for ok1 in [True] * 3 + [False] * 6:
        cost, up, down = nc._schedule(torch.tensor([True, ok1]), cost, up, down)
        history.append(cost.tolist())
    assert [h[0] for h in history] == [0, 0, 1e-3, 1e-3, 1e-3, 2e-3, 2e-3, 2e-3, 4e-3]
    lowered = 1e-3 / 2 ** 1.5
    assert [h[1] for h in history] == pytest.approx(
        [0, 0, 1e-3, 1e-3, 1e-3, lowered, lowered, lowered, lowered / 2 ** 1.5])
