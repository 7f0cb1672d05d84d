"""Dataset inference: a copy stolen with KnockoffNets is flagged, an independently trained
model is not."""

import pytest
import torch

from modelsec_fast.defenses import DatasetInference
from modelsec_fast.stealing import KnockoffNets, ThiefTraining, Victim
from tests.stealing.stealing_helpers import digits, mlp, split, train_mlp

SEED = 0  # seeds 1-5 also pass: stolen copy p <= 6e-7, independent model p >= 0.27


@pytest.fixture(scope="module")
def models():
    """A victim trained on 200 private digits; a Knockoff copy stolen with the other
    training images as its pool; an independent model trained on those same images."""
    torch.set_num_threads(1)
    ds = digits()
    private, other = split(SEED, 200)
    victim = train_mlp(ds.x_train[private], ds.y_train[private], seed=SEED, hidden=256,
                       epochs=200)
    stolen = KnockoffNets(Victim.from_model(victim, budget=len(other)), mlp(SEED + 1, 256),
                          training=ThiefTraining(epochs=100), seed=SEED).extract(
        ds.x_train[other]).thief
    independent = train_mlp(ds.x_train[other], ds.y_train[other], seed=SEED + 100,
                            hidden=256, epochs=200)
    test = DatasetInference(victim, ds.x_train[private], ds.y_train[private], ds.x_test,
                            ds.y_test, seed=SEED)
    return test, victim, stolen, independent


def test_a_knockoff_copy_is_flagged(models):
    test, _, stolen, _ = models
    result = test.test(stolen)
    assert result.p_value < 0.01 and result.derived
    assert result.mean_private_score > result.mean_public_score
    assert (result.private_points, result.public_points) == (200, 449)


def test_an_independent_model_is_not_flagged(models):
    test, _, _, independent = models
    result = test.test(independent)
    assert result.p_value > 0.05 and not result.derived


def test_the_victim_itself_is_flagged(models):
    test, victim, _, _ = models
    assert test.test(victim).p_value < 0.01


def test_bad_data_is_refused():
    ds = digits()
    model = mlp(0)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\] \(private_x\)"):
        DatasetInference(model, ds.x_train[:20] * 3, ds.y_train[:20], ds.x_test[:20],
                         ds.y_test[:20])
    with pytest.raises(ValueError, match=r"public_x \(20\) and public_y \(19\) differ"):
        DatasetInference(model, ds.x_train[:20], ds.y_train[:20], ds.x_test[:20],
                         ds.y_test[:19])
    with pytest.raises(ValueError, match="embedding must be one of 'loss', 'mingd'"):
        DatasetInference(model, ds.x_train[:20], ds.y_train[:20], ds.x_test[:20],
                         ds.y_test[:20], embedding="blind_walk")
