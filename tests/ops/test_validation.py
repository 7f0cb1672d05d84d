"""Bad input gets the same clear error from the native and reference paths."""

import pytest
import torch

from modelsec_fast import ops

from tests.ops.conftest import requires_native


def _grads():
    return [torch.randn(4, 3), torch.randn(4, 2, 2)]


@pytest.mark.parametrize("call, exc, match", [
    (lambda: ops.clip_and_noise([torch.randn(4, 3), torch.randn(5, 3)], 1.0, 1.0), ValueError, "batch size"),
    (lambda: ops.clip_and_noise([torch.randn(4, 3), torch.randn(4, 3).double()], 1.0, 1.0), TypeError, "mixed dtypes"),
    (lambda: ops.clip_and_noise([torch.randn(4, 3).int()], 1.0, 1.0), TypeError, "dtype"),
    (lambda: ops.clip_and_noise(_grads(), 0.0, 1.0), ValueError, "max_norm"),
    (lambda: ops.clip_and_noise(_grads(), -1.0, 1.0), ValueError, "max_norm"),
    (lambda: ops.clip_and_noise(_grads(), float("inf"), 1.0), ValueError, "max_norm"),
    (lambda: ops.clip_and_noise(_grads(), 1.0, -0.1), ValueError, "noise_std"),
    (lambda: ops.clip_and_noise(_grads(), 1.0, float("nan")), ValueError, "noise_std"),
    (lambda: ops.clip_and_noise(_grads(), 1.0, 1.0, scale=float("inf")), ValueError, "scale"),
    (lambda: ops.clip_and_noise(_grads(), 1.0, 1.0, source="urandom"), ValueError, "source"),
    (lambda: ops.clip_and_noise([], 1.0, 1.0), ValueError, "empty"),
    (lambda: ops.clip_and_noise(torch.randn(4, 3), 1.0, 1.0), TypeError, "list"),
    (lambda: ops.accumulate_and_noise(_grads(), torch.ones(3), 1.0), ValueError, "factors"),
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
        ops.clip_and_noise(grads, 1.0, 1.0)
    with pytest.raises(ValueError, match="not finite"):
        ops.accumulate_and_noise(grads, torch.ones(4), 1.0)


def test_squared_norm_overflowing_float32_is_reported_as_non_finite(either_path):
    grads = [torch.full((2, 4), 3e19)]
    with pytest.raises(ValueError, match="non-finite norm"):
        ops.clip_and_noise(grads, 1.0, 0.0)


def test_mixed_devices_are_rejected(either_path):
    meta = torch.randn(4, 3, device="meta")
    with pytest.raises(ValueError, match="devices"):
        ops.clip_and_noise([torch.randn(4, 3), meta], 1.0, 1.0)


def _native_op(name):
    return getattr(torch.ops.modelsec_fast, name)


# Calls straight into the C++ entry points, past ops.py's checks: the csrc/op_checks.h
# border must raise the same clear errors on its own (schema: ..., scale, seed, offset, source).
@requires_native
@pytest.mark.parametrize("call, exc, match", [
    (lambda: _native_op("clip_and_noise")([torch.randn(4, 3), torch.randn(5, 3)], 1.0, 1.0, 1.0, 0, 0, 0),
     ValueError, "mismatched batch size"),
    (lambda: _native_op("clip_and_noise")([torch.randn(4, 3), torch.randn(4, 3).double()], 1.0, 1.0, 1.0, 0, 0, 0),
     TypeError, "mixed dtypes"),
    (lambda: _native_op("clip_and_noise")(_grads(), 0.0, 1.0, 1.0, 0, 0, 0), ValueError, "max_norm must be > 0"),
    (lambda: _native_op("clip_and_noise")(_grads(), float("nan"), 1.0, 1.0, 0, 0, 0), ValueError, "max_norm must be finite"),
    (lambda: _native_op("clip_and_noise")(_grads(), 1.0, -1.0, 1.0, 0, 0, 0), ValueError, "noise_std must be >= 0"),
    (lambda: _native_op("clip_and_noise")(_grads(), 1.0, 1.0, float("inf"), 0, 0, 0), ValueError, "scale must be finite"),
    (lambda: _native_op("clip_and_noise")(_grads(), 1.0, 1.0, 1.0, 0, 0, 7), ValueError, "source must be 0"),
    (lambda: _native_op("accumulate_and_noise")(_grads(), torch.ones(3), 1.0, 1.0, 0, 0, 0),
     ValueError, r"factors must have shape \(4,\)"),
    (lambda: _native_op("accumulate_and_noise")(_grads(), torch.ones(4, dtype=torch.int64), 1.0, 1.0, 0, 0, 0),
     TypeError, "factors has dtype"),
    (lambda: _native_op("accumulate_and_noise")(_grads(), torch.ones(4), -1.0, 1.0, 0, 0, 0),
     ValueError, "noise_std must be >= 0"),
    (lambda: _native_op("_fill_normals_")(torch.empty(8, dtype=torch.float64), 0, 0, 0, 0, []),
     TypeError, "contiguous 1-D float32"),
    (lambda: _native_op("_fill_normals_")(torch.empty(8), 0, 0, 0, 1, [1, 2, 3]), ValueError, "8-word key"),
])
def test_native_entry_points_validate_on_their_own(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@requires_native
def test_native_entry_points_refuse_non_finite_sums_on_their_own():
    grads = _grads()
    grads[0][1, 2] = float("nan")
    with pytest.raises(ValueError, match="sample 1 has a non-finite norm"):
        _native_op("clip_and_noise")(grads, 1.0, 1.0, 1.0, 0, 0, 0)
    with pytest.raises(ValueError, match="weighted sum of tensor 0 is not finite"):
        _native_op("accumulate_and_noise")(grads, torch.ones(4), 1.0, 1.0, 0, 0, 0)
