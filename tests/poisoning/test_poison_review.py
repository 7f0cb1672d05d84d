"""The poisoning review's record: every field a report section reads, JSON-ready."""

from __future__ import annotations

import json

import pytest

from modelsec_fast.poisoning import poisoning_review
from modelsec_fast.poisoning.plots import save_figures
from tests.poisoning.conftest import one_thread


@pytest.fixture(scope="module")
def review():
    with one_thread():
        return poisoning_review("digits", quick=True, dp_sweep=False, seed=0)


def test_review_record_holds_every_figure(review):
    assert review.backdoor.asr >= 0.9 and review.clean_model_accuracy > 0.9
    assert review.clean_accuracy_cost == pytest.approx(
        review.clean_model_accuracy - review.backdoor.clean_accuracy)
    assert [r.detector for r in review.detection] == [
        "spectral_signatures", "activation_clustering", "spectre"]
    assert all(r.auroc is not None and r.auroc > 0.8 for r in review.detection)
    assert review.feature_layer == "features.3"
    assert review.strip.n_triggered > 0 and 0 <= review.strip.auroc <= 1
    assert len(review.neural_cleanse.l1_norms) == 10
    assert [m.method for m in review.mitigations] == ["neural_cleanse_unlearning", "fine_pruning"]
    assert all(m.metrics is not None for m in review.mitigations)
    assert review.dp_sweep is None
    assert set(review.timings) == {"training", "detection", "strip", "neural_cleanse",
                                   "mitigation"}
    doc = review.to_json()
    text = json.dumps(doc, allow_nan=False)  # strict JSON: no inf or NaN left
    assert doc["attack"]["n_poison"] == round(0.1 * doc["settings"]["n_train"])
    assert doc["backdoor"]["asr"] == review.backdoor.asr and "figures" in doc
    assert "scores" not in text and "masks" not in text


def test_review_figures_render(review, tmp_path):
    written = save_figures(review.figures, str(tmp_path))
    assert set(written) == {"detection_roc", "nc_anomaly"}
    for path in written.values():
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_review_bad_input():
    with pytest.raises(ValueError, match="defender_fraction must lie in"):
        poisoning_review("digits", defender_fraction=0.9)
    with pytest.raises(ValueError, match="not found"):
        poisoning_review("no-such-dataset")


def test_the_quick_demo_review_flags_the_badnets_target():
    """The poisoning stage of ``demo --quick`` (its data caps and sizes, seed 0): Neural
    Cleanse flags the BadNets target, the only flagged class, by the paper's index."""
    from modelsec_fast.app.demo import DEMO_SETTINGS
    from modelsec_fast.data import load_dataset
    from modelsec_fast.poisoning import ReviewSizes

    (train_size, test_size), sizes = DEMO_SETTINGS["max_sizes"][1], DEMO_SETTINGS["poisoning"][1]
    data = load_dataset("digits", train_size=train_size, test_size=test_size, seed=0)
    with one_thread():
        r = poisoning_review(data, seed=0, sizes=ReviewSizes(**sizes), dp_sweep=False)
    nc = r.neural_cleanse
    print(f"indices {[round(v, 2) for v in nc.anomaly_index]}, "
          f"relative {[round(v, 2) for v in nc.relative_norms]}")
    assert r.backdoor.asr >= 0.95
    assert nc.flagged == [r.settings["target"]] and nc.anomaly_index[r.settings["target"]] > 2
