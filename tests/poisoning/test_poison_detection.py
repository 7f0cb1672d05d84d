"""Training-data detectors: quality on the BadNets-poisoned digits, false alarms on
clean data (ART #1188), conv features whole (ART #2313), feature streaming, bad input."""

from __future__ import annotations

import pytest
import torch

from modelsec_fast.audit.metrics import auc, tpr_at_fpr
from modelsec_fast.defenses.poison_detection import (ActivationClustering, Spectre,
                                                     SpectralSignatures, default_layer,
                                                     extract_features)
from modelsec_fast.models import build_model

DETECTORS = {"spectral": SpectralSignatures, "clustering": ActivationClustering,
             "spectre": Spectre}


@pytest.fixture(scope="module")
def poisoned_features(setup):
    return extract_features(setup.backdoored, setup.poisoned.x)


@pytest.fixture(scope="module")
def clean_features(setup):
    return extract_features(setup.clean, setup.x_train)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_detectors_find_the_badnets_poisons(setup, poisoned_features, name):
    """Issue 14: AUROC >= 0.9 (spectral signatures and activation clustering; SPECTRE too)."""
    report = DETECTORS[name]().detect(poisoned_features, setup.poisoned.y,
                                      is_poison=setup.poisoned.is_poison)
    print(f"seed {setup.seed} {name}: AUROC {report.auroc:.4f}, TPR@5% "
          f"{report.tpr_at_fpr[0.05]:.3f}, flagged classes {report.flagged_classes}")
    assert report.auroc >= 0.9
    assert 0 in report.flagged_classes  # the target class holds poison
    assert len(report.flagged_classes) <= 2


def test_spectral_signatures_flag_at_most_their_budget_of_clean_data(setup, clean_features):
    """ART #1188: on clean-only data at most eps_multiplier x expected rate is flagged,
    and the per-class presence decision flags at most 1 class in 10."""
    detector = SpectralSignatures(expected_poison_rate=0.1, eps_multiplier=1.5)
    report = detector.detect(clean_features, setup.y_train)
    fraction = float(report.flagged.float().mean())
    separations = [round(c.statistics["separation"], 2) for c in report.classes]
    print(f"seed {setup.seed}: flagged {fraction:.4f}, classes {report.flagged_classes}, "
          f"separations {separations}")
    assert fraction <= 1.5 * 0.1
    assert all(c.n_flagged_samples <= 0.15 * c.n for c in report.classes)
    assert len(report.flagged_classes) <= 1
    assert report.auroc is None and report.n_poison is None


@pytest.mark.parametrize("name", ["clustering", "spectre"])
def test_other_detectors_flag_at_most_one_clean_class(setup, clean_features, name):
    report = DETECTORS[name]().detect(clean_features, setup.y_train)
    print(f"seed {setup.seed} {name}: classes {report.flagged_classes}")
    assert len(report.flagged_classes) <= 1


def test_conv_features_and_their_flattened_form_score_alike(setup):
    """ART #2313: conv features are used whole, never first-channel only."""
    captured = []
    layer, _ = default_layer(setup.backdoored)
    module = dict(setup.backdoored.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    with torch.no_grad():
        setup.backdoored(setup.poisoned.x)
    handle.remove()
    conv = captured[0]
    assert conv.dim() == 4
    flat = extract_features(setup.backdoored, setup.poisoned.x)
    assert flat.shape == (len(conv), conv[0].numel())
    torch.testing.assert_close(flat, conv.flatten(1))
    for detector in (SpectralSignatures(), ActivationClustering(), Spectre()):
        a = detector.detect(conv, setup.poisoned.y)
        b = detector.detect(conv.flatten(1), setup.poisoned.y)
        torch.testing.assert_close(a.scores, b.scores)
        first_channel = detector.detect(conv[:, :1].flatten(1), setup.poisoned.y)
        assert not torch.allclose(first_channel.scores, a.scores)
    pooled = extract_features(setup.backdoored, setup.poisoned.x, conv="pool")
    torch.testing.assert_close(pooled, conv.mean((2, 3)))


def test_report_figures_match_the_audit_metrics(setup, poisoned_features):
    report = SpectralSignatures().detect(poisoned_features, setup.poisoned.y,
                                         is_poison=setup.poisoned.is_poison)
    mask = setup.poisoned.is_poison
    assert report.auroc == auc(report.scores[mask], report.scores[~mask])
    for level in (0.01, 0.05, 0.10):
        assert report.tpr_at_fpr[level] == tpr_at_fpr(report.scores[mask], report.scores[~mask],
                                                      level)
    assert sum(c.n for c in report.classes) == len(mask)
    assert sum(c.n_poison for c in report.classes) == int(mask.sum()) == report.n_poison
    target = next(c for c in report.classes if c.label == 0)
    assert target.n_poison == int(mask.sum()) and target.auroc is not None
    doc = report.to_json()
    assert doc["n"] == len(mask) and doc["flagged_classes"] == report.flagged_classes
    assert "scores" not in doc and len(doc["classes"]) == 10


@pytest.mark.parametrize("poison_share", [0.3, 0.5, 0.65])
def test_the_poison_side_is_found_by_label_consistency_even_as_a_majority(poison_share):
    """Synthetic features: class 0 holds relabelled class-1/2 samples shifted by a
    trigger direction; whether they are a minority or a majority of class 0, every
    detector scores them above the genuine class-0 samples."""
    g = torch.Generator().manual_seed(0)
    d = 20
    centres = torch.randn(3, d, generator=g) * 2  # classes about 9 deviations apart
    trigger = torch.zeros(d)
    trigger[-1] = 15.0
    n0 = 100
    n_poison = int(round(poison_share / (1 - poison_share) * n0))
    genuine = [centres[c] + torch.randn(150, d, generator=g) for c in range(3)]
    sources = torch.randint(1, 3, (n_poison,), generator=g)
    poisons = centres[sources] + torch.randn(n_poison, d, generator=g) + trigger
    features = torch.cat([genuine[0][:n0], poisons, genuine[1], genuine[2]])
    labels = torch.cat([torch.zeros(n0 + n_poison, dtype=torch.long),
                        torch.ones(150, dtype=torch.long), torch.full((150,), 2)])
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[n0:n0 + n_poison] = True
    for detector in (SpectralSignatures(), ActivationClustering(), Spectre()):
        report = detector.detect(features, labels, is_poison=mask)
        assert report.auroc > 0.99, (detector.name, poison_share, report.auroc)
        assert report.flagged_classes == [0], (detector.name, report.flagged_classes)


def test_squared_score_is_the_papers(setup, poisoned_features):
    report = SpectralSignatures(score="squared").detect(poisoned_features, setup.poisoned.y)
    sel = setup.poisoned.y == 3
    r = poisoned_features[sel].double()
    centered = r - r.mean(0)
    v = torch.linalg.svd(centered, full_matrices=False).Vh[0]
    squared = (centered @ v) ** 2
    torch.testing.assert_close(report.scores[sel].double(), squared / squared.median(),
                               rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ features
def test_features_stream_from_a_dataloader_and_the_mode_is_restored(setup):
    model = setup.backdoored
    model.train()
    try:
        loader = torch.utils.data.DataLoader(setup.poisoned.dataset(), batch_size=100)
        streamed = extract_features(model, loader)
        assert model.training and all(m.training for m in model.modules())
        from_tensor = extract_features(model, setup.poisoned.x, batch_size=512)
        from_dataset = extract_features(model, setup.poisoned.dataset(), batch_size=77)
    finally:
        model.eval()
    torch.testing.assert_close(streamed, from_tensor)
    torch.testing.assert_close(from_dataset, from_tensor)
    report = SpectralSignatures().detect_model(model, loader, setup.poisoned.y,
                                               is_poison=setup.poisoned.is_poison)
    assert report.auroc >= 0.9 and report.settings["layer"] is None


def test_default_layer_rule():
    assert default_layer(build_model("small_cnn", (1, 8, 8), 10)) == ("features.3", "output")
    assert default_layer(build_model("mnist_cnn", (1, 28, 28), 10)) == ("conv1", "output")
    assert default_layer(build_model("mlp", (1, 8, 8), 10)) == ("net.5", "input")  # the last Linear


def test_a_layer_the_model_lacks_is_refused(setup):
    with pytest.raises(ValueError, match=r"no layer named 'features\.9'; its layers are: "
                                         r"features, features\.0"):
        extract_features(setup.backdoored, setup.x_test, layer="features.9")
    with pytest.raises(ValueError, match="conv must be one of"):
        extract_features(setup.backdoored, setup.x_test, conv="first-channel")


def test_nan_features_are_refused(setup, poisoned_features):
    bad = poisoned_features.clone()
    bad[5, 3] = float("nan")
    bad[9, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinity in 2 of .* rows \\(first at row 5\\)"):
        SpectralSignatures().detect(bad, setup.poisoned.y)

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1) * float("nan"))

    with pytest.raises(ValueError, match="contain NaN or infinity"):
        extract_features(Broken(), setup.x_test)


def test_bad_detector_arguments_are_refused(poisoned_features, setup):
    with pytest.raises(ValueError, match="expected_poison_rate must lie in"):
        SpectralSignatures(expected_poison_rate=1.5)
    with pytest.raises(ValueError, match="analysis must be one of"):
        ActivationClustering(analysis="smaller")
    with pytest.raises(ValueError, match="labels must have shape"):
        Spectre().detect(poisoned_features, setup.poisoned.y[:-1])
    with pytest.raises(ValueError, match="is_poison must have shape"):
        Spectre().detect(poisoned_features, setup.poisoned.y,
                         is_poison=setup.poisoned.is_poison[:5])


def test_randomized_top_directions_match_the_exact_ones_above_the_exact_size():
    """Large classes take the randomized path; with a spectral gap it is exact."""
    from modelsec_fast.defenses.poison_detection import _stats

    g = torch.Generator().manual_seed(0)
    n, d = 700, 400
    spikes = torch.linalg.qr(torch.randn(d, 3, generator=g, dtype=torch.float64)).Q
    data = torch.randn(n, d, generator=g, dtype=torch.float64)
    data += torch.randn(n, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [40.0, 25.0, 15.0], dtype=torch.float64) @ spikes.T
    centered = data - data.mean(0)
    assert min(n, d) > _stats.EXACT_SIZE
    fast, fast_values = _stats.top_directions(centered, 3, torch.Generator().manual_seed(1))
    exact = torch.linalg.svd(centered, full_matrices=False)
    for j in range(3):
        assert abs(float(fast[:, j] @ exact.Vh[j])) > 1 - 1e-9
    torch.testing.assert_close(fast_values, exact.S[:3] ** 2, rtol=1e-9, atol=0)
    again, _ = _stats.top_directions(centered, 3, torch.Generator().manual_seed(1))
    assert torch.equal(again, fast)  # seeded: reproducible
