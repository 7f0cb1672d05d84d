"""robust_accuracy: worst case, chunking, validity checks, masking warnings, errors."""

import json
import math

import pytest
import torch
from torch import nn

import modelsec_fast.attacks as ma
from modelsec_fast.evaluate import RobustAccuracyResult, robust_accuracy
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
    accs = [rec["robust_accuracy"] for rec in result.per_attack.values()]
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
    assert result.adversarial.shape == x.shape
    assert robust_acc(m, result.adversarial, y) == pytest.approx(result.robust_accuracy)


def test_invalid_adversarial_examples_are_rejected(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:64], digits_mlp.y[:64]
    result = robust_accuracy(m, (x, y), [OutOfBall(m)], progress=False)
    rec = result.per_attack["OutOfBall"]
    assert rec["broken"] == 0 and rec["rejected"] > 0
    assert result.robust_accuracy == result.clean_accuracy
    assert any("outside the eps ball" in w for w in result.warnings)


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
    assert result.per_attack["Square"]["broken"] > 0


def test_clean_model_raises_no_masking_warning(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:80], digits_mlp.y[:80]
    result = robust_accuracy(m, (x, y), [ma.PGD(m, eps=0.1, alpha=0.02, steps=5,
                                                random_start=False)],
                             progress=False, eps_sweep=True)
    assert result.warnings == []
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
    assert (apgdt.steps, apgdt.n_target_classes) == (100, 9)
    assert (fab.steps, fab.multi_targeted, fab.n_target_classes) == (100, True, 9)
    assert square.n_queries == 5000 and {a.eps for a in (apgd, apgdt, fab, square)} == {0.03}
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
    assert result.per_attack["PGD"]["rejected"] == 0 and result.warnings == []
