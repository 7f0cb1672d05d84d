"""How each method works inside: normalised inputs, Free AT's replays and
carried perturbation, TRADES' KL loss inside the attack, FGSM-RS' step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modelsec_fast.ops as ops
from modelsec_fast.defenses import AdversarialTrainer
from modelsec_fast.defenses.trades import TradesAttackLoss, kl_per_sample, trades_loss_per_sample
from modelsec_fast.models import build_model

from at_helpers import make_loader

MEAN, STD = [0.3], [0.4]


class Normalize(nn.Module):
    def forward(self, x):
        return (x - MEAN[0]) / STD[0]


@pytest.mark.parametrize("method", ["pgd", "fgsm_rs", "free", "trades"])
def test_normalised_inputs_train_like_pixel_inputs_with_inner_normalisation(digits, method):
    """A model fed (x - mean)/std with normalization=(mean, std) gets the same
    update as the same model behind a Normalize layer fed pixels."""
    seed = 8
    print(f"seed={seed} method={method}")
    torch.manual_seed(seed)
    inner = build_model("small_cnn", (1, 8, 8), 10)
    outer = nn.Sequential(Normalize(), copy.deepcopy(inner))
    x, y = digits.x_train[:32], digits.y_train[:32]
    options = {"steps": 3} if method in ("pgd", "trades") else {}
    a = AdversarialTrainer(inner, torch.optim.SGD(inner.parameters(), lr=0.5), method, eps=0.1,
                           normalization=(MEAN, STD), guard=False, progress=False, **options)
    b = AdversarialTrainer(outer, torch.optim.SGD(outer.parameters(), lr=0.5), method, eps=0.1,
                           guard=False, progress=False, **options)
    torch.manual_seed(seed)
    out_a = a.train_step((x - MEAN[0]) / STD[0], y)
    torch.manual_seed(seed)
    out_b = b.train_step(x, y)
    pixels_a = out_a.adversarial * STD[0] + MEAN[0]
    torch.testing.assert_close(pixels_a, out_b.adversarial, rtol=0, atol=1e-5)
    assert float((pixels_a - x).abs().max()) <= 0.1 + 1e-5, "eps is in pixel units"
    for p, q in zip(inner.parameters(), outer[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_free_at_replays_and_carries_the_perturbation(digits, monkeypatch):
    seed = 4
    print(f"seed={seed}")
    torch.manual_seed(seed)
    model = build_model("small_cnn", (1, 8, 8), 10)
    replays = 3
    trainer = AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "free",
                                 eps=0.1, replays=replays, progress=False)
    forwards = []
    model.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
    calls = []
    real_step = ops.sign_step

    def spy(x_adv, grad, x_orig, alpha, eps, lo=0.0, hi=1.0):
        calls.append((x_adv.detach().clone(), grad.clone(), alpha, eps))
        return real_step(x_adv, grad, x_orig, alpha, eps, lo, hi)
    monkeypatch.setattr(ops, "sign_step", spy)

    x1, y1 = digits.x_train[:16], digits.y_train[:16]
    x2, y2 = digits.x_train[16:32], digits.y_train[16:32]
    trainer.train_step(x1, y1)
    # One forward and one backward per replay: no extra attack pass.
    assert forwards == [16] * replays
    assert len(calls) == replays and all(c[2] == 0.1 and c[3] == 0.1 for c in calls)
    # The first replay trains on the clean batch (zero start), later ones on x + delta.
    torch.testing.assert_close(calls[0][0], x1, rtol=0, atol=0)
    assert float((calls[1][0] - x1).abs().max()) > 0
    delta_after_first = trainer._carried.delta.clone()
    assert float(delta_after_first.abs().max()) <= 0.1 + 1e-6
    trainer.train_step(x2, y2)
    # The next minibatch starts from the carried perturbation.
    expected_start = (x2 + delta_after_first).clamp(0, 1)
    torch.testing.assert_close(calls[replays][0], expected_start, rtol=0, atol=1e-6)
    assert trainer.optimizer_steps == 2 * replays


def test_free_at_divides_epochs_by_replays(digits):
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 8, 8), 10)
    trainer = AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "free",
                                 eps=0.1, replays=4, progress=False)
    loader = make_loader(digits.x_train[:128], digits.y_train[:128], batch_size=64)
    history = trainer.fit(loader, epochs=6)
    assert len(history) == 2  # ceil(6 / 4) passes
    assert trainer.optimizer_steps == 2 * len(loader) * 4


def test_free_at_grows_the_buffer_for_a_larger_batch(digits):
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 8, 8), 10)
    trainer = AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "free",
                                 eps=0.1, replays=1, progress=False)
    trainer.train_step(digits.x_train[:5], digits.y_train[:5])
    trainer.train_step(digits.x_train[:9], digits.y_train[:9])
    assert trainer._carried.delta.shape[0] == 9


def test_trades_attack_maximises_the_kl_loss_through_the_loss_argument(digits):
    seed = 6
    print(f"seed={seed}")
    torch.manual_seed(seed)
    model = build_model("small_cnn", (1, 8, 8), 10)
    trainer = AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "trades",
                                 eps=0.1, steps=5, progress=False)
    assert isinstance(trainer.attack.loss, TradesAttackLoss)
    calls = []

    class Spy(TradesAttackLoss):
        def __call__(self, logits, labels):
            calls.append(logits.shape)
            return super().__call__(logits, labels)
    spy = Spy()
    trainer._trades_loss = spy
    trainer.attack.loss = spy
    x, y = digits.x_train[:32], digits.y_train[:32]
    model.eval()
    with torch.no_grad():
        clean = F.softmax(model(x), 1)
    torch.manual_seed(seed)
    out = trainer.train_step(x, y)
    assert len(calls) == 5 and spy.clean_probs is None
    model_kl = lambda xa: float(kl_per_sample(model(xa), clean).sum())  # noqa: E731
    with torch.no_grad():
        noise = (x + torch.empty_like(x).uniform_(-0.1, 0.1)).clamp(0, 1)
        # The attack ran on the pre-step weights; compare on those (an SGD step of 0.1 is small).
        assert model_kl(out.adversarial) > model_kl(noise)


def test_kl_per_sample_matches_torch_kl_div():
    torch.manual_seed(0)
    adv, clean = torch.randn(7, 5), torch.randn(7, 5)
    p = F.softmax(clean, 1)
    want = F.kl_div(F.log_softmax(adv, 1), p, reduction="none").sum(1)
    torch.testing.assert_close(kl_per_sample(adv, p), want)


def test_trades_training_loss_differentiates_both_passes():
    torch.manual_seed(0)
    clean = torch.randn(4, 3, requires_grad=True)
    adv = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    loss = trades_loss_per_sample(clean, adv, y, beta=6.0)
    assert loss.shape == (4,)
    loss.sum().backward()
    assert float(clean.grad.abs().sum()) > 0 and float(adv.grad.abs().sum()) > 0
    # beta = 0 is plain cross-entropy on the clean input.
    torch.testing.assert_close(trades_loss_per_sample(clean, adv, y, 0.0),
                               F.cross_entropy(clean, y, reduction="none"))


def test_fgsm_rs_uses_alpha_1_25_eps_and_the_library_ffgsm():
    from modelsec_fast.attacks import FFGSM

    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 8, 8), 10)
    trainer = AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "fgsm_rs",
                                 eps=0.08, progress=False)
    assert isinstance(trainer.attack, FFGSM)
    assert trainer.attack.alpha == pytest.approx(1.25 * 0.08)
    assert trainer.attack.eps == pytest.approx(0.08)


def test_batch_of_one_and_non_contiguous_input(digits):
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 8, 8), 10)
    trainer = AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "pgd",
                                 eps=0.1, steps=2, progress=False)
    out = trainer.train_step(digits.x_train[:1], digits.y_train[:1])
    assert out.size == 1 and out.adversarial.shape == (1, 1, 8, 8)
    strided = digits.x_train[:8].transpose(2, 3)
    assert not strided.is_contiguous()
    out = trainer.train_step(strided, digits.y_train[:8])
    assert out.size == 8 and float((out.adversarial - strided).abs().max()) <= 0.1 + 1e-6


def test_empty_batch_takes_no_step_outside_dp(digits):
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 8, 8), 10)
    trainer = AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "pgd",
                                 eps=0.1, steps=2, progress=False)
    before = [p.clone() for p in model.parameters()]
    out = trainer.train_step(digits.x_train[:0], digits.y_train[:0])
    assert out.size == 0 and trainer.optimizer_steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
