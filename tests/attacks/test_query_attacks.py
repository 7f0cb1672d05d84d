"""Score- and decision-based attacks (SPSA, HopSkipJump): query budgets, balls, strength,
per-sample equality with single-sample runs, bad input."""

import math

import pytest
import torch
from torch import nn

import modelsec_fast.attacks as ma
from modelsec_fast.attacks.minimum_norm import perturbation_norms
from modelsec_fast.attacks.streams import SampleStreams
from tests.attacks.strength import assert_at_least_as_strong, robust_acc

SEED = 23


class Counting(nn.Module):
    """Counts the rows the model is asked about: the queries."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.inner(x)


# --------------------------------------------------------------------- SPSA
def test_spsa_keeps_its_budget_its_ball_and_counts_every_query(digits_cnn):
    model = Counting(digits_cnn.model).eval()
    x, y = digits_cnn.x[:24], digits_cnn.y[:24]
    atk = ma.SPSA(model, eps=0.1, nb_iter=50, nb_sample=8, lr=0.05, max_queries=120,
                  max_batch_size=40, seed=SEED)
    adv = atk(x, y)
    assert int(atk.queries.sum()) == model.rows
    assert int(atk.queries.max()) <= 120 and int(atk.queries.min()) >= 1
    # 1 clean check + whole iterations of 2 * 8 + 1 queries
    assert bool(((atk.queries - 1) % 17 == 0).all())
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1


def test_spsa_without_budget_spends_at_most_its_iterations(digits_cnn):
    x, y = digits_cnn.x[:10], digits_cnn.y[:10]
    atk = ma.SPSA(digits_cnn.model, eps=0.05, nb_iter=3, nb_sample=4, seed=SEED)
    atk(x, y)
    assert int(atk.queries.max()) <= 1 + 3 * 9


@pytest.mark.parametrize("seed", [SEED])
def test_spsa_is_within_5_points_of_pgd(seed, digits_cnn):
    m, x, y = digits_cnn.model, digits_cnn.x[:100], digits_cnn.y[:100]
    torch.manual_seed(seed)
    pgd = robust_acc(m, ma.PGD(m, eps=0.1, alpha=0.025, steps=20)(x, y), y)
    spsa = robust_acc(m, ma.SPSA(m, eps=0.1, lr=0.05, nb_iter=60, nb_sample=64, seed=seed)(x, y),
                      y)
    assert_at_least_as_strong(spsa, pgd, 0.05, "SPSA vs PGD-20, eps 0.1", seed=seed)


def test_spsa_targeted_reaches_its_targets(digits_cnn):
    m, x, y = digits_cnn.model, digits_cnn.x[:30], digits_cnn.y[:30]
    atk = ma.SPSA(m, eps=0.3, lr=0.05, nb_iter=30, nb_sample=16, seed=SEED)
    atk.set_mode_targeted_by_label()
    targets = (y + 1) % 10
    adv = atk(x, targets)
    with torch.no_grad():
        hit = float((m(adv).argmax(1) == targets).float().mean())
    assert hit >= 0.5, f"seed {SEED}: {hit}"


# -------------------------------------------------------------- HopSkipJump
@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_hopskipjump_keeps_its_budget_and_its_best_never_grows(norm, digits_cnn):
    model = Counting(digits_cnn.model).eval()
    x, y = digits_cnn.x[:16], digits_cnn.y[:16]
    atk = ma.HopSkipJump(model, norm=norm, max_queries=700, init_evals=20, max_batch_size=256,
                         seed=SEED)
    adv = atk(x, y)
    assert int(atk.queries.sum()) == model.rows
    assert int(atk.queries.max()) <= 700
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1 and not bool(adv.isnan().any())
    history = torch.stack(atk.history)
    assert len(atk.history) >= 3
    assert bool((history[1:] <= history[:-1]).all()), "a best-so-far distance grew"
    with torch.no_grad():
        fooled = model.inner(adv).argmax(1) != y
    found = torch.isfinite(history[-1])
    assert bool((fooled == found).all())
    dist = perturbation_norms(adv, x, norm)
    torch.testing.assert_close(dist[found], history[-1][found])


def test_hopskipjump_gets_closer_with_more_queries(digits_cnn):
    m, x, y = digits_cnn.model, digits_cnn.x[:16], digits_cnn.y[:16]
    few = ma.HopSkipJump(m, max_queries=300, init_evals=20, seed=SEED).evaluate(x, y)
    many = ma.HopSkipJump(m, max_queries=1500, init_evals=20, seed=SEED).evaluate(x, y)
    print(f"seed {SEED}: mean L2 {few.mean_norm:.4f} (300 queries) -> {many.mean_norm:.4f} "
          f"(1500); median {few.median_norm:.4f} -> {many.median_norm:.4f}")
    assert many.success_rate == 1.0
    assert many.mean_norm < 0.92 * few.mean_norm, f"seed {SEED}"
    assert many.median_norm < few.median_norm, f"seed {SEED}"
    assert max(many.queries) <= 1500


def test_hopskipjump_zero_gradient_estimate_gives_no_nan(digits_cnn, monkeypatch):
    """Directions that are all zero make a zero estimate: no step, and no NaN."""
    draw = SampleStreams.draw

    def zero_normals(self, rows, shape, kind, dtype):
        out = draw(self, rows, shape, kind, dtype)
        return out.zero_() if kind == "normal" else out

    monkeypatch.setattr(SampleStreams, "draw", zero_normals)
    m, x, y = digits_cnn.model, digits_cnn.x[:6], digits_cnn.y[:6]
    atk = ma.HopSkipJump(m, max_queries=400, init_evals=10, seed=SEED)
    adv = atk(x, y)
    assert not bool(adv.isnan().any())
    history = torch.stack(atk.history)
    assert not bool(history.isnan().any())
    # No direction, no step: the best point is the first boundary point, every iteration.
    assert bool((history == history[0]).all())


class MeanThreshold(nn.Module):
    """Class 0 when the mean pixel exceeds 0.45, else class 1: uniform noise is always class 0."""

    def forward(self, x):
        score = (x.flatten(1).mean(1) - 0.45) * 50
        return torch.stack([score, -score], 1)


def test_hopskipjump_starts_from_a_batch_image_where_no_noise_fools_the_model():
    g = torch.Generator().manual_seed(SEED)
    bright = (0.6 + 0.1 * torch.rand(4, 1, 8, 8, generator=g)).clamp(0, 1)   # class 0
    dark = (0.3 + 0.1 * torch.rand(4, 1, 8, 8, generator=g)).clamp(0, 1)     # class 1
    x = torch.cat([bright, dark])
    model = MeanThreshold()
    y = model(x).argmax(1)
    assert y.tolist() == [0] * 4 + [1] * 4
    atk = ma.HopSkipJump(model, max_queries=300, init_evals=10, init_size=5, seed=SEED)
    result = atk.evaluate(x, y)
    assert result.success_rate == 1.0 and max(result.queries) <= 300
    # The bright ones started at their nearest dark image and got closer from there.
    nearest = torch.cdist(bright.flatten(1), dark.flatten(1)).min(1).values
    assert all(result.distances[i] < float(nearest[i]) for i in range(4))


@pytest.mark.parametrize("make", [lambda m, **kw: ma.SPSA(m, nb_iter=1, nb_sample=4, **kw),
                                  lambda m, **kw: ma.HopSkipJump(m, max_queries=50, **kw)],
                         ids=["spsa", "hopskipjump"])
def test_query_attacks_size_their_cpu_forwards_by_input_values(make, digits_cnn):
    """By default a CPU forward holds at most CPU_FORWARD_VALUES input values (larger
    batches run slower there); an explicit max_batch_size is kept."""
    from modelsec_fast._forward_batch import CPU_FORWARD_VALUES
    x, y = digits_cnn.x[:4], digits_cnn.y[:4]
    atk = make(digits_cnn.model)
    atk(x, y)
    assert atk.batch_rows == min(4096, CPU_FORWARD_VALUES // x[0].numel())
    explicit = make(digits_cnn.model, max_batch_size=40)
    explicit(x, y)
    assert explicit.batch_rows == 40


# ---------------------------------------------------------- reference loops
@pytest.mark.parametrize("make", [
    lambda m, seed: ma.SPSA(m, eps=0.1, lr=0.05, nb_iter=6, nb_sample=8, max_batch_size=37,
                            seed=seed),
    lambda m, seed: ma.HopSkipJump(m, max_queries=400, init_evals=16, max_batch_size=64,
                                   seed=seed),
    lambda m, seed: ma.HopSkipJump(m, norm="Linf", max_queries=300, init_evals=16, seed=seed),
])
def test_batched_equals_single_sample_runs_with_their_seeds(make, digits_mlp):
    """Sample i of a batch draws from seed + i: a run on it alone with that seed matches."""
    m = digits_mlp.model.double()
    try:
        x, y = digits_mlp.x[:6].double(), digits_mlp.y[:6]
        atk = make(m, SEED)
        batched, queries = atk(x, y), atk.queries.clone()
        for i in range(6):
            single = make(m, SEED + i)
            torch.testing.assert_close(single(x[i:i + 1], y[i:i + 1])[0], batched[i],
                                       rtol=1e-9, atol=1e-9)
            assert int(single.queries[0]) == int(queries[i])
    finally:
        m.float()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=-0.1), "eps must be >= 0"), (dict(nb_iter=0), "nb_iter must be >= 1"),
    (dict(nb_sample=0), "nb_sample must be >= 1"), (dict(delta=0), "delta must be > 0"),
    (dict(lr=-1), "lr must be > 0"), (dict(max_queries=0), "max_queries must be >= 1"),
    (dict(max_batch_size=1), "max_batch_size must be >= 2"),
])
def test_spsa_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ma.SPSA(nn.Linear(4, 3), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_queries=0), "max_queries must be >= 1"), (dict(max_queries=-5), "max_queries"),
    (dict(steps=0), "steps must be >= 1"), (dict(norm="L1"), "norm must be one of"),
    (dict(gamma=0), "gamma must be > 0"), (dict(init_evals=0), "init_evals must be >= 1"),
])
def test_hopskipjump_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ma.HopSkipJump(nn.Linear(4, 3), **kwargs)


def test_budget_must_be_an_integer():
    with pytest.raises(TypeError, match="max_queries must be an integer"):
        ma.HopSkipJump(nn.Linear(4, 3), max_queries=10.5)
    assert math.isclose(ma.SPSA(nn.Linear(4, 3), max_queries=3.0).max_queries, 3)
