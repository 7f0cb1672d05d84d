"""The scan's backdoor stage: is there a hidden trigger in the user's model?

* Neural Cleanse reverse-engineers, for every class, the smallest trigger that
  sends the test inputs there (``budget.optimisation_steps`` Adam steps per class)
  and reports each class's mask norm and MAD anomaly index; a backdoor's target
  stands out with a far smaller trigger.
* STRIP is calibrated on clean test inputs and measured against the same inputs
  carrying the reversed trigger of the flagged class (else of the class with the
  smallest trigger): it says whether inference-time filtering would catch it.
* Mitigation (Neural Cleanse unlearning on a copy of the model, fine-tuned on the
  user's training records for ``budget.optimisation_steps`` steps) runs only when training records were given and a class
  was flagged; otherwise the section says why it was skipped.

Test inputs are split in three: STRIP's overlays, its calibration, and the inputs it
is evaluated on. Inputs outside [0, 1] (``input_range``) are mapped to [0, 1] for the
defences, and back inside a wrapper before the model sees them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..report import SkippedSection
from ..sections.poisoning import BackdoorScanSection
from .inputs import ScanInputs

__all__ = ["run", "MIN_INPUTS"]

SALT = 14  # this stage's generator salt (issue 14)
MIN_INPUTS = 60  # a third of them calibrates STRIP at a 5% false rejection rate
STRIP_COPIES = 20
# Neural Cleanse feeds every input through all K triggers at once: a step holds
# K x batch triggered images; this caps their pixel count (batch shrinks to fit).
MAX_TRIGGERED_VALUES = 1 << 22
MAX_TRAIN = 2000  # training records the unlearning fine-tunes on
UNLEARN_BATCH = 128


class _UnitRange(nn.Module):
    """``model`` on inputs in [0, 1]: maps them to ``input_range`` first."""

    def __init__(self, model: nn.Module, lo: float, hi: float):
        super().__init__()
        self.model, self.lo, self.hi = model, lo, hi

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.model(self.lo + (self.hi - self.lo) * u)


def _to_unit(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)


def _trigger_success(model: nn.Module, nc, x: torch.Tensor, label: int) -> float:
    """Fraction of ``x`` (none of class ``label``) sent to ``label`` by its reversed trigger."""
    from modelsec_fast.poisoning.training import eval_mode

    with torch.no_grad(), eval_mode(model):
        return float((model(nc.apply(x, label)).argmax(1) == label).float().mean())


def run(inputs: ScanInputs):
    """Neural Cleanse, STRIP and (when possible) unlearning on the user's model; a
    :class:`~modelsec_fast.app.sections.poisoning.BackdoorScanSection`, or a
    ``SkippedSection`` for non-image data, fewer than 3 classes, too few test inputs,
    or a single input through all K triggers above :data:`MAX_TRIGGERED_VALUES`."""
    from modelsec_fast.defenses.neural_cleanse import NeuralCleanse, unlearn
    from modelsec_fast.defenses.strip import STRIP

    key, title = BackdoorScanSection.key, BackdoorScanSection.title
    x, y = inputs.attack_subset()
    if not inputs.is_image or x.dim() != 4:
        return SkippedSection(key, title, "trigger inspection (Neural Cleanse, STRIP) needs "
                              f"image inputs (N, C, H, W), got shape {tuple(x.shape)}")
    if inputs.num_classes < 3:
        return SkippedSection(key, title, "Neural Cleanse's outlier test needs at least 3 "
                              f"classes, the model has {inputs.num_classes}")
    if len(x) < MIN_INPUTS:
        return SkippedSection(key, title, f"needs at least {MIN_INPUTS} test inputs, got "
                              f"{len(x)}")
    per_input = inputs.num_classes * x[0].numel()
    if per_input > MAX_TRIGGERED_VALUES:
        return SkippedSection(key, title, f"Neural Cleanse's batched search needs "
                              f"{inputs.num_classes} triggered copies of each "
                              f"{'x'.join(map(str, x.shape[1:]))} input at once "
                              f"({per_input} values, above the {MAX_TRIGGERED_VALUES} allowed)")
    lo, hi = (float(v) for v in inputs.input_range)
    model = inputs.model if (lo, hi) == (0.0, 1.0) else _UnitRange(inputs.model, lo, hi)
    u = _to_unit(x, lo, hi)
    seed = int(torch.randint(2**31 - 1, (1,), generator=inputs.generator(SALT)))

    batch = min(16, len(u), MAX_TRIGGERED_VALUES // per_input)
    steps = inputs.budget.optimisation_steps
    epochs = max(1, round(steps / math.ceil(len(u) / batch)))
    inputs.log(f"backdoor: Neural Cleanse over {inputs.num_classes} classes, {epochs} epochs "
               f"on {len(u)} test inputs")
    nc = NeuralCleanse(model, epochs=epochs, batch_size=batch, seed=seed).reverse_engineer(
        u, y, num_classes=inputs.num_classes)
    probe = nc.flagged[0] if nc.flagged else min(range(inputs.num_classes),
                                                 key=lambda c: nc.l1_norms[c])

    third = len(u) // 3
    strip = STRIP(model, u[:third], n_copies=STRIP_COPIES, frr=0.05, seed=seed)
    strip.calibrate(u[third:2 * third])
    held, held_y = u[2 * third:], y[2 * third:]
    others = held[held_y != probe]
    inputs.log(f"backdoor: STRIP against class {probe}'s reversed trigger")
    evaluation = strip.evaluate(held, nc.apply(others, probe))

    settings = {"n_inputs": len(u), "epochs": epochs, "steps": epochs * math.ceil(len(u) / batch),
                "batch_size": batch, "strip_copies": STRIP_COPIES, "seed": seed}
    section = BackdoorScanSection(nc, evaluation, probe, settings)
    if inputs.train is None:
        section.mitigation_skipped = ("no training records were given: unlearning fine-tunes "
                                      "a copy of the model on clean training data")
    elif not nc.flagged:
        section.mitigation_skipped = "Neural Cleanse flagged no class: no trigger to unlearn"
    else:
        x_tr, y_tr = (t[:MAX_TRAIN].to(inputs.device) for t in inputs.train)
        unlearn_epochs = max(1, round(steps / math.ceil(len(y_tr) / UNLEARN_BATCH)))
        inputs.log(f"backdoor: unlearning class {probe}'s trigger on {len(y_tr)} records")
        m = unlearn(model, nc, _to_unit(x_tr, lo, hi), y_tr, classes=[probe],
                    epochs=unlearn_epochs, batch_size=UNLEARN_BATCH, seed=seed, test=(u, y))
        others = u[y != probe]
        section.mitigation = m
        section.trigger_success = {"before": _trigger_success(model, nc, others, probe),
                                   "after": _trigger_success(m.model, nc, others, probe)}
        settings.update(unlearn_records=len(y_tr), unlearn_epochs=unlearn_epochs)
    return section
