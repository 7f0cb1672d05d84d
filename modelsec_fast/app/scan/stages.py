"""The scan's stages, in report order: each is ``modelsec_fast.app.scan.<module>.run``,
a function ``(ScanInputs) -> Section`` (see :mod:`.inputs`).

A threat family adds its stage by adding its module; a build without that module
reports the section as skipped, saying so. Any other error a stage raises is
reported as that section's failure, and the other stages still run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from ..report import Section, SkippedSection, build_section
from .inputs import ScanInputs

__all__ = ["StageSpec", "STAGES", "run_stage"]


@dataclass(frozen=True)
class StageSpec:
    """``key`` (report.json), ``title`` (heading) and ``module`` (under
    ``modelsec_fast.app.scan``) of one stage; ``threat`` names it in the summary."""

    key: str
    title: str
    module: str
    threat: str


STAGES: tuple[StageSpec, ...] = (
    StageSpec("robustness", "Evasion: robust accuracy", "robustness", "evasion"),
    StageSpec("minimum_norm", "Evasion: minimum-norm distances", "minimum_norm",
              "evasion (distances)"),
    StageSpec("membership", "Privacy: membership inference", "membership", "membership inference"),
    StageSpec("stealing", "Model stealing: extraction risk", "extraction", "model extraction"),
    StageSpec("inversion", "Privacy: model inversion", "inversion", "model inversion"),
    StageSpec("backdoor", "Poisoning: backdoor scan", "backdoor", "backdoor"),
    StageSpec("explanations", "Explanations of the most vulnerable examples", "explanations",
              "explanations"),
)


def _stage_function(spec: StageSpec) -> Callable[[ScanInputs], Section] | None:
    """The stage's ``run``, or None when this build lacks its module (only that module:
    a missing dependency inside it is the stage's failure, not its absence)."""
    name = f"modelsec_fast.app.scan.{spec.module}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise
    return module.run


def run_stage(spec: StageSpec, inputs: ScanInputs, *, raise_errors: bool = False) -> Section:
    """The stage's section: its result, a skipped section when this build lacks it or it
    does not apply, or a failed section naming the error it raised."""
    def build():
        run = _stage_function(spec)
        if run is None:
            return SkippedSection(spec.key, spec.title,
                                  f"not in this build of modelsec_fast (no module "
                                  f"modelsec_fast.app.scan.{spec.module})")
        return run(inputs)

    return build_section(spec.key, spec.title, build, raise_errors=raise_errors)
