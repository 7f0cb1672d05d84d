"""Jacobian-based dataset augmentation (Papernot et al. 2017, "Practical Black-Box
Attacks against Machine Learning") for an attacker with a few seed inputs."""

from __future__ import annotations

import time
import torch
from torch import nn

from ..validation import check_int, check_pixel_range, check_positive
from .results import BudgetPoint, ExtractionResult
from .training import ThiefTraining, fit_thief
from .victim import HeldOut, Victim

__all__ = ["JacobianAugmentation"]


class JacobianAugmentation:
    """Grows a substitute training set by Jacobian steps and labels it with the victim.

    Round r: the victim labels the inputs not yet labelled (top-1 answers), the thief
    is trained on every labelled input, and each labelled input x spawns
    ``clamp(x + lambda_r * sign(d thief(x)[victim label] / dx), 0, 1)``, so the set
    doubles each round. ``lambda_r = step * (-1)^floor(r / tau)`` (periodic step size).
    When a round's new inputs would exceed the budget, a seeded random subset that
    fits is kept, and the attack stops when the budget is spent.

    Args:
        victim: the :class:`Victim` (any output kind; only its top-1 is used).
        thief: the substitute (trained in place, warm-started each round).
        rounds: substitute training rounds (>= 1).
        step: lambda, the L-inf size of a Jacobian step in pixel space.
        tau: rounds between sign flips of the step (None: never flip).
        training: the thief's training in each round.
        seed: the subsets kept at the budget and the thief's batches.
    """

    name = "jacobian_augmentation"

    def __init__(self, victim: Victim, thief: nn.Module, *, rounds: int = 6, step: float = 0.1,
                 tau: int | None = None, training: ThiefTraining | None = None, seed: int = 0):
        if not isinstance(victim, Victim):
            raise TypeError(f"victim must be a Victim, got {type(victim).__name__}")
        self.victim, self.thief = victim, thief
        self.rounds = check_int("rounds", rounds, 1)
        self.step = check_positive("step", step)
        self.tau = None if tau is None else check_int("tau", tau, 1)
        self.training = training or ThiefTraining(epochs=10, min_steps=100)
        self.seed = check_int("seed", seed)

    def extract(self, seeds: torch.Tensor, *, held_out: HeldOut | None = None,
                budget: int | None = None) -> ExtractionResult:
        """Runs the rounds from ``seeds`` (N, C, H, W) in [0, 1]; one curve point per round.

        ``budget``: the most queries to spend (default: all the victim has left).
        Raises:
            ValueError: seeds outside [0, 1] or empty, a budget <= 0 or above the
                victim's remaining queries.
        """
        started = time.perf_counter()
        if not isinstance(seeds, torch.Tensor) or seeds.dim() < 2 or len(seeds) == 0:
            raise ValueError("seeds must be a non-empty tensor of inputs (N, ...)")
        check_pixel_range(seeds, where=" (the seed inputs)")
        budget = self.victim.remaining if budget is None else check_int("budget", budget, 1)
        if budget > self.victim.remaining:
            raise ValueError(f"budget {budget} exceeds the victim's remaining queries "
                             f"({self.victim.remaining} of {self.victim.budget})")
        generator = torch.Generator().manual_seed(self.seed)
        device = next(self.thief.parameters()).device
        k = self.victim.num_classes
        x_all = torch.empty(0, *seeds.shape[1:])
        y_all = torch.empty(0, dtype=torch.long)
        new = seeds
        curve, used = [], 0
        for r in range(self.rounds):
            if len(new) > budget - used:
                keep = torch.randperm(len(new), generator=generator)[:budget - used]
                new = new[keep]
            if len(new) == 0:
                break
            labels = self.victim.query_probabilities(new).argmax(1)
            used += len(new)
            x_all, y_all = torch.cat([x_all, new]), torch.cat([y_all, labels])
            fit_thief(self.thief, x_all, nn.functional.one_hot(y_all, k).float(),
                      self.training, seed=self.seed + r)
            acc, fid = held_out.scores(self.thief) if held_out is not None else (None, None)
            curve.append(BudgetPoint(used, acc, fid))
            if r + 1 < self.rounds and used < budget:
                sign = -1.0 if self.tau is not None and (r // self.tau) % 2 else 1.0
                new = self._augment(x_all, y_all, sign * self.step, device)
        return ExtractionResult(
            attack=self.name, thief=self.thief.eval(), curve=curve, queries_used=used,
            budget=self.victim.budget, victim_output=self.victim.output,
            settings={"rounds": self.rounds, "step": self.step, "tau": self.tau,
                      "seeds": len(seeds), "training": self.training.to_json(),
                      "seed": self.seed},
            seconds=time.perf_counter() - started)

    def _augment(self, x: torch.Tensor, y: torch.Tensor, lam: float, device,
                 batch: int = 1024) -> torch.Tensor:
        """``clamp(x + lam * sign(grad_x thief(x)[y]), 0, 1)`` for every row, batched."""
        self.thief.eval()
        out = []
        for i in range(0, len(x), batch):
            xb = x[i:i + batch].to(device).requires_grad_(True)
            score = self.thief(xb).gather(1, y[i:i + batch].to(device)[:, None]).sum()
            (grad,) = torch.autograd.grad(score, xb)
            out.append((xb.detach() + lam * grad.sign()).clamp(0.0, 1.0).cpu())
        return torch.cat(out)
