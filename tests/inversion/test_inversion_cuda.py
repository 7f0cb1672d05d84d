"""CUDA parity of the batched inversion paths: the same figures on the GPU as on the CPU.
Skipped without CUDA; run by bench/gpu_check.sh."""

import copy

import pytest
import torch

from modelsec_fast.inversion import (IDLG, AnalyticLinearRecovery, ClassInversion, dp_gradient,
                                     plain_gradient)
from tests.inversion.inversion_helpers import cnn, mlp, same_class_pairs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


def _on(model, device):
    return copy.deepcopy(model).to(device)


def test_the_gradient_matching_objective_matches_the_cpu():
    x, y, _ = same_class_pairs(0, 3)
    for make in (mlp, cnn):
        model = make(0)
        updates = [plain_gradient(model, x[i:i + 1], y[i:i + 1]) for i in range(3)]
        values = []
        for device in ("cpu", "cuda"):
            m = _on(model, device)
            attack = IDLG(m, iterations=1, restarts=2)
            candidates = torch.rand(6, 1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
            labels = torch.nn.functional.one_hot(y.repeat_interleave(2), 10).float()[:, None]
            targets = [torch.stack([u[i] for u in updates]).repeat_interleave(2, 0).to(device)
                       for i in range(len(updates[0]))]
            values.append(attack._objective(candidates.to(device), None, labels.to(device),
                                            targets).cpu())
        torch.testing.assert_close(values[1], values[0], rtol=1e-4, atol=1e-6)


def test_dp_updates_and_the_analytic_recovery_match_the_cpu():
    x, y, _ = same_class_pairs(0, 2)
    model = mlp(0)
    plain = [plain_gradient(_on(model, d), x[:1].to(d), y[:1].to(d)) for d in ("cpu", "cuda")]
    for a, b in zip(*plain):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-6)
    clipped = [dp_gradient(_on(model, d), x[:1].to(d), y[:1].to(d), noise_multiplier=0.0,
                           max_grad_norm=0.1) for d in ("cpu", "cuda")]
    for a, b in zip(*clipped):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-6)
    images = [AnalyticLinearRecovery(_on(model, d)).reconstruct(u, input_shape=(1, 8, 8)).images
              for d, u in zip(("cpu", "cuda"), plain)]
    torch.testing.assert_close(images[1], images[0], rtol=1e-4, atol=1e-5)


def test_class_inversion_matches_the_cpu():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 4))
    results = [ClassInversion(_on(model, d), steps=30, lr=0.5, patience=5,
                              tv_weight=0.05).invert([0, 1, 2, 3], input_shape=(1, 4, 4),
                                                     init=0.3) for d in ("cpu", "cuda")]
    torch.testing.assert_close(results[1].images, results[0].images, rtol=1e-3, atol=1e-4)
    assert results[1].steps.tolist() == results[0].steps.tolist()
