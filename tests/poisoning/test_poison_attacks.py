"""The poisoning attacks: exact, seeded selection, what each attack changes and what it
keeps, apply_trigger, the lazy Dataset, and bad input."""

from __future__ import annotations

import pytest
import torch

from modelsec_fast.poisoning import (BadNets, Blended, LabelConsistent, LabelFlip, WaNet,
                                     WitchesBrew)

X8 = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _counts(y):
    return torch.bincount(y, minlength=10)


@pytest.mark.parametrize("make", [
    lambda: BadNets(0, 0.1, seed=3), lambda: Blended(0, 0.1, seed=3), lambda: WaNet(0, 0.1, seed=3),
    lambda: LabelFlip(0.1, seed=3), lambda: LabelFlip(0.1, source=1, target=7, seed=3)],
    ids=["badnets", "blended", "wanet", "flip", "flip-targeted"])
def test_exact_count_reproducible_and_only_chosen_samples_change(digits, make):
    x, y = digits.x_train, digits.y_train
    a, b = make().poison(x, y), make().poison(x, y)
    assert a.n_poison == round(0.1 * len(y))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.is_poison, b.is_poison)
    clean = ~a.is_poison
    assert torch.equal(a.x[clean], x[clean]) and torch.equal(a.y[clean], y[clean])
    assert torch.equal(a.y_original, y)
    assert float(a.x.min()) >= 0.0 and float(a.x.max()) <= 1.0
    other = make()
    other.seed = 4
    assert not torch.equal(other.poison(x, y).is_poison, a.is_poison)  # the seed matters


def test_inputs_are_not_modified(digits):
    x, y = digits.x_train.clone(), digits.y_train.clone()
    BadNets(0, 0.2, seed=0).poison(x, y)
    assert torch.equal(x, digits.x_train) and torch.equal(y, digits.y_train)


def test_badnets_all_to_one_relabels_non_target_samples_and_stamps_the_patch(digits):
    attack = BadNets(2, 0.1, size=3, position="top-left", pattern="white", seed=0)
    data = attack.poison(digits.x_train, digits.y_train)
    assert bool((data.y_original[data.is_poison] != 2).all())
    assert bool((data.y[data.is_poison] == 2).all())
    assert bool((data.x[data.is_poison][:, :, :3, :3] == 1.0).all())
    rest = data.x[data.is_poison][:, :, 3:, :]
    assert torch.equal(rest, digits.x_train[data.is_poison][:, :, 3:, :])


def test_badnets_patch_position_and_checkerboard():
    out = BadNets(0, 0.1, size=2, position=(1, 5)).apply_trigger(torch.zeros(1, 1, 8, 8))
    expected = torch.zeros(1, 1, 8, 8)
    expected[0, 0, 1, 5] = expected[0, 0, 2, 6] = 1.0
    assert torch.equal(out, expected)
    corner = BadNets(0, 0.1, size=3).apply_trigger(torch.zeros(2, 3, 8, 8))
    assert torch.equal(corner[:, :, 5:, 5:], torch.tensor(
        [[1., 0, 1], [0, 1, 0], [1, 0, 1]]).expand(2, 3, 3, 3))


def test_badnets_all_to_all_maps_each_label_to_the_next(digits):
    attack = BadNets(0, 0.2, mode="all-to-all", seed=1)
    data = attack.poison(digits.x_train, digits.y_train)
    assert torch.equal(data.y[data.is_poison], (data.y_original[data.is_poison] + 1) % 10)
    assert len(data.y_original[data.is_poison].unique()) == 10  # drawn from every class
    evaluation = attack.evaluation_set(digits.x_test, digits.y_test)
    assert len(evaluation.y_true) == len(digits.y_test)
    assert torch.equal(evaluation.y_target, (evaluation.y_true + 1) % 10)


def test_all_to_one_evaluation_set_excludes_the_target_class(digits):
    attack = BadNets(3, 0.1)
    evaluation = attack.evaluation_set(digits.x_test, digits.y_test)
    assert len(evaluation.y_true) == int((digits.y_test != 3).sum())
    assert bool((evaluation.y_true != 3).all()) and bool((evaluation.y_target == 3).all())
    assert torch.equal(evaluation.x, attack.apply_trigger(digits.x_test[digits.y_test != 3]))


def test_blended_is_the_convex_mix_with_its_pattern():
    pattern = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = Blended(0, 0.1, pattern=pattern, alpha=0.25).apply_trigger(X8)
    torch.testing.assert_close(out, 0.75 * X8 + 0.25 * pattern)
    noise_a = Blended(0, 0.1, seed=5).apply_trigger(X8)
    assert torch.equal(noise_a, Blended(0, 0.1, seed=5).apply_trigger(X8))
    assert not torch.equal(noise_a, Blended(0, 0.1, seed=6).apply_trigger(X8))


def test_wanet_is_a_small_smooth_warp_fixed_by_the_seed():
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    attack = WaNet(0, 0.1, k=4, strength=0.5, seed=1)
    out = attack.apply_trigger(x)
    assert torch.equal(out, WaNet(0, 0.1, k=4, strength=0.5, seed=1).apply_trigger(x))
    assert not torch.equal(out, x)
    assert float((out - x).abs().mean()) < 0.1  # invisible: a fraction of a pixel's shift
    # With strength -> 0 the warp is the identity resampling.
    weak = WaNet(0, 0.1, k=4, strength=1e-9, seed=1).apply_trigger(x)
    torch.testing.assert_close(weak, x, atol=1e-5, rtol=0)


def test_label_flip_random_always_changes_the_label(digits):
    data = LabelFlip(0.3, seed=0).poison(digits.x_train, digits.y_train)
    assert bool((data.y[data.is_poison] != data.y_original[data.is_poison]).all())
    assert torch.equal(data.x, digits.x_train)
    assert len(data.y[data.is_poison].unique()) == 10  # uniform over the other classes
    assert LabelFlip(0.3).evaluation_set(digits.x_test, digits.y_test) is None


def test_label_flip_targeted_moves_source_to_target(digits):
    data = LabelFlip(0.05, source=1, target=7, seed=0).poison(digits.x_train, digits.y_train)
    assert bool((data.y_original[data.is_poison] == 1).all())
    assert bool((data.y[data.is_poison] == 7).all())


def test_poison_dataset_is_lazy_and_equals_poison(digits):
    attack = BadNets(0, 0.1, seed=2)
    eager = attack.poison(digits.x_train, digits.y_train)
    lazy = attack.poison_dataset(digits.train_tensors())
    assert len(lazy) == len(digits.y_train) and torch.equal(lazy.is_poison, eager.is_poison)
    assert lazy.x.shape[0] == eager.n_poison  # only the poisons are stored
    for i in list(eager.indices[:5]) + [0, 1, 2]:
        xi, yi = lazy[int(i)]
        assert torch.equal(xi, eager.x[int(i)]) and int(yi) == int(eager.y[int(i)])
    assert lazy.to_json()["n_poison"] == eager.n_poison


def test_record_to_json_counts(digits):
    data = BadNets(0, 0.1, seed=0).poison(digits.x_train, digits.y_train)
    doc = data.to_json()
    assert doc["n_poison"] == data.n_poison == doc["labels_changed"]
    assert doc["poisons_by_label"][0] == data.n_poison and doc["settings"]["target"] == 0


def test_label_consistent_keeps_labels_and_perturbs_target_images(digits, setup):
    eps = 8 / 255
    attack = LabelConsistent(setup.clean, target=0, rate=0.05, eps=eps, steps=5, seed=0)
    data = attack.poison(digits.x_train, digits.y_train)
    assert torch.equal(data.y, digits.y_train)  # clean label
    assert bool((data.y_original[data.is_poison] == 0).all())
    poisons, originals = data.x[data.is_poison], digits.x_train[data.is_poison]
    outside_patch = torch.ones(8, 8, dtype=torch.bool)
    outside_patch[5:, 5:] = False
    assert float((poisons - originals)[..., outside_patch].abs().max()) <= eps + 1e-6
    assert torch.equal(poisons[..., 5:, 5:], attack.apply_trigger(originals)[..., 5:, 5:])
    assert setup.clean.training is False


def _brew(setup, **kw):
    x_t, y_t = setup.x_test[:2], setup.y_test[:2]
    adversarial = int((y_t.max() + 1) % 10)
    options = dict(rate=0.01, eps=8 / 255, steps=8, restarts=2, seed=0)
    options.update(kw)
    return WitchesBrew(setup.clean, x_t, y_t, adversarial, **options), adversarial


def test_witches_brew_respects_the_ball_the_pixel_range_and_the_exact_budget(setup):
    attack, adversarial = _brew(setup)
    x, y = setup.x_train, setup.y_train
    data = attack.poison(x, y)
    assert data.n_poison == round(0.01 * len(y))  # the budget, exactly
    assert bool((y[data.is_poison] == adversarial).all())
    assert torch.equal(data.y, y)  # clean label
    assert torch.equal(data.x[~data.is_poison], x[~data.is_poison])  # nothing else touched
    delta = data.x[data.is_poison] - x[data.is_poison]
    assert float(delta.abs().max()) <= 8 / 255 + 1e-6
    assert float(delta.abs().max()) > 4 / 255  # it did move
    assert float(data.x.min()) >= 0.0 and float(data.x.max()) <= 1.0
    losses = data.details["alignment_loss_per_restart"]
    assert len(losses) == 2 and data.details["alignment_loss"] == min(losses)


def test_witches_brew_lowers_the_alignment_loss(setup):
    short, _ = _brew(setup, steps=1, restarts=1)
    longer, _ = _brew(setup, steps=30, restarts=1)
    a = short.poison(setup.x_train, setup.y_train).details["alignment_loss"]
    b = longer.poison(setup.x_train, setup.y_train).details["alignment_loss"]
    assert b < a


def test_witches_brew_restores_the_model_mode(setup):
    setup.clean.train()
    try:
        attack, _ = _brew(setup, steps=1, restarts=1)
        attack.poison(setup.x_train, setup.y_train)
        assert setup.clean.training and all(m.training for m in setup.clean.modules())
    finally:
        setup.clean.eval()


# ------------------------------------------------------------------ bad input
def test_trigger_larger_than_the_image_is_refused(digits):
    with pytest.raises(ValueError, match="trigger of size 9x9 is larger than the 8x8 images"):
        BadNets(0, 0.1, size=9).poison(digits.x_train, digits.y_train)
    with pytest.raises(ValueError, match="leaves the 8x8 images"):
        BadNets(0, 0.1, size=3, position=(6, 0)).apply_trigger(X8)
    with pytest.raises(ValueError, match="k = 9 control points exceed the 8x8 images"):
        WaNet(0, 0.1, k=9).apply_trigger(X8)
    with pytest.raises(ValueError, match="does not match images"):
        Blended(0, 0.1, pattern=torch.rand(1, 4, 4)).apply_trigger(X8)


def test_target_outside_the_label_range_is_refused(digits):
    with pytest.raises(ValueError, match=r"target must be a class in \[0, 10\), got 10"):
        BadNets(10, 0.1).poison(digits.x_train, digits.y_train)
    with pytest.raises(ValueError, match=r"target must be a class in \[0, 5\), got 7"):
        BadNets(7, 0.1, num_classes=5)
    with pytest.raises(ValueError, match="target must be >= 0, got -1"):
        Blended(-1, 0.1)
    with pytest.raises(ValueError, match=r"source must be a class in \[0, 10\), got 12"):
        LabelFlip(0.1, source=12, target=1).poison(digits.x_train, digits.y_train)


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, float("nan")])
def test_rate_outside_zero_one_is_refused(rate):
    with pytest.raises(ValueError, match=r"rate must lie in \(0, 1\]"):
        BadNets(0, rate)


def test_rates_that_give_no_poison_or_too_many_are_refused(digits):
    with pytest.raises(ValueError, match="rounds to 0 poisons"):
        BadNets(0, 1e-5).poison(digits.x_train, digits.y_train)
    with pytest.raises(ValueError, match="only .* samples can be poisoned"):
        LabelFlip(0.5, source=1, target=2).poison(digits.x_train, digits.y_train)


def test_bad_images_and_arguments_are_refused(digits):
    with pytest.raises(ValueError, match="must lie in"):
        BadNets(0, 0.1).poison(digits.x_train * 2, digits.y_train)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        BadNets(0, 0.1).poison(digits.x_train, digits.y_train.float())
    with pytest.raises(ValueError, match="mode must be one of"):
        BadNets(0, 0.1, mode="one-to-one")
    with pytest.raises(ValueError, match="a targeted flip needs both"):
        LabelFlip(0.1, source=1)
    with pytest.raises(ValueError, match="alpha must lie in"):
        Blended(0, 0.1, alpha=0.0)
