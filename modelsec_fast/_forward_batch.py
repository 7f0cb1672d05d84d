"""Rows per forward pass for methods that batch many queries of one model themselves
(STRIP's superimposed copies, SPSA's and HopSkipJump's probes).

On a CPU, a forward pass over more than a few MB of activations gets fresh pages
from glibc's allocator that fault in every time, so batches of at most
``CPU_FORWARD_VALUES`` input values run faster per row than batches of thousands
of rows (measured in bench/RESULTS.md: STRIP, HopSkipJump, SPSA). On an
accelerator one large batch is best.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["CPU_FORWARD_VALUES", "ACCELERATOR_ROWS", "rows_per_forward"]

CPU_FORWARD_VALUES = 1 << 17  # input values per forward pass on a CPU
ACCELERATOR_ROWS = 4096  # rows per forward pass on an accelerator, by default


def rows_per_forward(row_shape: Sequence[int], device,
                     accelerator_rows: int = ACCELERATOR_ROWS, minimum: int = 1) -> int:
    """Rows of shape ``row_shape`` per forward pass on ``device``: ``accelerator_rows``
    off the CPU; on a CPU as many as hold ``CPU_FORWARD_VALUES`` values, at most
    ``accelerator_rows`` and at least ``minimum``."""
    if torch.device(device).type != "cpu":
        return accelerator_rows
    fit = CPU_FORWARD_VALUES // max(1, math.prod(row_shape))
    return max(minimum, min(accelerator_rows, fit))
