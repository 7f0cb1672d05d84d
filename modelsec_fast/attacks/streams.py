"""Per-sample random streams for the query-based attacks (SPSA, HopSkipJump).

Sample ``i`` of a call draws from its own ``torch.Generator`` seeded with
``seed + i``.  Its draws then depend only on the seed and its position in the
call, never on which other samples share the batch or when they stop: a batched
run gives each sample what a run on that sample alone with seed ``seed + i``
gives it (the reference-loop tests check exactly this), and torch's global RNG
is left alone.
"""

from __future__ import annotations

import torch

__all__ = ["SampleStreams"]


class SampleStreams:
    """``n`` generators on ``device``, the i-th seeded with ``seed + i``."""

    def __init__(self, seed: int, n: int, device):
        self.generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(n)]
        self.device = torch.device(device)

    def draw(self, rows: torch.Tensor, shape: tuple[int, ...], kind: str,
             dtype: torch.dtype) -> torch.Tensor:
        """(len(rows), *shape) values, row k from the stream of sample ``rows[k]``.

        kind: "uniform" (U[0, 1)), "symmetric" (U[-1, 1)), "normal" (N(0, 1)) or
        "sign" (+-1 with probability 1/2 each).
        """
        out = torch.empty((rows.numel(),) + tuple(shape), dtype=dtype, device=self.device)
        for k, i in enumerate(rows.tolist()):
            gen = self.generators[i]
            if kind == "normal":
                out[k].normal_(generator=gen)
            elif kind == "uniform":
                out[k].uniform_(0.0, 1.0, generator=gen)
            elif kind == "symmetric":
                out[k].uniform_(-1.0, 1.0, generator=gen)
            elif kind == "sign":
                out[k].random_(0, 2, generator=gen)
            else:
                raise ValueError(f"unknown kind {kind!r}")
        if kind == "sign":
            out.mul_(2).sub_(1)
        return out
