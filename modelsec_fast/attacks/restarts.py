"""The restart driver of APGD, APGD-T, FAB and Square: rerun on the points not yet broken.

An attack keeps its per-sample results in a few tensors of batch size B (the
best point so far, whether the sample is broken, a loss or a norm).  For each
stage (a target class, an objective; one stage when there is nothing to vary)
the driver makes up to ``n_restarts`` runs, each on the samples still unbroken
only, and writes what the run found back into those tensors.  Every run draws
from one generator seeded with the attack's ``seed``, in run order, so a call
is reproducible and torch's global RNG is left alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch

__all__ = ["RestartRun", "restart_on_unbroken"]


@dataclasses.dataclass
class RestartRun:
    """What the driver hands to one run.

    Attributes:
        stage: the stage's entry from ``stages`` (None when there is one stage).
        restart: 0 for a stage's first run, 1 for its second, ...
        index: int64 (n,), the batch rows still unbroken, ascending.
        results: those rows of each results tensor, in order; the run improves
            them in place and the driver copies them back.
        generator: the call's seeded generator.
    """

    stage: Any
    restart: int
    index: torch.Tensor
    results: list[torch.Tensor]
    generator: torch.Generator


def restart_on_unbroken(results: Sequence[torch.Tensor], unbroken: Callable[[], torch.Tensor],
                        run: Callable[[RestartRun], None], *, n_restarts: int, seed: int,
                        stages: Sequence = (None,)) -> None:
    """Run each stage up to ``n_restarts`` times on the samples still unbroken.

    Args:
        results: per-sample tensors (B, ...) on one device, updated in place.
        unbroken: () -> bool (B,), read before every run (from ``results``):
            the samples the next run attacks.  A stage stops early once it is
            all False.
        run: attacks ``RestartRun.index`` and improves ``RestartRun.results``
            in place.
        n_restarts: runs per stage (>= 1).
        seed: seed of the generator shared by all runs of this call.
        stages: what varies between stages, passed to ``run`` as ``stage``.
    """
    generator = torch.Generator(device=results[0].device).manual_seed(seed)
    for stage in stages:
        for restart in range(n_restarts):
            index = unbroken().nonzero().flatten()
            if index.numel() == 0:
                break
            rows = [full[index] for full in results]
            run(RestartRun(stage, restart, index, rows, generator))
            for full, part in zip(results, rows):
                full[index] = part
