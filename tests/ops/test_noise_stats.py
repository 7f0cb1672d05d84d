"""Noise statistics, reproducibility and the never-repeat rules, on both paths.

Every statistical check uses a fixed, printed seed and a family-wise level of
1e-6, Bonferroni-split over the checks of the test, so it fails only on a bug.
"""

import math

import pytest
import torch
from scipy import stats

from modelsec_fast import ops

ALPHA = 1e-6


def _z_crit(checks: int) -> float:
    return float(stats.norm.isf(ALPHA / checks / 2))


def _assert_standard_normal(z: torch.Tensor, checks: int, label: str):
    """Mean, variance (normal-theory bounds) and KS against N(0, 1)."""
    z = z.double().flatten()
    n = z.numel()
    crit = _z_crit(checks)
    mean, var = float(z.mean()), float(z.var())
    assert abs(mean) * math.sqrt(n) < crit, f"{label}: mean {mean}"
    # var of the sample variance of N(0,1) is 2/(n-1).
    assert abs(var - 1.0) / math.sqrt(2.0 / (n - 1)) < crit, f"{label}: variance {var}"
    p = stats.kstest(z.numpy(), "norm").pvalue
    assert p > ALPHA / checks, f"{label}: KS p-value {p}"


@pytest.mark.parametrize("source, seed", [("philox", 20261129), ("secure", None)])
def test_add_noise_is_standard_normal_in_fp32(either_path, source, seed):
    print(f"seed = {seed}, source = {source}")
    # The reference generator runs ~300 tensor ops per chunk; a smaller sample keeps it quick.
    x = torch.zeros(1 << 18 if either_path == "native" else 1 << 16)
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    ops.add_noise_(x, 1.0, generator=g, source=source)
    _assert_standard_normal(x, checks=3, label=f"{either_path}/{source}")


def test_clip_and_noise_noise_has_the_requested_std(either_path):
    seed = 7321
    print(f"seed = {seed}")
    std, scale = 2.5, 0.25
    grads = [torch.zeros(3, 300, 400), torch.zeros(3, 1000)]
    summed, _ = ops._clip_and_noise(grads, 1.0, std, scale=scale, generator=torch.Generator().manual_seed(seed))
    z = torch.cat([s.flatten() for s in summed]) / (std * scale)
    _assert_standard_normal(z, checks=3, label=either_path)


def test_same_seed_reproduces_and_consecutive_calls_differ(either_path):
    g = torch.Generator().manual_seed(5)
    a = ops.add_noise_(torch.zeros(1000), 1.0, generator=g)
    b = ops.add_noise_(torch.zeros(1000), 1.0, generator=g)
    again = ops.add_noise_(torch.zeros(1000), 1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, again)
    assert not torch.equal(a, b)
    # Consecutive streams are not shifted copies of each other either.
    assert (a - b).abs().min() > 0 or float((a == b).float().mean()) < 0.01


def test_generator_state_checkpoints_the_noise_stream(either_path):
    g = torch.Generator().manual_seed(11)
    ops.add_noise_(torch.zeros(10), 1.0, generator=g)
    state = g.get_state()
    first = ops.add_noise_(torch.zeros(100), 1.0, generator=g)
    g.set_state(state)
    assert torch.equal(ops.add_noise_(torch.zeros(100), 1.0, generator=g), first)


def test_default_generator_follows_manual_seed(either_path):
    torch.manual_seed(123)
    a = ops.add_noise_(torch.zeros(64), 1.0)
    torch.manual_seed(123)
    assert torch.equal(ops.add_noise_(torch.zeros(64), 1.0), a)


def test_secure_source_ignores_torch_seeding(either_path):
    torch.manual_seed(0)
    a = ops.add_noise_(torch.zeros(256), 1.0, source="secure")
    torch.manual_seed(0)
    b = ops.add_noise_(torch.zeros(256), 1.0, source="secure", generator=torch.Generator().manual_seed(0))
    assert not torch.equal(a, b)


def test_same_shaped_tensors_in_one_call_draw_different_noise(either_path):
    xs = [torch.zeros(50, 50) for _ in range(3)]
    ops.add_noise_(xs, 1.0, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(xs[0], xs[1]) and not torch.equal(xs[1], xs[2])
    summed, _ = ops._clip_and_noise([torch.zeros(4, 30), torch.zeros(4, 30)], 1.0, 1.0,
                                   generator=torch.Generator().manual_seed(3))
    assert not torch.equal(summed[0], summed[1])


def test_two_calls_inside_torch_compile_draw_different_noise(either_path):
    torch._dynamo.reset()

    @torch.compile(backend="eager")
    def step(a, b):
        ops.add_noise_(a, 1.0)
        ops.add_noise_(b, 1.0)
        return a + 0, b + 0

    a, b = step(torch.zeros(32), torch.zeros(32))
    assert not torch.equal(a, b)
    a2, _ = step(torch.zeros(32), torch.zeros(32))
    assert not torch.equal(a, a2)


def test_results_do_not_depend_on_the_thread_count(either_path):
    grads = [torch.randn(64, 300, 7), torch.randn(64, 5001)]
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            g = torch.Generator().manual_seed(99)
            summed, norms = ops._clip_and_noise(grads, 0.5, 1.0, generator=g)
            noise = ops.add_noise_(torch.zeros(100003), 1.0, generator=g)
            acc = ops._accumulate_and_noise(grads, torch.rand(64, generator=torch.Generator().manual_seed(1)),
                                           1.0, generator=g)
            results.append(summed + [norms, noise] + acc)
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*results):
        assert torch.equal(one, two)
