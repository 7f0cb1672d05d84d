"""The scan's summary section: a line per threat from the stages' sections (their
``verdict()`` when they define one) and the settings that reproduce the run."""

from __future__ import annotations

from typing import Sequence

import torch

from ..console import one_line
from ..report import FailedSection, SkippedSection
from ..sections.scan_summary import ScanSummarySection, ThreatLine
from .inputs import BUDGETS

__all__ = ["summary_section"]


def summary_section(stages: Sequence, sections: Sequence, options, described: dict,
                    seconds: dict) -> ScanSummarySection:
    """``stages[i]`` produced ``sections[i]``; ``options`` are the scan's
    :class:`~.pipeline.ScanOptions`, ``described`` what was loaded."""
    lines = [_line(spec, section) for spec, section in zip(stages, sections)]
    budget = BUDGETS[options.budget]
    settings = {
        "model": options.model, "weights": options.weights, "trust_model": options.trust_model,
        "data": options.data, "train_data": options.train_data, "members": options.members,
        "budget": vars(budget).copy(), "device": options.device, "seed": options.seed,
        "max_records": options.max_records, "mean": options.mean, "std": options.std,
        "torch": torch.__version__, "stage_seconds": dict(seconds), **described,
    }
    setting_lines = [
        f"model: {described['model']}",
        f"data: {described['data']}",
        f"input: shape {tuple(described['input_shape'])}, range {described['input_range']}"
        + (f", normalised inside the model with mean {options.mean} std {options.std}"
           if options.mean is not None else "")
        + f"; {described['num_classes']} classes (from the model's output)",
        f"radii: L-inf eps {described['eps_linf']:.4g}, L2 eps {described['eps_l2']:.4g} "
        "(input units)",
        f"budget {budget.name}: {budget.n_examples} examples attacked, {budget.attack_steps} "
        f"attack steps, {budget.restarts} restart(s), {budget.shadow_models} shadow models, "
        f"query budgets {', '.join(map(str, budget.query_budgets))}, "
        f"{budget.optimisation_steps} optimisation steps, {budget.attack_queries} queries "
        "per example for the query-based attacks",
        f"seed {options.seed}, device {options.device}, torch {torch.__version__}",
    ]
    if described.get("train_data"):
        setting_lines.insert(2, f"training data: {described['train_data']}")
    if described.get("membership"):
        setting_lines.insert(3, f"membership: {described['membership']}")
    if described.get("feature_scaling"):
        setting_lines.append("tabular features scaled to [0, 1] per column (min and max "
                             "recorded in report.json); radii are fractions of each range")
    if described.get("recipe"):
        setting_lines.append(f"training recipe for retraining: {described['recipe']}")
    return ScanSummarySection(lines, settings, setting_lines)


def _line(spec, section) -> ThreatLine:
    if isinstance(section, SkippedSection):
        return ThreatLine(spec.threat, section.key, "skipped", note=section.reason)
    if isinstance(section, FailedSection):
        return ThreatLine(spec.threat, section.key, "failed", note=section.error)
    verdict = getattr(section, "verdict", None)
    if not callable(verdict):
        return ThreatLine(spec.threat, section.key, "ok", note="no verdict rule; see its section")
    try:
        return ThreatLine(spec.threat, section.key, "ok", verdict=verdict())
    except Exception as e:  # noqa: BLE001  (a broken verdict must not lose the summary)
        return ThreatLine(spec.threat, section.key, "ok",
                          note=f"verdict failed: {type(e).__name__}: {one_line(e)}")
