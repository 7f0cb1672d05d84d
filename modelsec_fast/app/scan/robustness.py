"""The scan's evasion stage: AutoAttack's standard preset (APGD-CE, APGD-T, FAB-T,
Square) at the budget's steps, L-inf at ``eps_linf`` and L2 at ``eps_l2``, through
:func:`modelsec_fast.evaluate.robust_accuracy` (with its gradient-masking checks), and
accuracy under APGD-CE at a few radii around each for the plot."""

from __future__ import annotations

from ..sections.scan_robustness import ScanRobustnessSection
from .inputs import ScanInputs

__all__ = ["run", "preset_attacks", "CURVE_FACTORS"]

# Radii of the accuracy-against-eps plot, as multiples of the stated radius.
CURVE_FACTORS = (0.5, 1.0, 2.0)
# Square's queries per attack step of the budget (AutoAttack: 5000 for 100 steps).
_SQUARE_QUERIES_PER_STEP = 50


def preset_attacks(model, norm: str, eps: float, num_classes: int, steps: int, restarts: int,
                   seed: int, images: bool) -> list:
    """The standard preset at ``steps`` (radius in [0, 1] pixel units): targeted attacks
    only with >= 4 classes (untargeted APGD-DLR and FAB instead), Square only on images."""
    from modelsec_fast.attacks import APGD, APGDT, FAB, Square

    targets = min(9, num_classes - 1)
    attacks = [APGD(model, norm=norm, eps=eps, steps=steps, n_restarts=restarts, loss="ce",
                    seed=seed)]
    if num_classes >= 4:
        attacks += [APGDT(model, norm=norm, eps=eps, steps=steps, n_restarts=1,
                          n_classes=num_classes, n_target_classes=targets, seed=seed),
                    FAB(model, norm=norm, eps=eps, steps=steps, n_restarts=1,
                        multi_targeted=True, n_classes=num_classes, n_target_classes=targets,
                        seed=seed)]
    else:
        attacks += [APGD(model, norm=norm, eps=eps, steps=steps, n_restarts=1, loss="dlr",
                         seed=seed),
                    FAB(model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed)]
    if images:
        attacks.append(Square(model, norm=norm, eps=eps,
                              n_queries=_SQUARE_QUERIES_PER_STEP * steps, seed=seed))
    return attacks


def run(inputs: ScanInputs) -> ScanRobustnessSection:
    """Robust accuracy of ``inputs.model`` on ``inputs.attack_subset()``."""
    from modelsec_fast.attacks import APGD
    from modelsec_fast.evaluate import robust_accuracy

    unit = inputs.in_unit_range()
    width = inputs.input_range[1] - inputs.input_range[0]
    x, y = unit.attack_subset()
    budget = unit.budget
    radii = {"Linf": unit.eps_linf, "L2": unit.eps_l2}
    results, curves = {}, {}
    for norm, eps in radii.items():
        inputs.log(f"robustness: standard preset, {norm} eps {eps * width:.4g}, "
                   f"{len(y)} examples, {budget.attack_steps} steps")
        attacks = preset_attacks(unit.model, norm, eps, unit.num_classes, budget.attack_steps,
                                 budget.restarts, unit.seed, unit.is_image)
        results[norm] = result = robust_accuracy(unit.model, (x, y), attacks=attacks,
                                                 progress=False, seed=unit.seed)
        curve = {0.0: result.clean_accuracy}
        for factor in CURVE_FACTORS:
            if factor == 1.0:
                curve[eps * width] = result.per_attack[next(iter(result.per_attack))] \
                    .robust_accuracy
                continue
            inputs.log(f"robustness: APGD-CE, {norm} eps {factor * eps * width:.4g}")
            atk = APGD(unit.model, norm=norm, eps=factor * eps, steps=budget.attack_steps,
                       n_restarts=budget.restarts, seed=unit.seed)  # as the preset's APGD-CE
            curve[factor * eps * width] = robust_accuracy(
                unit.model, (x, y), attacks=[atk], progress=False, check_masking=False,
                seed=unit.seed).robust_accuracy
        curves[norm] = curve
    return ScanRobustnessSection(results=results,
                                 eps={n: e * width for n, e in radii.items()},
                                 curves=curves, attack_steps=budget.attack_steps,
                                 restarts=budget.restarts, input_range=inputs.input_range)
