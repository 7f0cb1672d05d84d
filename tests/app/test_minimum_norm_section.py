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
