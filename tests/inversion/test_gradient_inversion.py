"""Gradient inversion from one plain update: iDLG's exact labels, the analytic recovery
of a fully connected layer's input, DLG and Inverting Gradients."""

import pytest
import torch
from torch import nn

from modelsec_fast.inversion import (DLG, IDLG, AnalyticLinearRecovery, InvertingGradients,
                                     idlg_labels, plain_gradient, psnr, recover_linear_input)
from tests.inversion.inversion_helpers import cnn, mlp, same_class_pairs


@pytest.mark.parametrize("make", [mlp, cnn], ids=["mlp", "cnn"])
def test_idlg_recovers_every_label_exactly_at_batch_size_one(make, random_seed):
    model = make(random_seed % 1000)
    g = torch.Generator().manual_seed(random_seed)
    for label in range(10):
        x = torch.rand(1, 1, 8, 8, generator=g)
        update = plain_gradient(model, x, torch.tensor([label]))
        assert idlg_labels(model, update).tolist() == [label]


def test_idlg_reads_the_weight_gradient_when_the_last_layer_has_no_bias(random_seed):
    torch.manual_seed(random_seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10, bias=False))
    g = torch.Generator().manual_seed(random_seed)
    for label in range(10):
        x = torch.rand(1, 1, 8, 8, generator=g)
        update = plain_gradient(model, x, torch.tensor([label]))
        assert idlg_labels(model, update).tolist() == [label]


def test_the_analytic_recovery_of_a_linear_layer_is_exact():
    x, y, _ = same_class_pairs(0)
    model = mlp(0)
    updates = [plain_gradient(model, x[i:i + 1], y[i:i + 1]) for i in range(len(x))]
    result = AnalyticLinearRecovery(model).reconstruct(updates, input_shape=(1, 8, 8))
    scores = result.score(x, y)
    assert float(scores.psnr.min()) > 40 and scores.label_accuracy == 1.0


def test_the_analytic_recovery_maps_a_normalised_input_back_to_pixels():
    x, y, _ = same_class_pairs(1, 4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    mean, std = 0.3, 0.2
    updates = [_normalised_update(model, x[i:i + 1], y[i:i + 1], mean, std)
               for i in range(len(x))]
    result = AnalyticLinearRecovery(model, normalization=([mean], [std])).reconstruct(
        updates, input_shape=(1, 8, 8))
    assert float(psnr(result.images, x).min()) > 40


def _normalised_update(model, x, y, mean, std):
    """The gradient of a model fed (x - mean) / std (which may leave [0, 1])."""
    loss = nn.functional.cross_entropy(model((x - mean) / std), y)
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def test_recover_linear_input_refuses_what_it_cannot_invert():
    with pytest.raises(ValueError, match=r"need a weight gradient \(out, in\)"):
        recover_linear_input(torch.zeros(3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="the bias gradient is zero"):
        recover_linear_input(torch.zeros(3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="first layer with parameters is an nn.Linear"):
        AnalyticLinearRecovery(cnn(0))


def test_idlg_reconstructs_the_images_of_an_mlp_update():
    x, y, other = same_class_pairs(0, 4)
    model = mlp(0)
    updates = [plain_gradient(model, x[i:i + 1], y[i:i + 1]) for i in range(len(x))]
    result = IDLG(model, iterations=50).reconstruct(updates, input_shape=(1, 8, 8))
    scores = result.score(x, y)
    assert scores.label_accuracy == 1.0 and float(scores.psnr.min()) > 30
    assert result.images.shape == x.shape and result.settings["iterations"] == 50


def test_dlg_optimises_the_labels_too():
    x, y, _ = same_class_pairs(2, 4)
    model = mlp(2)
    updates = [plain_gradient(model, x[i:i + 1], y[i:i + 1]) for i in range(len(x))]
    result = DLG(model, iterations=100).reconstruct(updates, input_shape=(1, 8, 8))
    scores = result.score(x, y)
    assert scores.label_accuracy == 1.0 and scores.mean_psnr > 20


def test_inverting_gradients_reconstructs_with_restarts_and_keeps_the_best():
    x, y, other = same_class_pairs(0, 4)
    model = mlp(0)
    updates = [plain_gradient(model, x[i:i + 1], y[i:i + 1]) for i in range(len(x))]
    attack = InvertingGradients(model, iterations=100, restarts=2)
    result = attack.reconstruct(updates, input_shape=(1, 8, 8))
    scores = result.score(x, y)
    assert scores.mean_psnr > 25
    assert scores.mean_psnr > float(psnr(result.images, other).mean()) + 10
    assert result.objective.shape == (4,) and float(result.objective.max()) < 0.05


def test_inverting_gradients_reconstructs_a_small_convnet_in_100_iterations():
    x, y, other = same_class_pairs(0, 4)
    model = cnn(0)
    updates = [plain_gradient(model, x[i:i + 1], y[i:i + 1]) for i in range(len(x))]
    result = InvertingGradients(model, iterations=100, restarts=2).reconstruct(
        updates, input_shape=(1, 8, 8))
    scores = result.score(x, y)
    # another image of the class scores about 11 dB, uniform noise about 6 dB
    assert scores.mean_psnr > 20
    assert scores.mean_psnr > float(psnr(result.images, other).mean()) + 8


def test_a_batch_of_two_with_known_labels_is_matched_to_its_images():
    x, y, _ = same_class_pairs(0, 2)
    model = mlp(0)
    update = plain_gradient(model, x, y)  # one update of both images
    result = IDLG(model, iterations=100).reconstruct(update, input_shape=(1, 8, 8),
                                                     batch_size=2, labels=y)
    assert result.score(x, y).mean_psnr > 20


def test_bad_updates_and_labels_are_named():
    model = mlp(0)
    x, y, _ = same_class_pairs(0, 2)
    update = plain_gradient(model, x, y)
    with pytest.raises(ValueError, match="gradients has 2 tensors but the model has 4"):
        IDLG(model, iterations=1).reconstruct(update[:2], input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="recovers labels only at batch size 1"):
        IDLG(model, iterations=1).reconstruct(update, input_shape=(1, 8, 8), batch_size=2)
    with pytest.raises(ValueError, match=r"labels must hold one label per image \(2,\)"):
        IDLG(model, iterations=1).reconstruct(update, input_shape=(1, 8, 8), batch_size=2,
                                             labels=y[:1])
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        InvertingGradients(model, iterations=0)
