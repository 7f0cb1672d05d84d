"""Attack.save / Attack.load / to_type / get_output_with_eval_nograd (torchattacks' API and format)."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modelsec_fast.attacks as ma

from tests.attacks.strength import Unnormalising

N, BATCH = 37, 16  # three batches, the last one odd-sized (5)


def _loader(x, y):
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def _loaded(loader):
    return [torch.cat(t) for t in zip(*loader)]


def test_save_then_load_gives_back_the_attack_outputs(digits_mlp, tmp_path):
    m, x, y = digits_mlp.model, digits_mlp.x[:N], digits_mlp.y[:N]
    atk = ma.PGD(m, eps=0.1, alpha=0.02, steps=3, random_start=False)
    path = tmp_path / "adv.pt"
    acc, l2, _ = atk.save(_loader(x, y), path, verbose=False, return_verbose=True,
                          save_predictions=True, save_clean_inputs=True)
    expected = torch.cat([atk(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, N, BATCH)])
    adv, labels, preds, clean = _loaded(ma.PGD.load(path, batch_size=10, load_predictions=True,
                                                    load_clean_inputs=True))
    torch.testing.assert_close(adv, expected, rtol=0, atol=0)
    assert torch.equal(labels, y) and torch.equal(clean, x)
    with torch.no_grad():
        pred_direct = m(expected).argmax(1)
    assert torch.equal(preds, pred_direct)
    right = pred_direct == y
    assert acc == pytest.approx(100 * float(right.float().mean()))
    assert l2 == pytest.approx(float((expected - x).flatten(1)[~right].norm(dim=1).mean()), rel=1e-5)


def test_int_files_hold_uint8_levels_within_half_a_level(digits_mlp, tmp_path):
    m, x, y = digits_mlp.model, digits_mlp.x[:N], digits_mlp.y[:N]
    atk = ma.FGSM(m, eps=0.1)
    path = tmp_path / "adv_int.pt"
    atk.save(_loader(x, y), path, verbose=False, save_type="int")
    raw = torch.load(path, weights_only=True)
    assert raw["adv_inputs"].dtype == torch.uint8 and raw["save_type"] == "int"
    adv, _ = _loaded(ma.FGSM.load(path))
    assert float((adv - atk(x, y)).abs().max()) <= 0.5 / 255 + 1e-6


def test_normalised_attacks_save_pixels_and_load_normalised(digits_mlp, tmp_path):
    x, y = digits_mlp.x[:N], digits_mlp.y[:N]
    atk = ma.PGD(Unnormalising(digits_mlp.model), eps=0.1, alpha=0.02, steps=2, random_start=False)
    atk.set_normalization_used(mean=[0.5], std=[0.25])
    z = (x - 0.5) / 0.25
    path = tmp_path / "adv_norm.pt"
    atk.save(_loader(z, y), path, verbose=False)
    pixels = torch.load(path, weights_only=True)["adv_inputs"]
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    adv, _ = _loaded(ma.PGD.load(path, normalize={"mean": [0.5], "std": [0.25]}))
    torch.testing.assert_close(adv, atk(z, y), rtol=0, atol=1e-6)


def test_files_are_interchangeable_with_torchattacks(digits_mlp, tmp_path):
    ta = pytest.importorskip("torchattacks", minversion="3.5.1")
    m, x, y = digits_mlp.model, digits_mlp.x[:N], digits_mlp.y[:N]
    ours, theirs = tmp_path / "ours.pt", tmp_path / "theirs.pt"
    ma.FGSM(m, eps=0.1).save(_loader(x, y), ours, verbose=False, save_predictions=True)
    # verbose=True: torchattacks 3.5.1 computes the predictions only when it reports.
    ta.FGSM(m, eps=0.1).save(_loader(x, y), theirs, verbose=True, save_predictions=True)
    ours_by_theirs = _loaded(ta.FGSM.load(str(ours), load_predictions=True))
    theirs_by_ours = _loaded(ma.Attack.load(theirs, load_predictions=True))
    for a, b in zip(ours_by_theirs, theirs_by_ours):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # FGSM is bit-exact with torchattacks


def test_save_without_a_path_only_reports(digits_mlp, capsys):
    atk = ma.FGSM(digits_mlp.model, eps=0.1)
    assert atk.save(_loader(digits_mlp.x[:N], digits_mlp.y[:N]), verbose=True) is None
    assert "Robust accuracy" in capsys.readouterr().out


def test_bad_save_type_and_missing_keys_raise(digits_mlp, tmp_path):
    atk = ma.FGSM(digits_mlp.model, eps=0.1)
    loader = _loader(digits_mlp.x[:N], digits_mlp.y[:N])
    with pytest.raises(ValueError, match="save_type"):
        atk.save(loader, tmp_path / "x.pt", save_type="uint8")
    with pytest.raises(ValueError, match="valid type"):
        ma.Attack.to_type(digits_mlp.x[:2], "double")
    path = tmp_path / "plain.pt"
    atk.save(loader, path, verbose=False)
    with pytest.raises(ValueError, match="preds"):
        ma.Attack.load(path, load_predictions=True)


def test_output_with_eval_nograd_restores_each_module_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[1].eval()  # a mixed state that model.train(flag) would not restore
    x = torch.rand(5, 4)
    out = ma.PGD(model, eps=0.1).get_output_with_eval_nograd(x)
    assert not out.requires_grad
    assert [m.training for m in model.modules()] == [True, True, False, True]
    model.eval()
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)
