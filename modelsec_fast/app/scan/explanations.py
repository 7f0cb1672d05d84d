"""Scan stage: explanations of the most vulnerable test examples.

"Most vulnerable": the correctly classified examples of the attack subset with the
smallest clean logit margin (misclassified ones only if too few are correct). Each
is attacked by a short L-inf PGD at ``eps_linf`` and explained for its true label
by Integrated Gradients (baseline: the bottom of the input range) clean and
adversarial; then infidelity of both maps and the model-randomisation check of
Integrated Gradients and of the plain gradient (saliency).
"""

from __future__ import annotations

import torch
from torch import nn

from modelsec_fast.attacks import PGD
from modelsec_fast.explain import (attribution_shift, infidelity, integrated_gradients,
                                   model_randomisation_check)

from ..console import one_line
from ..report.document import SkippedSection
from ..sections.explanations import ExplainedExample, ExplanationsSection
from .inputs import ScanInputs

__all__ = ["run", "N_EXPLAINED", "IG_STEPS"]

N_EXPLAINED = 6        # examples explained (rows of the map figure)
IG_STEPS = 32          # Integrated Gradients' path points
SANITY_STAGES = 4      # cascading-randomisation stages
INFIDELITY_SAMPLES = 10
_SALT = 4_017          # this stage's generator salt (ScanInputs.generator)


class _UnitRange(nn.Module):
    """``model`` seen from [0, 1]: the attacks work in unit pixel space."""

    def __init__(self, model: nn.Module, lo: float, hi: float):
        super().__init__()
        self.model, self.lo, self.width = model, lo, hi - lo

    def forward(self, unit: torch.Tensor) -> torch.Tensor:
        return self.model(self.lo + unit * self.width)


@torch.no_grad()
def _margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 256):
    """(predictions, true logit minus the largest other logit), both (N,)."""
    logits = torch.cat([model(c) for c in x.split(chunk)])
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return logits.argmax(1), true - others


def _most_vulnerable(correct: torch.Tensor, margins: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k correct examples of smallest margin, then misclassified ones."""
    order = torch.argsort(margins)
    ranked = torch.cat([order[correct[order]], order[~correct[order]]])
    return ranked[:k]


def run(inputs: ScanInputs):
    """The explanations section for ``inputs`` (see the module docstring); a
    SkippedSection for data that are not images (N, C, H, W)."""
    key, title = ExplanationsSection.key, ExplanationsSection.title
    if not inputs.is_image or inputs.x.dim() != 4:
        return SkippedSection(key, title, "attribution maps need image data (N, C, H, W); got "
                              f"{'non-image' if not inputs.is_image else 'shape'} data of shape "
                              f"{tuple(inputs.x.shape)}")
    model, (lo, hi) = inputs.model, (float(inputs.input_range[0]), float(inputs.input_range[1]))
    x, y = inputs.attack_subset()
    predictions, margins = _margins(model, x, y)
    chosen = _most_vulnerable(predictions == y, margins, min(N_EXPLAINED, len(x)))
    x, y = x[chosen], y[chosen]
    inputs.log(f"explanations: {len(chosen)} examples of smallest margin, PGD "
               f"{inputs.budget.attack_steps} steps at eps {inputs.eps_linf:g}")

    steps = inputs.budget.attack_steps
    unit_eps = inputs.eps_linf / (hi - lo)
    attack = PGD(_UnitRange(model, lo, hi), eps=unit_eps, alpha=max(2.5 * unit_eps / steps, 1e-8),
                 steps=steps, random_start=False)
    unit = ((x - lo) / (hi - lo)).clamp(0, 1)
    adversarial = lo + attack(unit, y) * (hi - lo)
    adv_predictions, _ = _margins(model, adversarial, y)

    inputs.log("explanations: Integrated Gradients, clean and adversarial")
    ig = dict(baselines=lo, n_steps=IG_STEPS)
    clean_maps = integrated_gradients(model, x, y, **ig)
    adversarial_maps = integrated_gradients(model, adversarial, y, **ig)
    noise = dict(input_range=(lo, hi), n_perturb_samples=INFIDELITY_SAMPLES)
    infidelity_clean = infidelity(model, x, clean_maps, y, generator=inputs.generator(_SALT),
                                  **noise)
    infidelity_adversarial = infidelity(model, adversarial, adversarial_maps, y,
                                        generator=inputs.generator(_SALT + 1), **noise)

    inputs.log("explanations: model-randomisation sanity check")
    sanity, sanity_error = [], ""
    try:  # a model that cannot be copied (an exported program) still gets its maps
        # The maps' method, and the plain gradient as the reference that Adebayo et al.
        # found to pass: IG multiplies by (x - baseline), so part of its map is the input.
        for method, options in (("integrated_gradients", ig), ("saliency", {})):
            sanity.append(model_randomisation_check(
                model, x, y, method=method, n_stages=SANITY_STAGES,
                generator=inputs.generator(_SALT + 2), **options))
    except Exception as error:  # noqa: BLE001  (reported in the section)
        sanity, sanity_error = [], f"{type(error).__name__}: {one_line(error)}"
    examples = [ExplainedExample(int(chosen[i]), int(y[i]), int(predictions[chosen[i]]),
                                 int(adv_predictions[i]), float(margins[chosen[i]]))
                for i in range(len(chosen))]
    return ExplanationsSection(
        method="integrated_gradients",
        settings={"n_steps": IG_STEPS, "baseline": f"{lo:g} everywhere"},
        attack=f"L-inf PGD, eps {inputs.eps_linf:g}, {steps} steps, no random start",
        examples=examples, clean_inputs=x.cpu(), adversarial_inputs=adversarial.cpu(),
        input_range=(lo, hi), shift=attribution_shift(clean_maps.cpu(), adversarial_maps.cpu()),
        infidelity_clean=infidelity_clean.cpu(),
        infidelity_adversarial=infidelity_adversarial.cpu(),
        sanity=sanity, sanity_error=sanity_error)
