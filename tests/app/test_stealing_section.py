"""The stealing report section and the pipeline the demo and the scan share."""

import json
import os

import pytest

from modelsec_fast.app.report import Figure, Table
from modelsec_fast.app.scan.extraction import measure_stealing
from modelsec_fast.app.sections import StealingSection
from modelsec_fast.stealing import ThiefTraining
from tests.stealing.stealing_helpers import digits_victim, mlp

FAST = ThiefTraining(epochs=5, batch_size=128, min_steps=30)


@pytest.fixture(scope="module")
def section():
    model, pool, pool_y, ds = digits_victim()
    private = (ds.x_train[:100], ds.y_train[:100])  # not the victim's split: any data will do
    return measure_stealing(model, pool_x=pool[:300], held_x=ds.x_test[:200],
                            held_y=ds.y_test[:200], make_thief=lambda: mlp(1), thief="an MLP",
                            budgets=(50, 200), training=FAST, private=private,
                            independent_data=(pool[:300], pool_y[:300]),
                            jacobian_queries=200, seed=0)


def test_every_defence_is_measured_at_every_budget_and_keeps_the_top1(section):
    labels = [r.defence for r in section.runs]
    assert labels[0] == "none" and len(labels) == 5
    for run in section.runs:
        assert [p.queries for p in run.result.curve] == [50, 200]
        assert run.result.queries_used == 200
        assert all(0 <= p.fidelity <= 1 for p in run.result.curve)
    assert section.runs[0].utility is None
    assert all(r.utility.top1_agreement == 1.0 and r.utility.mean_l1 > 0
               for r in section.runs[1:])
    outputs = {r.defence: r.result.victim_output for r in section.runs}
    assert outputs["label only"] == "labels" and outputs["none"] == "probabilities"


def test_prada_and_ownership_are_reported(section):
    natural, jacobian = section.prada.values()
    assert natural.queries == 200 and jacobian.queries == 200
    assert not natural.detected  # natural images, delta calibrated on benign queries
    assert set(section.ownership) == {"stolen copy (KnockoffNets, undefended)",
                                      "independent model (own data and labels)"}
    assert all(0 <= r.p_value <= 1 for r in section.ownership.values())


def test_the_section_renders_tables_a_figure_and_json(section, tmp_path):
    blocks = section.blocks(str(tmp_path))
    tables = [b for b in blocks if isinstance(b, Table)]
    assert tables[0].header[3:5] == ("fidelity at 50 queries", "fidelity at 200 queries")
    assert [row[0] for row in tables[0].rows] == [r.defence for r in section.runs]
    assert len(tables) == 3  # fidelity, PRADA, ownership
    figure = next(b for b in blocks if isinstance(b, Figure))
    assert os.path.basename(figure.path) == "stealing_fidelity.png"
    assert os.path.getsize(figure.path) > 1000
    data = json.loads(json.dumps(section.to_json()))
    assert data["runs"][0]["extraction"]["curve"][1]["queries"] == 200
    assert StealingSection.key == "stealing"


def test_budgets_beyond_the_pool_are_cut_and_missing_data_is_noted():
    model, pool, _, ds = digits_victim()
    section = measure_stealing(model, pool_x=pool[:60], held_x=ds.x_test[:50],
                               held_y=ds.y_test[:50], make_thief=lambda: mlp(1), thief="an MLP",
                               budgets=(40, 400), training=FAST, seed=0)
    assert [p.queries for p in section.runs[0].result.curve] == [40, 60]
    notes = " ".join(section.notes)
    assert "budgets cut to the attacker's pool of 60 images" in notes
    assert "ownership test skipped" in notes and "PRADA skipped" in notes
    assert section.prada == {} and section.ownership == {}
    with pytest.raises(ValueError, match="budgets must hold a query budget >= 1"):
        measure_stealing(model, pool_x=pool[:60], held_x=ds.x_test[:50], held_y=ds.y_test[:50],
                         make_thief=lambda: mlp(1), thief="an MLP", budgets=(0,),
                         training=FAST)
