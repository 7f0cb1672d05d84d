"""Output post-processors against model extraction, each keeping the victim's top-1.

A post-processor maps the victim's probabilities (B, K) (and, for prediction
poisoning, the inputs) to the rows it releases (B, K). Every one keeps the argmax
of every row (ties: the lowest index, as ``torch.argmax``), so the victim's
accuracy is untouched; :func:`utility_cost` reports what the released rows lose
otherwise. Use one as ``Victim.from_model(model, postprocess=ReverseSigmoid())``.

* :class:`TopK`: only the k largest probabilities (Tramer et al. 2016).
* :class:`Rounding`: probabilities on a grid of ``10**-decimals``, still summing to 1.
* :class:`ReverseSigmoid`: Lee et al. 2019's deceptive perturbation.
* :class:`GaussianNoise`: noise on the probabilities, renormalised.
* :class:`LabelOnly`: one-hot top-1 rows.
* :class:`PredictionPoisoning`: Orekondy et al. 2020's MAD-argmax, a perturbation
  within an L1 budget that turns the thief's gradient away from the true one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..validation import check_int, check_non_negative, check_positive

__all__ = ["TopK", "Rounding", "ReverseSigmoid", "GaussianNoise", "LabelOnly",
           "PredictionPoisoning", "UtilityCost", "utility_cost", "keep_argmax"]


def keep_argmax(original: torch.Tensor, released: torch.Tensor) -> torch.Tensor:
    """``released`` (B, K) with each row's top-1 restored to that of ``original`` (B, K).

    A row whose argmax moved gets the values at the two classes swapped (the row's
    values, and so its sum, are unchanged); a tie that remains is broken by raising
    the top value to the next float above it.
    """
    top = original.argmax(1)
    released = released.clone()
    moved = released.argmax(1) != top
    if bool(moved.any()):
        rows = moved.nonzero()[:, 0]
        wrong = released[rows].argmax(1)
        a, b = released[rows, top[rows]].clone(), released[rows, wrong].clone()
        released[rows, top[rows]], released[rows, wrong] = b, a
    tied = released.argmax(1) != top
    if bool(tied.any()):
        rows = tied.nonzero()[:, 0]
        best = released[rows].amax(1)
        released[rows, top[rows]] = torch.nextafter(best, torch.full_like(best, math.inf))
    return released


def _check_rows(probs: torch.Tensor) -> torch.Tensor:
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError("a post-processor takes probabilities shaped (B, K) with K >= 2, got "
                         f"{getattr(probs, 'shape', type(probs).__name__)}")
    return probs


@dataclass
class TopK:
    """Releases each row's ``k`` largest probabilities and zeros (ties: lower index);
    ``renormalize`` rescales them to sum 1."""

    k: int = 1
    renormalize: bool = False
    name = "top_k"

    def __post_init__(self):
        check_int("k", self.k, 1)

    def __call__(self, probs: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        probs = _check_rows(probs)
        k = min(self.k, probs.shape[1])
        order = torch.sort(probs, dim=1, descending=True, stable=True).indices[:, :k]
        out = torch.zeros_like(probs).scatter_(1, order, probs.gather(1, order))
        if self.renormalize:
            out = out / out.sum(1, keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)
        return keep_argmax(probs, out)

    def to_json(self) -> dict:
        return {"name": self.name, "k": self.k, "renormalize": self.renormalize}


@dataclass
class Rounding:
    """Probabilities rounded to ``decimals`` decimal places by largest remainders, so
    each row still sums to 1 (plain rounding, ART's ``Rounded``, does not)."""

    decimals: int = 2
    name = "rounding"

    def __post_init__(self):
        check_int("decimals", self.decimals, 0, maximum=8)

    def __call__(self, probs: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        probs = _check_rows(probs)
        units = 10 ** self.decimals
        scaled = probs.double() * units
        floor = scaled.floor()
        short = (units - floor.sum(1)).round().long().clamp(min=0)
        # The `short` largest remainders get one more unit (ties: lower index).
        rank = torch.sort(scaled - floor, dim=1, descending=True, stable=True).indices
        bump = torch.arange(probs.shape[1])[None, :] < short[:, None]
        floor.scatter_add_(1, rank, bump.double())
        return keep_argmax(probs, (floor / units).to(probs.dtype))

    def to_json(self) -> dict:
        return {"name": self.name, "decimals": self.decimals}


@dataclass
class ReverseSigmoid:
    """Lee et al. 2019: ``y' = normalise(clip(y - beta * (sigmoid(gamma * logit(y)) - 1/2),
    0, 1))``, ART's ``ReverseSigmoid`` formula; rows whose top-1 it moves are repaired."""

    beta: float = 1.0
    gamma: float = 0.1
    name = "reverse_sigmoid"

    def __post_init__(self):
        check_non_negative("beta", self.beta)
        check_positive("gamma", self.gamma)

    def __call__(self, probs: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        probs = _check_rows(probs)
        y = probs.double().clamp(1e-9, 1 - 1e-9)
        perturbed = (probs.double() - self.beta * (torch.sigmoid(self.gamma * torch.logit(y)) - 0.5))
        perturbed = perturbed.clamp(0.0, 1.0)
        total = perturbed.sum(1, keepdim=True)
        out = torch.where(total > 0, perturbed / total.clamp_min(1e-300), probs.double())
        return keep_argmax(probs, out.to(probs.dtype))

    def to_json(self) -> dict:
        return {"name": self.name, "beta": self.beta, "gamma": self.gamma}


class GaussianNoise:
    """Adds N(0, scale^2) noise to each probability, clips at 0 and renormalises
    (a row clipped to all zeros is released unchanged); seeded by ``seed``."""

    name = "gaussian_noise"

    def __init__(self, scale: float = 0.2, seed: int = 0):
        self.scale = check_non_negative("scale", scale)
        self.seed = check_int("seed", seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, probs: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        probs = _check_rows(probs)
        noise = torch.randn(probs.shape, generator=self.generator, dtype=torch.float64)
        noisy = (probs.double().cpu() + self.scale * noise).clamp(min=0.0)
        total = noisy.sum(1, keepdim=True)
        out = torch.where(total > 0, noisy / total.clamp_min(1e-300), probs.double().cpu())
        return keep_argmax(probs, out.to(probs.device, probs.dtype))

    def to_json(self) -> dict:
        return {"name": self.name, "scale": self.scale, "seed": self.seed}


@dataclass
class LabelOnly:
    """Releases one-hot rows of the top-1 class."""

    name = "label_only"

    def __call__(self, probs: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        probs = _check_rows(probs)
        return nn.functional.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype)

    def to_json(self) -> dict:
        return {"name": self.name}


class PredictionPoisoning:
    """MAD-argmax (Orekondy et al. 2020, "Prediction Poisoning").

    For each row y, the thief's gradient is modelled as that of a surrogate's
    log-likelihood with respect to its last linear layer, ``G^T y = (y - p) phi^T``
    (p: the surrogate's probabilities, phi: its features). The released row
    ``(1 - a) y + a e_k`` moves towards the vertex e_k whose gradient direction
    deviates most from the true one (the smallest cosine between ``e_k - p`` and
    ``y - p``; phi cancels), with ``a`` as large as the L1 budget ``epsilon`` and the
    unchanged top-1 allow.

    Args:
        epsilon: L1 budget of the perturbation per row (in [0, 2]).
        surrogate: a model returning logits (B, K) for the inputs; None: an
            untrained surrogate's uniform prediction p = 1/K (needs no inputs).
    """

    name = "prediction_poisoning"

    def __init__(self, epsilon: float = 0.5, surrogate: nn.Module | None = None):
        self.epsilon = check_non_negative("epsilon", epsilon)
        self.surrogate = surrogate

    @torch.no_grad()
    def __call__(self, probs: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        probs = _check_rows(probs)
        y = probs.double()
        b, k = y.shape
        if self.surrogate is None:
            p = torch.full_like(y, 1.0 / k)
        else:
            if x is None:
                raise ValueError("PredictionPoisoning with a surrogate needs the inputs x")
            device = next(self.surrogate.parameters()).device
            p = torch.softmax(self.surrogate(x.to(device)).double(), 1).to(y.device)
        true_dir = y - p
        vertices = torch.eye(k, dtype=y.dtype, device=y.device)[None] - p[:, None, :]  # (B, K, K)
        cos = nn.functional.cosine_similarity(vertices, true_dir[:, None, :], dim=2, eps=1e-12)
        target = cos.argmin(1)
        top = y.argmax(1)
        y_top = y.gather(1, top[:, None])[:, 0]
        y_tgt = y.gather(1, target[:, None])[:, 0]
        onehot = nn.functional.one_hot(target, k).to(y.dtype)
        l1 = (onehot - y).abs().sum(1).clamp_min(1e-12)
        alpha = (self.epsilon / l1).clamp(max=1.0)
        # Moving to e_k (k != top) keeps the top-1 while (1-a) y_top > (1-a) y_k + a.
        gap = y_top - y_tgt
        limit = torch.where(target == top, torch.ones_like(alpha),
                            (1 - 1e-6) * gap / (1 + gap))
        alpha = torch.minimum(alpha, limit).clamp(min=0.0)
        out = (1 - alpha[:, None]) * y + alpha[:, None] * onehot
        return keep_argmax(probs, out.to(probs.dtype))

    def to_json(self) -> dict:
        return {"name": self.name, "epsilon": self.epsilon,
                "surrogate": None if self.surrogate is None else type(self.surrogate).__name__}


@dataclass(frozen=True)
class UtilityCost:
    """What a post-processor costs a benign user, over N rows.

    ``top1_agreement``: fraction of rows whose argmax is unchanged (1 for every
    post-processor here); ``mean_l1``/``max_l1``: L1 distance between the released
    and the true probability rows (in [0, 2]).
    """

    defense: str
    rows: int
    top1_agreement: float
    mean_l1: float
    max_l1: float

    def to_json(self) -> dict:
        return {"defense": self.defense, "rows": self.rows,
                "top1_agreement": self.top1_agreement, "mean_l1": self.mean_l1,
                "max_l1": self.max_l1}


@torch.no_grad()
def utility_cost(defense, probs: torch.Tensor, x: torch.Tensor | None = None) -> UtilityCost:
    """The :class:`UtilityCost` of ``defense`` on probability rows ``probs`` (N, K)
    (and their inputs ``x`` where the defence reads them)."""
    probs = _check_rows(probs)
    released = defense(probs, x)
    l1 = (released.double() - probs.double()).abs().sum(1)
    return UtilityCost(defense=getattr(defense, "name", type(defense).__name__),
                       rows=len(probs),
                       top1_agreement=float((released.argmax(1) == probs.argmax(1)).double().mean()),
                       mean_l1=float(l1.mean()), max_l1=float(l1.max()))
