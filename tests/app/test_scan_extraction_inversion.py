"""The scan's stealing and inversion stages on a user's model (ScanInputs)."""

import pytest
import torch
from torch import nn

from modelsec_fast.app.report import SkippedSection
from modelsec_fast.app.scan import Budget, ScanInputs
from modelsec_fast.app.scan import extraction, inversion
from modelsec_fast.models import build_model
from tests.stealing.stealing_helpers import digits, digits_victim

TINY = Budget("quick", n_examples=60, attack_steps=1, restarts=1, shadow_models=2,
              query_budgets=(40, 80), optimisation_steps=5)


class SignedInputs(nn.Module):
    """The digits victim for a user whose inputs lie in [-1, 1]."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if float(x.min()) < -1 - 1e-6 or float(x.max()) > 1 + 1e-6:
            raise ValueError("inputs outside [-1, 1]")
        return self.inner((x + 1) / 2)


def _inputs(**overrides):
    model, _, _, ds = digits_victim()
    values = dict(model=model, x=ds.x_test[:200], y=ds.y_test[:200], num_classes=10,
                  input_range=(0.0, 1.0), eps_linf=0.1, eps_l2=1.0, budget=TINY)
    values.update(overrides)
    return ScanInputs(**values)


def test_the_stealing_stage_uses_a_generic_thief_without_a_factory_and_says_so():
    section = extraction.run(_inputs())
    assert "small generic CNN" in section.thief and "no model factory" in section.thief
    assert [p.queries for p in section.runs[0].result.curve] == [40, 80]
    assert section.held_out == 100
    assert "ownership test skipped" in " ".join(section.notes)


def test_the_stealing_stage_trains_the_users_architecture_and_tests_ownership():
    ds = digits()
    factory = lambda: build_model("mlp", (1, 8, 8), 10, hidden=(32,))  # noqa: E731
    section = extraction.run(_inputs(factory=factory,
                                     train=(ds.x_train[:100], ds.y_train[:100])))
    assert section.thief.startswith("the model's own architecture")
    thief = section.runs[0].result.thief
    assert sum(p.numel() for p in thief.parameters()) == sum(
        p.numel() for p in factory().parameters())
    assert len(section.ownership) == 2


def test_a_model_on_signed_inputs_is_attacked_in_its_own_range():
    model, _, _, ds = digits_victim()
    signed = _inputs(model=SignedInputs(model), x=ds.x_test[:200] * 2 - 1,
                     input_range=(-1.0, 1.0))
    unit, to_box = extraction.pixel_model(signed)
    torch.testing.assert_close(to_box(signed.x), ds.x_test[:200])
    torch.testing.assert_close(unit(ds.x_test[:5]), model(ds.x_test[:5]))
    section = inversion.run(signed)  # SignedInputs raises on anything outside [-1, 1]
    assert section.protection.row(None).mean_psnr > 40


def test_the_inversion_stage_reports_plain_and_dp_rows():
    section = inversion.run(_inputs())
    rows = section.protection.rows
    assert [r.noise_multiplier for r in rows] == [None, *inversion.NOISE_MULTIPLIERS]
    assert section.model == "the scanned model" and len(section.protection.images) == 6
    assert rows[0].mean_psnr > rows[-1].mean_psnr


def test_user_model_parameters_are_left_as_they_were():
    model, _, _, _ = digits_victim()
    frozen = model.net[1].weight
    frozen.requires_grad_(False)
    try:
        inversion.run(_inputs())
        assert not frozen.requires_grad
    finally:
        frozen.requires_grad_(True)


@pytest.mark.parametrize("stage", [extraction, inversion], ids=["stealing", "inversion"])
def test_non_image_data_is_skipped_with_the_reason(stage):
    model = nn.Linear(5, 3)
    section = stage.run(_inputs(model=model, x=torch.rand(100, 5), y=torch.randint(0, 3, (100,)),
                                num_classes=3, is_image=False))
    assert isinstance(section, SkippedSection) and "images" in section.reason


def test_too_few_examples_to_steal_are_skipped():
    _, _, _, ds = digits_victim()
    section = extraction.run(_inputs(x=ds.x_test[:30], y=ds.y_test[:30]))
    assert isinstance(section, SkippedSection) and "too few" in section.reason
