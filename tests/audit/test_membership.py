"""Membership inference: LiRA's formulas on constructed shadows, and LiRA beating the
loss-threshold attack at low FPR on a non-private model (fixed seeds)."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from modelsec_fast.audit.membership import (ShadowObservations, lira_scores, logit_confidence,
                                            membership_audit)
from modelsec_fast.app.recipe import TrainingRecipe
from modelsec_fast.app.training import train_model
from modelsec_fast.data import load_dataset


def _constructed_shadows(mu_in, mu_out, d):
    """4 shadows; each example is in for 2 (mu_in +- d) and out for 2 (mu_out +- d),
    so the pooled standard deviation of each side is exactly d * sqrt(2)."""
    n = len(mu_in)
    conf = torch.stack([mu_in + d, mu_in - d, mu_out + d, mu_out - d]).double()
    included = torch.tensor([[True] * n, [True] * n, [False] * n, [False] * n])
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(5))
    return ShadowObservations(conf[perm], included[perm])


def test_lira_online_and_offline_closed_forms():
    gen = torch.Generator().manual_seed(17)
    mu_in = torch.randn(50, generator=gen, dtype=torch.float64) + 2
    mu_out = torch.randn(50, generator=gen, dtype=torch.float64)
    d = 0.7
    shadows = _constructed_shadows(mu_in, mu_out, d)
    phi = torch.randn(50, generator=gen, dtype=torch.float64)
    s = d * np.sqrt(2)
    online = lira_scores(phi, shadows, online=True)
    expected = ((phi - mu_out) ** 2 - (phi - mu_in) ** 2) / (2 * s ** 2)
    torch.testing.assert_close(online, expected, rtol=1e-10, atol=1e-10)
    offline = lira_scores(phi, shadows, online=False)
    torch.testing.assert_close(offline, torch.from_numpy(norm.logcdf(((phi - mu_out) / s).numpy())),
                               rtol=1e-10, atol=1e-10)


def test_lira_rejects_mismatched_population():
    shadows = _constructed_shadows(torch.zeros(3, dtype=torch.float64),
                                   torch.zeros(3, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError):
        lira_scores(torch.zeros(4), shadows)


def test_logit_confidence_is_log_odds_of_true_class():
    model = torch.nn.Linear(3, 4).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    p = torch.softmax(model(x), 1).gather(1, y.view(-1, 1)).squeeze(1).detach()
    torch.testing.assert_close(logit_confidence(model, x, y), torch.log(p / (1 - p)))


@pytest.fixture(scope="module")
def nonprivate_audit():
    ds = load_dataset("digits")
    gen = np.random.default_rng(0)
    members = torch.from_numpy(gen.random(len(ds.y_train)) < 0.5)
    recipe = TrainingRecipe(model="mlp", epochs=25)

    def train_fn(x, y, seed):
        return train_model(recipe, x, y, num_classes=10, seed=seed).model

    target = train_fn(ds.x_train[members], ds.y_train[members], 0)
    print("seeds: membership 0, target 0, shadows 101..108")
    return membership_audit(target, ds.x_train, ds.y_train, members, train_fn=train_fn,
                            num_shadow=8, seed=100)


def test_lira_beats_loss_threshold_at_low_fpr(nonprivate_audit):
    by_name = {a.name: a for a in nonprivate_audit.attacks}
    loss = by_name["loss threshold"].tpr_at_fpr[0.01]
    for name in ("LiRA online", "LiRA offline"):
        lira = by_name[name].tpr_at_fpr[0.01]
        print(f"TPR at 1% FPR: {name} {lira:.4f} vs loss threshold {loss:.4f}")
        assert lira >= 0.02 and lira >= 2 * loss


def test_audit_reports_counts_bounds_and_not_measurable(nonprivate_audit):
    audit = nonprivate_audit
    assert audit.num_shadow == 8 and audit.design == "coin_flip"
    assert audit.n_members + audit.n_nonmembers == 1348
    assert all(a.tpr_at_fpr[0.001] is None for a in audit.attacks)  # < 1000 non-members
    assert any("not measurable" in n for n in audit.notes)
    assert len(audit.epsilon_bounds) == 3
    assert all(b.epsilon_lower_bound >= 0 for b in audit.epsilon_bounds)
    assert "epsilon lower bound" in audit.table()


def test_split_design_reports_no_epsilon():
    ds = load_dataset("digits", train_size=200, test_size=100)
    model = train_model(TrainingRecipe(epochs=2), ds.x_train, ds.y_train, num_classes=10).model
    x = torch.cat([ds.x_train, ds.x_test])
    y = torch.cat([ds.y_train, ds.y_test])
    mask = torch.arange(300) < 200
    audit = membership_audit(model, x, y, mask, design="split")
    assert audit.epsilon_bounds == [] and [a.name for a in audit.attacks] == ["loss threshold"]
    assert any("not a differential-privacy bound" in n for n in audit.notes)
    assert "epsilon lower bound" not in audit.table()
