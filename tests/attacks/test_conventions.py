"""torchattacks conventions: modes, normalisation, targeting, bad input, side effects."""

import pytest
import torch
from torch import nn

import modelsec_fast.attacks as ma
from tests.attacks.strength import Unnormalising

SEED = 7


def _attacks(model):
    return [ma.FGSM(model, eps=0.1), ma.FFGSM(model, eps=0.1, alpha=0.12),
            ma.BIM(model, eps=0.1, alpha=0.02, steps=3),
            ma.PGD(model, eps=0.1, alpha=0.02, steps=3),
            ma.PGDL2(model, eps=0.5, alpha=0.1, steps=3)]


class _DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                 nn.Dropout(0.5), nn.Linear(32, 10))

    def forward(self, x):
        self.seen_training = self.net[2].training
        return self.net(x)


@pytest.mark.parametrize("index", range(5))
def test_output_is_in_ball_and_range_and_keeps_shape(index, digits_mlp):
    torch.manual_seed(SEED)
    atk = _attacks(digits_mlp.model)[index]
    x, y = digits_mlp.x[:31], digits_mlp.y[:31]
    adv = atk(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.min() >= 0 and adv.max() <= 1 and not adv.isnan().any()
    delta = (adv - x).flatten(1)
    if atk.norm == "L2":
        assert float(delta.norm(dim=1).max()) <= atk.eps * (1 + 1e-5)
    else:
        assert float(delta.abs().max()) <= atk.eps + 1e-6


@pytest.mark.parametrize("index", range(5))
def test_attack_hurts_accuracy(index, digits_mlp):
    torch.manual_seed(SEED)
    atk = _attacks(digits_mlp.model)[index]
    x, y = digits_mlp.x[:200], digits_mlp.y[:200]
    with torch.no_grad():
        clean = (digits_mlp.model(x).argmax(1) == y).float().mean()
        robust = (digits_mlp.model(atk(x, y)).argmax(1) == y).float().mean()
    assert robust < clean - 0.05


def test_model_mode_and_requires_grad_restored_and_no_param_grads():
    torch.manual_seed(SEED)
    model = _DropoutNet().train()
    model.net[4].eval()  # a submodule deliberately in eval mode stays so
    frozen = model.net[1].weight
    frozen.requires_grad_(False)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    ma.PGD(model, eps=0.1, alpha=0.02, steps=2)(x, y)
    assert model.seen_training is False  # eval during the attack
    assert model.training and model.net[2].training and not model.net[4].training
    assert not frozen.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "net.1.weight")
    assert all(p.grad is None for p in model.parameters())


class _FreezeRecorder(nn.Module):
    """Records at every forward whether all its parameters were frozen; can fail mid-attack."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        self.fail_at_call = None        # raise at this forward (1-based), if set
        self.frozen_at_call = []        # one bool per forward
        self.input_grad_calls = 0       # forwards whose input required grad

    def forward(self, x):
        self.frozen_at_call.append(all(not p.requires_grad for p in self.parameters()))
        self.input_grad_calls += int(x.requires_grad)
        if self.fail_at_call is not None and len(self.frozen_at_call) >= self.fail_at_call:
            raise RuntimeError("model failed mid-attack")
        return self.net(x)


_FREEZE_ATTACKS = {
    "PGD": lambda m: ma.PGD(m, eps=0.1, alpha=0.02, steps=3),
    "APGD": lambda m: ma.APGD(m, eps=0.1, steps=3),
    "FAB": lambda m: ma.FAB(m, eps=0.1, steps=3),
    "Square": lambda m: ma.Square(m, eps=0.1, n_queries=5),
}


def _recorder_and_batch():
    """A recorder with one parameter frozen by the user, 8 images (seed SEED) and the
    model's own predictions as labels, so that every sample gets attacked."""
    torch.manual_seed(SEED)
    model = _FreezeRecorder()
    model.net[1].bias.requires_grad_(False)
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    model.frozen_at_call.clear()
    return model, x, y


def _assert_requires_grad_restored(model):
    assert not model.net[1].bias.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "net.1.bias")


@pytest.mark.parametrize("name", sorted(_FREEZE_ATTACKS))
def test_parameters_are_frozen_during_the_attack_and_restored_after(name):
    model, x, y = _recorder_and_batch()
    _FREEZE_ATTACKS[name](model)(x, y)
    assert model.frozen_at_call and all(model.frozen_at_call), \
        f"{name} (seed {SEED}): parameters not frozen at forwards {model.frozen_at_call}"
    if name != "Square":  # a gradient attack must have differentiated w.r.t. the input
        assert model.input_grad_calls > 0, f"{name} (seed {SEED}): no input required grad"
    _assert_requires_grad_restored(model)


def _raising_loss(logits, labels):
    raise RuntimeError("loss failed")


_RAISING = {"PGD, raising loss": (None, lambda m: ma.PGD(m, loss=_raising_loss)),
            **{f"{name}, model raising at its 2nd forward": (2, make)
               for name, make in _FREEZE_ATTACKS.items()}}


@pytest.mark.parametrize("case", sorted(_RAISING))
def test_requires_grad_and_mode_restored_when_the_attack_raises(case):
    fail_at_call, make = _RAISING[case]
    model, x, y = _recorder_and_batch()
    model.fail_at_call = fail_at_call
    model.train()
    with pytest.raises(RuntimeError, match="failed"):
        make(model)(x, y)
    assert model.frozen_at_call and all(model.frozen_at_call), f"{case} (seed {SEED})"
    assert all(m.training for m in model.modules())
    _assert_requires_grad_restored(model)


def test_set_model_training_mode_keeps_batchnorm_in_eval():
    model = _DropoutNet().eval()
    atk = ma.FGSM(model)
    atk.set_model_training_mode(model_training=True)
    atk(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    assert model.seen_training is False and not model.training
    atk.set_model_training_mode(model_training=True, batchnorm_training=True)
    atk(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    assert model.seen_training is True and not model.training


def test_custom_sum_loss_gives_the_same_sign_steps_as_mean(digits_mlp):
    x, y = digits_mlp.x[:40], digits_mlp.y[:40]
    mean_adv = ma.PGD(digits_mlp.model, eps=0.1, alpha=0.02, random_start=False)(x, y)
    sum_adv = ma.PGD(digits_mlp.model, eps=0.1, alpha=0.02, random_start=False,
                     loss=nn.CrossEntropyLoss(reduction="sum"))(x, y)
    none_adv = ma.PGD(digits_mlp.model, eps=0.1, alpha=0.02, random_start=False,
                      loss=nn.CrossEntropyLoss(reduction="none"))(x, y)
    assert torch.equal(sum_adv, none_adv)
    # Sign steps ignore the gradient's scale (up to gradients that underflow).
    assert float((sum_adv != mean_adv).float().mean()) < 0.01


def test_kl_loss_for_trades_style_use(digits_mlp):
    model = digits_mlp.model
    x = digits_mlp.x[:16]
    with torch.no_grad():
        clean_probs = model(x).softmax(1)

    def kl(logits, _labels):
        return nn.functional.kl_div(logits.log_softmax(1), clean_probs, reduction="sum")

    torch.manual_seed(SEED)
    adv = ma.PGD(model, eps=0.1, alpha=0.02, steps=5, loss=kl)(x, digits_mlp.y[:16])
    with torch.no_grad():
        assert float(kl(model(adv), None)) > float(kl(model(x + 0.0), None)) + 1e-3


def test_targeted_modes_reach_targets(digits_mlp):
    model, x, y = digits_mlp.model, digits_mlp.x[:100], digits_mlp.y[:100]
    atk = ma.PGD(model, eps=0.3, alpha=0.02, steps=40, random_start=False)
    atk.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10)
    assert atk.get_mode() == "targeted(custom)" and atk.targeted
    with torch.no_grad():
        hit = (model(atk(x, y)).argmax(1) == (y + 1) % 10).float().mean()
    assert hit > 0.9
    atk.set_mode_targeted_by_label()
    targets = (y + 5) % 10
    with torch.no_grad():
        hit = (model(atk(x, targets)).argmax(1) == targets).float().mean()
    assert hit > 0.9
    atk.set_mode_default()
    assert not atk.targeted


def test_random_and_least_likely_targets(digits_mlp):
    model, x, y = digits_mlp.model, digits_mlp.x[:200], digits_mlp.y[:200]
    atk = ma.PGD(model)
    atk.set_mode_targeted_random()
    torch.manual_seed(SEED)
    t = atk.get_target_label(x, y)
    assert (t != y).all() and t.min() >= 0 and t.max() < 10
    assert len(t.unique()) == 10
    atk.set_mode_targeted_least_likely()
    t = atk.get_target_label(x, y)
    with torch.no_grad():
        logits = model(x)
    assert torch.equal(t, logits.scatter(1, y[:, None], float("inf")).argmin(1))


def test_unsupported_targeted_mode_raises():
    atk = ma.PGD(nn.Linear(2, 2))
    atk.supported_mode = ["default"]
    with pytest.raises(ValueError, match="targeted"):
        atk.set_mode_targeted_by_label()


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=-0.1), "eps"), (dict(alpha=0.0), "alpha"), (dict(alpha=-1.0), "alpha"),
    (dict(steps=0), "steps"), (dict(eps=float("nan")), "eps"),
])
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ma.PGD(nn.Linear(2, 2), **kwargs)


def test_images_outside_the_range_name_the_range_found(digits_mlp):
    atk = ma.PGD(digits_mlp.model)
    x = digits_mlp.x[:4].clone()
    x[0, 0, 0, 0] = 1.75
    with pytest.raises(ValueError, match=r"\[0, 1\].*1\.75"):
        atk(x, digits_mlp.y[:4])
    with pytest.raises(ValueError, match="set_normalization_used"):
        atk(x - 0.5, digits_mlp.y[:4])


@pytest.mark.parametrize("labels,error,match", [
    (torch.zeros(4), TypeError, "integer"),
    (torch.zeros(3, dtype=torch.long), ValueError, r"shape \(4,\)"),
    (torch.zeros(4, 1, dtype=torch.long), ValueError, "shape"),
    (torch.full((4,), 10, dtype=torch.long), ValueError, "num_classes = 10"),
    (torch.full((4,), -1, dtype=torch.long), ValueError, ">= 0"),
])
def test_bad_labels_raise(labels, error, match, digits_mlp):
    with pytest.raises(error, match=match):
        ma.PGD(digits_mlp.model, steps=1)(digits_mlp.x[:4], labels)


def test_bad_images_raise(digits_mlp):
    atk = ma.FGSM(digits_mlp.model)
    with pytest.raises(TypeError, match="floating"):
        atk((digits_mlp.x[:4] * 255).to(torch.uint8), digits_mlp.y[:4])
    with pytest.raises(TypeError, match="Tensor"):
        atk(digits_mlp.x[:4].numpy(), digits_mlp.y[:4])


def test_device_mismatch_raises():
    model = nn.Linear(4, 3).to("meta")
    with pytest.raises(ValueError, match="model is on meta"):
        ma.FGSM(model)(torch.rand(2, 4), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("index", range(5))
def test_empty_batch_returns_empty(index, digits_mlp):
    atk = _attacks(digits_mlp.model)[index]
    x = digits_mlp.x[:0]
    adv = atk(x, digits_mlp.y[:0])
    assert adv.shape == x.shape


def test_batch_of_one_and_non_contiguous_input(digits_mlp):
    x = digits_mlp.x[:20].transpose(2, 3)  # non-contiguous
    y = digits_mlp.y[:20]
    atk = ma.PGD(digits_mlp.model, eps=0.1, alpha=0.02, random_start=False)
    full = atk(x, y)
    assert torch.equal(full, atk(x.contiguous(), y))
    one = atk(x[3:4], y[3:4])
    assert one.shape == (1, 1, 8, 8) and float((one - full[3:4]).abs().max()) <= 1e-6


def test_normalization_returns_normalised_images(digits_mlp):
    mean, std = [0.5], [0.25]

    model = Unnormalising(digits_mlp.model).eval()
    x, y = digits_mlp.x[:30], digits_mlp.y[:30]
    atk = ma.PGD(model, eps=0.1, alpha=0.02, random_start=False)
    atk.set_normalization_used(mean, std)
    adv_n = atk((x - 0.5) / 0.25, y)
    adv_pixels = adv_n * 0.25 + 0.5
    plain = ma.PGD(digits_mlp.model, eps=0.1, alpha=0.02, random_start=False)(x, y)
    torch.testing.assert_close(adv_pixels, plain, rtol=0, atol=1e-5)
    assert float((adv_pixels - x).abs().max()) <= 0.1 + 1e-5


def test_repr_names_the_attack():
    text = repr(ma.PGD(nn.Linear(2, 2), eps=0.1))
    assert text.startswith("PGD(") and "eps=0.1" in text and "attack_mode=default" in text


def test_multiattack_takes_the_per_sample_worst_case_with_plain_calls(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:120], digits_mlp.y[:120]
    first = ma.FGSM(m, eps=0.02)
    second = ma.PGD(m, eps=0.1, alpha=0.02, steps=8, random_start=False)
    adv = ma.MultiAttack([first, second])(x, y)
    with torch.no_grad():
        wrong = m(adv).argmax(1) != y
        wrong_each = [m(a(x, y)).argmax(1) != y for a in (first, second)]
        # Early stopping lives only in robust_accuracy: on the samples the first
        # attack left, the result is exactly a plain call of the second.
        left = (~wrong_each[0]).nonzero().flatten()
        plain = second(x[left], y[left])
        fooled = m(plain).argmax(1) != y[left]
    assert bool((wrong >= (wrong_each[0] | wrong_each[1])).all())
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6
    assert int(fooled.sum()) > 0
    torch.testing.assert_close(adv[left[fooled]], plain[fooled], rtol=0, atol=0)
    with pytest.raises(ValueError, match="two attacks"):
        ma.MultiAttack([first])


def test_autocast_runs_the_model_in_low_precision(digits_mlp):
    seen = []
    m = digits_mlp.model
    handle = m.net[1].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    try:
        atk = ma.PGD(m, eps=0.1, alpha=0.02, steps=3, random_start=False)
        atk.set_autocast(torch.bfloat16)
        adv = atk(digits_mlp.x[:50], digits_mlp.y[:50])
    finally:
        handle.remove()
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert adv.dtype == torch.float32 and float((adv - digits_mlp.x[:50]).abs().max()) <= 0.1 + 1e-6
    assert robust_acc_of(m, adv, digits_mlp.y[:50]) < digits_mlp.clean_accuracy - 0.1
    with pytest.raises(ValueError, match="bfloat16"):
        atk.set_autocast(torch.int8)


def robust_acc_of(model, adv, y):
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).float().mean())
