"""CUDA parity of the batched extraction paths. Skipped without CUDA; run by
bench/gpu_check.sh."""

import copy

import pytest
import torch

from modelsec_fast.defenses import PradaMonitor, ReverseSigmoid
from modelsec_fast.stealing import HeldOut, KnockoffNets, ThiefTraining, Victim
from tests.stealing.stealing_helpers import mlp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


def test_a_cuda_victim_answers_what_the_cpu_victim_answers(victim_setup):
    model, pool, _, _ = victim_setup
    answers = []
    for device in ("cpu", "cuda"):
        victim = Victim.from_model(copy.deepcopy(model).to(device), budget=300,
                                   postprocess=ReverseSigmoid())
        answers.append(victim.query(pool[:300].to(device)).cpu())
        assert victim.queries_used == 300
    torch.testing.assert_close(answers[1], answers[0], rtol=1e-4, atol=1e-5)


def test_knockoff_on_cuda_spends_its_budget_and_copies_the_victim(victim_setup):
    model, pool, _, ds = victim_setup
    cuda_model = copy.deepcopy(model).cuda()
    held = HeldOut.from_model(cuda_model, ds.x_test.cuda(), ds.y_test.cuda())
    monitor = PradaMonitor()
    victim = Victim.from_model(cuda_model, budget=400, monitor=monitor)
    result = KnockoffNets(victim, mlp(1).cuda(), training=ThiefTraining(epochs=20)).extract(
        pool.cuda(), budgets=[100, 400], held_out=held)
    assert result.queries_used == victim.queries_used == 400 == monitor.result().queries
    assert next(result.thief.parameters()).is_cuda and result.fidelity > 0.85
