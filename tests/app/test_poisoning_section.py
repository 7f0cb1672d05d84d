"""The demo report's poisoning section on a tiny review: the backdoor's figures, the
detectors, Neural Cleanse for every class, the mitigations, the epsilon sweep (or why
it was skipped), its figures under the section's key, strict JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest

from modelsec_fast.app.report import Figure, Skipped, Subheading, Table
from modelsec_fast.app.sections import PoisoningSection
from modelsec_fast.data import load_dataset
from modelsec_fast.poisoning import ReviewSizes, poisoning_review
from tests.poisoning.conftest import one_thread

TINY = ReviewSizes(epochs=6, strip_copies=5, nc_epochs=3, sweep_ks=(1,),
                   sweep_epsilons=(1.0, math.inf), sweep_seeds=2, sweep_epochs=1)


@pytest.fixture(scope="module")
def review():
    ds = load_dataset("digits", train_size=500, test_size=150, seed=0)
    with one_thread():
        return poisoning_review(ds, model="small_cnn", sizes=TINY, seed=0)


def _tables(blocks) -> dict[str, Table]:
    return {b.header[0]: b for b in blocks if isinstance(b, Table)}


def test_poisoning_section_renders_every_part(review, tmp_path):
    section = PoisoningSection(review)
    assert section.key == "poisoning"
    blocks = section.blocks(str(tmp_path))
    tables = _tables(blocks)
    backdoor = tables["model"]
    assert [row[0] for row in backdoor.rows] == [
        "clean", "backdoored", "repaired: neural_cleanse_unlearning", "repaired: fine_pruning"]
    assert backdoor.rows[1][2] == f"{100 * review.backdoor.asr:.1f}%"
    assert [row[0] for row in tables["detector"].rows] == [
        "spectral_signatures", "activation_clustering", "spectre"]
    assert len(tables["class"].rows) == 10  # every class's anomaly index, not only flagged
    assert [row[0] for row in tables["mitigation"].rows] == [
        "neural_cleanse_unlearning", "fine_pruning"]
    assert len(tables["k"].rows) == 2 and tables["k"].rows[1][1] == "no DP"
    figures = [b for b in blocks if isinstance(b, Figure)]
    assert sorted(os.path.basename(f.path) for f in figures) == [
        "poisoning_asr_vs_epsilon.png", "poisoning_detection_roc.png",
        "poisoning_nc_anomaly.png"]
    assert all(os.path.getsize(f.path) > 1000 for f in figures)
    doc = json.loads(json.dumps(section.to_json(), allow_nan=False))
    assert doc["backdoor"]["asr"] == review.backdoor.asr and doc["dp_sweep_skipped"] is None
    assert doc["settings"]["nc_epochs"] == TINY.nc_epochs


def test_poisoning_section_says_why_the_sweep_is_missing(review, tmp_path):
    figures = {k: v for k, v in review.figures.items() if k != "asr_vs_epsilon"}
    without = dataclasses.replace(review, dp_sweep=None, figures=figures)
    blocks = PoisoningSection(without, sweep_skipped="quick mode").blocks(str(tmp_path))
    assert "k" not in _tables(blocks)
    heading = blocks.index(Subheading("DP-SGD as a defence: ASR against epsilon"))
    assert blocks[heading + 1] == Skipped("quick mode")
    assert not os.path.exists(tmp_path / "poisoning_asr_vs_epsilon.png")
