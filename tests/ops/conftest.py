"""Shared fixtures for the fused-op tests: path switching and per-dtype tolerances."""

import pytest
import torch

from modelsec_fast import ops

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# (rtol, atol) of native vs reference on sums of clipped gradients. The noise
# transforms differ by a few fp32 ulp (|dz| < 2e-6), see reference.py.
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-9, 2e-6),
    torch.bfloat16: (1.6e-2, 1e-2),
    torch.float16: (2e-3, 2e-3),
}

requires_native = pytest.mark.skipif(
    not ops.native_available(),
    reason="native library not built (pip install --no-build-isolation -e .) "
           "or disabled by MODELSEC_FAST_DISABLE_NATIVE")


@pytest.fixture
def fallback(monkeypatch):
    """Forces the pure-PyTorch path for the duration of a test."""
    monkeypatch.setenv("MODELSEC_FAST_DISABLE_NATIVE", "1")
    assert not ops.native_available()


@pytest.fixture(params=["native", "fallback"])
def either_path(request, monkeypatch):
    """Runs a test on both paths (native skipped when not built)."""
    if request.param == "native":
        if not ops.native_available():
            pytest.skip("native library not built")
    else:
        monkeypatch.setenv("MODELSEC_FAST_DISABLE_NATIVE", "1")
    return request.param


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator with a fixed seed; the seed is printed for the log."""
    print(f"generator seed = {seed}")
    return torch.Generator().manual_seed(seed)


def stream_of(seed: int, numels) -> tuple[int, int]:
    """The (seed, offset) an op draws from a generator freshly seeded with `seed`."""
    return ops._philox_stream(torch.Generator().manual_seed(seed), max(numels, default=0))
