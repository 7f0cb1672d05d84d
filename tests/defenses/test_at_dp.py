"""Adversarial training under DP-SGD (PrivacyEngine).

* Parity: with noise 0, the DP step equals the per-sample ground truth on the
  same adversarial batch (one backward per sample, clip to C with
  min(1, C/(n + 1e-6)), sum, divide by the expected batch size).  If the
  engine recorded the attack's own passes, the step would differ.
* PGD-AT under DP runs end to end; the accountant counts one step per
  optimizer step.
* What would break the guarantee is refused with a clear error.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from modelsec_fast import PrivacyEngine
from modelsec_fast.defenses import AdversarialTrainer
from modelsec_fast.defenses.trades import trades_loss_per_sample
from modelsec_fast.models import build_model

from at_helpers import make_loader

CLIP = 1.14  # inside the range of per-sample norms at init (about 1.11-1.18)
BETA = 6.0


def _private(digits, seed, noise, batch_size=32, accountant="rdp", lr=1.0, **options):
    torch.manual_seed(seed)
    base = build_model("small_cnn", (1, 8, 8), 10)
    reference = copy.deepcopy(base)
    engine = PrivacyEngine(accountant=accountant)
    model, opt, loader = engine.make_private(
        module=base, optimizer=torch.optim.SGD(base.parameters(), lr=lr),
        data_loader=make_loader(digits.x_train, digits.y_train, batch_size=batch_size, seed=seed),
        noise_multiplier=noise, max_grad_norm=CLIP,
        noise_generator=torch.Generator().manual_seed(seed), **options)
    return base, reference, engine, model, opt, loader


def _ground_truth(reference, method, images, adversarial, labels, expected_batch_size):
    """Clipped per-sample gradients of the adversarial batch, summed, / E[B]."""
    params = list(reference.parameters())
    total = [torch.zeros_like(p) for p in params]
    clipped = 0
    for i in range(labels.shape[0]):
        x, xa, y = images[i:i + 1], adversarial[i:i + 1], labels[i:i + 1]
        if method == "trades":
            loss = trades_loss_per_sample(reference(x), reference(xa), y, BETA).sum()
        else:
            loss = F.cross_entropy(reference(xa), y)
        grads = torch.autograd.grad(loss, params)
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        factor = min(1.0, CLIP / (norm + 1e-6))
        clipped += factor < 1.0
        for t, g in zip(total, grads):
            t.add_(g, alpha=factor)
    return [t / expected_batch_size for t in total], clipped


@pytest.mark.parametrize("method", ["pgd", "fgsm_rs", "trades"])
@pytest.mark.parametrize("loss_reduction", ["mean", "sum"])
def test_dp_step_equals_per_sample_ground_truth_on_the_adversarial_batch(digits, method,
                                                                         loss_reduction):
    seed = 11
    print(f"seed={seed} method={method} loss_reduction={loss_reduction}")
    base, reference, _, model, opt, loader = _private(digits, seed, noise=0.0,
                                                      loss_reduction=loss_reduction)
    trainer = AdversarialTrainer(model, opt, method, eps=0.1, beta=BETA, guard=False,
                                 progress=False)
    images, labels = next(iter(loader))
    before = [p.detach().clone() for p in base.parameters()]
    out = trainer.train_step(images, labels)
    update = [b - p.detach() for b, p in zip(before, base.parameters())]  # lr = 1

    assert out.adversarial.shape == images.shape
    assert float((out.adversarial - images).abs().max()) <= 0.1 + 1e-6
    divisor = opt.expected_batch_size if loss_reduction == "mean" else 1.0
    truth, clipped = _ground_truth(reference, method, images, out.adversarial, labels, divisor)
    print(f"batch={labels.shape[0]} clipped={clipped}")
    assert clipped >= 1, "the test must exercise clipping"
    for got, want in zip(update, truth):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_attack_is_crafted_per_sample_independent_of_batch_companions(digits):
    """Each adversarial example depends only on its own record (summed attack loss)."""
    seed = 3
    print(f"seed={seed}")
    _, _, _, model, opt, _ = _private(digits, seed, noise=0.0)
    trainer = AdversarialTrainer(model, opt, "pgd", eps=0.1, steps=5, guard=False, progress=False)
    x, y = digits.x_train[:16], digits.y_train[:16]
    attack = trainer.attack
    attack.random_start = False  # isolate the data dependence from the random start
    alone = torch.cat([attack(x[i:i + 1], y[i:i + 1]) for i in range(16)])
    together = attack(x, y)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)


def test_pgd_at_under_dp_end_to_end_counts_one_accountant_step_per_optimizer_step(digits):
    seed = 7
    print(f"seed={seed}")
    _, _, engine, model, opt, loader = _private(digits, seed, noise=1.0, batch_size=128, lr=0.5)
    trainer = AdversarialTrainer(model, opt, "pgd", eps=0.1, steps=3, guard=False,
                                 privacy_engine=engine, delta=1e-5, progress=False)
    history = trainer.fit(loader, epochs=2)
    steps = trainer.optimizer_steps
    assert steps == sum(r["batches"] for r in history) == 2 * len(loader)
    assert len(engine.accountant) == steps
    assert history[-1]["epsilon"] > history[0]["epsilon"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_free_at_is_refused_under_dp(digits):
    _, _, _, model, opt, _ = _private(digits, 0, noise=1.0)
    with pytest.raises(ValueError, match="Free adversarial training cannot run under DP"):
        AdversarialTrainer(model, opt, "free", eps=0.1)


def test_guard_on_private_data_is_refused_under_dp(digits):
    _, _, _, model, opt, loader = _private(digits, 0, noise=1.0)
    trainer = AdversarialTrainer(model, opt, "fgsm_rs", eps=0.1, progress=False)
    with pytest.raises(ValueError, match="cannot fall back to a training batch"):
        trainer.fit(loader, 1)
    trainer = AdversarialTrainer(model, opt, "fgsm_rs", eps=0.1, progress=False,
                                 guard_data=(digits.x_test[:64], digits.y_test[:64]))
    with pytest.raises(ValueError, match="validation_is_public=True"):
        trainer.fit(loader, 1)


def test_eval_loader_needs_public_flag_under_dp(digits):
    _, _, _, model, opt, loader = _private(digits, 0, noise=1.0)
    evaluation = make_loader(digits.x_test, digits.y_test, shuffle=False)
    trainer = AdversarialTrainer(model, opt, "pgd", eps=0.1, steps=2, progress=False)
    with pytest.raises(ValueError, match="eval_loader reads validation data"):
        trainer.fit(loader, 1, eval_loader=evaluation)


def test_public_validation_guard_runs_under_dp(digits):
    seed = 2
    print(f"seed={seed}")
    _, _, engine, model, opt, loader = _private(digits, seed, noise=1.0, batch_size=128, lr=0.5)
    trainer = AdversarialTrainer(model, opt, "fgsm_rs", eps=0.1, progress=False,
                                 guard_data=(digits.x_test[:64], digits.y_test[:64]),
                                 validation_is_public=True)
    history = trainer.fit(loader, 1)
    assert "guard_robust_accuracy" in history[0]
    assert len(engine.accountant) == trainer.optimizer_steps


def test_checkpoint_under_dp_needs_the_privacy_engine(digits, tmp_path):
    _, _, _, model, opt, loader = _private(digits, 0, noise=1.0)
    trainer = AdversarialTrainer(model, opt, "pgd", eps=0.1, guard=False, progress=False,
                                 checkpoint_path=tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="privacy_engine"):
        trainer.fit(loader, 1)


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_empty_poisson_batch_is_a_noise_only_step(digits, method):
    seed = 4
    print(f"seed={seed} method={method}")
    base, _, engine, model, opt, _ = _private(digits, seed, noise=1.0)
    trainer = AdversarialTrainer(model, opt, method, eps=0.1, steps=2, guard=False, progress=False)
    before = [p.detach().clone() for p in base.parameters()]
    out = trainer.train_step(digits.x_train[:0], digits.y_train[:0])
    assert out.size == 0 and trainer.optimizer_steps == 1 and len(engine.accountant) == 1
    moved = [not torch.equal(b, p) for b, p in zip(before, base.parameters())]
    assert all(moved), "the noise of an empty Poisson batch must still be added"
