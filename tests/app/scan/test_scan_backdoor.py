"""The scan's backdoor stage on a tiny hand-built model with a planted trigger: Neural
Cleanse flags the planted target (and no class without the trigger), STRIP is measured
against the reversed trigger, unlearning runs only with training records, and the
stage skips what it cannot inspect."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from modelsec_fast.app.report import Figure, Paragraph, SkippedSection, Table
from modelsec_fast.app.scan import Budget, ScanInputs
from modelsec_fast.app.scan import backdoor
from modelsec_fast.app.scan.backdoor import run
from modelsec_fast.app.sections.poisoning import BackdoorScanSection

SIDE, CLASSES, TARGET = 14, 9, 0
BUDGET = Budget("test", n_examples=90, attack_steps=1, restarts=1, shadow_models=0,
                query_budgets=(), optimisation_steps=150)


def _region(c: int) -> tuple[slice, slice]:
    """Class c's 4x4 block in a 3x3 grid; the 2-pixel border holds the trigger corner."""
    r, k = divmod(c, 3)
    return slice(4 * r, 4 * r + 4), slice(4 * k, 4 * k + 4)


def _data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Background in [0, 0.3]; class c's block raised by 0.5."""
    y = torch.randint(0, CLASSES, (n,), generator=generator)
    x = 0.3 * torch.rand(n, 1, SIDE, SIDE, generator=generator)
    for i, c in enumerate(y.tolist()):
        rows, cols = _region(c)
        x[i, 0, rows, cols] += 0.5
    return x, y


def _model(backdoor: bool, scale: float = 1.0) -> nn.Module:
    """Linear: each class reads its block's mean; with ``backdoor``, class TARGET also
    reads the bottom-right 2x2 corner (4 pixels, against 16 for a natural class).
    ``scale`` multiplies every weight (a small one lets a short fine-tuning move them)."""
    linear = nn.Linear(SIDE * SIDE, CLASSES)
    with torch.no_grad():
        w = torch.zeros(CLASSES, 1, SIDE, SIDE)
        for c in range(CLASSES):
            rows, cols = _region(c)
            w[c, 0, rows, cols] = 20.0 / 16
        linear.bias.zero_()
        if backdoor:
            w[TARGET, 0, SIDE - 2:, SIDE - 2:] = 60.0 / 4
            linear.bias[TARGET] = -60.0 * 0.15  # the corner's mean on clean inputs
        linear.weight.copy_(scale * w.flatten(1))
        linear.bias.mul_(scale)
    return nn.Sequential(nn.Flatten(), linear).eval()


def _inputs(model, seed, **extra) -> ScanInputs:
    x, y = _data(120, torch.Generator().manual_seed(seed))
    return ScanInputs(model=model, x=x, y=y, num_classes=CLASSES, input_range=(0.0, 1.0),
                      eps_linf=0.1, eps_l2=1.0, budget=BUDGET, seed=seed, **extra)


def test_backdoor_stage_flags_the_planted_target_and_renders(tmp_path, random_seed):
    inputs = _inputs(_model(backdoor=True), random_seed)
    section = run(inputs)
    assert isinstance(section, BackdoorScanSection)
    nc = section.neural_cleanse
    assert nc.flagged == [TARGET] and section.probe_class == TARGET
    assert len(nc.l1_norms) == len(nc.anomaly_index) == CLASSES  # every class reported
    assert nc.anomaly_index[TARGET] > 2.0
    assert section.settings["n_inputs"] == BUDGET.n_examples
    assert 140 <= section.settings["steps"] <= 160  # the budget's optimisation steps
    st = section.strip
    assert st.n_clean == BUDGET.n_examples - 2 * (BUDGET.n_examples // 3)
    assert 0.0 <= st.auroc <= 1.0 and st.n_copies == 20
    assert section.mitigation is None and "no training records" in section.mitigation_skipped
    json.dumps(section.to_json(), allow_nan=False)
    blocks = section.blocks(str(tmp_path))
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert len(table.rows) == CLASSES and table.rows[TARGET][-1] == "flagged"
    (figure,) = [b for b in blocks if isinstance(b, Figure)]
    assert os.path.basename(figure.path).startswith("backdoor") and os.path.exists(figure.path)
    assert any("class 0 stands out" in b.text for b in blocks if isinstance(b, Paragraph))
    assert "skipped (no training records" in blocks[-1].text


def test_backdoor_stage_flags_no_class_of_a_clean_model(random_seed):
    train = _data(100, torch.Generator().manual_seed(random_seed + 1))
    section = run(_inputs(_model(backdoor=False), random_seed, train=train))
    assert section.neural_cleanse.flagged == []
    assert section.mitigation is None and "flagged no class" in section.mitigation_skipped


def test_backdoor_stage_unlearns_with_training_records(random_seed):
    train = _data(300, torch.Generator().manual_seed(random_seed + 1))
    model = _model(backdoor=True, scale=0.5)
    before = model[1].weight.detach().clone()
    section = run(_inputs(model, random_seed, train=train))
    m = section.mitigation
    assert m is not None and m.method == "neural_cleanse_unlearning"
    assert section.trigger_success["before"] > 0.9
    assert section.trigger_success["after"] < 0.5 * section.trigger_success["before"]
    assert not m.destroys_clean_accuracy and m.clean_accuracy_after > 0.9
    assert torch.equal(model[1].weight, before)  # the user's model is never modified


def test_backdoor_stage_maps_another_input_range(random_seed):
    """A model on [-1, 1] inputs: the defences work in [0, 1] and the wrapper maps back."""
    inner = _model(backdoor=True)
    model = nn.Sequential(_Affine(), inner).eval()  # takes v in [-1, 1], feeds (v + 1) / 2
    inputs = _inputs(model, random_seed)
    inputs.x, inputs.input_range = 2 * inputs.x - 1, (-1.0, 1.0)
    mapped = run(inputs).neural_cleanse
    direct = run(_inputs(inner, random_seed)).neural_cleanse  # the same model on [0, 1]
    assert mapped.flagged == direct.flagged == [TARGET]
    assert mapped.l1_norms == pytest.approx(direct.l1_norms, rel=1e-3)


class _Affine(nn.Module):
    def forward(self, v):
        return (v + 1) / 2


def test_backdoor_stage_skips_what_it_cannot_inspect(monkeypatch):
    tabular = _inputs(_model(backdoor=True), 0)
    tabular.x, tabular.is_image = tabular.x.flatten(1), False
    skipped = run(tabular)
    assert isinstance(skipped, SkippedSection) and "image inputs" in skipped.reason
    few = _inputs(_model(backdoor=True), 0)
    few.x, few.y = few.x[:30], few.y[:30]
    skipped = run(few)
    assert isinstance(skipped, SkippedSection) and "at least 60 test inputs" in skipped.reason
    monkeypatch.setattr(backdoor, "MAX_TRIGGERED_VALUES", CLASSES * SIDE * SIDE - 1)
    skipped = run(_inputs(_model(backdoor=True), 0))
    assert isinstance(skipped, SkippedSection) and "9 triggered copies of each 1x14x14" \
        in skipped.reason


def test_backdoor_stage_shrinks_its_batch_to_the_memory_cap(monkeypatch):
    monkeypatch.setattr(backdoor, "MAX_TRIGGERED_VALUES", 8 * CLASSES * SIDE * SIDE)
    section = run(_inputs(_model(backdoor=True), 0))
    assert section.settings["batch_size"] == 8
