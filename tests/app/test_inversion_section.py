"""The inversion report section and the pipeline the demo and the scan share."""

import json
import os

import torch

from modelsec_fast.app.report import Figure, Table
from modelsec_fast.app.scan.inversion import attack_for, measure_inversion, same_class_pairs
from modelsec_fast.inversion import IDLG, AnalyticLinearRecovery
from tests.inversion.inversion_helpers import cnn, mlp
from tests.stealing.stealing_helpers import digits


def test_an_mlp_leaks_its_images_exactly_and_dp_hides_them(tmp_path):
    ds = digits()
    section = measure_inversion(mlp(0), ds.x_test, ds.y_test, model_label="an MLP",
                                iterations=5, noise_multipliers=(0.5, 2.0), images=4)
    p = section.protection
    assert p.attack == "analytic_linear" and len(p.images) == 4
    assert [r.noise_multiplier for r in p.rows] == [None, 0.5, 2.0]
    assert p.row(None).mean_psnr > 40
    assert p.row(2.0).mean_psnr <= p.row(2.0).mean_psnr_other + 1.0
    blocks = section.blocks(str(tmp_path))
    table = next(b for b in blocks if isinstance(b, Table))
    assert [row[0] for row in table.rows] == ["plain gradient", "DP-SGD, sigma 0.5",
                                              "DP-SGD, sigma 2"]
    figure = next(b for b in blocks if isinstance(b, Figure))
    assert os.path.basename(figure.path) == "inversion_reconstructions.png"
    assert os.path.getsize(figure.path) > 1000
    assert json.loads(json.dumps(section.to_json()))["protection"]["images"] == 4


def test_the_attack_is_analytic_for_an_mlp_and_idlg_otherwise():
    assert isinstance(attack_for(mlp(0), 10), AnalyticLinearRecovery)
    attack = attack_for(cnn(0), 10)
    assert isinstance(attack, IDLG) and attack.iterations == 10


def test_same_class_pairs_take_distinct_classes_with_a_second_image():
    x = torch.arange(6.0).reshape(6, 1, 1, 1)
    y = torch.tensor([0, 1, 0, 2, 1, 3])
    images, labels, other = same_class_pairs(x, y, 5)
    assert labels.tolist() == [0, 1]  # classes 2 and 3 have one image each
    assert images.flatten().tolist() == [0.0, 1.0] and other.flatten().tolist() == [2.0, 4.0]
    images, labels, other = same_class_pairs(x[:1], y[:1], 5)
    assert other is None and labels.tolist() == [0]
