"""CUDA parity of the batched poisoning paths (skipped without a GPU; run by
bench/gpu_check.sh): triggers, feature extraction, the detectors, STRIP, Neural
Cleanse's batched triggers and Witches' Brew's constraints on the device."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
pytest.importorskip("sklearn", reason="the digits come from scikit-learn")
pytest.importorskip("scipy", reason="the detectors use scipy's chi-square quantiles")

from modelsec_fast.defenses.neural_cleanse import NeuralCleanse  # noqa: E402
from modelsec_fast.defenses.poison_detection import (ActivationClustering, Spectre,  # noqa: E402
                                                     SpectralSignatures, extract_features)
from modelsec_fast.defenses.strip import STRIP  # noqa: E402
from modelsec_fast.poisoning import (BadNets, Blended, WaNet, WitchesBrew,  # noqa: E402
                                     backdoor_metrics)
CUDA = torch.device("cuda")


def _on_cuda(model):
    return copy.deepcopy(model).to(CUDA).eval()


@pytest.mark.parametrize("attack", [BadNets(0, 0.1), Blended(0, 0.1, seed=2),
                                    WaNet(0, 0.1, seed=3)], ids=["badnets", "blended", "wanet"])
def test_triggers_match_on_cuda(setup, attack):
    cpu = attack.apply_trigger(setup.x_test)
    gpu = attack.apply_trigger(setup.x_test.to(CUDA))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


def test_features_and_detectors_match_on_cuda(setup):
    model = _on_cuda(setup.backdoored)
    gpu_features = extract_features(model, setup.poisoned.x)
    cpu_features = extract_features(setup.backdoored, setup.poisoned.x)
    assert gpu_features.device.type == "cuda"
    torch.testing.assert_close(gpu_features.cpu(), cpu_features, rtol=1e-4, atol=1e-4)
    for detector in (SpectralSignatures(), ActivationClustering(), Spectre()):
        # The same features on both devices: the detectors' own arithmetic is compared.
        gpu = detector.detect(cpu_features.to(CUDA), setup.poisoned.y.to(CUDA),
                              is_poison=setup.poisoned.is_poison)
        cpu = detector.detect(cpu_features, setup.poisoned.y, is_poison=setup.poisoned.is_poison)
        torch.testing.assert_close(gpu.scores, cpu.scores, rtol=1e-4, atol=1e-4)
        assert gpu.flagged_classes == cpu.flagged_classes
        assert abs(gpu.auroc - cpu.auroc) < 1e-3


def test_strip_matches_on_cuda(setup):
    x = torch.cat([setup.x_test[:50], setup.attack.apply_trigger(setup.x_test[50:100])])
    cpu = STRIP(setup.backdoored, setup.x_def, n_copies=16, seed=1).entropy(x)
    gpu = STRIP(_on_cuda(setup.backdoored), setup.x_def, n_copies=16, seed=1).entropy(x.to(CUDA))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_neural_cleanse_batched_triggers_match_on_cuda(setup):
    nc_cpu = NeuralCleanse(setup.backdoored, epochs=2, batch_size=64, seed=0)
    nc_gpu = NeuralCleanse(_on_cuda(setup.backdoored), epochs=2, batch_size=64, seed=0)
    cpu = nc_cpu.reverse_engineer(setup.x_def, setup.y_def)
    gpu = nc_gpu.reverse_engineer(setup.x_def.to(CUDA), setup.y_def.to(CUDA))
    torch.testing.assert_close(gpu.masks, cpu.masks, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(torch.tensor(gpu.l1_norms), torch.tensor(cpu.l1_norms),
                               rtol=1e-3, atol=1e-2)


def test_witches_brew_constraints_hold_on_cuda(setup):
    model = _on_cuda(setup.clean)
    x, y = setup.x_train.to(CUDA), setup.y_train.to(CUDA)
    adversarial = int((setup.y_test[0] + 1) % 10)
    attack = WitchesBrew(model, setup.x_test[:1].to(CUDA), setup.y_test[:1].to(CUDA), adversarial,
                         rate=0.01, eps=8 / 255, steps=10, restarts=2, seed=0)
    data = attack.poison(x, y)
    assert data.x.device.type == "cuda" and data.n_poison == round(0.01 * len(y))
    assert float((data.x - x).abs().max()) <= 8 / 255 + 1e-6
    assert torch.equal(data.x[~data.is_poison], x[~data.is_poison])
    assert float(data.x.min()) >= 0 and float(data.x.max()) <= 1


def test_metrics_match_on_cuda(setup):
    cpu = backdoor_metrics(setup.backdoored, setup.x_test, setup.y_test, setup.attack)
    gpu = backdoor_metrics(_on_cuda(setup.backdoored), setup.x_test.to(CUDA),
                           setup.y_test.to(CUDA), setup.attack)
    assert abs(gpu.asr - cpu.asr) < 0.01 and abs(gpu.clean_accuracy - cpu.clean_accuracy) < 0.01
