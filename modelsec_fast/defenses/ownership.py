"""Ownership verification by dataset inference (Maini, Yaghini and Papernot 2021).

A model trained on our private data, or stolen from one that was (a copy
trained on its answers inherits how it treats those points), fits our private
points better than points it never saw. Dataset inference turns that into a
p-value, aggregated over many points:

1. Embedding of each point by the suspect: ``"loss"``, its cross-entropy at the
   true label (needs only the suspect's probabilities), or ``"mingd"``, Maini et
   al.'s L-inf distances to every other class by MinGD (targeted signed-gradient
   steps of ``step_size`` until the model predicts that class, ``max_steps *
   step_size`` if it never does; needs gradients).
2. A score per point: minus the loss (lower loss reads as private, fixed in
   advance); for MinGD, a logistic regressor trained on our own model's
   embeddings of one fold of the points (two folds, cross-fitted, so each point
   is scored by a regressor that never saw it).
3. A one-sided Welch t-test: do the private points score higher than the public
   ones? A small p-value says the suspect was derived from our model or data.

Under the null (a model trained without our private data, which never saw the
public points either) the private and public points are exchangeable for the
suspect, so the p-value is uniform: p < alpha wrongly accuses an independent
model with probability alpha, by construction. On the digits data the loss
embedding is the more powerful of the two (bench/RESULTS.md, stealing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..validation import (check_choice, check_in_range, check_int, check_pixel_range,
                          check_positive)

__all__ = ["DatasetInference", "OwnershipResult", "EMBEDDINGS", "boundary_distances",
           "true_label_losses"]

EMBEDDINGS = ("loss", "mingd")


@dataclass(frozen=True)
class OwnershipResult:
    """``p_value`` of the one-sided Welch t-test (private scores > public scores);
    ``derived``: ``p_value < alpha``; the mean regressor scores of the private and
    public points and how many there were; ``t_statistic``."""

    p_value: float
    derived: bool
    alpha: float
    mean_private_score: float
    mean_public_score: float
    private_points: int
    public_points: int
    t_statistic: float

    def to_json(self) -> dict:
        return {"p_value": self.p_value, "derived": self.derived, "alpha": self.alpha,
                "mean_private_score": self.mean_private_score,
                "mean_public_score": self.mean_public_score,
                "private_points": self.private_points, "public_points": self.public_points,
                "t_statistic": self.t_statistic}


def boundary_distances(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       step_size: float = 0.01, max_steps: int = 30,
                       batch_size: int = 512) -> torch.Tensor:
    """MinGD L-inf distances from each input to every other class, sorted ascending.

    Args:
        model: returns logits (B, K); x: pixels (N, ...) in [0, 1]; y: labels (N,).
        step_size: the L-inf step in pixel space; max_steps: steps per target class.
    Returns:
        (N, K - 1) float64 distances in (0, max_steps * step_size].
    """
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            out.append(_mingd(model, xb, yb, step_size, max_steps).cpu())
    finally:
        model.train(was)
    return torch.cat(out)


@torch.no_grad()
def true_label_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      batch_size: int = 1024) -> torch.Tensor:
    """Cross-entropy of ``model`` at the true labels ``y`` (N,) for ``x`` (N, ...),
    (N,) float64, in eval mode."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        return torch.cat([nn.functional.cross_entropy(
            model(x[i:i + batch_size].to(device)).double(), y[i:i + batch_size].to(device),
            reduction="none").cpu() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)


def _mingd(model, x, y, step_size, max_steps) -> torch.Tensor:
    n = len(x)
    k = model(x[:1]).shape[1]
    targets = torch.arange(k, device=x.device).repeat(n)          # (N*K,)
    rows = x.repeat_interleave(k, 0)
    own = y.repeat_interleave(k, 0) == targets
    reached = torch.full((n * k,), max_steps * step_size, dtype=torch.float64, device=x.device)
    open_ = ~own
    delta = torch.zeros_like(rows)
    for step in range(1, max_steps + 1):
        delta.requires_grad_(True)
        logp = torch.log_softmax(model(rows + delta), 1).gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(logp, delta)
        with torch.no_grad():
            delta = ((rows + delta + step_size * grad.sign()).clamp(0, 1) - rows)
            hit = open_ & (model(rows + delta).argmax(1) == targets)
            reached[hit] = delta[hit].flatten(1).abs().amax(1).double()
            open_ &= ~hit
        if not bool(open_.any()):
            break
    dist = reached.reshape(n, k)
    dist = dist.masked_fill(own.reshape(n, k), float("inf"))
    return torch.sort(dist, 1).values[:, :k - 1]


class DatasetInference:
    """Dataset inference for one victim model and its private data.

    Args:
        victim: our model (logits (B, K)), trained on ``private_x``.
        private_x, private_y: (N, ...) pixels in [0, 1] of our private training data.
        public_x, public_y: data of the same distribution that our model never saw.
        embedding: ``"loss"`` or ``"mingd"`` (module docstring).
        max_points: at most this many points of each set (a seeded random subset).
        step_size, max_steps: MinGD's L-inf step and step count.
        alpha: the significance level of :attr:`OwnershipResult.derived`.
        seed: the subsets and the folds.

    Raises:
        ValueError: images outside [0, 1], mismatched lengths, fewer than 4 points
            in a set.
    """

    def __init__(self, victim: nn.Module, private_x: torch.Tensor, private_y: torch.Tensor,
                 public_x: torch.Tensor, public_y: torch.Tensor, *, embedding: str = "loss",
                 max_points: int | None = None, step_size: float = 0.01, max_steps: int = 30,
                 alpha: float = 0.01, seed: int = 0):
        self.embedding = check_choice("embedding", embedding, EMBEDDINGS)
        self.max_points = None if max_points is None else check_int("max_points", max_points, 4)
        self.step_size = check_positive("step_size", step_size)
        self.max_steps = check_int("max_steps", max_steps, 1)
        self.alpha = check_in_range("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
        generator = torch.Generator().manual_seed(check_int("seed", seed))
        xs, ys, member, fold = [], [], [], []
        for name, x, y, is_private in (("private", private_x, private_y, True),
                                       ("public", public_x, public_y, False)):
            if len(x) != len(y):
                raise ValueError(f"{name}_x ({len(x)}) and {name}_y ({len(y)}) differ in length")
            if len(x) < 4:
                raise ValueError(f"{name} data needs at least 4 points, got {len(x)}")
            check_pixel_range(x, where=f" ({name}_x)")
            order = torch.randperm(len(x), generator=generator)[:self.max_points]
            xs.append(x[order])
            ys.append(y[order].long())
            member.append(torch.full((len(order),), is_private))
            fold.append(torch.arange(len(order)) % 2)
        self.x, self.y = torch.cat(xs), torch.cat(ys)
        self.private = torch.cat(member)
        self.fold = torch.cat(fold)
        self._regressors = []
        if self.embedding == "mingd":
            feats = self._embed(victim)
            self._regressors = [self._fit_regressor(feats[self.fold == f],
                                                    self.private[self.fold == f].double())
                                for f in (0, 1)]

    def _embed(self, model) -> torch.Tensor:
        if self.embedding == "loss":
            return -true_label_losses(model, self.x, self.y)[:, None]
        return boundary_distances(model, self.x, self.y, step_size=self.step_size,
                                  max_steps=self.max_steps)

    @staticmethod
    def _fit_regressor(feats: torch.Tensor, labels: torch.Tensor):
        """Logistic regression on standardised features, L2-regularised (LBFGS);
        returns (mean, std, weights, bias)."""
        mean, std = feats.mean(0), feats.std(0).clamp_min(1e-12)
        z = (feats - mean) / std
        w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(z @ w + b, labels) \
                + 1e-3 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return mean, std, w.detach(), b.detach()

    def scores(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The regressor's "private" scores (logits) of ``model``'s embeddings,
        (private points, public points): minus the loss, or each point's MinGD
        embedding scored by the other fold's regressor."""
        feats = self._embed(model)
        if self.embedding == "loss":
            out = feats[:, 0]
            return out[self.private], out[~self.private]
        out = torch.empty(len(feats), dtype=torch.float64)
        for f in (0, 1):
            mean, std, w, b = self._regressors[1 - f]
            rows = self.fold == f
            out[rows] = ((feats[rows] - mean) / std) @ w + b
        return out[self.private], out[~self.private]

    def test(self, suspect: nn.Module) -> OwnershipResult:
        """The p-value that ``suspect`` was derived from our model or data."""
        from scipy.stats import ttest_ind

        private, public = self.scores(suspect)
        t = ttest_ind(private.numpy(), public.numpy(), equal_var=False, alternative="greater")
        p = float(t.pvalue)
        return OwnershipResult(p_value=p, derived=p < self.alpha, alpha=self.alpha,
                               mean_private_score=float(private.mean()),
                               mean_public_score=float(public.mean()),
                               private_points=len(private), public_points=len(public),
                               t_statistic=float(t.statistic))
