"""The demo's small pieces (modelsec_fast.app.audits), and run_demo's argument errors
(the whole pipeline runs end to end in tests/app/test_cli.py::test_demo_quick_...)."""

import pytest
import torch

from modelsec_fast.app.audits import membership_split, whole_batches_rate
from modelsec_fast.app.demo import run_demo


@pytest.mark.parametrize("num", [2, 3, 17, 1000])
def test_coin_membership_is_seeded_and_never_one_sided(num):
    for seed in range(20):
        mask = membership_split(num, "coin", seed)
        assert mask.dtype == torch.bool and mask.shape == (num,)
        assert mask.any() and not mask.all()
        assert torch.equal(mask, membership_split(num, "coin", seed))
    assert not torch.equal(membership_split(1000, "coin", 0), membership_split(1000, "coin", 1))


def test_all_membership_is_everyone():
    assert bool(membership_split(7, "all", 3).all())


@pytest.mark.parametrize("q, batches", [(1.0, 1), (0.7, 1), (0.3, 3), (0.26, 4), (1 / 60, 60)])
def test_whole_batches_rate_is_one_over_a_whole_number_of_batches(q, batches):
    assert whole_batches_rate(q) == 1.0 / batches


def test_run_demo_rejects_bad_arguments_before_any_work(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="unknown model 'nope'; known models"):
        run_demo(model="nope", out=str(out))
    with pytest.raises(ValueError, match="target_epsilon must be > 0"):
        run_demo(target_epsilon=0.0, out=str(out))
    with pytest.raises(ValueError, match="shadows must be >= 2"):
        run_demo(shadows=1, out=str(out))
    assert not out.exists()
