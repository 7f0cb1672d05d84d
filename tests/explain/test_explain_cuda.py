"""Attributions on CUDA equal the CPU's (run where CUDA exists: bench/gpu_check.sh)."""

import copy

import pytest
import torch

from modelsec_fast.explain import integrated_gradients, saliency
from tests.explain.conftest import small_cnn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


@pytest.mark.parametrize("explain", [saliency, integrated_gradients])
def test_cuda_attributions_equal_the_cpus(explain, random_seed):
    model = small_cnn()
    x = torch.rand(5, 3, 6, 6, dtype=torch.float64)
    want = explain(model, x, max_inputs=64)
    got = explain(copy.deepcopy(model).cuda(), x.cuda(), max_inputs=64)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-11)
