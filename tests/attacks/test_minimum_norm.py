"""Minimum-norm attacks (CW, DeepFool): exact distances on affine models, torchattacks parity,
the result record, bad input."""

import json
import math

import pytest
import torch
from torch import nn

import modelsec_fast.attacks as ma
from modelsec_fast.attacks.minimum_norm import MinimumNormResult, perturbation_norms

SEED = 11


def affine_binary(seed: int, dim: int = 16, n: int = 24):
    """(model, x, labels, exact L2 distances, exact L-inf distances) of a 2-class affine model.

    Points lie around 0.5 with distances to the boundary in [0.02, ~0.15], far enough
    inside [0, 1] that clamping never binds on the way to the boundary.  Float64, so that
    the bounds test the algorithm, not float32 rounding of pixels near 0.5.
    """
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(dim, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, dim, generator=g, dtype=torch.float64))
        w = model.weight[1] - model.weight[0]
        unit = w / w.norm()
        # Points at signed distances +-[0.02, 0.15] from the hyperplane through 0.5.
        signed = (0.02 + 0.13 * torch.rand(n, generator=g, dtype=torch.float64)) * \
            (torch.randint(0, 2, (n,), generator=g) * 2 - 1)
        along = 0.03 * torch.randn(n, dim, generator=g, dtype=torch.float64)
        along -= (along @ unit)[:, None] * unit  # stay at the chosen distance
        x = 0.5 + along + signed[:, None] * unit
        model.bias.copy_(torch.tensor([0.0, -float(w @ torch.full((dim,), 0.5,
                                                                  dtype=torch.float64))]))
        margin = x @ w + model.bias[1] - model.bias[0]
        labels = model(x).argmax(1)
    return model.eval(), x, labels, margin.abs() / w.norm(), margin.abs() / w.abs().sum()


# ---------------------------------------------------------------- affine models
@pytest.mark.parametrize("seed", [SEED, SEED + 1])
@pytest.mark.parametrize("overshoot", [0.02, 0.1])
def test_deepfool_l2_lands_at_overshoot_times_the_exact_distance(seed, overshoot):
    model, x, y, d, _ = affine_binary(seed)
    adv = ma.DeepFool(model, overshoot=overshoot)(x, y)
    l2 = perturbation_norms(adv, x, "L2")
    print(f"seed {seed}: L2 / d in [{float((l2 / d).min()):.7f}, {float((l2 / d).max()):.7f}]")
    assert bool((l2 >= d * (1 - 1e-6)).all()), f"seed {seed}"
    assert bool((l2 <= (1 + overshoot) * d * (1 + 1e-5)).all()), f"seed {seed}"
    with torch.no_grad():
        assert bool((model(adv).argmax(1) != y).all())


@pytest.mark.parametrize("seed", [SEED, SEED + 1])
def test_deepfool_linf_lands_at_overshoot_times_the_exact_distance(seed):
    model, x, y, _, d_inf = affine_binary(seed)
    adv = ma.DeepFool(model, norm="Linf", overshoot=0.02)(x, y)
    linf = perturbation_norms(adv, x, "Linf")
    assert bool((linf >= d_inf * (1 - 1e-6)).all()), f"seed {seed}"
    assert bool((linf <= 1.02 * d_inf * (1 + 1e-5)).all()), f"seed {seed}"


@pytest.mark.parametrize("seed", [SEED, SEED + 1])
def test_cw_l2_is_within_5_percent_of_the_exact_distance(seed):
    model, x, y, d, _ = affine_binary(seed)
    adv = ma.CW(model, steps=100, lr=0.01)(x, y)
    l2 = perturbation_norms(adv, x, "L2")
    with torch.no_grad():
        assert bool((model(adv).argmax(1) != y).all()), f"seed {seed}"
    print(f"seed {seed}: CW L2 / d max {float((l2 / d).max()):.5f}")
    assert bool((l2 <= 1.05 * d).all()), f"seed {seed}"
    assert bool((l2 >= d * (1 - 1e-5)).all())  # nothing closer than the boundary exists


# ------------------------------------------------------------ torchattacks CW
@pytest.mark.parametrize("c,kappa,targeted", [(0.5, 0.0, False), (5.0, 0.5, False),
                                              (2.0, 0.0, True)])
def test_cw_compat_equals_torchattacks_cw(c, kappa, targeted, digits_cnn):
    ta = pytest.importorskip("torchattacks")
    m, x, y = digits_cnn.model, digits_cnn.x[:40], digits_cnn.y[:40]
    ours = ma.CW(m, c=c, kappa=kappa, steps=30, lr=0.02, compat="torchattacks")
    theirs = ta.CW(m, c=c, kappa=kappa, steps=30, lr=0.02)
    if targeted:
        ours.set_mode_targeted_by_label()
        theirs.set_mode_targeted_by_label(quiet=True)
        y = (y + 1) % 10
    # Stated tolerance: equal to the last bit on the CPU (the same float operations).
    torch.testing.assert_close(ours(x, y), theirs(x, y), rtol=0, atol=0)


def test_cw_default_is_not_worse_than_torchattacks(digits_cnn):
    ta = pytest.importorskip("torchattacks")
    m, x, y = digits_cnn.model, digits_cnn.x[:60], digits_cnn.y[:60]
    ours = ma.CW(m, c=1.0, steps=50, lr=0.05).evaluate(x, y)
    adv = ta.CW(m, c=1.0, steps=50, lr=0.05)(x, y)
    theirs = ma.CW(m, c=1.0, steps=50, lr=0.05)  # only to measure torchattacks' examples
    with torch.no_grad():
        fooled = m(adv).argmax(1) != y
        attacked = m(x).argmax(1) == y
    l2 = perturbation_norms(adv, x, "L2").double()
    d_theirs = torch.where(fooled, l2, torch.full_like(l2, math.inf))[attacked]
    d_ours = torch.tensor(ours.distances, dtype=torch.float64)[attacked]
    print(f"success ours {ours.success_rate:.3f} theirs {float(fooled[attacked].float().mean()):.3f};"
          f" median L2 (failures inf) ours {float(d_ours.median()):.4f} "
          f"theirs {float(d_theirs.median()):.4f}")
    assert ours.n_found >= int(fooled[attacked].sum())
    assert float(d_ours.median()) <= float(d_theirs.median())
    both = torch.isfinite(d_ours) & torch.isfinite(d_theirs)
    assert float(d_ours[both].median()) <= float(d_theirs[both].median())
    del theirs


# -------------------------------------------------------- reference loops
def _reference_deepfool(model, x, y, steps, overshoot, top_k):
    """DeepFool on one sample at a time, every class gradient by its own backward pass.

    Steps from the clamped iterate ``p``; the candidate ``x + (1 + overshoot) (p - x)``,
    clamped, is tested after every step.
    """
    out = []
    for xi, yi in zip(x, y):
        xi, label = xi[None], int(yi)
        with torch.no_grad():
            z0 = model(xi)[0]
        others = [c for c in z0.argsort(descending=True).tolist() if c != label][:top_k - 1]
        p = xi.clone()
        for step in range(steps + 1):
            candidate = torch.clamp(xi + (1 + overshoot) * (p - xi), 0, 1)
            with torch.no_grad():
                if int(model(candidate)[0].argmax()) != label or step == steps:
                    break
            point = p.clone().requires_grad_(True)
            z = model(point)[0]
            best = None
            for c in others:
                f = z[c] - z[label]
                w, = torch.autograd.grad(f, point, retain_graph=True)
                dist = float(f.detach().abs() / w.norm().clamp_min(1e-12))
                if best is None or dist < best[0]:
                    best = (dist, float(f.detach().abs()), w)
            _, size, w = best
            p = torch.clamp(p + size / w.norm().pow(2).clamp_min(1e-12) * w, 0, 1)
        out.append(candidate[0])
    return torch.stack(out)


def test_deepfool_batched_equals_a_per_sample_loop(digits_mlp):
    m = digits_mlp.model.double()
    try:
        x, y = digits_mlp.x[:12].double(), digits_mlp.y[:12]
        batched = ma.DeepFool(m, steps=20, overshoot=0.02, top_k=4)(x, y)
        torch.testing.assert_close(batched, _reference_deepfool(m, x, y, 20, 0.02, 4),
                                   rtol=1e-9, atol=1e-9)
    finally:
        m.float()


@pytest.mark.slow  # ART's per-label gradient loop: about 15 s on 2 quiet cores
def test_deepfool_l2_is_no_larger_than_arts(digits_cnn):
    """ART's DeepFool (all classes, overshoot on the accumulated perturbation) is the anchor:
    on the samples both break, our median L2 is no larger (a full step in the unblocked
    pixels, instead of the clamped step, lands 2-5% further out here)."""
    pytest.importorskip("art")
    from art.attacks.evasion import DeepFool as ArtDeepFool
    from art.estimators.classification import PyTorchClassifier
    m, x, y = digits_cnn.model, digits_cnn.x[:60], digits_cnn.y[:60]
    classifier = PyTorchClassifier(m, nn.CrossEntropyLoss(), input_shape=(1, 8, 8),
                                   nb_classes=10, clip_values=(0.0, 1.0))
    art = ArtDeepFool(classifier, max_iter=50, epsilon=0.02, nb_grads=10, batch_size=60,
                      verbose=False)

    def distances(adv):
        adv = torch.as_tensor(adv)
        with torch.no_grad():
            broken = (m(adv).argmax(1) != y) & (m(x).argmax(1) == y)
        d = perturbation_norms(adv, x, "L2").double()
        return torch.where(broken, d, torch.full_like(d, math.inf))

    ours = distances(ma.DeepFool(m, steps=50, overshoot=0.02)(x, y))
    theirs = distances(art.generate(x.numpy()))
    both = torch.isfinite(ours) & torch.isfinite(theirs)
    print(f"found ours {int(torch.isfinite(ours).sum())} ART {int(torch.isfinite(theirs).sum())};"
          f" median L2 on both: ours {float(ours[both].median()):.4f} "
          f"ART {float(theirs[both].median()):.4f}")
    assert int(torch.isfinite(ours).sum()) >= int(torch.isfinite(theirs).sum())
    assert float(ours[both].median()) <= float(theirs[both].median())


def test_cw_batched_equals_single_sample_calls(digits_mlp):
    """Per sample, CW's batch (its per-sample early abort and binary search) changes nothing."""
    m = digits_mlp.model.double()
    try:
        x, y = digits_mlp.x[:8].double(), digits_mlp.y[:8]
        atk = ma.CW(m, steps=30, lr=0.05, binary_search_steps=4)
        batched = atk(x, y)
        single = torch.cat([atk(x[i:i + 1], y[i:i + 1]) for i in range(8)])
        torch.testing.assert_close(batched, single, rtol=1e-9, atol=1e-9)
    finally:
        m.float()


# ------------------------------------------------------------------ records
def test_result_reads_robust_accuracy_at_any_eps(digits_cnn):
    m, x, y = digits_cnn.model, digits_cnn.x[:50], digits_cnn.y[:50]
    result = ma.DeepFool(m).evaluate(x, y)
    with torch.no_grad():
        misclassified = int((m(x).argmax(1) != y).sum())
    assert result.n_samples == 50 and result.n_attacked == 50 - misclassified
    assert result.distances.count(0.0) >= misclassified
    found = sorted(d for d in result.distances if 0 < d < math.inf)
    assert result.n_found == len(found) and result.median_norm == pytest.approx(
        float(torch.tensor(found, dtype=torch.float64).median()))
    assert result.robust_accuracy_at(0.0) == pytest.approx(result.n_attacked / 50)
    eps = result.median_norm
    assert result.robust_accuracy_at(eps) == sum(d > eps for d in result.distances) / 50
    assert result.robust_accuracy_at(math.inf) == 0.0 or result.n_found < result.n_attacked
    curve = result.robust_accuracy_curve()
    values = list(curve.values())
    assert values == sorted(values, reverse=True)
    with pytest.raises(ValueError, match="L2 distances.*Linf eps"):
        result.robust_accuracy_at(0.1, norm="Linf")
    loaded = json.loads(result.to_json())
    assert loaded["median_norm"] == result.median_norm and loaded["norm"] == "L2"
    assert len(loaded["distances"]) == 50


def test_result_of_nothing_found_is_nan_and_json_safe():
    result = MinimumNormResult.from_distances("X", "Linf", torch.tensor([math.inf, 0.0]),
                                              torch.tensor([True, False]))
    assert result.n_found == 0 and math.isnan(result.median_norm) and result.success_rate == 0
    assert result.robust_accuracy_at(1.0) == 0.5
    text = result.to_json()
    assert "Infinity" not in text and "NaN" not in text and json.loads(text)["distances"] == [None, 0.0]


def test_evaluate_works_on_normalised_inputs(digits_mlp):
    from tests.attacks.strength import Unnormalising
    m = Unnormalising(digits_mlp.model).eval()
    x, y = digits_mlp.x[:20], digits_mlp.y[:20]
    atk = ma.DeepFool(m)
    atk.set_normalization_used([0.5], [0.25])
    normalised = atk.evaluate((x - 0.5) / 0.25, y)
    plain = ma.DeepFool(digits_mlp.model).evaluate(x, y)
    # Distances in pixel space, as without normalisation.  An example that sits on the
    # boundary can flip back under the normalisation round trip's rounding: only
    # the samples found by both are compared, and such flips must be rare.
    both = [i for i in range(20) if math.isfinite(normalised.distances[i])
            and math.isfinite(plain.distances[i])]
    assert len(both) >= plain.n_found - 3
    assert [normalised.distances[i] for i in both] == \
        pytest.approx([plain.distances[i] for i in both], rel=1e-4, abs=1e-6)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,match", [
    (dict(kappa=-0.1), "kappa must be >= 0"), (dict(c=0), "c must be > 0"),
    (dict(c=-1.0), "c must be > 0"), (dict(steps=0), "steps must be >= 1"),
    (dict(lr=0), "lr must be > 0"), (dict(binary_search_steps=0), "binary_search_steps"),
    (dict(compat="cleverhans"), "compat must be one of"),
    (dict(compat="torchattacks", binary_search_steps=5), "no binary search"),
])
def test_cw_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ma.CW(nn.Linear(4, 3), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps must be >= 1"), (dict(overshoot=-0.1), "overshoot must be >= 0"),
    (dict(norm="L1"), "norm must be one of"), (dict(top_k=1), "top_k must be >= 2"),
])
def test_deepfool_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ma.DeepFool(nn.Linear(4, 3), **kwargs)


def test_deepfool_has_no_targeted_mode():
    with pytest.raises(ValueError, match="does not support targeted"):
        ma.DeepFool(nn.Linear(4, 3)).set_mode_targeted_random()


@pytest.mark.parametrize("make", [lambda m: ma.CW(m, steps=2, binary_search_steps=1),
                                  lambda m: ma.DeepFool(m, steps=2)])
def test_probabilities_get_a_warning(make, digits_mlp):
    soft = nn.Sequential(digits_mlp.model, nn.Softmax(dim=1)).eval()
    with pytest.warns(UserWarning, match="probabilities"):
        make(soft)(digits_mlp.x[:4], digits_mlp.y[:4])
