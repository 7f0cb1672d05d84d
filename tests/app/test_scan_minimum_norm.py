"""The minimum-norm scan stage (modelsec_fast/app/scan/minimum_norm.py): distances in
the units of the model's input range, the radii read off, the budget, the skip."""

import pytest
import torch
from torch import nn

from modelsec_fast.app.report import SkippedSection
from modelsec_fast.app.scan import Budget, ScanInputs
from modelsec_fast.app.scan import minimum_norm
from modelsec_fast.app.sections import MinimumNormSection

OVERSHOOT = 0.02  # DeepFool's, the stage's


class Affine(nn.Module):
    """Two classes, logits (0, w.x + b): the exact L2 distance to the boundary is
    |w.x + b| / ||w||_2, the L-inf one |w.x + b| / ||w||_1."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(torch.tensor(b))

    def forward(self, x):
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(score), score], 1)


def _inputs(model, x, y, *, input_range=(-1.0, 1.0), steps=2, queries=40, eps_linf=0.05,
            eps_l2=0.2, **kwargs):
    budget = Budget("test", n_examples=len(y), attack_steps=steps, restarts=1,
                    shadow_models=2, query_budgets=(10,), optimisation_steps=1,
                    attack_queries=queries)
    return ScanInputs(model=model.eval(), x=x, y=y, num_classes=2, input_range=input_range,
                      eps_linf=eps_linf, eps_l2=eps_l2, budget=budget, **kwargs)


@pytest.fixture
def affine(random_seed):
    """An affine model on inputs in [-1, 1] and 40 points whose nearest boundary point lies
    well inside the box (so the exact distances above hold), with their distances."""
    gen = torch.Generator().manual_seed(random_seed)
    w = torch.randn(16, generator=gen)
    x = (torch.rand(200, 1, 4, 4, generator=gen) - 0.5) * 0.6
    score = x.flatten(1) @ w
    d2 = score.abs() / w.norm()
    keep = (d2 < 0.4) & (d2 > 1e-3)
    x, score = x[keep][:40], score[keep][:40]
    return Affine(w, 0.0), x, (score > 0).long(), score.abs() / w.norm(), \
        score.abs() / w.abs().sum()


def _by_name(section):
    return {f"{r.attack}-{r.norm}": r for r in section.results["model"]}


def test_distances_are_in_input_units_and_deepfool_meets_the_exact_distance(affine):
    model, x, y, d2, dinf = affine
    section = minimum_norm.run(_inputs(model, x, y))
    assert isinstance(section, MinimumNormSection) and section.n_examples == len(y)
    results = _by_name(section)
    for name, exact in (("DeepFool-L2", d2), ("DeepFool-Linf", dinf)):
        found = torch.tensor(results[name].distances, dtype=torch.float64)
        exact = exact.double()
        # Inputs in [-1, 1]: the attacks run in [0, 1]; a distance left unscaled is half.
        assert (found >= exact * (1 - 1e-4)).all(), name
        assert (found <= exact * (1 + OVERSHOOT) * (1 + 1e-4)).all(), name
    cw = torch.tensor(results["CW-L2"].distances, dtype=torch.float64)
    assert results["CW-L2"].success_rate == 1.0
    assert (cw >= d2.double() * (1 - 1e-4)).all()  # no example closer than the boundary
    assert "inputs in [-1, 1]" in section.units


def test_the_radii_are_half_once_and_twice_the_scans_eps(affine):
    model, x, y, d2, _ = affine
    section = minimum_norm.run(_inputs(model, x, y))
    assert section.eps_grid == {"L2": (0.1, 0.2, 0.4), "Linf": (0.025, 0.05, 0.1)}
    deepfool = _by_name(section)["DeepFool-L2"]
    # Read off the distances: the exact ones, give or take the overshoot.
    for eps in section.eps_grid["L2"]:
        upper, lower = d2 * (1 + OVERSHOOT) * (1 + 1e-4) > eps, d2 > eps
        assert int(upper.sum()) / len(d2) >= deepfool.robust_accuracy_at(eps) >= \
            int(lower.sum()) / len(d2)


def test_cw_steps_follow_the_budget(affine, monkeypatch):
    model, x, y, _, _ = affine
    seen = []
    real = minimum_norm.CW

    def recording(*args, **kwargs):
        seen.append(kwargs["steps"])
        return real(*args, **kwargs)

    monkeypatch.setattr(minimum_norm, "CW", recording)
    minimum_norm.run(_inputs(model, x[:4], y[:4], steps=3))
    assert seen == [3 * minimum_norm.CW_STEPS_PER_ATTACK_STEP]


def test_the_attack_subset_is_used(affine):
    model, x, y, _, _ = affine
    inputs = _inputs(model, x, y)
    inputs.budget = Budget("small", n_examples=5, attack_steps=1, restarts=1, shadow_models=2,
                           query_budgets=(10,), optimisation_steps=1)
    section = minimum_norm.run(inputs)
    assert section.n_examples == 5
    assert all(r.n_samples == 5 for r in section.results["model"])


def test_non_image_data_is_skipped_with_the_reason():
    model = Affine(torch.ones(3), 0.0)
    section = minimum_norm.run(_inputs(model, torch.rand(4, 3), torch.zeros(4, dtype=torch.long),
                                       input_range=(0.0, 1.0), is_image=False))
    assert isinstance(section, SkippedSection) and section.key == MinimumNormSection.key
    assert "not image data" in section.reason


def test_query_attacks_keep_their_budget_and_report_in_input_units(affine):
    model, x, y, d2, dinf = affine
    section = minimum_norm.run(_inputs(model, x, y, queries=400))
    assert section.max_queries == 400 and section.eps == {"L2": 0.2, "Linf": 0.05}
    spsa, hsj = section.score_based["model"], section.decision_based["model"]
    assert spsa.n_samples == hsj.n_samples == len(y) and spsa.max_queries == 400
    assert max(spsa.queries) <= 400 and max(hsj.queries) <= 400
    # SPSA's eps is the scan's, in input units: no example farther than it breaks, and
    # the attack (12 Adam steps on an affine model) breaks those well inside it.
    assert spsa.eps == 0.05
    robust = torch.tensor(spsa.robust)
    assert robust[dinf > 0.05 * (1 + 1e-4)].all()
    assert not robust[dinf < 0.04].any()
    # Survivors spend every whole iteration of the budget (a clean query, then 12 of 33);
    # broken examples stop early.
    queries = torch.tensor(spsa.queries)
    assert (queries[robust] == 1 + 12 * (2 * minimum_norm.SPSA_SAMPLES + 1)).all()
    assert queries[~robust].double().median() < 397
    # HopSkipJump's distances, in input units, are never below the exact ones.
    found = torch.tensor(hsj.distances, dtype=torch.float64)
    assert hsj.n_found == len(y) and (found >= d2.double() * (1 - 1e-4)).all()


def test_the_stage_judges_the_distances_against_the_scans_eps(affine):
    model, x, y, d2, dinf = affine  # every example is correctly classified
    # 80% of the examples lie within the L2 eps (DeepFool's overshoot included): at risk.
    eps_l2 = float(d2.quantile(0.8)) * 1.05
    risky = minimum_norm.run(_inputs(model, x, y, eps_l2=eps_l2, eps_linf=1e-4)).verdict()
    assert risky.verdict == "at risk" and f"against eps {eps_l2:.4g}" in risky.measured
    # 20% within either radius (no attack finds a point closer than the exact distance).
    small = dict(eps_l2=float(d2.quantile(0.2)) * 0.95, eps_linf=float(dinf.quantile(0.2)) * 0.95)
    safe = minimum_norm.run(_inputs(model, x, y, **small)).verdict()
    assert safe.verdict == "no finding", safe.measured
    assert f"of {len(y)} correct examples" in safe.measured
