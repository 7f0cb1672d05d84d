"""Adaptive sampling of KnockoffNets (Orekondy et al. 2019): rewards and a gradient bandit.

Each reward is computed from probabilities and log-softmax values, never from an
exponential of raw scores, so victim or thief logits of any finite size (±1e4 and
beyond) give finite rewards; the policy is a softmax of the preferences, which
torch computes without overflow however large they grow.
"""

from __future__ import annotations

import torch

from ..validation import check_choice, check_int, check_positive

__all__ = ["REWARDS", "certainty_reward", "diversity_reward", "loss_reward", "RewardScaler",
           "GradientBandit"]

REWARDS = ("certainty", "diversity", "loss", "all")


def certainty_reward(victim_probs: torch.Tensor) -> torch.Tensor:
    """Margin between the two largest victim probabilities, (B, K) -> (B,) in [0, 1]."""
    top = victim_probs.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def diversity_reward(victim_probs: torch.Tensor, recent_mean: torch.Tensor) -> torch.Tensor:
    """How far each answer rises above the recent mean answer (K,):
    ``sum_k max(0, y_k - mean_k)``, (B, K) -> (B,) in [0, 1]."""
    return (victim_probs - recent_mean).clamp(min=0).sum(1)


def loss_reward(victim_probs: torch.Tensor, thief_logits: torch.Tensor) -> torch.Tensor:
    """The thief's cross-entropy against the victim's answer, (B, K) -> (B,) >= 0.

    ``log_softmax`` keeps it finite for any finite logits; a zero probability times a
    finite log is zero, never NaN.
    """
    return -(victim_probs * torch.log_softmax(thief_logits.double(), dim=1)).sum(1)


class RewardScaler:
    """Running mean and variance per reward (float64); scales each reward to zero mean
    and unit variance, clipped to [-clip, clip], so no single reward dominates."""

    def __init__(self, num_rewards: int, clip: float = 5.0):
        self.count = 0
        self.mean = torch.zeros(num_rewards, dtype=torch.float64)
        self.m2 = torch.zeros(num_rewards, dtype=torch.float64)
        self.clip = clip

    def __call__(self, rewards: torch.Tensor) -> torch.Tensor:
        """``rewards`` (B, R) -> scaled (B, R); updates the running moments first
        (Chan et al.'s batched Welford update)."""
        rewards = rewards.double()
        n = rewards.shape[0]
        batch_mean = rewards.mean(0)
        batch_m2 = ((rewards - batch_mean) ** 2).sum(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + batch_m2 + delta ** 2 * self.count * n / total
        self.count = total
        std = (self.m2 / max(self.count - 1, 1)).sqrt()
        scaled = (rewards - self.mean) / torch.where(std > 1e-12, std, torch.ones_like(std))
        return scaled.clamp(-self.clip, self.clip)


class GradientBandit:
    """Sutton and Barto's gradient bandit over ``num_arms`` arms: preferences H,
    policy softmax(H), update ``H += lr * (r - baseline) * (1[a] - pi)`` averaged over
    a batch of pulls, baseline the running mean reward."""

    def __init__(self, num_arms: int, lr: float = 0.1):
        self.num_arms = check_int("num_arms", num_arms, 1)
        self.lr = check_positive("lr", lr)
        self.preferences = torch.zeros(self.num_arms, dtype=torch.float64)
        self.baseline = 0.0
        self.pulls = 0

    def policy(self, available: torch.Tensor | None = None) -> torch.Tensor:
        """Arm probabilities (A,); arms where ``available`` is False get 0."""
        h = self.preferences
        if available is not None:
            h = h.masked_fill(~available, float("-inf"))
        return torch.softmax(h, 0)

    def sample(self, n: int, generator: torch.Generator,
               available: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` arms drawn with replacement from the policy, (n,) int64."""
        return torch.multinomial(self.policy(available), n, replacement=True,
                                 generator=generator)

    def update(self, arms: torch.Tensor, rewards: torch.Tensor) -> None:
        """One update from the batch of pulls ``arms`` (B,) and their rewards (B,)."""
        rewards = torch.nan_to_num(rewards.double(), nan=0.0, posinf=0.0, neginf=0.0)
        pi = self.policy()
        advantage = rewards - self.baseline
        onehot = torch.nn.functional.one_hot(arms, self.num_arms).double()
        step = (advantage[:, None] * (onehot - pi[None, :])).mean(0)
        self.preferences = self.preferences + self.lr * step
        b = len(rewards)
        self.baseline += (float(rewards.sum()) - b * self.baseline) / (self.pulls + b)
        self.pulls += b


def check_reward(reward: str) -> str:
    return check_choice("reward", reward, REWARDS)
