"""MinimumNormSection (modelsec_fast/app/sections/minimum_norm.py) on hand-made
distance records: its tables, the robust accuracy read off the distances, its
figures and its report.json part."""

import json
import math
import os

import pytest
import torch

from modelsec_fast.app.report import BulletList, Figure, Paragraph, Subheading, Table
from modelsec_fast.app.sections import MinimumNormSection
from modelsec_fast.attacks import MinimumNormResult


def _of(blocks, kind):
    return [b for b in blocks if isinstance(b, kind)]


def _result(attack, norm, distances, attacked):
    return MinimumNormResult.from_distances(attack, norm, torch.tensor(distances, dtype=torch.float64),
                                            torch.tensor(attacked))


# 5 examples: one misclassified (distance 0), one with no adversarial example found.
CW = _result("CW", "L2", [0.0, 0.2, 0.4, 0.9, math.inf], [False, True, True, True, True])
DEEPFOOL_L2 = _result("DeepFool", "L2", [0.0, 0.3, 0.5, 1.0, 2.0], [False] + [True] * 4)
DEEPFOOL_LINF = _result("DeepFool", "Linf", [0.0, 0.05, 0.1, 0.2, 0.3], [False] + [True] * 4)


@pytest.fixture
def section():
    return MinimumNormSection({"base": [CW, DEEPFOOL_L2, DEEPFOOL_LINF], "adv": [DEEPFOOL_L2]},
                              eps_grid={"L2": (0.25, 0.5), "Linf": (0.1,)}, n_examples=5,
                              method="CW with 7 steps")


def test_one_table_per_norm_with_success_distances_and_robust_accuracy(tmp_path, section):
    blocks = section.blocks(str(tmp_path))
    assert [b.text for b in _of(blocks, Subheading)] == ["L2 distances", "L-inf distances"]
    l2, linf = _of(blocks, Table)
    assert l2.header == ("model", "attack", "success", "median L2", "mean L2",
                         "robust acc. at L2 0.25", "robust acc. at L2 0.5")
    # CW found 3 of the 4 attacked (median 0.4, mean 0.5); robust = distance > eps,
    # the misclassified example (at 0) not, the one not found (inf) counted as robust.
    # An even count's median is the lower middle one (torch's median, an observed distance).
    assert l2.rows == (("base", "CW", "75.0%", "0.4", "0.5", "60.0%", "40.0%"),
                       ("base", "DeepFool", "100.0%", "0.5", "0.95", "80.0%", "40.0%"),
                       ("adv", "DeepFool", "100.0%", "0.5", "0.95", "80.0%", "40.0%"))
    assert linf.rows == (("base", "DeepFool", "100.0%", "0.1", "0.1625", "40.0%"),)
    assert _of(blocks, BulletList)[0].items == (
        "base: CW (L2) found no adversarial example for 1 of 4 attacked examples",)
    intro = _of(blocks, Paragraph)[0].text
    assert "5 test examples" in intro and "Attacks: CW with 7 steps" in intro
    figures = _of(blocks, Figure)
    assert [os.path.basename(f.path) for f in figures] == ["minimum_norm_L2.png",
                                                           "minimum_norm_Linf.png"]
    assert all(os.path.getsize(f.path) > 1000 for f in figures)


def test_one_norm_needs_no_subheading(tmp_path):
    blocks = MinimumNormSection({"m": [DEEPFOOL_L2]}, eps_grid={"L2": (1.0,)},
                                n_examples=5).blocks(str(tmp_path))
    assert not _of(blocks, Subheading) and len(_of(blocks, Table)) == 1
    assert not _of(blocks, BulletList)  # everything found: nothing to note


def test_json_has_the_distances_and_the_robust_accuracy_at_each_radius(section):
    out = json.loads(json.dumps(section.to_json()))
    assert out["eps_grid"] == {"L2": [0.25, 0.5], "Linf": [0.1]}
    assert out["n_examples"] == 5 and out["method"] == "CW with 7 steps"
    cw = out["models"]["base"]["CW-L2"]
    assert cw["robust_accuracy"] == {"0.25": 0.6, "0.5": 0.4}
    assert cw["distances"] == [0.0, 0.2, 0.4, 0.9, None]  # None: none found
    assert cw["success_rate"] == 0.75 and cw["median_norm"] == pytest.approx(0.4)
    assert out["models"]["base"]["DeepFool-Linf"]["robust_accuracy"] == {"0.1": 0.4}
    assert list(out["models"]["adv"]) == ["DeepFool-L2"]


def test_a_norm_without_radii_is_refused():
    with pytest.raises(ValueError, match="Linf distances but eps_grid has radii for"):
        MinimumNormSection({"m": [DEEPFOOL_LINF]}, eps_grid={"L2": (0.5,)}, n_examples=5)


# ------------------------------------------------------------------ query-based attacks
from modelsec_fast.app.report import ReportMeta, write_report  # noqa: E402
from modelsec_fast.app.sections.minimum_norm import (DECISION_BASED_MARGIN,  # noqa: E402
                                                     ScoreBasedResult)
from modelsec_fast.app.sections.scan_summary import (AT_RISK, INCONCLUSIVE,  # noqa: E402
                                                     NO_FINDING)


def _spsa(robust, correct=None, eps=0.1, queries=None):
    correct = correct if correct is not None else [True] * len(robust)
    return ScoreBasedResult("SPSA", "Linf", eps, correct, robust,
                            queries or [40] * len(robust), max_queries=50)


def _hsj(distances, attacked):
    return MinimumNormResult.from_distances(
        "HopSkipJump", "L2", torch.tensor(distances, dtype=torch.float64),
        torch.tensor(attacked), queries=torch.tensor([50] * len(distances)))


def _min_norm(results, **kwargs):
    return MinimumNormSection({"m": results}, eps_grid={"L2": (0.5,), "Linf": (0.1,)},
                              n_examples=5, **kwargs)


# DeepFool-L2 above: 4 correct examples at 0.3, 0.5, 1.0, 2.0; DeepFool-Linf at 0.05,
# 0.1, 0.2, 0.3 (the first example misclassified).
def test_verdict_flags_when_more_than_half_of_the_correct_examples_lie_within_eps():
    # L2 eps 0.5: 0.3 and 0.5 within, 2 of 4: exactly half, not more.
    at_half = _min_norm([DEEPFOOL_L2], eps={"L2": 0.5}).verdict()
    assert at_half.verdict == NO_FINDING
    assert "50.0% of 4 correct examples within it" in at_half.measured
    assert "median distance 0.5 against eps 0.5" in at_half.measured
    # eps 1.0: 3 of 4 within.
    above = _min_norm([DEEPFOOL_L2], eps={"L2": 1.0}).verdict()
    assert above.verdict == AT_RISK and "75.0% of 4 correct" in above.measured
    assert "more than 50%" in above.threshold and "--eps" in above.source
    # Either norm suffices: L2 fine, L-inf at 0.2 has 3 of 4 within.
    either = _min_norm([DEEPFOOL_L2, DEEPFOOL_LINF], eps={"L2": 0.5, "Linf": 0.2}).verdict()
    assert either.verdict == AT_RISK and "L-inf median distance 0.1" in either.measured


def test_verdict_takes_the_closest_distance_of_every_attack_query_based_ones_included():
    base = _min_norm([DEEPFOOL_L2, DEEPFOOL_LINF], eps={"L2": 0.5, "Linf": 0.1})
    assert base.verdict().verdict == NO_FINDING  # L2: 2 of 4; L-inf: 0.05, 0.1 within
    # HopSkipJump finds 0.4 for the third example: 3 of 4 within L2 0.5.
    hsj = _hsj([0.0, 0.35, 0.6, 0.4, 3.0], [False] + [True] * 4)
    with_hsj = _min_norm([DEEPFOOL_L2, DEEPFOOL_LINF], eps={"L2": 0.5, "Linf": 0.1},
                         decision_based={"m": hsj}).verdict()
    assert with_hsj.verdict == AT_RISK and "(DeepFool, HopSkipJump)" in with_hsj.measured
    # SPSA breaks the example at L-inf 0.2 within its eps 0.1: 3 of 4 within.
    spsa = _spsa(robust=[False, True, True, False, True], correct=[False] + [True] * 4)
    with_spsa = _min_norm([DEEPFOOL_L2, DEEPFOOL_LINF], eps={"L2": 0.5, "Linf": 0.1},
                          score_based={"m": spsa}).verdict()
    assert with_spsa.verdict == AT_RISK and "(DeepFool, SPSA)" in with_spsa.measured


def test_verdict_is_inconclusive_without_a_radius_or_a_correct_example():
    assert _min_norm([DEEPFOOL_L2]).verdict().verdict == INCONCLUSIVE
    wrong = _result("DeepFool", "L2", [0.0] * 5, [False] * 5)
    assert _min_norm([wrong], eps={"L2": 0.5}).verdict().verdict == INCONCLUSIVE


def test_spsa_doing_better_than_the_gradient_attacks_is_flagged_as_masking():
    # DeepFool-Linf at eps 0.1: 2 of 5 robust (0.2, 0.3). SPSA leaves one: masking.
    strong = _min_norm([DEEPFOOL_LINF], score_based={"m": _spsa(
        [False, False, False, False, True], correct=[False] + [True] * 4)})
    (check,) = strong.masking_checks()
    assert (check.gradient_free, check.gradient, check.suspected) == (0.2, 0.4, True)
    weak = _min_norm([DEEPFOOL_LINF], score_based={"m": _spsa(
        [False, True, True, True, True], correct=[False] + [True] * 4)})
    assert not weak.masking_checks()[0].suspected
    # The verdict says so.
    assert "gradient masking suspected: SPSA" in _min_norm(
        [DEEPFOOL_LINF], eps={"Linf": 0.1}, score_based=strong.score_based).verdict().measured


def test_hopskipjump_closer_than_the_gradient_attacks_is_flagged_as_masking():
    # Per example the closer of CW and DeepFool: 0.2, 0.4, 0.9, 2.0 (CW found none for
    # the last); their (lower) median 0.4.
    gradient_median = 0.4
    close = _hsj([0.0, 0.1, 0.2, 0.3, 0.4], [False] + [True] * 4)   # median 0.2
    near = _hsj([0.0, 0.37, 0.38, 0.39, 0.40], [False] + [True] * 4)  # within 10%
    for hsj, suspected in ((close, True), (near, False)):
        (check,) = _min_norm([CW, DEEPFOOL_L2], decision_based={"m": hsj}).masking_checks()
        assert check.gradient == gradient_median and check.suspected is suspected
        assert check.gradient_attacks == ("CW", "DeepFool")
    assert 0.38 > (1 - DECISION_BASED_MARGIN) * gradient_median


def test_query_based_results_on_the_first_examples_compare_with_those_only():
    spsa = _spsa([False, True], correct=[False, True])  # examples 0 and 1: DeepFool 0, 0.05
    (check,) = _min_norm([DEEPFOOL_LINF], score_based={"m": spsa}).masking_checks()
    assert check.gradient == 0.0 and check.gradient_free == 0.5 and not check.suspected
    with pytest.raises(ValueError, match="ran on 6 examples, more than"):
        _min_norm([DEEPFOOL_LINF], score_based={"m": _spsa([True] * 6)})


def test_query_based_rows_in_the_blocks_json_and_html(tmp_path):
    section = _min_norm([CW, DEEPFOOL_L2, DEEPFOOL_LINF], max_queries=50,
                        score_based={"m": _spsa([False, True, True, False, True],
                                                correct=[False] + [True] * 4,
                                                queries=[1, 50, 50, 17, 50])},
                        decision_based={"m": _hsj([0.0, 0.1, 0.2, 0.3, 0.4],
                                                  [False] + [True] * 4)})
    blocks = section.blocks(str(tmp_path))
    assert Subheading("Query-based attacks: the check for gradient masking") in blocks
    table = _of(blocks, Table)[-1]
    assert table.rows == (
        ("m", "SPSA", "scores", "5", "L-inf eps 0.1", "50 / 50", "robust acc. 60.0%",
         "robust acc. 40.0% (DeepFool)"),
        ("m", "HopSkipJump", "decisions", "5", "L2, minimum norm", "50 / 50", "median L2 0.2",
         "median L2 0.4 (CW, DeepFool)"))
    notes = _of(blocks, BulletList)[-1].items
    assert notes[0].startswith("no sign of gradient masking: SPSA leaves 60.0% robust")
    assert notes[1].startswith("gradient masking suspected: HopSkipJump's median L2")
    assert "gradient masking" in _of(blocks, Paragraph)[-1].text
    write_report(str(tmp_path), "t", ReportMeta.now("test"), [section])
    doc = json.load(open(tmp_path / "report.json"))["sections"]["minimum_norm"]["result"]
    assert doc["score_based"]["m"]["robust_accuracy"] == 0.6
    assert doc["score_based"]["m"]["median_queries"] == 50
    assert doc["decision_based"]["m"]["queries"] == [50] * 5
    assert [(c["attack"], c["suspected"]) for c in doc["masking_checks"]] == [
        ("SPSA", False), ("HopSkipJump", True)]
    html = open(tmp_path / "report.html", encoding="utf-8").read()
    assert "Query-based attacks: the check for gradient masking" in html
    assert "<td>HopSkipJump</td>" in html and "robust acc. 60.0%" in html
