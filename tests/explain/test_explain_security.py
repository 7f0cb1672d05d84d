"""The security outputs: attribution shift, trigger-region share, the model-randomisation
sanity check and infidelity."""

import pytest
import scipy.stats
import torch
from torch import nn

from modelsec_fast.explain import (attribution_in_region, attribution_shift, heatmap,
                                   infidelity, integrated_gradients, model_randomisation_check,
                                   rank_correlation, saliency, top_k_overlap)
from tests.explain.conftest import CountingModel, linear_model, small_cnn


# ------------------------------------------------------------------ similarity
def test_rank_correlation_matches_scipy_with_ties(random_seed):
    a = torch.randint(0, 5, (4, 30)).double()          # many ties
    b = torch.randint(0, 5, (4, 30)).double()
    expected = [scipy.stats.spearmanr(a[i], b[i]).statistic for i in range(4)]
    torch.testing.assert_close(rank_correlation(a, b), torch.tensor(expected, dtype=torch.float64))


def test_rank_correlation_is_one_for_the_same_order_and_minus_one_reversed():
    a = torch.rand(3, 20)
    torch.testing.assert_close(rank_correlation(a, a * 5 + 1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(rank_correlation(a, -a), -torch.ones(3, dtype=torch.float64))


def test_top_k_overlap_counts_shared_top_features():
    a = torch.tensor([[10.0, 9, 8, 7, 1, 1, 1, 1, 1, 1]])
    b = torch.tensor([[10.0, 1, 1, 1, 1, 1, 1, 9, 8, 7]])
    assert top_k_overlap(a, a, 0.4).item() == 1.0
    assert top_k_overlap(a, b, 0.4).item() == 0.25   # only feature 0 in both top-4


def test_heatmap_sums_magnitude_over_channels():
    a = torch.tensor([[[[1.0, -2.0]], [[-3.0, 4.0]]]])   # (1, 2, 1, 2)
    torch.testing.assert_close(heatmap(a), torch.tensor([[[4.0, 6.0]]]))


def test_attribution_shift_reports_unmoved_and_moved_maps():
    clean = torch.rand(3, 3, 8, 8)
    same = attribution_shift(clean, -2 * clean)                  # magnitude order unchanged
    assert same.mean_rank_correlation == pytest.approx(1.0)
    assert same.mean_top_k_overlap == pytest.approx(1.0)
    moved = attribution_shift(clean, clean.flip(-1).flip(-2) + 0.0)
    assert moved.mean_rank_correlation < 0.9
    doc = moved.to_json()
    assert len(doc["rank_correlation"]) == 3 and doc["top_k_fraction"] == 0.1


def test_attribution_shift_refuses_maps_of_different_shapes():
    with pytest.raises(ValueError, match="one shape"):
        attribution_shift(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 5))


# ------------------------------------------------------------------ trigger region
def test_region_share_is_one_inside_and_the_area_for_a_uniform_map():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[6:, 6:] = True                                      # a 2x2 corner trigger
    inside = torch.zeros(2, 3, 8, 8)
    inside[:, :, 6:, 6:] = torch.rand(2, 3, 2, 2) + 0.1
    result = attribution_in_region(inside, mask)
    torch.testing.assert_close(result.share, torch.ones(2, dtype=torch.float64))
    uniform = attribution_in_region(torch.ones(2, 3, 8, 8), mask)
    torch.testing.assert_close(uniform.share, torch.full((2,), 4 / 64, dtype=torch.float64))
    torch.testing.assert_close(uniform.lift, torch.ones(2, dtype=torch.float64))


def test_a_soft_mask_weights_each_location():
    attr = torch.tensor([[[[1.0, 3.0]]]])                    # heatmap [1, 3]
    result = attribution_in_region(attr, torch.tensor([[0.5, 0.0]]))
    assert result.share.item() == pytest.approx(0.5 / 4)
    assert result.area.item() == pytest.approx(0.25)


@pytest.mark.parametrize("mask, words", [
    (torch.ones(4, 5), "mask must have shape"),
    (torch.full((4, 4), 2.0), "[0, 1]"),
    (torch.zeros(4, 4), "empty"),
])
def test_bad_masks_are_refused(mask, words):
    with pytest.raises(ValueError) as caught:
        attribution_in_region(torch.rand(2, 3, 4, 4), mask)
    assert words in str(caught.value)


def test_a_mask_must_be_a_tensor():
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        attribution_in_region(torch.rand(1, 3, 4, 4), [[1.0]])


# ------------------------------------------------------------------ randomisation check
class InputOnlyModel(nn.Module):
    """Its maps' order does not depend on its parameter: |d/dx scale * x^2| = |2 scale x|."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.0, 2.0]))

    def forward(self, x):
        return (x.flatten(1) ** 2).sum(1, keepdim=True) * self.scale


def test_maps_that_ignore_the_model_fail_the_check():
    check = model_randomisation_check(InputOnlyModel(), torch.rand(4, 1, 5, 5), 0)
    assert check.final_rank_correlation == pytest.approx(1.0)
    assert not check.passed


def test_gradient_maps_of_a_cnn_pass_and_the_model_is_left_unchanged():
    model = small_cnn()
    before = [p.clone() for p in model.parameters()]
    x = torch.rand(6, 3, 6, 6, dtype=torch.float64)
    check = model_randomisation_check(model, x, 1, n_stages=3)
    assert check.passed, check.to_json()
    assert [len(s.randomised) for s in check.stages] == [1, 2, 3]
    assert check.stages[0].randomised == ("5",)              # the top layer first
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    again = model_randomisation_check(model, x, 1, n_stages=3)
    assert again.to_json() == check.to_json()                 # seeded: reproducible


def test_the_check_runs_other_methods_with_their_arguments():
    check = model_randomisation_check(small_cnn(), torch.rand(2, 3, 6, 6, dtype=torch.float64),
                                      0, method="integrated_gradients", n_stages=1, n_steps=4)
    assert check.method == "integrated_gradients" and len(check.stages) == 1


@pytest.mark.parametrize("kwargs, error", [
    ({"method": "lime"}, ValueError), ({"n_stages": 0}, ValueError),
    ({"max_similarity": 2.0}, ValueError), ({"generator": 1}, TypeError),
])
def test_the_check_refuses_bad_arguments(kwargs, error):
    with pytest.raises(error):
        model_randomisation_check(small_cnn(), torch.rand(2, 3, 6, 6, dtype=torch.float64), 0,
                                  **kwargs)


# ------------------------------------------------------------------ infidelity
def test_the_gradient_of_a_linear_model_has_zero_infidelity():
    model = linear_model(dtype=torch.float64)
    x = torch.rand(4, 3, 4, 4, dtype=torch.float64)
    exact = saliency(model, x, 2, absolute=False)            # I . w = f(x) - f(x - I) exactly
    wrong = torch.rand_like(x)
    generator = torch.Generator().manual_seed(0)
    assert infidelity(model, x, exact, 2, normalize=False, generator=generator).abs().max() < 1e-20
    assert infidelity(model, x, wrong, 2, normalize=False, generator=generator).min() > 1e-6


def test_infidelity_keeps_the_chunk_limit_and_is_reproducible():
    model = CountingModel(small_cnn())
    x = torch.rand(5, 3, 6, 6, dtype=torch.float64)
    attr = integrated_gradients(model, x, 1, n_steps=4)
    model.batch_sizes.clear()
    first = infidelity(model, x, attr, 1, n_perturb_samples=6, max_inputs=4,
                       generator=torch.Generator().manual_seed(3))
    assert max(model.batch_sizes) <= 4, model.batch_sizes
    second = infidelity(model, x, attr, 1, n_perturb_samples=6, max_inputs=4,
                        generator=torch.Generator().manual_seed(3))
    assert first.shape == (5,)
    torch.testing.assert_close(first, second)


def test_infidelity_refuses_attributions_of_another_shape():
    with pytest.raises(ValueError, match="attributions must have the shape"):
        infidelity(linear_model(), torch.rand(2, 3, 4, 4), torch.rand(2, 48), 0)
