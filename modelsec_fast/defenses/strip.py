"""STRIP (Gao et al. 2019): detect triggered inputs at inference by their low entropy.

Each input is superimposed on ``n_copies`` clean images drawn at random
(``alpha * x + (1 - alpha) * overlay``, ART's blend with alpha = 0.5) and the model's
prediction entropy (bits) is averaged over the copies. A clean input's copies are
confused by the overlays (high entropy); a triggered input keeps predicting the
target (low entropy). Inputs whose entropy lies below a threshold are flagged; the
threshold is set on held-out clean inputs so that at most ``frr`` of them (the false
rejection rate) would be flagged.

Vectorised: every superimposed copy of a chunk of inputs goes through the model in
one batch on the model's device (on a CPU, a chunk of at most ``CPU_FORWARD_VALUES``
input values: see ``modelsec_fast._forward_batch``); the overlay indices are one (B, n_copies) draw from
a seeded generator, so a run is reproducible and equals the per-sample loop that
uses the same indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .._forward_batch import rows_per_forward
from ..audit.metrics import auc, tpr_at_fpr
from ..poisoning.base import check_images
from ..poisoning.training import eval_mode, model_device
from ..validation import check_in_range, check_int

__all__ = ["STRIP", "StripResult", "StripEvaluation"]

GPU_BATCH = 512  # superimposed images per forward pass on an accelerator


@dataclass
class StripResult:
    """Entropies (B,) in bits (CPU), the flagged inputs (B,) bool and the threshold."""

    entropy: torch.Tensor = field(repr=False)
    flagged: torch.Tensor = field(repr=False)
    threshold: float

    def to_json(self) -> dict:
        return {"n": len(self.entropy), "n_flagged": int(self.flagged.sum()),
                "threshold": self.threshold,
                "mean_entropy": float(self.entropy.mean()) if len(self.entropy) else math.nan}


@dataclass
class StripEvaluation:
    """STRIP against clean and triggered test inputs.

    ``auroc``: low entropy as the score of "triggered"; ``tpr``: triggered inputs
    flagged at the calibrated threshold; ``fpr``: clean test inputs flagged there (the
    false rejection rate actually met); ``tpr_at_fpr``: 0.01/0.05/0.10 -> TPR or None.
    """

    auroc: float
    tpr: float
    fpr: float
    threshold: float
    frr_target: float
    tpr_at_fpr: dict[float, float | None]
    n_clean: int
    n_triggered: int
    n_copies: int
    seconds: float = 0.0

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        out["tpr_at_fpr"] = {f"{k:g}": v for k, v in self.tpr_at_fpr.items()}
        return out


class STRIP:
    """STRIP detector.

    Args:
        model: the classifier (returns logits); run in eval mode, its mode restored.
        overlays: (M, C, H, W) clean images in [0, 1] to superimpose.
        n_copies: superimposed copies per input (>= 1).
        alpha: the input's weight in the blend, in (0, 1).
        frr: the false rejection rate the threshold allows on clean inputs, in (0, 1).
        batch_size: superimposed images per forward pass (at least ``n_copies``); None:
            :data:`GPU_BATCH` on an accelerator, on a CPU as many as hold
            :data:`CPU_FORWARD_VALUES` input values (larger batches run slower there).
        seed: seeds the overlay draws.
    """

    def __init__(self, model: nn.Module, overlays: torch.Tensor, *, n_copies: int = 20,
                 alpha: float = 0.5, frr: float = 0.01, batch_size: int | None = None,
                 seed: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_images(overlays, name="overlays")
        if len(overlays) == 0:
            raise ValueError("overlays holds no image")
        self.model = model
        self.device = model_device(model)
        self.overlays = overlays.to(self.device)
        self.n_copies = check_int("n_copies", n_copies, 1)
        self.alpha = check_in_range("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
        self.frr = check_in_range("frr", frr, 0.0, 1.0, low_open=True, high_open=True)
        if batch_size is None:
            batch_size = rows_per_forward(overlays.shape[1:], self.device, GPU_BATCH)
            batch_size = max(batch_size, self.n_copies)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.threshold: float | None = None

    def settings(self) -> dict:
        return {"n_copies": self.n_copies, "alpha": self.alpha, "frr": self.frr,
                "n_overlays": len(self.overlays), "seed": self.seed}

    def overlay_indices(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, n_copies) int64 overlay indices, drawn on the CPU from ``generator``."""
        return torch.randint(len(self.overlays), (n, self.n_copies), generator=generator)

    @torch.no_grad()
    def _entropies(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        per_chunk = max(1, self.batch_size // self.n_copies)
        out = []
        with eval_mode(self.model):
            for i in range(0, len(x), per_chunk):
                xb = x[i:i + per_chunk].to(self.device)
                over = self.overlays[indices[i:i + per_chunk].to(self.device)]  # (b, n, C, H, W)
                blended = self.alpha * xb[:, None] + (1.0 - self.alpha) * over
                logits = self.model(blended.flatten(0, 1)).float()
                logp = torch.log_softmax(logits, dim=1)
                h = -(logp.exp() * logp).sum(1) / math.log(2.0)
                out.append(h.view(len(xb), self.n_copies).mean(1))
        return torch.cat(out) if out else torch.empty(0, device=self.device)

    def entropy(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean prediction entropy (bits) over the superimposed copies: (B,) on the model's
        device. ``generator`` (CPU) draws the overlays; None: one seeded with ``seed``."""
        check_images(x)
        generator = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        return self._entropies(x, self.overlay_indices(len(x), generator))

    def calibrate(self, x_clean: torch.Tensor) -> float:
        """Sets and returns the threshold: at most ``frr`` of ``x_clean`` lie below it.

        Raises:
            ValueError: fewer clean inputs than ``1 / frr`` (the rate is not measurable).
        """
        n = len(x_clean)
        if n * self.frr < 1.0 - 1e-9:
            raise ValueError(f"calibrating a false rejection rate of {self.frr:g} needs at least "
                             f"{math.ceil(1 / self.frr)} clean inputs, got {n}")
        g = torch.Generator().manual_seed(self.seed + 1)
        h = self.entropy(x_clean, g).sort().values
        self.threshold = float(h[int(math.floor(self.frr * n + 1e-9))])
        return self.threshold

    def detect(self, x: torch.Tensor, generator: torch.Generator | None = None) -> StripResult:
        """Entropies and decisions (entropy < threshold) for ``x``; calibrate first."""
        if self.threshold is None:
            raise ValueError("STRIP.detect needs a threshold: call calibrate(clean_inputs) first")
        h = self.entropy(x, generator if generator is not None
                         else torch.Generator().manual_seed(self.seed + 2)).cpu()
        return StripResult(h, h < self.threshold, self.threshold)

    def evaluate(self, x_clean: torch.Tensor, x_triggered: torch.Tensor) -> StripEvaluation:
        """Detection quality on clean and triggered test inputs (calibrate first)."""
        import time

        start = time.perf_counter()
        clean = self.detect(x_clean)
        bad = self.detect(x_triggered, torch.Generator().manual_seed(self.seed + 3))
        pos, neg = -bad.entropy.double(), -clean.entropy.double()
        return StripEvaluation(
            auroc=auc(pos, neg), tpr=float(bad.flagged.float().mean()),
            fpr=float(clean.flagged.float().mean()), threshold=float(self.threshold),
            frr_target=self.frr,
            tpr_at_fpr={a: tpr_at_fpr(pos, neg, a) for a in (0.01, 0.05, 0.10)},
            n_clean=len(neg), n_triggered=len(pos), n_copies=self.n_copies,
            seconds=time.perf_counter() - start)
