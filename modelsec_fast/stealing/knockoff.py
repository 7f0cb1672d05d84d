"""Transfer-set extraction: Copycat (Correia-Silva et al. 2018) and KnockoffNets
(Orekondy et al. 2019), random and adaptive sampling.

Both query the victim on inputs drawn from an attacker's pool of natural images,
record the answers as a transfer set, and train a thief on it. The
fidelity-against-budget curve trains a fresh thief (the same initial weights) on
the first b answers for every budget b, so every point costs only the queries of
the largest budget.
"""

from __future__ import annotations

import copy
import time
from typing import Sequence

import torch
from torch import nn

from ..validation import check_choice, check_int, check_pixel_range, check_positive
from .bandit import (GradientBandit, RewardScaler, certainty_reward, check_reward,
                     diversity_reward, loss_reward)
from .results import BudgetPoint, ExtractionResult
from .training import ThiefTraining, fit_thief, soft_cross_entropy
from .victim import HeldOut, Victim

__all__ = ["Copycat", "KnockoffNets", "check_budgets"]


def check_budgets(budgets: Sequence[int] | None, victim: Victim, pool_size: int | None = None
                  ) -> list[int]:
    """Budgets as a sorted list of distinct ints >= 1 that fit the victim's remaining
    queries (and the pool, when sampling without replacement); the victim's remaining
    queries when None."""
    if budgets is None:
        budgets = [victim.remaining]
    if isinstance(budgets, int):
        budgets = [budgets]
    out = sorted({check_int("budget", b, 1) for b in budgets})
    if not out:
        raise ValueError("budgets must name at least one query budget")
    if out[-1] > victim.remaining:
        raise ValueError(f"budget {out[-1]} exceeds the victim's remaining queries "
                         f"({victim.remaining} of {victim.budget})")
    if pool_size is not None and out[-1] > pool_size:
        raise ValueError(f"budget {out[-1]} exceeds the pool of {pool_size} inputs "
                         "(each pool input is queried at most once)")
    return out


def _check_pool(pool: torch.Tensor) -> torch.Tensor:
    if not isinstance(pool, torch.Tensor) or pool.dim() < 2 or len(pool) == 0:
        raise ValueError("pool must be a non-empty tensor of inputs (N, ...), got "
                         f"{getattr(pool, 'shape', type(pool).__name__)}")
    check_pixel_range(pool, where=" (the attacker's pool)")
    return pool


class _TransferSetAttack:
    """Shared by Copycat and KnockoffNets: query, record, train a thief per budget."""

    name = "transfer_set"

    def __init__(self, victim: Victim, thief: nn.Module, *, training: ThiefTraining | None,
                 query_batch: int, seed: int):
        if not isinstance(victim, Victim):
            raise TypeError(f"victim must be a Victim, got {type(victim).__name__}")
        if not isinstance(thief, nn.Module):
            raise TypeError(f"thief must be a torch.nn.Module, got {type(thief).__name__}")
        self.victim, self.thief = victim, thief
        self.training = training or ThiefTraining()
        self.query_batch = check_int("query_batch", query_batch, 1)
        self.seed = check_int("seed", seed)

    def _targets(self, answers: torch.Tensor) -> torch.Tensor:
        return answers

    def _curve(self, x: torch.Tensor, answers: torch.Tensor, budgets: list[int],
               held_out: HeldOut | None) -> tuple[nn.Module, list[BudgetPoint]]:
        """A fresh thief per budget on the first b answers; the last thief and the curve."""
        initial = copy.deepcopy(self.thief.state_dict())
        curve, thief = [], self.thief
        for b in budgets:
            thief.load_state_dict(initial)
            fit_thief(thief, x[:b], self._targets(answers[:b]), self.training,
                      seed=self.seed + b)
            acc, fid = held_out.scores(thief) if held_out is not None else (None, None)
            curve.append(BudgetPoint(b, acc, fid))
        return thief, curve

    def _result(self, thief, curve, used, started, **settings) -> ExtractionResult:
        return ExtractionResult(
            attack=self.name, thief=thief, curve=curve, queries_used=used,
            budget=self.victim.budget, victim_output=self.victim.output,
            settings={"training": self.training.to_json(), "query_batch": self.query_batch,
                      "seed": self.seed, **settings},
            seconds=time.perf_counter() - started)

    def _query_random(self, pool: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries ``n`` pool inputs in a seeded random order; (inputs, answer rows)."""
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(self.seed))
        x = pool[order[:n]]
        answers = torch.cat([self.victim.query_probabilities(x[i:i + self.query_batch])
                             for i in range(0, n, self.query_batch)])
        return x, answers


class Copycat(_TransferSetAttack):
    """Copycat CNN (Correia-Silva et al. 2018): label the pool with the victim's top-1
    answers and train the thief on them.

    Args:
        victim: the :class:`Victim` (any output kind).
        thief: the thief's architecture with its initial weights (trained in place).
        training: how the thief is trained (:class:`ThiefTraining`).
        use_probabilities: train on the victim's answer rows instead of its labels
            (ART's ``use_probability``).
        query_batch: inputs per victim query call.
        seed: the sampling order and the thief's batches.
    """

    name = "copycat"

    def __init__(self, victim: Victim, thief: nn.Module, *, training: ThiefTraining | None = None,
                 use_probabilities: bool = False, query_batch: int = 256, seed: int = 0):
        super().__init__(victim, thief, training=training, query_batch=query_batch, seed=seed)
        self.use_probabilities = bool(use_probabilities)

    def _targets(self, answers):
        if self.use_probabilities:
            return answers
        return nn.functional.one_hot(answers.argmax(1), answers.shape[1]).float()

    def extract(self, pool: torch.Tensor, *, budgets: Sequence[int] | int | None = None,
                held_out: HeldOut | None = None) -> ExtractionResult:
        """Queries up to ``max(budgets)`` pool inputs and trains a thief per budget.

        Args:
            pool: the attacker's natural images (N, C, H, W) in [0, 1].
            budgets: query budgets of the curve (default: all the victim has left).
            held_out: the evaluator's set for accuracy and fidelity.
        Raises:
            ValueError: a budget <= 0 or above the victim's remaining queries or the
                pool, a pool outside [0, 1].
        """
        started = time.perf_counter()
        pool = _check_pool(pool)
        budgets = check_budgets(budgets, self.victim, len(pool))
        x, answers = self._query_random(pool, budgets[-1])
        thief, curve = self._curve(x, answers, budgets, held_out)
        return self._result(thief, curve, budgets[-1], started,
                            use_probabilities=self.use_probabilities)


class KnockoffNets(_TransferSetAttack):
    """KnockoffNets (Orekondy et al. 2019): train the thief on the victim's answer rows
    (probabilities, top-k rows, or one-hot labels) for pool inputs chosen at random or
    by an adaptive policy.

    Adaptive sampling is a gradient bandit over the pool's coarse labels (one arm per
    label of ``pool_labels``): each round draws ``query_batch`` arms from the policy,
    one unused pool input per arm, queries them, rewards the arms (``reward``:
    ``"certainty"``, ``"diversity"``, ``"loss"`` or ``"all"``, the scaled sum) and
    updates the policy and an online thief (one Adam step of ``online_lr`` per round),
    whose cross-entropy is the loss reward.

    Args:
        victim, thief, training, query_batch, seed: as for :class:`Copycat`.
        sampling: ``"random"`` or ``"adaptive"``.
        reward: the adaptive reward.
        bandit_lr: the policy's learning rate.
        online_lr: the online thief's Adam learning rate.
        diversity_window: answers in the running mean of the diversity reward.
    """

    name = "knockoff"

    def __init__(self, victim: Victim, thief: nn.Module, *, sampling: str = "random",
                 reward: str = "all", training: ThiefTraining | None = None,
                 query_batch: int = 64, bandit_lr: float = 0.5, online_lr: float = 1e-3,
                 diversity_window: int = 256, seed: int = 0):
        super().__init__(victim, thief, training=training, query_batch=query_batch, seed=seed)
        self.sampling = check_choice("sampling", sampling, ("random", "adaptive"))
        self.reward = check_reward(reward)
        self.bandit_lr = check_positive("bandit_lr", bandit_lr)
        self.online_lr = check_positive("online_lr", online_lr)
        self.diversity_window = check_int("diversity_window", diversity_window, 1)
        self.name = f"knockoff_{self.sampling}"
        self.last_policy: torch.Tensor | None = None
        self.last_rewards: torch.Tensor | None = None

    def extract(self, pool: torch.Tensor, *, budgets: Sequence[int] | int | None = None,
                held_out: HeldOut | None = None,
                pool_labels: torch.Tensor | None = None) -> ExtractionResult:
        """Queries up to ``max(budgets)`` pool inputs and trains a thief per budget.

        Args:
            pool: the attacker's natural images (N, C, H, W) in [0, 1].
            budgets: query budgets of the curve (default: all the victim has left).
            held_out: the evaluator's set for accuracy and fidelity.
            pool_labels: (N,) int coarse labels of the pool, the arms of adaptive
                sampling (required there, unused by random sampling).
        Raises:
            ValueError: as :meth:`Copycat.extract`; adaptive sampling without
                ``pool_labels`` of shape (N,).
        """
        started = time.perf_counter()
        pool = _check_pool(pool)
        budgets = check_budgets(budgets, self.victim, len(pool))
        if self.sampling == "random":
            x, answers = self._query_random(pool, budgets[-1])
            settings = {}
        else:
            if pool_labels is None or pool_labels.shape != (len(pool),):
                raise ValueError("adaptive sampling needs pool_labels, one int label per pool "
                                 f"input ({len(pool)},), got "
                                 f"{None if pool_labels is None else tuple(pool_labels.shape)}")
            x, answers = self._query_adaptive(pool, pool_labels.long().cpu(), budgets[-1])
            settings = {"reward": self.reward, "bandit_lr": self.bandit_lr,
                        "online_lr": self.online_lr,
                        "final_policy": self.last_policy.tolist()}
        thief, curve = self._curve(x, answers, budgets, held_out)
        return self._result(thief, curve, budgets[-1], started, sampling=self.sampling,
                            **settings)

    def _query_adaptive(self, pool: torch.Tensor, labels: torch.Tensor, n: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        arms, arm_of = torch.unique(labels, return_inverse=True)
        # Each arm's pool inputs in a seeded random order; next_in_arm is each arm's cursor.
        order = torch.randperm(len(pool), generator=generator)
        by_arm = [order[arm_of[order] == a] for a in range(len(arms))]
        left = torch.tensor([len(b) for b in by_arm])
        cursor = torch.zeros(len(arms), dtype=torch.long)
        bandit = GradientBandit(len(arms), self.bandit_lr)
        scaler = RewardScaler(3)
        online = copy.deepcopy(self.thief).train()
        device = next(online.parameters()).device
        optimizer = torch.optim.Adam(online.parameters(), lr=self.online_lr)
        chosen, answers, rewards_seen = [], [], []
        recent = torch.empty(0, self.victim.num_classes, dtype=torch.float64)
        while sum(len(c) for c in chosen) < n:
            size = min(self.query_batch, n - sum(len(c) for c in chosen))
            pulls = bandit.sample(size, generator, available=left > 0)
            picked, arms_used = [], []
            for a in pulls.tolist():  # a handful of scalar cursor moves per round
                if left[a] == 0:
                    continue
                picked.append(by_arm[a][cursor[a]])
                arms_used.append(a)
                cursor[a] += 1
                left[a] -= 1
            idx = torch.stack(picked)
            xb = pool[idx]
            yb = self.victim.query_probabilities(xb).double()
            with torch.no_grad():
                thief_logits = online(xb.to(device)).cpu()
            mean = recent.mean(0) if len(recent) else torch.zeros(yb.shape[1], dtype=yb.dtype)
            raw = torch.stack([certainty_reward(yb), diversity_reward(yb, mean),
                               loss_reward(yb, thief_logits)], 1)
            scaled = scaler(raw)
            reward = {"certainty": scaled[:, 0], "diversity": scaled[:, 1],
                      "loss": scaled[:, 2], "all": scaled.sum(1)}[self.reward]
            bandit.update(torch.tensor(arms_used), reward)
            optimizer.zero_grad(set_to_none=True)
            soft_cross_entropy(online(xb.to(device)), yb.float().to(device)).backward()
            optimizer.step()
            recent = torch.cat([recent, yb])[-self.diversity_window:]
            chosen.append(idx)
            answers.append(yb.float())
            rewards_seen.append(reward)
        self.last_policy = bandit.policy()
        self.last_rewards = torch.cat(rewards_seen)
        idx = torch.cat(chosen)
        return pool[idx], torch.cat(answers)
