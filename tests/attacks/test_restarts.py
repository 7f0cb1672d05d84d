"""The one restart driver (attacks/restarts.py) and the attacks that use it.

The driver is checked on its own (stages, restarts, which rows each run gets,
one seeded generator), then APGD, APGD-T, FAB, FAB-T and Square against their
restart loops as each attack wrote them before the driver existed: outputs
must be bit-identical, with settings weak enough that later restarts break
points the first one missed.
"""

import math

import pytest
import torch

import modelsec_fast.attacks as ma
from modelsec_fast.attacks.gradient import success_mask
from modelsec_fast.attacks.losses import dlr_targeted_loss
from modelsec_fast.attacks.restarts import restart_on_unbroken

SEED = 4


# --------------------------------------------------------------------- driver

def test_driver_runs_each_stage_on_the_samples_still_unbroken():
    broken = torch.zeros(8, dtype=torch.bool)
    broken[0] = True  # broken before any run: never attacked
    found = torch.full((8,), -1.0)
    calls, draws = [], []

    def run(r):
        calls.append((r.stage, r.restart, r.index.tolist()))
        draws.append(float(torch.rand((), generator=r.generator)))
        sub_broken, sub_found = r.results
        sub_broken[0] = True  # each run breaks the first row it gets
        sub_found[0] = 10 * "ab".index(r.stage) + r.restart

    restart_on_unbroken([broken, found], lambda: ~broken, run, n_restarts=3, seed=SEED,
                        stages=("a", "b"))
    assert calls == [("a", 0, [1, 2, 3, 4, 5, 6, 7]), ("a", 1, [2, 3, 4, 5, 6, 7]),
                     ("a", 2, [3, 4, 5, 6, 7]), ("b", 0, [4, 5, 6, 7]), ("b", 1, [5, 6, 7]),
                     ("b", 2, [6, 7])]
    assert broken.tolist() == [True] * 7 + [False]
    assert found.tolist() == [-1, 0, 1, 2, 10, 11, 12, -1]
    # One generator, seeded once per call, shared by the runs in order.
    assert draws == torch.rand(6, generator=torch.Generator().manual_seed(SEED)).tolist()


def test_driver_stops_once_every_sample_is_broken():
    broken = torch.zeros(5, dtype=torch.bool)
    calls = []

    def run(r):
        calls.append(r.restart)
        r.results[0].fill_(True)

    restart_on_unbroken([broken], lambda: ~broken, run, n_restarts=4, seed=0, stages=(1, 2, 3))
    assert calls == [0] and bool(broken.all())


# ------------------------------------------- the loops before the driver, verbatim

def _apgd_before(atk, x, y, early_stop, plan):
    """_APGDBase._run_restarts before the driver."""
    gen = torch.Generator(device=x.device).manual_seed(atk.seed)
    with torch.no_grad():
        logits = atk.get_logits(x)
    out_adv, out_best = x.clone(), x.clone()
    out_loss = torch.full((x.shape[0],), -math.inf, device=x.device)
    out_fooled = success_mask(logits, y, None)
    for make_objective in plan:
        for _ in range(atk.n_restarts):
            todo = (~out_fooled).nonzero().flatten()
            if todo.numel() == 0:
                break
            objective, t, sx = make_objective(todo)
            sub_adv, sub_fooled = out_adv[todo], out_fooled[todo]
            sub_best, sub_loss = out_best[todo], torch.full_like(out_loss[todo], -math.inf)
            atk._single_run(x[todo], y[todo], t, objective, sx, gen, early_stop,
                            sub_adv, sub_fooled, sub_best, sub_loss)
            out_adv[todo], out_fooled[todo] = sub_adv, sub_fooled
            out_best[todo] = sub_best
    return torch.where(out_fooled.reshape(-1, 1, 1, 1), out_adv, out_best)


def _apgd_plan(atk, x):
    objective = atk._objective_for(None)
    return [lambda todo: (objective, None, None)]


def _apgdt_plan(atk, x):
    with torch.no_grad():
        ranking = atk.get_logits(x).argsort(dim=1, descending=True)

    def plan_for(k):
        return lambda todo: (dlr_targeted_loss, ranking[todo, k - 1], None)
    return [plan_for(k) for k in range(2, atk.n_target_classes + 2)]


def _fab_before(atk, x, y, early_stop):
    """FAB._attack before the driver (untargeted and FAB-T)."""
    gen = torch.Generator(device=x.device).manual_seed(atk.seed)
    with torch.no_grad():
        logits = atk.get_logits(x)
    if atk.multi_targeted:
        ranking = logits.argsort(dim=1, descending=True)
        target_sets = [ranking[:, j] for j in range(1, atk.n_target_classes + 1)]
    else:
        target_sets = [None]
    res = torch.full((x.shape[0],), math.inf)
    res[logits.argmax(1) != y] = 0.0
    best = x.clone()
    for t in target_sets:
        for restart in range(atk.n_restarts):
            todo = (res > atk.eps).nonzero().flatten()
            if todo.numel() == 0:
                break
            sub_res, sub_best = res[todo], best[todo]
            atk._single_run(x[todo], y[todo], None if t is None else t[todo], gen,
                            restart > 0, sub_res, sub_best, early_stop, False)
            res[todo], best[todo] = sub_res, sub_best
    found = (res <= atk.eps) & (res > 0)
    return torch.where(found.reshape(-1, 1, 1, 1), best, x)


def _square_before(atk, x, y):
    """Square.forward before the driver (untargeted)."""
    gen = torch.Generator(device=x.device).manual_seed(atk.seed)
    with torch.no_grad():
        logits = atk.get_logits(x)
    out_done = logits.argmax(1) != y
    out = x.clone()
    out_loss = torch.full((x.shape[0],), math.inf)
    for _ in range(atk.n_restarts):
        todo = (~out_done).nonzero().flatten()
        if todo.numel() == 0:
            break
        sub_out, sub_loss, sub_done = out[todo], out_loss[todo], out_done[todo]
        atk._single_run(x[todo], y[todo], gen, sub_out, sub_loss, sub_done)
        out[todo], out_loss[todo], out_done[todo] = sub_out, sub_loss, sub_done
    return out


def _record_runs(atk) -> list:
    """Wrap ``atk._single_run`` to record each run's inputs: tensors (cloned before the
    run), flags, and the generator's state; callables (objectives) are left out."""
    runs, single_run = [], atk._single_run

    def recording(*args):
        gen = next(a for a in args if isinstance(a, torch.Generator))
        runs.append([gen.get_state()] + [a.clone() if isinstance(a, torch.Tensor) else a
                                         for a in args
                                         if not isinstance(a, torch.Generator) and not callable(a)])
        return single_run(*args)

    atk._single_run = recording
    return runs


def _assert_same_runs(ours, before, tag):
    assert len(ours) == len(before), f"{tag}: {len(ours)} runs, {len(before)} before"
    for i, (a, b) in enumerate(zip(ours, before)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            same = torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v
            assert same, f"{tag}: run {i} got other inputs than before"


# Weak settings, so that restarts after the first still find points.
ATTACKS = {
    "APGD": lambda m, r: ma.APGD(m, eps=0.05, steps=2, n_restarts=r, seed=SEED),
    "APGD-L2": lambda m, r: ma.APGD(m, norm="L2", eps=0.3, steps=2, n_restarts=r, seed=SEED),
    "APGD-T": lambda m, r: ma.APGDT(m, eps=0.05, steps=2, n_restarts=r, seed=SEED,
                                    n_target_classes=2),
    "FAB": lambda m, r: ma.FAB(m, eps=0.08, steps=2, n_restarts=r, seed=SEED),
    "FAB-T": lambda m, r: ma.FAB(m, eps=0.08, steps=2, n_restarts=r, seed=SEED,
                                 multi_targeted=True, n_target_classes=2),
    "Square": lambda m, r: ma.Square(m, eps=0.08, n_queries=8, n_restarts=r, seed=SEED),
}


def _before(name, atk, x, y, early_stop):
    if name.startswith("APGD"):
        plan = (_apgdt_plan if name == "APGD-T" else _apgd_plan)(atk, x)
        return _apgd_before(atk, x, y, early_stop, plan)
    if name.startswith("FAB"):
        return _fab_before(atk, x, y, early_stop)
    return _square_before(atk, x, y)


@pytest.mark.parametrize("early_stop", [False, True])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_outputs_equal_their_restart_loops_before_the_driver(name, early_stop,
                                                                    digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:60], digits_mlp.y[:60]
    tag = f"{name} early_stop={early_stop} seed={SEED}"
    atk = ATTACKS[name](m, 3)
    runs = _record_runs(atk)
    ours = atk.run_for_evaluation(x, y) if early_stop else atk(x, y)
    ours_runs = list(runs)
    runs.clear()
    reference = _before(name, atk, x, y, early_stop and name != "Square")
    assert torch.equal(ours, reference), tag
    _assert_same_runs(ours_runs, runs, tag)
    stages = 2 if name.endswith("-T") else 1
    print(f"{tag}: {len(ours_runs)} runs over {stages} stage(s)")
    assert len(ours_runs) > stages, f"{tag}: no restart ran, the test would not see them"
