"""How many model inputs go through the model at once.

Integrated Gradients evaluates the model at ``n_steps`` points per example and
SmoothGrad at ``n_samples`` noisy copies, so a batch of B examples means
B x n_steps model inputs: the out-of-memory case Captum's users report (its
``internal_batch_size`` cannot go below the batch size). A :class:`ChunkPlan`
splits both the examples and their copies so that no forward/backward pass ever
holds more than ``max_inputs`` model inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelsec_fast.validation import check_int

__all__ = ["ChunkPlan", "plan_chunks", "DEFAULT_MAX_INPUTS"]

# Model inputs per pass unless the caller says otherwise: a ResNet-18 at 32x32 needs
# well under a GiB of activations for 256 inputs.
DEFAULT_MAX_INPUTS = 256


@dataclass(frozen=True)
class ChunkPlan:
    """``examples`` examples per chunk, each with ``copies`` of its copies (steps or
    noise samples) per pass: at most ``examples * copies`` model inputs per pass."""

    examples: int
    copies: int

    @property
    def inputs_per_pass(self) -> int:
        return self.examples * self.copies


def plan_chunks(batch: int, copies: int, max_inputs: int) -> ChunkPlan:
    """The plan for ``batch`` examples of ``copies`` copies each, at most ``max_inputs``
    model inputs per pass: as many examples as fit, then as many copies per example.

    Raises:
        TypeError, ValueError: a count that is not an integer >= 1.
    """
    batch = check_int("batch", batch, 1)
    copies = check_int("copies", copies, 1)
    max_inputs = check_int("max_inputs", max_inputs, 1)
    examples = min(batch, max_inputs)
    return ChunkPlan(examples, max(1, min(copies, max_inputs // examples)))
