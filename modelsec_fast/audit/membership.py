"""Membership-inference attacks: the loss threshold and LiRA (offline and online).

Scores follow :mod:`modelsec_fast.audit.metrics`: higher means "member".

* Loss threshold (Yeom et al. 2018): score = -cross-entropy of the true label.
* LiRA (Carlini et al. 2022, "Membership Inference Attacks From First
  Principles"): S shadow models are each trained on a random half of the
  population (an independent fair coin per example and model), so every example
  has "in" and "out" observations of its logit-scaled confidence
  phi = log(p_y / (1 - p_y)) = z_y - logsumexp_{j != y} z_j. LiRA fits a
  Gaussian to each and scores the target model's phi by
    - online:  log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2);
    - offline: log Phi((phi - mu_out) / s_out), a one-sided test against "out".
  With fewer than 64 shadow models the paper recommends one global variance per
  side (``fixed_variance=True``, the default). No data augmentation is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from scipy.stats import norm
from torch import nn

from .metrics import AttackMetrics, attack_metrics

__all__ = [
    "logit_confidence",
    "per_example_loss",
    "loss_threshold_scores",
    "ShadowObservations",
    "train_shadow_models",
    "lira_scores",
    "MembershipAudit",
    "membership_audit",
]


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = [model(x[i:i + batch_size].to(device)).float().cpu()
               for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    if y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"need x (N, ...) and labels (N,), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")


def logit_confidence(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int = 1024) -> torch.Tensor:
    """LiRA's logit-scaled confidence phi per example, float64 (N,).

    Computed as z_y - logsumexp over the other logits, which equals
    log(p_y / (1 - p_y)) without the cancellation of 1 - p_y near p_y = 1.
    """
    _check_xy(x, y)
    z = _logits(model, x, batch_size).double()
    true = z.gather(1, y.view(-1, 1)).squeeze(1)
    others = z.scatter(1, y.view(-1, 1), float("-inf"))
    return true - torch.logsumexp(others, dim=1)


def per_example_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int = 1024) -> torch.Tensor:
    """Cross-entropy of the true label per example, float64 (N,)."""
    _check_xy(x, y)
    z = _logits(model, x, batch_size).double()
    return nn.functional.cross_entropy(z, y, reduction="none")


def loss_threshold_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Loss-threshold attack scores, -loss, float64 (N,)."""
    return -per_example_loss(model, x, y)


@dataclass
class ShadowObservations:
    """Shadow models' confidences on a population.

    Attributes:
        confidence: float64 (S, N) phi of each shadow model on each example.
        included: bool (S, N), True where the example was in that shadow's training set.
    """

    confidence: torch.Tensor
    included: torch.Tensor

    def __post_init__(self):
        if self.confidence.shape != self.included.shape or self.confidence.dim() != 2:
            raise ValueError("confidence and included must both be (S, N), got "
                             f"{tuple(self.confidence.shape)} and {tuple(self.included.shape)}")

    @property
    def num_shadow(self) -> int:
        return self.confidence.shape[0]


def train_shadow_models(
    train_fn: Callable[[torch.Tensor, torch.Tensor, int], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    num_shadow: int,
    *,
    seed: int = 0,
    progress: bool = False,
) -> ShadowObservations:
    """Train ``num_shadow`` models on independent random halves of (x, y).

    Args:
        train_fn: ``train_fn(x_subset, y_subset, seed) -> model``, the same
            recipe as the target model's (LiRA's assumption).
        x, y: the population, (N, ...) and (N,).
        num_shadow: >= 2 shadow models.
        seed: seeds the coin flips; shadow s is trained with seed ``seed + s``.
    """
    _check_xy(x, y)
    if num_shadow < 2:
        raise ValueError(f"LiRA needs at least 2 shadow models, got {num_shadow}")
    rng = np.random.default_rng(seed)
    included = torch.from_numpy(rng.random((num_shadow, len(y))) < 0.5)
    conf = torch.empty(num_shadow, len(y), dtype=torch.float64)
    steps = range(num_shadow)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="shadow models", leave=False)
    for s in steps:
        mask = included[s]
        model = train_fn(x[mask], y[mask], seed + 1 + s)
        conf[s] = logit_confidence(model, x, y)
    return ShadowObservations(conf, included)


def _side_stats(conf, mask, fixed_variance):
    """Per-example mean and std of phi over the shadows selected by ``mask``."""
    count = mask.sum(0)
    total = torch.where(mask, conf, torch.zeros_like(conf)).sum(0)
    mean = total / count.clamp(min=1)
    resid = torch.where(mask, conf - mean, torch.zeros_like(conf))
    pooled = torch.sqrt((resid ** 2).sum() / (count - 1).clamp(min=0).sum().clamp(min=1))
    if fixed_variance:
        std = pooled.expand_as(mean).clone()
    else:
        per = torch.sqrt((resid ** 2).sum(0) / (count - 1).clamp(min=1))
        std = torch.where(count >= 2, per, pooled)
    return mean, std.clamp(min=1e-6), count


def lira_scores(target_confidence: torch.Tensor, shadows: ShadowObservations, *,
                online: bool = True, fixed_variance: bool = True) -> torch.Tensor:
    """LiRA scores of the target model's confidences, float64 (N,).

    Examples that no shadow model saw "in" (online) take the population's mean
    in-minus-out shift added to their own "out" mean; examples never "out" take
    the symmetric fallback. This only matters with very few shadow models.
    """
    phi = torch.as_tensor(target_confidence, dtype=torch.float64)
    if phi.shape != shadows.confidence.shape[1:]:
        raise ValueError(f"target confidences {tuple(phi.shape)} do not match the "
                         f"shadows' population {tuple(shadows.confidence.shape[1:])}")
    conf, inc = shadows.confidence, shadows.included
    mu_out, s_out, n_out = _side_stats(conf, ~inc, fixed_variance)
    if not online:
        if (n_out == 0).any():
            shift = _mean_shift(conf, inc)
            mu_in, _, n_in = _side_stats(conf, inc, fixed_variance)
            mu_out = torch.where(n_out == 0, mu_in - shift, mu_out)
        return torch.from_numpy(norm.logcdf(((phi - mu_out) / s_out).numpy()))
    mu_in, s_in, n_in = _side_stats(conf, inc, fixed_variance)
    if (n_in == 0).any() or (n_out == 0).any():
        shift = _mean_shift(conf, inc)
        mu_in = torch.where(n_in == 0, mu_out + shift, mu_in)
        mu_out = torch.where(n_out == 0, mu_in - shift, mu_out)
    log_in = norm.logpdf(phi.numpy(), mu_in.numpy(), s_in.numpy())
    log_out = norm.logpdf(phi.numpy(), mu_out.numpy(), s_out.numpy())
    return torch.from_numpy(log_in - log_out)


def _mean_shift(conf, inc) -> torch.Tensor:
    both = (inc.sum(0) > 0) & ((~inc).sum(0) > 0)
    if not both.any():
        raise ValueError("LiRA needs examples seen both in and out by the shadow models")
    mu_in, _, _ = _side_stats(conf, inc, True)
    mu_out, _, _ = _side_stats(conf, ~inc, True)
    return (mu_in - mu_out)[both].mean()


@dataclass
class MembershipAudit:
    """Result of :func:`membership_audit`.

    ``attacks`` holds one :class:`AttackMetrics` per attack; ``epsilon_bounds``
    the Clopper-Pearson lower bounds (only for a coin-flip membership design).
    """

    attacks: list[AttackMetrics]
    num_shadow: int
    n_members: int
    n_nonmembers: int
    design: str
    epsilon_bounds: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "num_shadow": self.num_shadow,
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "membership_design": self.design,
            "attacks": [a.to_dict() for a in self.attacks],
            "epsilon_lower_bounds": [b.to_dict() for b in self.epsilon_bounds],
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """Markdown table; with coin-flip membership, an epsilon lower-bound column."""
        bounds = {b.attack: b.epsilon_lower_bound for b in self.epsilon_bounds}
        head = "| attack | AUC | TPR @ 1% FPR | TPR @ 0.1% FPR |"
        rule = "|---|---:|---:|---:|"
        if bounds:
            head, rule = head + " epsilon lower bound |", rule + "---:|"
        rows = [a.row() + (f" {bounds[a.name]:.3f} |" if bounds else "") for a in self.attacks]
        return "\n".join([head, rule] + rows)


def membership_audit(
    target: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    member_mask: torch.Tensor,
    *,
    train_fn: Callable[[torch.Tensor, torch.Tensor, int], nn.Module] | None = None,
    num_shadow: int = 16,
    design: str = "coin_flip",
    delta: float = 1e-5,
    bound_alpha: float = 0.05,
    seed: int = 0,
    progress: bool = False,
    shadows: ShadowObservations | None = None,
) -> MembershipAudit:
    """Run the loss-threshold attack and, with shadow models, LiRA offline and online.

    Args:
        target: the trained model under audit.
        x, y: the population (N, ...) and (N,), members and non-members together.
        member_mask: bool (N,), True for the target's training examples.
        train_fn: the target's training recipe ``train_fn(x, y, seed) -> model``;
            None runs only the loss-threshold attack.
        num_shadow: shadow models for LiRA (>= 2; the paper and our CLI use >= 16).
        design: how membership was decided: "coin_flip" (an independent fair
            coin per example) allows Clopper-Pearson epsilon lower bounds;
            "split" (a fixed train/test split) reports attack scores only.
        delta: the delta used in those epsilon bounds.
        bound_alpha: the bounds hold jointly with probability >= 1 - bound_alpha.
        shadows: precomputed shadow observations on the same population (reuse).
    """
    from .bounds import DESIGNS, empirical_epsilon

    _check_xy(x, y)
    member_mask = torch.as_tensor(member_mask, dtype=torch.bool)
    if member_mask.shape != y.shape:
        raise ValueError(f"member_mask must be (N,) = {tuple(y.shape)}, got "
                         f"{tuple(member_mask.shape)}")
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {sorted(DESIGNS)}, got {design!r}")
    if member_mask.all() or not member_mask.any():
        raise ValueError("the population needs both members and non-members")

    def split(scores):
        return scores[member_mask], scores[~member_mask]

    scores = {"loss threshold": loss_threshold_scores(target, x, y)}
    if shadows is None and train_fn is not None:
        shadows = train_shadow_models(train_fn, x, y, num_shadow, seed=seed, progress=progress)
    if shadows is not None:
        phi = logit_confidence(target, x, y)
        scores["LiRA offline"] = lira_scores(phi, shadows, online=False)
        scores["LiRA online"] = lira_scores(phi, shadows, online=True)
    results = [attack_metrics(name, *split(s)) for name, s in scores.items()]
    # All attacks share the member/non-member counts, so their notes coincide.
    notes = list(dict.fromkeys(n for r in results for n in r.notes))
    bounds = []
    if DESIGNS[design]:
        # Bonferroni over the attacks: every reported bound holds jointly at 1 - alpha.
        alpha = bound_alpha / len(scores)
        bounds = [empirical_epsilon(*split(s), delta=delta, design=design, attack=name,
                                    seed=seed, alpha=alpha)
                  for name, s in scores.items()]
        notes.append(f"epsilon lower bounds hold jointly with confidence {1 - bound_alpha:g} "
                     f"(Bonferroni over {len(scores)} attacks)")
    else:
        notes.append("membership came from a fixed train/test split: the attack scores above "
                     "are not a differential-privacy bound, so no empirical epsilon is reported")
    return MembershipAudit(attacks=results, num_shadow=0 if shadows is None else shadows.num_shadow,
                           n_members=int(member_mask.sum()), n_nonmembers=int((~member_mask).sum()),
                           design=design, epsilon_bounds=bounds, notes=notes)
