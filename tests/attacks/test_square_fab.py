"""Square and FAB: strength against torchattacks, masked gradients, projection.

Seeds: attacks use seed=0 (private generators). Tolerance: 2 percentage points.
"""

import pytest
import torch
from torch import nn

import modelsec_fast.attacks as ma
from modelsec_fast.attacks.fab import project_onto_hyperplane_in_box
from tests.attacks.strength import Rounded, assert_at_least_as_strong, robust_acc

torchattacks = pytest.importorskip("torchattacks", reason="torchattacks is a test-only anchor")

SEED = 99
TOL = 0.02


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.6)])
def test_square_at_least_as_strong_as_torchattacks(norm, eps, digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:120], digits_mlp.y[:120]
    theirs = robust_acc(m, torchattacks.Square(m, norm=norm, eps=eps, n_queries=100)(x, y), y)
    ours = robust_acc(m, ma.Square(m, norm=norm, eps=eps, n_queries=100)(x, y), y)
    assert_at_least_as_strong(ours, theirs, TOL, f"Square {norm}", seed=0)


def test_square_breaks_a_model_with_masked_gradients(digits_mlp):
    m = Rounded(digits_mlp.model).eval()
    x, y = digits_mlp.x[:100], digits_mlp.y[:100]
    torch.manual_seed(SEED)
    clean = robust_acc(m, x, y)
    pgd = robust_acc(m, ma.PGD(m, eps=0.1, alpha=0.02, steps=10)(x, y), y)
    square = robust_acc(m, ma.Square(m, eps=0.1, n_queries=200)(x, y), y)
    print(f"clean {clean} pgd {pgd} square {square}")
    assert pgd >= clean - 0.02  # zero gradients: PGD only moves by its random start
    assert square < clean - 0.1


def test_targeted_square_reaches_targets(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:60], digits_mlp.y[:60]
    atk = ma.Square(m, eps=0.3, n_queries=300)
    atk.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10)
    with torch.no_grad():
        hit = (m(atk(x, y)).argmax(1) == (y + 1) % 10).float().mean()
    assert hit > 0.8


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.6)])
def test_square_output_valid_and_reproducible(norm, eps, digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:40], digits_mlp.y[:40]
    state = torch.get_rng_state()
    a = ma.Square(m, norm=norm, eps=eps, n_queries=30)(x, y)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, ma.Square(m, norm=norm, eps=eps, n_queries=30)(x, y))
    d = (a - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-5) + 1e-6 and a.min() >= 0 and a.max() <= 1


def test_square_rejects_non_image_batches():
    with pytest.raises(ValueError, match="B, C, H, W"):
        ma.Square(nn.Linear(4, 3))(torch.rand(2, 4), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.6)])
def test_fab_at_least_as_strong_as_torchattacks(multi, norm, eps, digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:60], digits_mlp.y[:60]
    kw = dict(norm=norm, eps=eps, steps=8, multi_targeted=multi, n_classes=10)
    if multi:
        kw["n_classes"] = 4  # three targets keep the test fast; both libraries the same
    theirs = robust_acc(m, torchattacks.FAB(m, **kw)(x, y), y)
    ours = robust_acc(m, ma.FAB(m, **kw)(x, y), y)
    assert_at_least_as_strong(ours, theirs, TOL, f"FAB{'-T' if multi else ''} {norm}", seed=0)


def test_fab_targeted_by_label_reaches_targets(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:50], digits_mlp.y[:50]
    atk = ma.FAB(m, eps=0.5, steps=30)
    atk.set_mode_targeted_by_label()
    targets = (y + 2) % 10
    with torch.no_grad():
        hit = (m(atk(x, targets)).argmax(1) == targets).float().mean()
    assert hit > 0.8


def _linf_reference(t, w, b):
    """Minimal L-inf d with w.(t+d) = b, 0 <= t+d <= 1, by linear programming."""
    import numpy as np
    from scipy.optimize import linprog
    n = t.numel()
    c = np.zeros(n + 1)
    c[-1] = 1.0
    a_ub = np.zeros((2 * n, n + 1))
    a_ub[:n, :n] = np.eye(n)
    a_ub[:n, -1] = -1
    a_ub[n:, :n] = -np.eye(n)
    a_ub[n:, -1] = -1
    bounds = [(-float(ti), 1 - float(ti)) for ti in t] + [(0, None)]
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=np.r_[w.numpy(), 0][None],
                  b_eq=[float(b - (w * t).sum())], bounds=bounds)
    return res.x[-1] if res.success else None


def _l2_reference(t, w, b):
    """Minimal L2 d by bisection on the KKT multiplier (slow loop)."""
    c = float(b - (w * t).sum())
    s = 1.0 if c >= 0 else -1.0
    lo_b, hi_b = -t, 1 - t

    def d_of(lam):
        return torch.clamp(s * lam * w, lo_b, hi_b)
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        if s * float((w * d_of(mid)).sum()) < abs(c):
            lo = mid
        else:
            hi = mid
    return d_of(hi)


def test_fab_projection_is_minimal_against_references():
    gen = torch.Generator().manual_seed(SEED)
    for trial in range(30):
        n = 3 + trial % 9
        t = torch.rand(n, generator=gen, dtype=torch.float64)
        w = torch.randn(n, generator=gen, dtype=torch.float64)
        w[torch.rand(n, generator=gen) < 0.2] = 0.0
        target = torch.rand(n, generator=gen, dtype=torch.float64)
        b = (w * target).sum()  # reachable inside the box
        d = project_onto_hyperplane_in_box(t[None], w[None], b[None], "Linf")[0]
        assert abs(float((w * (t + d)).sum() - b)) < 1e-9
        assert float((t + d).min()) >= -1e-12 and float((t + d).max()) <= 1 + 1e-12
        ref = _linf_reference(t, w, b)
        assert ref is not None and abs(float(d.abs().max()) - ref) < 1e-6
        d2 = project_onto_hyperplane_in_box(t[None], w[None], b[None], "L2")[0]
        assert abs(float((w * (t + d2)).sum() - b)) < 1e-9
        torch.testing.assert_close(d2, _l2_reference(t, w, b), atol=1e-6, rtol=0)
