"""Bad input to the public ops gets the same clear error on the native and reference paths.

Direct torch.ops.modelsec_fast calls, which reach the C++ checks, are in test_library.py.
"""

import pytest
import torch

from modelsec_fast import ops



def _grads():
    return [torch.randn(4, 3), torch.randn(4, 2, 2)]


@pytest.mark.parametrize("call, exc, match", [
    (lambda: ops._clip_and_noise([torch.randn(4, 3), torch.randn(5, 3)], 1.0, 1.0), ValueError, "batch size"),
    (lambda: ops._clip_and_noise([torch.randn(4, 3), torch.randn(4, 3).double()], 1.0, 1.0), TypeError, "mixed dtypes"),
    (lambda: ops._clip_and_noise([torch.randn(4, 3).int()], 1.0, 1.0), TypeError, "dtype"),
    (lambda: ops._clip_and_noise(_grads(), 0.0, 1.0), ValueError, "max_norm"),
    (lambda: ops._clip_and_noise(_grads(), -1.0, 1.0), ValueError, "max_norm"),
    (lambda: ops._clip_and_noise(_grads(), float("inf"), 1.0), ValueError, "max_norm"),
    (lambda: ops._clip_and_noise(_grads(), 1.0, -0.1), ValueError, "noise_std"),
    (lambda: ops._clip_and_noise(_grads(), 1.0, float("nan")), ValueError, "noise_std"),
    (lambda: ops._clip_and_noise(_grads(), 1.0, 1.0, scale=float("inf")), ValueError, "scale"),
    (lambda: ops._clip_and_noise(_grads(), 1.0, 1.0, source="urandom"), ValueError, "source"),
    (lambda: ops._clip_and_noise([], 1.0, 1.0), ValueError, "empty"),
    (lambda: ops._clip_and_noise(torch.randn(4, 3), 1.0, 1.0), TypeError, "list"),
    (lambda: ops._accumulate_and_noise(_grads(), torch.ones(3), 1.0), ValueError, "factors"),
    (lambda: ops.add_noise_(torch.zeros(3), -1.0), ValueError, "noise_std"),
    (lambda: ops.add_noise_(torch.zeros(3, dtype=torch.int64), 1.0), TypeError, "dtype"),
    (lambda: ops.sign_step(torch.rand(2, 3), torch.rand(2, 3), torch.rand(2, 3), -0.1, 0.1), ValueError, "alpha"),
    (lambda: ops.sign_step(torch.rand(2, 3), torch.rand(2, 3), torch.rand(2, 3), 0.1, -0.1), ValueError, "eps"),
    (lambda: ops.sign_step(torch.rand(2, 3), torch.rand(2, 3), torch.rand(2, 3), 0.1, 0.1, 1.0, 0.0), ValueError, "lo"),
    (lambda: ops.sign_step(torch.rand(2, 3), torch.rand(2, 3), torch.rand(2, 3), float("nan"), 0.1), ValueError, "alpha"),
    (lambda: ops.sign_step(torch.rand(2, 3), torch.rand(2, 4), torch.rand(2, 3), 0.1, 0.1), ValueError, "shape"),
    (lambda: ops.sign_step(torch.rand(2, 3), torch.rand(2, 3).double(), torch.rand(2, 3), 0.1, 0.1), TypeError, "dtypes"),
    (lambda: ops.sign_step(torch.rand(2, 3), torch.rand(2, 3), torch.rand(2, 3), torch.tensor([0.1, -0.1]), 0.1), ValueError, "negative"),
    (lambda: ops.sign_step(torch.rand(2, 3), torch.rand(2, 3), torch.rand(2, 3), torch.ones(3), 0.1), ValueError, "shape"),
    (lambda: ops.l2_step(torch.rand(2, 3), torch.rand(2, 3), torch.rand(2, 3), 0.1, float("inf")), ValueError, "eps"),
])
def test_bad_input_raises_a_clear_error(either_path, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_per_sample_gradient_raises_instead_of_returning_a_sum(either_path, bad):
    grads = _grads()
    grads[1][2, 1, 0] = bad
    with pytest.raises(ValueError, match="sample 2 has a non-finite norm"):
        ops._clip_and_noise(grads, 1.0, 1.0)
    with pytest.raises(ValueError, match="not finite"):
        ops._accumulate_and_noise(grads, torch.ones(4), 1.0)


def test_squared_norm_overflowing_float32_is_reported_as_non_finite(either_path):
    grads = [torch.full((2, 4), 3e19)]
    with pytest.raises(ValueError, match="non-finite norm"):
        ops._clip_and_noise(grads, 1.0, 0.0)


def test_mixed_devices_are_rejected(either_path):
    meta = torch.randn(4, 3, device="meta")
    with pytest.raises(ValueError, match="devices"):
        ops._clip_and_noise([torch.randn(4, 3), meta], 1.0, 1.0)
