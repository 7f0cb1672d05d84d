"""C-Acc, ASR, RA and the defence deltas: exact values on a scripted model, and the
BadNets acceptance test of issue 14 on the digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelsec_fast.poisoning import BadNets, backdoor_metrics, defence_effectiveness_rating


class Scripted(nn.Module):
    """Predicts ``trigger_label`` when the bottom-right pixel is 1, else the label stored
    in the top-left pixel (value label / 10)."""

    def __init__(self, trigger_label=None, wrong=()):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.trigger_label = trigger_label
        self.wrong = set(wrong)

    def forward(self, x):
        label = torch.round(x[:, 0, 0, 0] * 10).long()
        for w in self.wrong:  # these labels are predicted as (label + 1) % 10
            label = torch.where(label == w, (label + 1) % 10, label)
        if self.trigger_label is not None:
            label = torch.where(x[:, 0, -1, -1] == 1.0, torch.full_like(label, self.trigger_label),
                                label)
        return nn.functional.one_hot(label, 10).float() + 0 * self.dummy


def _data():
    y = torch.arange(10).repeat(4)
    x = torch.zeros(len(y), 1, 8, 8)
    x[:, 0, 0, 0] = y / 10
    return x, y


def test_exact_figures_on_a_scripted_model():
    x, y = _data()
    attack = BadNets(3, 0.1, size=1, pattern="white")
    backdoored = Scripted(trigger_label=3, wrong=(5,))
    m = backdoor_metrics(backdoored, x, y, attack)
    assert m.clean_accuracy == pytest.approx(36 / 40)  # the 4 fives are wrong
    assert m.n_attack == 36  # the target class's 4 inputs are left out of ASR/RA
    assert m.asr == 1.0 and m.ra == 0.0
    repaired = Scripted(trigger_label=None, wrong=(5, 6))
    d = backdoor_metrics(backdoored, x, y, attack, defended_model=repaired)
    after = d.defended
    assert after.clean_accuracy == pytest.approx(32 / 40)
    assert after.asr == 0.0 and after.ra == pytest.approx(28 / 36)  # fives and sixes wrong
    assert d.delta_clean_accuracy == pytest.approx(-0.1)
    assert d.delta_asr == pytest.approx(-1.0) and d.delta_ra == pytest.approx(28 / 36)
    assert d.der == pytest.approx((1.0 - 0.1 + 1) / 2)
    doc = d.to_json()
    assert doc["defended"]["asr"] == 0.0 and doc["der"] == pytest.approx(0.95)


def test_der_by_hand():
    # FT-SAM's table: BadNets 91.82/93.79 -> FT 90.29/1.70 gives DER 95.28.
    assert defence_effectiveness_rating(0.9182, 0.9379, 0.9029, 0.0170) == pytest.approx(
        0.9528, abs=5e-5)
    assert defence_effectiveness_rating(0.9, 0.9, 0.9, 0.9) == 0.5  # no change
    assert defence_effectiveness_rating(0.9, 0.5, 0.95, 0.7) == 0.5  # rises count as 0
    assert defence_effectiveness_rating(1.0, 0.0, 0.0, 0.0) == 0.0


def test_metrics_restore_the_model_mode():
    x, y = _data()
    model = Scripted(trigger_label=3).train()
    backdoor_metrics(model, x, y, BadNets(3, 0.1, size=1, pattern="white"))
    assert model.training


def test_badnets_at_ten_percent_succeeds_at_little_clean_cost(setup):
    """Issue 14: ASR >= 95% with clean accuracy at most 2 points below the clean model."""
    poisoned = backdoor_metrics(setup.backdoored, setup.x_test, setup.y_test, setup.attack)
    clean = backdoor_metrics(setup.clean, setup.x_test, setup.y_test, setup.attack)
    print(f"seed {setup.seed}: ASR {poisoned.asr:.4f}, C-Acc {poisoned.clean_accuracy:.4f} "
          f"vs clean {clean.clean_accuracy:.4f} (clean model's ASR {clean.asr:.4f})")
    assert setup.poisoned.n_poison == round(0.1 * len(setup.y_train))
    assert poisoned.asr >= 0.95
    assert poisoned.clean_accuracy >= clean.clean_accuracy - 0.02
    assert clean.asr < 0.05  # the trigger alone does nothing to a clean model
