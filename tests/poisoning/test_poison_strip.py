"""STRIP: the vectorised path equals a per-sample loop, the threshold meets its false
rejection rate, triggered inputs have low entropy, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from modelsec_fast.defenses.strip import STRIP


def _loop_entropy(model, overlays, x, indices, alpha):
    """The reference: one input, one copy at a time."""
    out = []
    with torch.no_grad():
        for i in range(len(x)):
            values = []
            for j in range(indices.shape[1]):
                blended = alpha * x[i] + (1 - alpha) * overlays[indices[i, j]]
                p = torch.softmax(model(blended[None]).float(), 1)[0]
                values.append(float(-(p * torch.log2(p.clamp_min(1e-45))).sum()))
            out.append(sum(values) / len(values))
    return torch.tensor(out)


def test_vectorised_strip_equals_the_per_sample_loop(setup):
    strip = STRIP(setup.backdoored, setup.x_def, n_copies=7, alpha=0.4, batch_size=50, seed=3)
    x = torch.cat([setup.x_test[:10], setup.attack.apply_trigger(setup.x_test[10:20])])
    fast = strip.entropy(x, torch.Generator().manual_seed(11))
    indices = strip.overlay_indices(len(x), torch.Generator().manual_seed(11))
    slow = _loop_entropy(setup.backdoored, setup.x_def, x, indices, 0.4)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    # The seed fixes the draw: the same call twice gives the same entropies.
    torch.testing.assert_close(strip.entropy(x), strip.entropy(x), rtol=0, atol=0)


def test_threshold_meets_the_false_rejection_rate_and_catches_triggers(setup):
    strip = STRIP(setup.backdoored, setup.x_def, n_copies=20, frr=0.05, seed=0)
    threshold = strip.calibrate(setup.x_def)
    calibration = strip.entropy(setup.x_def, torch.Generator().manual_seed(1))
    assert float((calibration < threshold).float().mean()) <= 0.05
    evaluation = strip.evaluate(setup.x_test, setup.attack.evaluation_set(
        setup.x_test, setup.y_test).x)
    print(f"seed {setup.seed}: AUROC {evaluation.auroc:.3f}, TPR {evaluation.tpr:.3f}, "
          f"FPR {evaluation.fpr:.3f}")
    # Triggered inputs keep their prediction under the overlays: lower entropy. (STRIP is
    # weak on 8x8 digits, where blending halves a 9-pixel trigger: AUROC 0.6-0.9 by seed.)
    assert evaluation.auroc > 0.5
    assert evaluation.tpr > evaluation.fpr
    assert evaluation.fpr < 0.1
    doc = evaluation.to_json()
    assert doc["n_copies"] == 20 and set(doc["tpr_at_fpr"]) == {"0.01", "0.05", "0.1"}


def test_strip_restores_the_model_mode(setup):
    setup.backdoored.train()
    try:
        STRIP(setup.backdoored, setup.x_def, n_copies=2).entropy(setup.x_test[:4])
        assert setup.backdoored.training
    finally:
        setup.backdoored.eval()


def test_strip_bad_input(setup):
    strip = STRIP(setup.backdoored, setup.x_def, frr=0.01)
    with pytest.raises(ValueError, match="call calibrate"):
        strip.detect(setup.x_test)
    with pytest.raises(ValueError, match="needs at least 100 clean inputs, got 50"):
        strip.calibrate(setup.x_test[:50])
    with pytest.raises(ValueError, match="frr must lie in"):
        STRIP(setup.backdoored, setup.x_def, frr=0.0)
    with pytest.raises(ValueError, match="n_copies must be >= 1"):
        STRIP(setup.backdoored, setup.x_def, n_copies=0)
    with pytest.raises(ValueError, match="must lie in"):
        strip.entropy(setup.x_test * 3)
    assert math.isfinite(strip.calibrate(setup.x_test[:200]))


def test_default_forward_batch_on_a_cpu_is_capped_by_input_values():
    """On a CPU a forward pass holds at most CPU_FORWARD_VALUES input values (larger
    batches fault their activations in afresh), never fewer images than copies."""
    from modelsec_fast._forward_batch import CPU_FORWARD_VALUES
    from modelsec_fast.defenses.strip import GPU_BATCH

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10))
    wide = STRIP(model, torch.rand(4, 1, 28, 28), n_copies=20)
    assert wide.batch_size * 28 * 28 <= CPU_FORWARD_VALUES and wide.batch_size >= 20
    assert STRIP(model, torch.rand(4, 1, 8, 8)).batch_size == GPU_BATCH
    assert STRIP(model, torch.rand(4, 3, 512, 512), n_copies=7).batch_size == 7
    assert STRIP(model, torch.rand(4, 1, 28, 28), batch_size=64).batch_size == 64
