"""DP-SGD's protection against gradient inversion: with the engine's update at noise
multiplier 1 and clipping bound 1, a reconstruction is no closer to its image than to
another image of the same class; from the plain gradient it is far closer."""

import pytest

from modelsec_fast.inversion import IDLG, AnalyticLinearRecovery, dp_protection
from tests.inversion.inversion_helpers import mlp, same_class_pairs

# Seed 0 is the test. Seeds 1-5 also pass: under DP (sigma 1) the truth is at most
# 0.68 dB above the same-class image (iDLG: 0.15); plain gradients give > 60 dB over it.
SEED = 0


@pytest.fixture(scope="module", params=["idlg", "analytic"])
def protection(request):
    model = mlp(SEED)
    x, y, other = same_class_pairs(SEED)
    attack = (IDLG(model, iterations=50, seed=SEED) if request.param == "idlg"
              else AnalyticLinearRecovery(model))
    return dp_protection(attack, model, x, y, noise_multipliers=(0.1, 1.0),
                         max_grad_norm=1.0, other_images=other, seed=SEED)


def test_under_dp_the_reconstruction_reveals_no_more_than_its_class(protection):
    dp = protection.row(1.0)
    assert len(protection.images) == 8 and dp.max_grad_norm == 1.0
    assert dp.mean_psnr <= dp.mean_psnr_other + 1.0


def test_without_dp_the_reconstruction_is_far_closer_to_the_truth(protection):
    plain = protection.row(None)
    assert plain.mean_psnr > plain.mean_psnr_other + 20 and plain.label_accuracy == 1.0


def test_more_noise_means_a_lower_psnr(protection):
    psnrs = [protection.row(s).mean_psnr for s in (None, 0.1, 1.0)]
    assert psnrs[0] > psnrs[1] + 10 and psnrs[1] > psnrs[2]
    assert set(protection.reconstructions) == {None, 0.1, 1.0}
    assert protection.to_json()["rows"][2]["noise_multiplier"] == 1.0


def test_bad_settings_are_refused():
    model = mlp(0)
    x, y, other = same_class_pairs(0, 2)
    with pytest.raises(ValueError, match="noise_multiplier must be >= 0"):
        dp_protection(AnalyticLinearRecovery(model), model, x, y, noise_multipliers=(-1.0,))
    with pytest.raises(ValueError, match="other_images must be shaped like x"):
        dp_protection(AnalyticLinearRecovery(model), model, x, y, other_images=other[:1])
