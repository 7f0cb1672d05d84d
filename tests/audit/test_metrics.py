"""Membership-attack metrics are exact on constructed score distributions."""

import numpy as np
import pytest

from modelsec_fast.audit.metrics import attack_metrics, auc, roc_curve, tpr_at_fpr


def test_auc_counts_pairs_and_half_ties():
    # members {3, 2, 1}, non-members {2, 0}: pairs won 1 (3>2) + 1 (3>0) + 1 (2>0)
    # + 1 (1>0) = 4, ties 1 (2=2) -> (4 + 0.5) / 6.
    assert auc([3, 2, 1], [2, 0]) == pytest.approx(4.5 / 6, abs=0)


def test_auc_matches_brute_force_on_random_integers():
    rng = np.random.default_rng(1234)
    pos = rng.integers(0, 7, size=53)
    neg = rng.integers(0, 7, size=41)
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc(pos, neg) == pytest.approx(wins / (53 * 41), rel=1e-12)


def test_perfect_and_reversed_separation():
    assert auc(np.arange(10, 20), np.arange(10)) == 1.0
    assert auc(np.arange(10), np.arange(10, 20)) == 0.0


def test_roc_endpoints_and_monotone():
    rng = np.random.default_rng(7)
    fpr, tpr, thr = roc_curve(rng.normal(1, 1, 101), rng.normal(0, 1, 77))
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.isinf(thr[0])


def test_tpr_at_fpr_exact_on_constructed_scores():
    # 1000 non-members with distinct scores 0..999; members: 37 above every
    # non-member, 100 between the top non-members, the rest at the bottom.
    neg = np.arange(1000, dtype=float)
    pos = np.concatenate([np.full(37, 5000.0), np.full(100, 994.5), np.full(863, -1.0)])
    # FPR <= 0.1% allows 1 false positive (score 999): only the 37 are above it.
    assert tpr_at_fpr(pos, neg, 0.001) == pytest.approx(37 / 1000, abs=0)
    # FPR <= 1% allows 10 false positives (scores >= 990): 37 + 100 members.
    assert tpr_at_fpr(pos, neg, 0.01) == pytest.approx(137 / 1000, abs=0)


def test_low_fpr_not_measurable_with_few_nonmembers():
    rng = np.random.default_rng(3)
    m = attack_metrics("t", rng.normal(size=500), rng.normal(size=999))
    assert m.tpr_at_fpr[0.001] is None and m.tpr_at_fpr[0.01] is not None
    assert any("0.1% FPR not measurable" in n and "999" in n for n in m.notes)
    m = attack_metrics("t", rng.normal(size=5), rng.normal(size=99))
    assert m.tpr_at_fpr[0.01] is None
    m = attack_metrics("t", rng.normal(size=5), rng.normal(size=1000))
    assert m.tpr_at_fpr[0.001] is not None


def test_to_dict_is_json_ready():
    import json

    m = attack_metrics("t", [1.0, 2.0, 3.0], list(range(200)))
    d = json.loads(json.dumps(m.to_dict()))
    assert d["tpr_at_fpr"]["0.001"] is None and d["n_nonmembers"] == 200


@pytest.mark.parametrize("bad", [[], [np.nan], [np.inf]])
def test_bad_scores_rejected(bad):
    with pytest.raises(ValueError):
        auc(bad, [0.0, 1.0])
