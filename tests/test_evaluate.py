"""robust_accuracy: worst case, chunking, validity checks, masking warnings, errors."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

import modelsec_fast.attacks as ma
from modelsec_fast.evaluate import RobustAccuracyResult, robust_accuracy
from tests.attacks.conftest import digits_cnn, digits_mlp  # noqa: F401  (fixtures)
from tests.attacks.strength import Rounded, Unnormalising, robust_acc

SEED = 31


class Softmaxed(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(1)


class Noisy(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + 0.5 * torch.randn(x.shape[0], 10)


class OutOfBall(ma.Attack):
    """A broken attack: returns the images shifted far outside the eps ball."""

    def __init__(self, model):
        super().__init__("OutOfBall", model)
        self.eps = 0.05

    def forward(self, images, labels):
        return (1 - images).clamp(0, 1)


def below_zero(images, adv, eps):
    """Sets the first black pixel of each image to -eps/2: inside the eps ball, below 0."""
    flat = adv.flatten(1).clone()
    black = (images.flatten(1) == 0).float().argmax(1)
    flat[torch.arange(flat.shape[0]), black] = -eps / 2
    return flat.view_as(adv)


def nan_pixel(images, adv, eps):
    """Sets the first pixel of each image to NaN."""
    adv = adv.clone()
    adv.flatten(1)[:, 0] = float("nan")
    return adv


class CorruptedPGD(ma.PGD):
    """A broken attack: PGD's examples passed through ``corrupt(images, adv, eps)``."""

    def __init__(self, model, corrupt):
        super().__init__(model, eps=0.1, alpha=0.02, steps=10, random_start=False)
        self.corrupt = corrupt

    def forward(self, images, labels):
        return self.corrupt(images, super().forward(images, labels), self.eps)

    def _forward_eval(self, images, labels):
        return self.corrupt(images, super()._forward_eval(images, labels), self.eps)


class FewSquare(ma.PGD):
    """A stand-in for Square: gradient-free, breaks at most ``budget`` samples in all."""

    gradient_free = True

    def __init__(self, model, budget):
        super().__init__(model, eps=0.3, alpha=0.05, steps=20, random_start=False)
        self.attack = "FewSquare"
        self.budget = budget

    def _forward_eval(self, images, labels):
        adv = images.clone()
        n = min(self.budget, images.shape[0])
        if n:
            adv[:n] = super()._forward_eval(images[:n], labels[:n])
            with torch.no_grad():
                self.budget -= int((self.get_logits(adv[:n]).argmax(1) != labels[:n]).sum())
        return adv


class Unattacked(ma.Attack):
    """A gradient attack that returns its input: breaks nothing."""

    def __init__(self, model):
        super().__init__("Unattacked", model)
        self.eps = 0.3

    def forward(self, images, labels):
        return images.clone()


class CountingPGD(ma.PGD):
    """PGD that records the batch size of every robust_accuracy call."""

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self.batch_sizes = []

    def _forward_eval(self, images, labels):
        self.batch_sizes.append(images.shape[0])
        return super()._forward_eval(images, labels)


def _deterministic_attacks(m):
    return [ma.FGSM(m, eps=0.1), ma.PGD(m, eps=0.1, alpha=0.02, steps=10, random_start=False),
            ma.APGD(m, eps=0.1, steps=10, loss="dlr")]


def test_never_above_the_minimum_over_its_attacks(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x, digits_mlp.y
    attacks = _deterministic_attacks(m)
    singles = [robust_acc(m, atk(x, y), y) for atk in attacks]
    result = robust_accuracy(m, (x, y), attacks, batch_size=128, progress=False)
    print("individual", singles, "worst case", result.robust_accuracy)
    assert result.robust_accuracy <= min(singles) + 1e-12
    assert result.clean_accuracy == pytest.approx(digits_mlp.clean_accuracy)
    accs = [rec.robust_accuracy for rec in result.per_attack.values()]
    assert accs == sorted(accs, reverse=True) and accs[-1] == result.robust_accuracy


def test_loader_and_tensors_agree_and_chunks_do_not_matter(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:203], digits_mlp.y[:203]
    attacks = _deterministic_attacks(m)[:2]
    a = robust_accuracy(m, (x, y), attacks, batch_size=1000, progress=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50)
    b = robust_accuracy(m, loader, attacks, batch_size=17, progress=True)
    assert a.n_samples == b.n_samples == 203
    assert a.robust_accuracy == b.robust_accuracy and a.clean_accuracy == b.clean_accuracy


def test_result_prints_a_table_and_round_trips_json(tmp_path, digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:64], digits_mlp.y[:64]
    torch.manual_seed(SEED)
    result = robust_accuracy(m, (x, y), [ma.PGD(m, eps=0.1, alpha=0.02, steps=5)],
                             restarts=2, progress=False, return_adversarial=True)
    text = str(result)
    assert "PGD" in text and "clean" in text and "robust (worst case)" in text
    path = tmp_path / "r.json"
    result.to_json(str(path))
    loaded = json.loads(path.read_text())
    assert loaded["robust_accuracy"] == result.robust_accuracy
    assert set(loaded["per_attack"]) == {"PGD"} and loaded["norm"] == "Linf"
    record = result.per_attack["PGD"]
    assert loaded["per_attack"]["PGD"] == dataclasses.asdict(record) and record.broken > 0
    assert "steps=5" in record.settings and loaded["restarts"] == 2
    assert result.adversarial.shape == x.shape
    assert robust_acc(m, result.adversarial, y) == pytest.approx(result.robust_accuracy)


def test_invalid_adversarial_examples_are_rejected(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:64], digits_mlp.y[:64]
    result = robust_accuracy(m, (x, y), [OutOfBall(m)], progress=False)
    rec = result.per_attack["OutOfBall"]
    assert rec.broken == 0 and rec.rejected > 0
    assert result.robust_accuracy == result.clean_accuracy
    assert any("outside the eps ball" in w for w in result.warnings)


@pytest.mark.parametrize("corrupt", [below_zero, nan_pixel])
def test_out_of_range_and_nan_examples_are_rejected_not_broken(corrupt, digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:64], digits_mlp.y[:64]
    assert bool((x.flatten(1) == 0).any(1).all())  # below_zero needs a black pixel per image
    atk = CorruptedPGD(m, corrupt)
    adv = atk(x, y)
    with torch.no_grad():
        fooled = int((m(adv).argmax(1) != y).sum())
    assert fooled >= 20, f"unchecked, {fooled} examples would count as broken"
    if corrupt is below_zero:  # inside the ball, only the range is wrong
        assert float((adv - x).abs().max()) <= atk.eps + 1e-6 and float(adv.min()) < 0
    result = robust_accuracy(m, (x, y), [atk], progress=False)
    rec = result.per_attack["PGD"]
    attacked = round(result.clean_accuracy * 64)
    assert rec.broken == 0 and rec.rejected == attacked
    assert result.robust_accuracy == result.clean_accuracy
    assert any(f"PGD returned {attacked} examples outside" in w for w in result.warnings)


def test_restarts_rerun_a_random_start_attack_on_the_samples_left(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:200], digits_mlp.y[:200]
    results, sizes = {}, {}
    for restarts in (1, 3):
        torch.manual_seed(SEED)  # same seed: the first run is the same in both
        atk = CountingPGD(m, eps=0.1, alpha=0.01, steps=1)  # weak, so restarts matter
        results[restarts] = robust_accuracy(m, (x, y), [atk], restarts=restarts,
                                            progress=False, check_masking=False)
        sizes[restarts] = atk.batch_sizes
    one, three = results[1], results[3]
    print(f"seed {SEED}: batch sizes {sizes}, robust {one.robust_accuracy} -> "
          f"{three.robust_accuracy}")
    attacked = round(one.clean_accuracy * 200)
    assert sizes[1] == [attacked]
    assert len(sizes[3]) == 3 and sizes[3][0] == attacked, f"seed {SEED}: {sizes}"
    assert sizes[3][1] == round(one.robust_accuracy * 200)  # run 2 gets what run 1 left
    assert sizes[3][2] <= sizes[3][1]
    assert three.robust_accuracy < one.robust_accuracy, f"seed {SEED}"  # 0.94 -> 0.92
    assert three.per_attack["PGD"].broken == attacked - round(three.robust_accuracy * 200)
    fixed = CountingPGD(m, eps=0.1, alpha=0.01, steps=1, random_start=False)
    robust_accuracy(m, (x, y), [fixed], restarts=3, progress=False, check_masking=False)
    assert fixed.batch_sizes == [attacked]  # a deterministic attack runs once


@pytest.mark.parametrize("budget,flagged", [(2, False), (3, True)])
def test_gradient_free_warning_needs_more_than_0_2_percent(budget, flagged, digits_mlp):
    m = digits_mlp.model
    reps = -(-1000 // digits_mlp.y.shape[0])
    x = digits_mlp.x.repeat(reps, 1, 1, 1)[:1000]
    y = digits_mlp.y.repeat(reps)[:1000]
    result = robust_accuracy(m, (x, y), [Unattacked(m), FewSquare(m, budget)], progress=False)
    assert result.per_attack["FewSquare"].broken == budget
    warned = [w for w in result.warnings if "FewSquare (gradient-free) broke" in w]
    assert bool(warned) == flagged, f"{budget} of 1000 points: {result.warnings}"


def test_gradient_free_attack_before_any_gradient_attack_is_never_flagged(digits_mlp):
    """Only breaks beyond the gradient attacks *before* it count, in every chunk alike."""
    m = digits_mlp.model
    reps = -(-1000 // digits_mlp.y.shape[0])
    x = digits_mlp.x.repeat(reps, 1, 1, 1)[:1000]
    y = digits_mlp.y.repeat(reps)[:1000]
    for batch_size in (1000, 100):
        result = robust_accuracy(m, (x, y), [FewSquare(m, 200), Unattacked(m)],
                                 batch_size=batch_size, progress=False)
        assert result.per_attack["FewSquare"].broken > 0.002 * 1000
        assert not [w for w in result.warnings if "gradient-free" in w], \
            f"batch_size {batch_size}: {result.warnings}"


def test_images_outside_the_range_raise_before_any_attack(digits_mlp):
    m = digits_mlp.model
    x = digits_mlp.x[:8].clone()
    with torch.no_grad():
        wrong = (m(x).argmax(1) + 1) % 10  # every sample misclassified: nothing gets attacked
    x[6, 0, 0, 0] = 1.5  # in the second chunk of 4
    atk = CountingPGD(m)
    with pytest.raises(ValueError, match=r"\[0, 1\], found values in \[0, 1\.5\]"):
        robust_accuracy(m, (x, wrong), [atk], batch_size=4, progress=False)
    x[6, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        robust_accuracy(m, (x, wrong), [atk], batch_size=4, progress=False)
    assert atk.batch_sizes == []
    unnorm = Unnormalising(m).eval()
    atk = ma.FGSM(unnorm)
    atk.set_normalization_used([0.5], [0.25])
    z = (digits_mlp.x[:8] - 0.5) / 0.25
    z[6, 0, 0, 0] = -3.0  # pixel -0.25
    with pytest.raises(ValueError, match=r"un-normalising.*\[-0\.25, 1\]"):
        robust_accuracy(unnorm, (z, wrong), [atk], batch_size=4, progress=False)


def test_masked_gradients_are_flagged_and_square_still_breaks(digits_mlp):
    m = Rounded(digits_mlp.model).eval()
    x, y = digits_mlp.x[:80], digits_mlp.y[:80]
    torch.manual_seed(SEED)
    attacks = [ma.PGD(m, eps=0.1, alpha=0.02, steps=5), ma.Square(m, eps=0.1, n_queries=100)]
    result = robust_accuracy(m, (x, y), attacks, progress=False, eps_sweep=True)
    text = " | ".join(result.warnings)
    print(text)
    assert "zero input gradient" in text
    assert "Square (gradient-free) broke" in text
    assert "eps sweep" in text
    assert result.per_attack["Square"].broken > 0


def test_clean_model_raises_no_masking_warning(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:80], digits_mlp.y[:80]
    # PGD alone leaves 1 of these 80 points (1.25%) to Square; with APGD-DLR Square finds none.
    attacks = [ma.PGD(m, eps=0.1, alpha=0.02, steps=5, random_start=False),
               ma.APGD(m, eps=0.1, steps=20, loss="dlr"),
               ma.Square(m, eps=0.1, n_queries=200, seed=SEED)]
    result = robust_accuracy(m, (x, y), attacks, progress=False, eps_sweep=True)
    assert result.warnings == [], f"seed {SEED}"
    values = list(result.eps_sweep.values())
    assert values[-1] <= 0.05


def test_probabilities_and_randomness_are_flagged(digits_mlp):
    x, y = digits_mlp.x[:40], digits_mlp.y[:40]
    soft = Softmaxed(digits_mlp.model).eval()
    result = robust_accuracy(soft, (x, y), [ma.FGSM(soft, eps=0.05)], progress=False)
    assert any("probabilities" in w for w in result.warnings)
    torch.manual_seed(SEED)
    noisy = Noisy(digits_mlp.model).eval()
    result = robust_accuracy(noisy, (x, y), [ma.FGSM(noisy, eps=0.05)], progress=False)
    assert any("differ between two identical calls" in w for w in result.warnings)


def test_empty_data_gives_an_empty_result(digits_mlp):
    m = digits_mlp.model
    result = robust_accuracy(m, (digits_mlp.x[:0], digits_mlp.y[:0]), [ma.FGSM(m)], progress=False)
    assert isinstance(result, RobustAccuracyResult) and result.n_samples == 0
    assert math.isnan(result.robust_accuracy)
    json.loads(result.to_json())


def test_standard_preset_mirrors_autoattack():
    from modelsec_fast.evaluate import standard_attacks
    apgd, apgdt, fab, square = standard_attacks(nn.Linear(2, 10), eps=0.03, norm="L2",
                                                n_classes=10)
    assert (apgd.steps, apgd.loss_name, apgd.n_restarts, apgd.norm) == (100, "ce", 1, "L2")
    # APGD-T on the targeted DLR loss (no custom loss), as AutoAttack's standard version
    assert (apgdt.steps, apgdt.n_target_classes, apgdt.n_restarts, apgdt.custom_loss) == \
        (100, 9, 1, False)
    assert (fab.steps, fab.multi_targeted, fab.n_target_classes, fab.n_restarts) == \
        (100, True, 9, 1)
    assert (square.n_queries, square.p_init, square.n_restarts, square.loss) == \
        (5000, 0.8, 1, "margin")
    assert {a.eps for a in (apgd, apgdt, fab, square)} == {0.03}
    assert {a.norm for a in (apgd, apgdt, fab, square)} == {"L2"}
    # seeded, hence run once: robust_accuracy's `restarts` does not repeat the preset
    assert not any(a.stochastic for a in (apgd, apgdt, fab, square))
    assert standard_attacks(nn.Linear(2, 5), eps=0.1, n_classes=5)[1].n_target_classes == 4
    with pytest.raises(ValueError, match="4 classes"):
        standard_attacks(nn.Linear(2, 3), eps=0.1, n_classes=3)


@pytest.mark.slow
def test_standard_preset_runs_and_names_the_attacks(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:12], digits_mlp.y[:12]
    result = robust_accuracy(m, (x, y), "standard", eps=0.1, progress=False)
    assert list(result.per_attack) == ["APGD-CE", "APGD-T", "FAB-T", "Square"]
    assert result.robust_accuracy <= result.clean_accuracy


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size"), (dict(restarts=0), "restarts"),
    (dict(attacks="standard"), "needs eps"), (dict(attacks="strong", eps=0.1), "preset"),
    (dict(attacks=[]), "non-empty"),
])
def test_bad_arguments_raise(kwargs, match, digits_mlp):
    m = digits_mlp.model
    kwargs.setdefault("attacks", [ma.FGSM(m)])
    with pytest.raises(ValueError, match=match):
        robust_accuracy(m, (digits_mlp.x[:4], digits_mlp.y[:4]), progress=False, **kwargs)


def test_bad_labels_raise(digits_mlp):
    m = digits_mlp.model
    with pytest.raises(ValueError, match="labels must be in"):
        robust_accuracy(m, (digits_mlp.x[:4], torch.full((4,), 12)), [ma.FGSM(m)], progress=False)
    with pytest.raises(TypeError, match="integers"):
        robust_accuracy(m, (digits_mlp.x[:4], torch.zeros(4)), [ma.FGSM(m)], progress=False)
    atk = ma.PGD(m)
    atk.set_mode_targeted_by_label()
    with pytest.raises(ValueError, match="targeted"):
        robust_accuracy(m, (digits_mlp.x[:4], digits_mlp.y[:4]), [atk], progress=False)


def test_model_mode_restored(digits_mlp):
    m = digits_mlp.model
    m.train()
    try:
        robust_accuracy(m, (digits_mlp.x[:8], digits_mlp.y[:8]), [ma.FGSM(m)], progress=False)
        assert m.training
    finally:
        m.eval()


def test_normalised_data_and_attacks(digits_mlp):
    m = Unnormalising(digits_mlp.model).eval()
    x, y = digits_mlp.x[:60], digits_mlp.y[:60]
    atk = ma.PGD(m, eps=0.1, alpha=0.02, steps=5, random_start=False)
    atk.set_normalization_used([0.5], [0.25])
    result = robust_accuracy(m, ((x - 0.5) / 0.25, y), [atk], progress=False, eps_sweep=True)
    plain = robust_accuracy(digits_mlp.model, (x, y),
                            [ma.PGD(digits_mlp.model, eps=0.1, alpha=0.02, steps=5,
                                    random_start=False)], progress=False)
    assert result.robust_accuracy == plain.robust_accuracy
    assert result.per_attack["PGD"].rejected == 0 and result.warnings == []
