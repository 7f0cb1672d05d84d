"""The explanations scan stage and its report section: which examples it explains,
the attack's radius and range, what the section renders and writes to report.json."""

import dataclasses
import json
import os

import pytest
import torch
from torch import nn

from modelsec_fast.app.report import (Failed, Figure, Paragraph, ReportMeta, SkippedSection,
                                      Table, write_report)
from modelsec_fast.app.scan import BUDGETS, ScanInputs
from modelsec_fast.app.scan import explanations as stage
from modelsec_fast.app.sections.explanations import ExplanationsSection
from modelsec_fast.explain import RandomisationCheck, RandomisationStage, attribution_in_region

BUDGET = dataclasses.replace(BUDGETS["quick"], n_examples=24, attack_steps=5)


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 3)).eval()


class _Scaled(nn.Module):
    """The same classifier on inputs in [0, 255]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x / 255)


def _inputs(model, x, y, input_range=(0.0, 1.0), eps=0.1, **kw):
    return ScanInputs(model=model, x=x, y=y, num_classes=3, input_range=input_range,
                      eps_linf=eps, eps_l2=1.0, budget=BUDGET, **kw)


@pytest.fixture(scope="module")
def scanned():
    torch.manual_seed(1)
    x, y = torch.rand(30, 1, 8, 8), torch.randint(0, 3, (30,))
    model = _cnn()
    return model, x, y, stage.run(_inputs(model, x, y))


def test_the_stage_explains_the_correct_examples_of_smallest_margin(scanned):
    model, x, y, section = scanned
    assert isinstance(section, ExplanationsSection)
    with torch.no_grad():
        logits = model(x[:BUDGET.n_examples])
    labels = y[:BUDGET.n_examples]
    true = logits.gather(1, labels[:, None])[:, 0]
    margin = true - logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    correct = [i for i in margin.argsort().tolist() if logits[i].argmax() == labels[i]]
    assert [e.index for e in section.examples] == correct[:stage.N_EXPLAINED]
    for e in section.examples:
        assert e.margin == pytest.approx(float(margin[e.index]), abs=1e-5)
        assert e.clean_prediction == e.label


def test_the_adversarial_inputs_stay_in_the_ball_and_the_range(scanned):
    _, x, _, section = scanned
    clean = x[[e.index for e in section.examples]]
    torch.testing.assert_close(section.clean_inputs, clean)
    assert (section.adversarial_inputs - clean).abs().max() <= 0.1 + 1e-6
    assert 0 <= section.adversarial_inputs.min() and section.adversarial_inputs.max() <= 1
    assert section.shift.clean.shape == clean.shape


def test_the_stage_maps_another_input_range_to_the_attacks_unit_range(scanned):
    model, x, y, section = scanned
    scaled = stage.run(_inputs(_Scaled(model), x * 255, y, input_range=(0.0, 255.0), eps=25.5))
    assert [e.index for e in scaled.examples] == [e.index for e in section.examples]
    torch.testing.assert_close(scaled.adversarial_inputs / 255, section.adversarial_inputs,
                               rtol=1e-4, atol=1e-4)
    assert [e.adversarial_prediction for e in scaled.examples] == \
        [e.adversarial_prediction for e in section.examples]


def test_non_image_data_is_skipped_with_the_reason():
    model = nn.Sequential(nn.Linear(5, 3)).eval()
    section = stage.run(_inputs(model, torch.rand(10, 5), torch.randint(0, 3, (10,)),
                                is_image=False))
    assert isinstance(section, SkippedSection)
    assert section.key == "explanations" and "image data" in section.reason


def test_the_section_renders_its_figures_and_json(scanned, tmp_path):
    section = scanned[3]
    blocks = section.blocks(str(tmp_path))
    figures = [b for b in blocks if isinstance(b, Figure)]
    assert {os.path.basename(f.path) for f in figures} == {
        "explanations_maps.png", "explanations_shift.png", "explanations_sanity.png"}
    for f in figures:
        with open(f.path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert len(table.rows) == stage.N_EXPLAINED
    doc = json.loads(json.dumps(section.to_json()))
    assert doc["method"] == "integrated_gradients"
    assert len(doc["attribution_shift"]["rank_correlation"]) == stage.N_EXPLAINED
    checks = doc["sanity_checks"]
    assert [c["method"] for c in checks] == ["integrated_gradients", "saliency"]
    assert len(checks[0]["stages"]) == 2   # one stage per layer: the CNN has two
    assert [c["passed"] for c in checks] == [c.passed for c in section.sanity]


def test_the_report_writer_takes_the_section(scanned, tmp_path):
    write_report(str(tmp_path), "scan", ReportMeta.now("test"), [scanned[3]])
    with open(tmp_path / "report.json") as fh:
        entry = json.load(fh)["sections"]["explanations"]
    assert entry["status"] == "ok"
    assert sorted(entry["figures"]) == ["explanations_maps.png", "explanations_sanity.png",
                                        "explanations_shift.png"]


def _with(section, **changes):
    return dataclasses.replace(section, **changes)


def test_a_failed_sanity_check_says_the_maps_describe_the_input(scanned, tmp_path):
    failing = RandomisationCheck("integrated_gradients", 6,
                                 [RandomisationStage(("3",), 0.9, 0.8)], 0.5, 0.1)
    blocks = _with(scanned[3], sanity=[failing]).blocks(str(tmp_path))
    assert any(isinstance(b, Paragraph) and "FAILED, rank correlation 0.900" in b.text
               for b in blocks)
    errored = _with(scanned[3], sanity=[], sanity_error="TypeError: cannot copy")
    assert Failed("TypeError: cannot copy") in errored.blocks(str(tmp_path))


def test_a_trigger_mask_adds_its_share(scanned, tmp_path):
    section = scanned[3]
    mask = torch.zeros(8, 8)
    mask[:2, :2] = 1
    region = attribution_in_region(section.shift.clean, mask)
    with_trigger = _with(section, trigger=region, trigger_source="Neural Cleanse, class 0")
    text = " ".join(b.text for b in with_trigger.blocks(str(tmp_path)) if isinstance(b, Paragraph))
    assert "Neural Cleanse, class 0" in text and f"{100 * region.mean_share:.1f}%" in text
    assert with_trigger.to_json()["trigger"]["mean_area"] == pytest.approx(4 / 64)


# ------------------------------------------------------------------ summary verdict
from modelsec_fast.app.sections.explanations import FRAGILE_OVERLAP  # noqa: E402
from modelsec_fast.app.sections.scan_summary import (AT_RISK, INCONCLUSIVE,  # noqa: E402
                                                     NO_FINDING)
from modelsec_fast.explain import attribution_shift  # noqa: E402


def _check(method, final):
    return RandomisationCheck(method, 6, [RandomisationStage(("0",), 0.95, 0.9),
                                          RandomisationStage(("0", "2"), final, 0.3)], 0.5, 0.1)


def _verdict_case(section, *, ig, flipped, overlap_of_unflipped=None):
    """``section`` with an IG check of final rank correlation ``ig`` (saliency passing),
    the first ``flipped`` examples flipped by the attack, and the maps of the others
    sharing ``overlap_of_unflipped`` of their top 10%."""
    examples = [dataclasses.replace(e, adversarial_prediction=(e.label + 1) % 3 if i < flipped
                                    else e.clean_prediction)
                for i, e in enumerate(section.examples)]
    shift = section.shift
    if overlap_of_unflipped is not None:
        overlap = shift.top_k_overlap.clone()
        overlap[flipped:] = overlap_of_unflipped
        shift = dataclasses.replace(shift, top_k_overlap=overlap)
    sanity = [] if ig is None else [_check("integrated_gradients", ig), _check("saliency", 0.02)]
    return _with(section, examples=examples, shift=shift, sanity=sanity).verdict()


def test_maps_that_fail_the_randomisation_check_are_at_risk(scanned):
    verdict = _verdict_case(scanned[3], ig=0.8, flipped=len(scanned[3].examples))
    assert verdict.verdict == AT_RISK
    assert "rank correlation 0.800 with every layer random, fails the check" in verdict.measured
    assert "saliency 0.020, passes" in verdict.measured
    assert "at least 0.5" in verdict.threshold and "Adebayo et al. 2018" in verdict.source
    passing = _verdict_case(scanned[3], ig=0.3, flipped=len(scanned[3].examples))
    assert passing.verdict == NO_FINDING and "passes the check" in passing.measured
    assert "the attack flipped all 6 examples, so fragility is not measured" in passing.measured


def test_maps_that_move_while_the_decision_stays_are_fragile(scanned):
    section = scanned[3]
    fragile = _verdict_case(section, ig=0.3, flipped=4, overlap_of_unflipped=0.2)
    assert fragile.verdict == AT_RISK
    assert "0.20 on the 2 of 6 examples the attack did not flip" in fragile.measured
    assert f"under {FRAGILE_OVERLAP:.0%} of the top-10% features" in fragile.threshold
    assert "Ghorbani et al. 2019" in fragile.source
    steady = _verdict_case(section, ig=0.3, flipped=4, overlap_of_unflipped=0.9)
    assert steady.verdict == NO_FINDING and "0.90 on the 2 of 6" in steady.measured
    # The flipped examples' overlap does not count: only the unflipped ones are fragile.
    unrelated = torch.rand(section.shift.clean.shape, generator=torch.Generator().manual_seed(0))
    moved = attribution_shift(section.shift.clean, unrelated)
    assert moved.mean_top_k_overlap < FRAGILE_OVERLAP
    assert _verdict_case(_with(section, shift=moved), ig=0.3, flipped=6).verdict == NO_FINDING


def test_a_sanity_check_that_did_not_run_is_inconclusive(scanned):
    errored = _with(scanned[3], sanity=[], sanity_error="TypeError: cannot copy")
    verdict = errored.verdict()
    assert verdict.verdict == INCONCLUSIVE
    assert "sanity check failed to run (TypeError: cannot copy)" in verdict.measured
    assert verdict.threshold and verdict.source
