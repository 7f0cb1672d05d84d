"""CUDA parity of the minimum-norm, query-based and adaptive attacks and of the pooled evaluation.

Deterministic attacks run in float64 on both devices and must agree closely; the
query-based ones draw their own random streams per device, so they are held to
their invariants (budget, ball, range) and to the CPU's strength within a margin.
Skipped without CUDA; run by bench/gpu_check.sh.
"""

import copy

import pytest
import torch
from torch import nn

import modelsec_fast.attacks as ma
from modelsec_fast.evaluate import robust_accuracy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SEED = 3


@pytest.fixture
def pair(digits_mlp):
    """(CPU model, CUDA model, x, y, x on CUDA, y on CUDA), all float64."""
    cpu = copy.deepcopy(digits_mlp.model).double().eval()
    gpu = copy.deepcopy(cpu).cuda()
    x, y = digits_mlp.x[:48].double(), digits_mlp.y[:48]
    return cpu, gpu, x, y, x.cuda(), y.cuda()


@pytest.mark.parametrize("make", [
    lambda m: ma.CW(m, steps=30, lr=0.05, binary_search_steps=4),
    lambda m: ma.DeepFool(m, steps=20),
    lambda m: ma.DeepFool(m, steps=20, norm="Linf", top_k=5),
])
def test_minimum_norm_attacks_agree_across_devices(make, pair):
    cpu, gpu, x, y, xg, yg = pair
    on_cpu = make(cpu)(x, y)
    on_gpu = make(gpu)(xg, yg).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-6, atol=1e-6)


def test_cw_compat_runs_on_cuda(pair):
    cpu, gpu, x, y, xg, yg = pair
    on_cpu = ma.CW(cpu, steps=20, compat="torchattacks")(x, y)
    on_gpu = ma.CW(gpu, steps=20, compat="torchattacks")(xg, yg).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-6, atol=1e-6)


def test_spsa_on_cuda_keeps_its_invariants_and_strength(pair):
    cpu, gpu, x, y, xg, yg = pair
    make = lambda m: ma.SPSA(m, eps=0.1, lr=0.05, nb_iter=20, nb_sample=16, max_queries=500,  # noqa: E731
                             seed=SEED)
    atk_gpu = make(gpu)
    adv = atk_gpu(xg, yg)
    assert adv.is_cuda and int(atk_gpu.queries.max()) <= 500
    assert float((adv - xg).abs().max()) <= 0.1 + 1e-9 and 0 <= float(adv.min())
    with torch.no_grad():
        acc_gpu = float((gpu(adv).argmax(1) == yg).double().mean())
        acc_cpu = float((cpu(make(cpu)(x, y)).argmax(1) == y).double().mean())
    assert abs(acc_gpu - acc_cpu) <= 0.1, f"seed {SEED}: CUDA {acc_gpu} CPU {acc_cpu}"


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_hopskipjump_on_cuda_keeps_its_invariants_and_strength(norm, pair):
    cpu, gpu, x, y, xg, yg = pair
    make = lambda m: ma.HopSkipJump(m, norm=norm, max_queries=500, init_evals=20, seed=SEED)  # noqa: E731
    atk = make(gpu)
    on_gpu = atk.evaluate(xg[:16], yg[:16])
    on_cpu = make(cpu).evaluate(x[:16], y[:16])
    assert max(on_gpu.queries) <= 500
    history = torch.stack(atk.history)
    assert bool((history[1:] <= history[:-1]).all())
    assert on_gpu.success_rate == on_cpu.success_rate == 1.0
    assert on_gpu.median_norm <= 1.25 * on_cpu.median_norm, f"seed {SEED}"


def test_eot_and_bpda_run_on_cuda(pair):
    _, gpu, _, _, xg, yg = pair

    class Quantise(nn.Module):
        def forward(self, t):
            return torch.round(t * 4) / 4

    defended = nn.Sequential(Quantise(), gpu).eval()
    torch.manual_seed(SEED)
    adv = ma.EOT(ma.BPDA(ma.PGD(defended, eps=0.15, alpha=0.04, steps=10), defended[0]),
                 samples=2)(xg, yg)
    with torch.no_grad():
        clean = float((defended(xg).argmax(1) == yg).double().mean())
        robust = float((defended(adv).argmax(1) == yg).double().mean())
    assert robust <= 0.3 * clean


def test_pooled_evaluation_agrees_across_devices(pair):
    cpu, gpu, x, y, xg, yg = pair
    kw = dict(eps=0.07, alpha=0.02, steps=6, random_start=False)
    args = dict(batch_size=16, progress=False, check_masking=False)
    on_cpu = robust_accuracy(cpu, (x, y), [ma.PGD(cpu, **kw)], **args)
    on_gpu = robust_accuracy(gpu, (xg, yg), [ma.PGD(gpu, **kw)], **args)
    assert on_gpu.robust_accuracy == on_cpu.robust_accuracy
    assert on_gpu.floor_passes == on_cpu.floor_passes == on_gpu.sample_passes
    dist_gpu = robust_accuracy(gpu, (xg, yg), [ma.DeepFool(gpu)], **args).per_attack["DeepFool"]
    dist_cpu = robust_accuracy(cpu, (x, y), [ma.DeepFool(cpu)], **args).per_attack["DeepFool"]
    assert dist_gpu.distances.distances == pytest.approx(dist_cpu.distances.distances, rel=1e-6)
