"""robust_accuracy at its floor: the pool, early stop, re-verification, passes; minimum-norm attacks."""

import json
import math

import pytest
import torch
from torch import nn

import modelsec_fast.attacks as ma
from modelsec_fast.evaluate import robust_accuracy
from tests.attacks.conftest import digits_cnn, digits_mlp  # noqa: F401  (fixtures)
from tests.attacks.strength import robust_acc

SEED = 41


class GradLiar(nn.Module):
    """Claims every input is misclassified while building a graph; honest without one."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return out.roll(1, dims=1) if torch.is_grad_enabled() and x.requires_grad else out


class Unpooled(ma.PGD):
    """PGD run per restart through run_for_evaluation (its own hook keeps it out of the pool)."""

    def _forward_eval(self, images, labels):
        return super()._forward_eval(images, labels)


class PassSizes:
    """Batch sizes of the gradient passes a model makes."""

    def __init__(self, model):
        self.sizes = []
        self.handle = model.register_forward_pre_hook(self._record)

    def _record(self, _module, args):
        if torch.is_grad_enabled() and args[0].requires_grad:
            self.sizes.append(args[0].shape[0])


def _kwargs(**extra):
    return dict(progress=False, check_masking=False, **extra)


# ------------------------------------------------------------------ early stop
@pytest.mark.parametrize("seed", [SEED, SEED + 1])
def test_early_stop_is_never_weaker_than_plain_restarts(seed, digits_cnn):
    m, x, y = digits_cnn.model, digits_cnn.x[:150], digits_cnn.y[:150]
    torch.manual_seed(seed)
    # Steps as large as eps: PGD's iterates jump around, and its last one is often not
    # the adversarial one it passed through; early stop keeps that one.
    ours = robust_accuracy(m, (x, y), [ma.PGD(m, eps=0.08, alpha=0.08, steps=10)], restarts=3,
                           **_kwargs())
    torch.manual_seed(seed)
    with torch.no_grad():
        robust = m(x).argmax(1) == y
    for _ in range(3):  # every step on every sample still robust, the final iterate only
        idx = robust.nonzero().flatten()
        adv = ma.PGD(m, eps=0.08, alpha=0.08, steps=10)(x[idx], y[idx])
        with torch.no_grad():
            robust[idx[m(adv).argmax(1) != y[idx]]] = False
    plain = float(robust.float().mean())
    print(f"seed {seed}: early stop {ours.robust_accuracy:.4f}, plain restarts {plain:.4f}")
    assert ours.robust_accuracy <= plain, f"seed {seed}"


@pytest.mark.parametrize("attack", [
    lambda m: ma.PGD(m, eps=0.1, alpha=0.02, steps=4),                       # pooled
    lambda m: ma.FGSM(m, eps=0.1),                                            # pooled
    lambda m: ma.APGD(m, eps=0.1, steps=4),                                   # batches
])
def test_an_example_that_fails_reverification_is_never_counted(attack, digits_mlp):
    honest = digits_mlp.model
    liar = GradLiar(honest).eval()
    x, y = digits_mlp.x[:40], digits_mlp.y[:40]
    torch.manual_seed(SEED)
    result = robust_accuracy(liar, (x, y), [attack(liar)], restarts=2, return_adversarial=True,
                             **_kwargs())
    record = next(iter(result.per_attack.values()))
    with torch.no_grad():
        correct = honest(x).argmax(1) == y
        fooled = honest(result.adversarial).argmax(1) != y
    # Every gradient pass claims every sample broken; only re-checked examples count.
    print(f"seed {SEED}: broken {record.broken} of {int(correct.sum())} claimed")
    assert record.broken == int((fooled & correct).sum()) < int(correct.sum())
    assert result.robust_accuracy == pytest.approx(float((correct & ~fooled).float().mean()))
    assert record.rejected == 0


# ---------------------------------------------------------------- the floor
def test_passes_spent_are_the_floor_for_a_deterministic_pgd(digits_cnn):
    m, x, y = digits_cnn.model, digits_cnn.x[:80], digits_cnn.y[:80]
    steps = 5
    result = robust_accuracy(m, (x, y), [ma.PGD(m, eps=0.06, alpha=0.02, steps=steps,
                                                random_start=False)], **_kwargs())
    # The floor, sample by sample: the first iterate k that is adversarial is seen by
    # pass k + 1; a sample never broken (or broken only at its last iterate) needs all steps.
    with torch.no_grad():
        correct = m(x).argmax(1) == y
        first = torch.full((80,), steps, dtype=torch.long)
        for k in range(steps, 0, -1):
            adv = ma.PGD(m, eps=0.06, alpha=0.02, steps=k, random_start=False)(x, y)
            first[m(adv).argmax(1) != y] = k
    floor = int(torch.where(first < steps, first + 1, torch.full_like(first, steps))[correct].sum())
    record = result.per_attack["PGD"]
    print(f"floor {floor}, spent {result.sample_passes}, robust {result.robust_accuracy}")
    assert record.floor_passes == floor == result.floor_passes
    assert result.sample_passes == record.gradient_passes == floor
    assert result.forward_passes >= 80  # the clean pass, then the re-checks
    assert "floor" in str(result)


def test_the_pool_keeps_every_pass_full_across_chunks_and_restarts(digits_cnn):
    m, x, y = digits_cnn.model, digits_cnn.x[:300], digits_cnn.y[:300]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50)
    steps, restarts = 5, 3
    sizes = PassSizes(m)
    try:
        torch.manual_seed(SEED)
        result = robust_accuracy(m, loader, [ma.PGD(m, eps=0.08, alpha=0.03, steps=steps)],
                                 restarts=restarts, batch_size=50, **_kwargs())
    finally:
        sizes.handle.remove()
    partial = [s for s in sizes.sizes if s < 50]
    print(f"seed {SEED}: {len(sizes.sizes)} passes, {len(partial)} not full: {partial}")
    assert max(sizes.sizes) == 50
    # Only the drain at the very end runs short: at most one run of steps per restart.
    assert len(partial) <= steps * restarts
    assert sum(sizes.sizes) == result.sample_passes == result.floor_passes


def test_the_pool_gives_the_iterates_of_per_restart_runs(digits_cnn):
    """Deterministic PGD: the pool's examples are those of run_for_evaluation, sample by sample."""
    m, x, y = digits_cnn.model, digits_cnn.x[:120], digits_cnn.y[:120]
    kw = dict(eps=0.07, alpha=0.02, steps=6, random_start=False)
    pooled = robust_accuracy(m, (x, y), [ma.PGD(m, **kw)], batch_size=32,
                             return_adversarial=True, **_kwargs())
    plain = robust_accuracy(m, (x, y), [Unpooled(m, **kw)], batch_size=32,
                            return_adversarial=True, **_kwargs())
    assert pooled.per_attack["PGD"].floor_passes is not None
    assert plain.per_attack["PGD"].floor_passes is None and plain.floor_passes is None
    assert pooled.robust_accuracy == plain.robust_accuracy
    torch.testing.assert_close(pooled.adversarial, plain.adversarial, rtol=0, atol=1e-6)


def test_targeted_pgd_runs_in_the_pool(digits_cnn):
    m, x, y = digits_cnn.model, digits_cnn.x[:60], digits_cnn.y[:60]
    atk = ma.PGD(m, eps=0.15, alpha=0.04, steps=8)
    atk.set_mode_targeted_least_likely()
    torch.manual_seed(SEED)
    result = robust_accuracy(m, (x, y), [atk], return_adversarial=True, **_kwargs())
    assert result.floor_passes is not None and result.per_attack["PGD"].broken > 0
    assert robust_acc(m, result.adversarial, y) == pytest.approx(result.robust_accuracy)


# ----------------------------------------------------------- minimum norm
def test_a_minimum_norm_attack_alone_reports_its_distances(digits_cnn):
    m, x, y = digits_cnn.model, digits_cnn.x[:50], digits_cnn.y[:50]
    result = robust_accuracy(m, (x, y), [ma.DeepFool(m)], **_kwargs())
    record = result.per_attack["DeepFool"]
    dist = record.distances
    assert dist.n_samples == 50 and dist.norm == "L2"
    assert result.eps is None and result.norm == "L2"
    # No eps: any distance found breaks (robust accuracy = 1 - success over all samples).
    assert result.robust_accuracy == pytest.approx((dist.n_attacked - dist.n_found) / 50)
    assert record.broken == dist.n_found
    assert dist.robust_accuracy_at(math.inf) == pytest.approx(result.robust_accuracy)
    loaded = json.loads(result.to_json())
    assert loaded["per_attack"]["DeepFool"]["distances"]["median_norm"] == dist.median_norm
    assert "distances: DeepFool (L2)" in str(result)


def test_a_minimum_norm_attack_breaks_at_the_given_eps_and_runs_first(digits_cnn):
    m, x, y = digits_cnn.model, digits_cnn.x[:50], digits_cnn.y[:50]
    torch.manual_seed(SEED)
    pgd = ma.PGDL2(m, eps=0.5, alpha=0.1, steps=5)
    result = robust_accuracy(m, (x, y), [pgd, ma.DeepFool(m)], eps=0.5, **_kwargs())
    assert list(result.per_attack) == ["DeepFool", "PGDL2"]
    dist = result.per_attack["DeepFool"].distances
    assert result.per_attack["DeepFool"].robust_accuracy == pytest.approx(
        dist.robust_accuracy_at(0.5))
    assert result.robust_accuracy <= dist.robust_accuracy_at(0.5)
    assert (result.eps, result.norm) == (0.5, "L2")
    # Without eps, the other attacks' common eps of the same norm applies.
    torch.manual_seed(SEED)
    same = robust_accuracy(m, (x, y), [ma.DeepFool(m), ma.PGDL2(m, eps=0.5, alpha=0.1, steps=5)],
                           **_kwargs())
    assert same.per_attack["DeepFool"].broken == result.per_attack["DeepFool"].broken
    assert same.eps == 0.5


def test_hopskipjump_reports_its_queries_in_the_evaluation(digits_cnn):
    m, x, y = digits_cnn.model, digits_cnn.x[:12], digits_cnn.y[:12]
    atk = ma.HopSkipJump(m, max_queries=300, init_evals=16, seed=SEED)
    result = robust_accuracy(m, (x, y), [atk], eps=1.0, **_kwargs())
    dist = result.per_attack["HopSkipJump"].distances
    assert dist.queries is not None and max(dist.queries) <= 300
    assert result.per_attack["HopSkipJump"].gradient_passes == 0
    # Its queries, then one re-check of each attacked sample's example.
    assert result.per_attack["HopSkipJump"].forward_passes == sum(dist.queries) + dist.n_attacked
    assert ", queries=" not in result.per_attack["HopSkipJump"].settings


@pytest.mark.parametrize("make,kwargs,match", [
    (lambda m: [ma.CW(m)], dict(eps=8 / 255, norm="Linf"), "CW is an L2 attack but norm='Linf'"),
    (lambda m: [ma.PGDL2(m, eps=0.5)], dict(norm="Linf"), "PGDL2 is an L2 attack"),
    (lambda m: [ma.PGD(m, eps=0.1)], dict(eps=0.2), "PGD has eps=0.1 but eps=0.2"),
    (lambda m: [ma.PGD(m), ma.DeepFool(m)], dict(eps=0.1), "ambiguous.*L2 and Linf"),
    (lambda m: [ma.FGSM(m)], dict(eps=-1.0), "eps must be >= 0"),
])
def test_a_threat_model_mismatch_raises(make, kwargs, match, digits_mlp):
    m = digits_mlp.model
    with pytest.raises(ValueError, match=match):
        robust_accuracy(m, (digits_mlp.x[:4], digits_mlp.y[:4]), make(m), **_kwargs(**kwargs))
