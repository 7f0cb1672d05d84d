"""PRADA: flags Jacobian augmentation, passes benign natural queries, and reports the
query at which it first flagged."""

import pytest
import torch

from modelsec_fast.defenses import PradaMonitor
from modelsec_fast.stealing import JacobianAugmentation, ThiefTraining, Victim
from tests.stealing.stealing_helpers import digits_victim, mlp


@pytest.fixture(scope="module")
def setup():
    return digits_victim()


def _jbda_stream(model, ds, monitor, budget=600):
    victim = Victim.from_model(model, output="labels", budget=budget, monitor=monitor)
    seeds = torch.cat([ds.x_test[ds.y_test == c][:10] for c in range(10)])
    JacobianAugmentation(victim, mlp(1), rounds=5,
                         training=ThiefTraining(epochs=5, min_steps=50)).extract(seeds)
    return victim


def test_prada_flags_jacobian_augmentation_within_its_queries(setup):
    model, _, _, ds = setup
    monitor = PradaMonitor()
    _jbda_stream(model, ds, monitor)
    result = monitor.result()
    assert result.detected and 100 < result.detection_delay <= 600
    assert result.queries == 600 and result.last_w < monitor.delta


def test_prada_passes_benign_natural_queries(setup):
    model, pool, _, ds = setup
    for stream in (ds.x_test, pool):
        monitor = PradaMonitor()
        Victim.from_model(model, budget=len(stream), monitor=monitor).query(stream)
        assert not monitor.detected and monitor.result().detection_delay is None
        assert monitor.last_w > monitor.delta + 0.01


def test_the_delay_does_not_depend_on_how_the_queries_were_batched(setup):
    model, _, _, ds = setup
    whole = PradaMonitor()
    _jbda_stream(model, ds, whole)
    replay = PradaMonitor()
    stream = torch.cat([torch.stack(list(g)) for g in _recorded(model, ds)])
    labels = model(stream).argmax(1)
    for i in range(0, len(stream), 37):
        replay.observe(stream[i:i + 37], labels[i:i + 37])
    assert replay.detection_delay == whole.detection_delay
    assert replay.last_w == pytest.approx(whole.last_w) or whole.detected


def _recorded(model, ds):
    """The inputs a Jacobian-augmentation run queries, in order."""
    batches = []

    class Recorder:
        def observe(self, x, out):
            batches.append(x)

    _jbda_stream(model, ds, Recorder())
    return batches


def test_calibration_sets_delta_below_every_benign_prefix(setup):
    model, pool, _, ds = setup
    monitor = PradaMonitor()
    delta = monitor.calibrate(ds.x_test, model(ds.x_test).argmax(1), false_alarm_margin=0.01)
    check = PradaMonitor(delta=delta)
    check.observe(ds.x_test, model(ds.x_test).argmax(1))
    assert not check.detected and 0.9 < delta < 1.0


@pytest.mark.parametrize("delta", [0.0, 1.0, 1.5])
def test_a_delta_outside_the_open_unit_interval_is_refused(delta):
    with pytest.raises(ValueError, match=r"delta must lie in \(0, 1\)"):
        PradaMonitor(delta=delta)
