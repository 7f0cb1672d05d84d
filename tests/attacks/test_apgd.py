"""APGD / APGDT: strength against torchattacks and PGD, losses, errors.

Seeds: attacks use seed=0 (private generators); PGD's random start uses
torch.manual_seed(SEED).  Tolerance: 2 percentage points of robust accuracy
(9 of 449 test digits), stated per test.
"""

import pytest
import torch
from torch import nn

import modelsec_fast.attacks as ma
from tests.attacks.strength import assert_at_least_as_strong, robust_acc

torchattacks = pytest.importorskip("torchattacks", reason="torchattacks is a test-only anchor")

SEED = 2024
TOL = 0.02


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.6)])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_at_least_as_strong_as_torchattacks(norm, eps, loss, digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x, digits_mlp.y
    theirs = robust_acc(m, torchattacks.APGD(m, norm=norm, eps=eps, steps=10, loss=loss, seed=0)(x, y), y)
    ours = robust_acc(m, ma.APGD(m, norm=norm, eps=eps, steps=10, loss=loss, seed=0)(x, y), y)
    assert_at_least_as_strong(ours, theirs, TOL, f"APGD-{loss} {norm}", seed=0)


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.6)])
def test_apgdt_at_least_as_strong_as_torchattacks(norm, eps, digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:100], digits_mlp.y[:100]
    theirs = robust_acc(m, torchattacks.APGDT(m, norm=norm, eps=eps, steps=5, n_classes=10)(x, y), y)
    ours = robust_acc(m, ma.APGDT(m, norm=norm, eps=eps, steps=5, n_classes=10)(x, y), y)
    assert_at_least_as_strong(ours, theirs, TOL, f"APGDT {norm}", seed=0)


def test_apgd_at_least_as_strong_as_pgd_with_the_same_budget(digits_cnn):
    m, x, y = digits_cnn.model, digits_cnn.x, digits_cnn.y
    steps = 20  # APGD: 21 gradient evaluations; PGD gets 21 steps
    torch.manual_seed(SEED)
    pgd = robust_acc(m, ma.PGD(m, eps=0.1, alpha=0.025, steps=steps + 1)(x, y), y)
    apgd = robust_acc(m, ma.APGD(m, eps=0.1, steps=steps, seed=0)(x, y), y)
    assert_at_least_as_strong(apgd, pgd, 0.01, "APGD-CE vs PGD", seed=SEED)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_100_steps_on_the_cnn_vs_torchattacks(loss, digits_cnn):
    m, x, y = digits_cnn.model, digits_cnn.x, digits_cnn.y
    theirs = robust_acc(m, torchattacks.APGD(m, eps=0.1, steps=100, loss=loss)(x, y), y)
    ours = robust_acc(m, ma.APGD(m, eps=0.1, steps=100, loss=loss)(x, y), y)
    assert_at_least_as_strong(ours, theirs, 0.01, f"APGD-{loss} 100 steps", seed=0)


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.6)])
def test_apgd_output_in_ball_and_reproducible(norm, eps, digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:64], digits_mlp.y[:64]
    state = torch.get_rng_state()
    a = ma.APGD(m, norm=norm, eps=eps, steps=5, n_restarts=2)(x, y)
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched
    assert torch.equal(a, ma.APGD(m, norm=norm, eps=eps, steps=5, n_restarts=2)(x, y))
    d = (a - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-5) + 1e-6 and a.min() >= 0 and a.max() <= 1


def test_early_stopping_path_breaks_what_the_full_attack_breaks(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x, digits_mlp.y
    atk = ma.APGD(m, eps=0.1, steps=10)
    full = robust_acc(m, atk(x, y), y)
    fast = robust_acc(m, atk.run_for_evaluation(x, y), y)
    assert fast <= full


def test_targeted_apgd_reaches_targets(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:100], digits_mlp.y[:100]
    atk = ma.APGD(m, eps=0.3, steps=30)
    atk.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10)
    with torch.no_grad():
        hit = (m(atk(x, y)).argmax(1) == (y + 1) % 10).float().mean()
    assert hit > 0.9


def test_dlr_needs_three_classes_and_targeted_dlr_four():
    torch.manual_seed(SEED)
    two = nn.Linear(4, 2)
    x, y = torch.rand(5, 4), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="at least 3 classes"):
        ma.APGD(two, loss="dlr")(x, y)
    three = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="at least 4 classes"):
        ma.APGDT(three, n_classes=3)(x, y)
    ma.APGD(three, loss="dlr", steps=2)(x, y)  # 3 classes are enough for DLR


def test_apgd_custom_loss_must_be_per_sample(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:8], digits_mlp.y[:8]
    with pytest.raises(ValueError, match="one value per"):
        ma.APGD(m, loss=nn.CrossEntropyLoss())(x, y)
    ours = ma.APGD(m, loss=nn.CrossEntropyLoss(reduction="none"), steps=3)(x, y)
    assert torch.equal(ours, ma.APGD(m, loss="ce", steps=3)(x, y))


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=-1.0), "eps"), (dict(steps=0), "steps"), (dict(norm="L1"), "norm"),
    (dict(n_restarts=0), "n_restarts"), (dict(loss="hinge"), "loss"),
])
def test_apgd_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ma.APGD(nn.Linear(2, 4), **kwargs)


class _NoisyInput(nn.Module):
    """A randomised defence: Gaussian noise on the input (torch's global RNG)."""

    def __init__(self, model, sigma=0.2):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model(x + self.sigma * torch.randn_like(x))


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_eot_averages_the_gradients_and_losses_of_its_draws(loss, digits_mlp):
    noisy = _NoisyInput(digits_mlp.model)
    x, y, k = digits_mlp.x[:32], digits_mlp.y[:32], 4
    one, eot = ma.APGD(noisy, loss=loss), ma.APGD(noisy, loss=loss, eot_iter=k)
    objective = one._objective_for(None)
    torch.manual_seed(SEED)
    draws = [one._evaluate(x.clone(), y, None, objective) for _ in range(k)]
    torch.manual_seed(SEED)
    grad, value, _ = eot._evaluate(x.clone(), y, None, objective)
    mean_grad = torch.stack([g for g, _, _ in draws]).mean(0)
    mean_value = torch.stack([v for _, v, _ in draws]).mean(0)
    assert not torch.allclose(draws[0][0], draws[1][0])  # the draws really differ
    torch.testing.assert_close(grad, mean_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(value, mean_value, rtol=1e-5, atol=1e-7)


def test_eot_is_a_no_op_on_a_deterministic_model(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:64], digits_mlp.y[:64]
    plain = ma.APGD(m, eps=0.1, steps=5)(x, y)
    torch.testing.assert_close(ma.APGD(m, eps=0.1, steps=5, eot_iter=3)(x, y), plain,
                               rtol=0, atol=1e-6)
