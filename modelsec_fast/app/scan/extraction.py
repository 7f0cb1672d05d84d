"""Scan stage: model stealing against the user's model.

:func:`measure_stealing` is the one pipeline (the demo calls it too): a KnockoffNets
thief with random sampling queries the model with natural images at each query
budget, once undefended and once behind each output defence; PRADA watches an
undefended natural stream and a Jacobian-augmentation stream; dataset inference
tests the stolen copy and an independently trained model for ownership.
:func:`run` feeds it the scan's inputs.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from modelsec_fast.defenses import (DatasetInference, LabelOnly, PradaMonitor,
                                    PredictionPoisoning, ReverseSigmoid, Rounding,
                                    utility_cost)
from modelsec_fast.stealing import (HeldOut, JacobianAugmentation, KnockoffNets, ThiefTraining,
                                    Victim, fit_thief)

from ..report import SkippedSection
from ..sections.stealing import DefendedExtraction, StealingSection
from .inputs import ScanInputs

__all__ = ["output_defences", "measure_stealing", "generic_thief", "pixel_model", "run"]


def output_defences() -> list[tuple[str, object]]:
    """(label, post-processor) of the output defences measured, each keeping the top-1."""
    return [("rounding (1 decimal)", Rounding(1)), ("reverse sigmoid", ReverseSigmoid()),
            ("prediction poisoning (L1 0.5)", PredictionPoisoning(0.5)),
            ("label only", LabelOnly())]


def measure_stealing(model: nn.Module, *, pool_x: torch.Tensor, held_x: torch.Tensor,
                     held_y: torch.Tensor, make_thief: Callable[[], nn.Module], thief: str,
                     budgets: Sequence[int], training: ThiefTraining,
                     private: tuple[torch.Tensor, torch.Tensor] | None = None,
                     independent_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                     jacobian_queries: int = 600, seed: int = 0,
                     num_classes: int | None = None,
                     log: Callable[[str], None] = lambda message: None) -> StealingSection:
    """Steals ``model`` (pixel inputs in [0, 1], logits) and measures the defences.

    Args:
        pool_x: the attacker's natural images (N, C, H, W); budgets above N are cut to N.
        held_x, held_y: held-out images and true labels for accuracy and fidelity, and the
            benign stream PRADA is calibrated on.
        make_thief: a fresh, untrained thief model; ``thief`` describes it.
        private: (x, y) of the model's training data, for the ownership test (skipped
            without it); ``independent_data``: (x, y) disjoint from it, on which a fresh
            thief is trained with true labels as the independent suspect.
        jacobian_queries: the Jacobian-augmentation stream's budget for PRADA (0: none).
        num_classes: the model's classes, where its last layer does not say (an
            exported program keeps no nn.Linear).
    """
    notes: list[str] = []
    asked = [int(b) for b in budgets]
    budgets = sorted({min(b, len(pool_x)) for b in asked if b >= 1})
    if not budgets:
        raise ValueError(f"budgets must hold a query budget >= 1, got {asked}")
    if max(asked) > len(pool_x):
        notes.append(f"budgets cut to the attacker's pool of {len(pool_x)} images")
    held = HeldOut.from_model(model, held_x, held_y)
    victim_accuracy = float((held.victim_labels == held.y).double().mean())
    natural = PradaMonitor()
    natural_ok = _calibrate(natural, model, held_x, notes)
    runs = []
    for label, defence in [("none", None)] + output_defences():
        log(f"stealing: KnockoffNets against defence {label}, budgets {budgets}")
        victim = Victim.from_model(model, budget=max(budgets), postprocess=defence,
                                   num_classes=num_classes,
                                   output="labels" if isinstance(defence, LabelOnly)
                                   else "probabilities",
                                   monitor=natural if defence is None and natural_ok else None)
        torch.manual_seed(seed)
        result = KnockoffNets(victim, make_thief(), training=training, seed=seed).extract(
            pool_x, budgets=budgets, held_out=held)
        cost = None
        if defence is not None:
            with torch.no_grad():
                probs = torch.softmax(model(held_x).double(), 1)
            cost = utility_cost(defence, probs, held_x)
        runs.append(DefendedExtraction(label, result, cost))
    prada = {}
    if natural_ok:
        prada["KnockoffNets (natural images, undefended run)"] = natural.result()
        if jacobian_queries:
            prada["Jacobian augmentation (synthetic images)"] = _jacobian_stream(
                model, held_x, held_y, make_thief, jacobian_queries, natural.delta, seed, log,
                num_classes)
    ownership = {}
    if private is None:
        notes.append("ownership test skipped: the model's training data is not known")
    else:
        log("stealing: dataset inference on the stolen copy and an independent model")
        test = DatasetInference(model, *private, held_x, held_y, seed=seed)
        ownership["stolen copy (KnockoffNets, undefended)"] = test.test(runs[0].result.thief)
        if independent_data is not None:
            torch.manual_seed(seed + 1)
            x, y = independent_data
            with torch.no_grad():
                k = model(held_x[:1]).shape[1]
            independent = fit_thief(make_thief(), x, nn.functional.one_hot(y.long(), k).float(),
                                    training, seed=seed + 1)
            ownership["independent model (own data and labels)"] = test.test(independent)
    return StealingSection(runs, victim_accuracy, thief, len(held_y), prada, ownership, notes)


def _calibrate(monitor: PradaMonitor, model: nn.Module, held_x: torch.Tensor,
               notes: list[str]) -> bool:
    try:
        with torch.no_grad():
            monitor.calibrate(held_x, model(held_x).argmax(1))
    except ValueError as err:
        notes.append(f"PRADA skipped: {err}")
        return False
    return True


def _jacobian_stream(model, held_x, held_y, make_thief, budget, delta, seed, log,
                     num_classes=None):
    """PRADA's verdict on a Jacobian-augmentation attacker seeded with a few held-out
    images per class."""
    log(f"stealing: PRADA against Jacobian augmentation ({budget} queries)")
    monitor = PradaMonitor(delta=delta)
    classes = held_y.unique()
    seeds = torch.cat([held_x[held_y == c][:max(1, 100 // len(classes))] for c in classes])
    victim = Victim.from_model(model, output="labels", budget=budget, monitor=monitor,
                               num_classes=num_classes)
    rounds = max(1, math.ceil(math.log2(max(budget / len(seeds), 1)))) + 1
    torch.manual_seed(seed)
    JacobianAugmentation(victim, make_thief(), rounds=rounds, seed=seed,
                         training=ThiefTraining(epochs=5, min_steps=50)).extract(seeds)
    return monitor.result()


class _UnitBox(nn.Module):
    """The user's model on inputs rescaled to [0, 1] (the attacks here work in that box)."""

    def __init__(self, model: nn.Module, low: float, high: float):
        super().__init__()
        self.model, self.low, self.span = model, float(low), float(high) - float(low)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.model(self.low + self.span * u)


def pixel_model(inputs: ScanInputs) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """(the model on [0, 1] inputs, the map of the user's inputs into [0, 1])."""
    low, high = (float(v) for v in inputs.input_range)
    if (low, high) == (0.0, 1.0):
        return inputs.model, lambda x: x
    unit = _UnitBox(inputs.model, low, high).eval()
    return unit, lambda x: ((x - low) / (high - low)).clamp(0, 1)


def generic_thief(inputs: ScanInputs) -> tuple[Callable[[], nn.Module], str]:
    """(a fresh thief factory, its description): the user's factory when given (on the
    [0, 1] box), else a small CNN for images of at least 8x8, else an MLP."""
    from modelsec_fast.models import build_model

    shape = tuple(inputs.x.shape[1:])
    device = inputs.device
    if inputs.factory is not None:
        low, high = (float(v) for v in inputs.input_range)
        return (lambda: _UnitBox(inputs.factory(), low, high).to(device),
                "the model's own architecture, freshly initialised")
    if inputs.is_image and len(shape) == 3 and min(shape[1:]) >= 8:
        return (lambda: build_model("small_cnn", shape, inputs.num_classes).to(device),
                "a small generic CNN: no model factory was given, so the thief's "
                "architecture differs from the model's")
    return (lambda: build_model("mlp", shape, inputs.num_classes, hidden=(256,)).to(device),
            "a small generic MLP: no model factory was given, so the thief's architecture "
            "differs from the model's")


def run(inputs: ScanInputs) -> StealingSection | SkippedSection:
    """The scan's stealing stage: half of the test examples are the attacker's pool, the
    other half held out; budgets from ``inputs.budget.query_budgets``; the thief trains
    at least ``min(300, 3 * optimisation_steps)`` steps."""
    key, title = StealingSection.key, StealingSection.title
    if not inputs.is_image or inputs.x.dim() != 4:
        return SkippedSection(key, title, "the stealing stage queries with images (N, C, H, W)")
    if len(inputs.x) < 40:
        return SkippedSection(key, title, f"{len(inputs.x)} test examples are too few to split "
                              "into an attacker's pool and a held-out set (need 40)")
    model, to_box = pixel_model(inputs)
    x, y = to_box(inputs.x.to(inputs.device)), inputs.y.to(inputs.device)
    order = torch.randperm(len(x), generator=inputs.generator(15)).to(inputs.device)
    half = len(x) // 2
    pool, held = order[:half], order[half:]
    make_thief, thief = generic_thief(inputs)
    private = independent = None
    if inputs.train is not None:
        tx, ty = inputs.train
        n = min(len(tx), inputs.budget.n_examples)
        private = (to_box(tx[:n].to(inputs.device)), ty[:n].to(inputs.device))
        independent = (x[pool], y[pool])
    # The thief's training is an optimisation too: its least steps follow the budget's.
    steps = min(300, 3 * inputs.budget.optimisation_steps)
    return measure_stealing(model, pool_x=x[pool], held_x=x[held], held_y=y[held],
                            make_thief=make_thief, thief=thief,
                            budgets=inputs.budget.query_budgets,
                            training=ThiefTraining(epochs=20, min_steps=steps),
                            private=private, independent_data=independent,
                            jacobian_queries=min(600, max(inputs.budget.query_budgets)),
                            seed=inputs.seed, num_classes=inputs.num_classes, log=inputs.log)
