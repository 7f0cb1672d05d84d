"""DP-SGD as a defence against poisoning: measured attack success against epsilon,
beside the group-privacy bound.

For each epsilon and seed a victim is trained with DP-SGD (our PrivacyEngine) on the
clean training set and on BadNets-poisoned copies with k poisons each; the attack
success rate (ASR: triggered non-target test inputs classified as the target) of
the poisoned victims is compared with
:func:`~modelsec_fast.audit.bounds.group_privacy_bound` applied to the clean
victims' rate ``p`` (BadNets replaces records: k' = 2k).

Confidence bands: over the seeds, a two-sided Student-t interval at ``confidence``
(each seed's ASR is one observation). The bound at an epsilon is computed from the
upper end of the clean rate's interval, so "the measured ASR's lower end never
exceeds the bound" is a check that holds with high probability for a correct engine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from scipy.stats import t as student_t
from torch import nn

from ..audit.bounds import group_distance, group_privacy_bound
from ..validation import check_in_range, check_int, check_positive
from .base import check_images
from .metrics import backdoor_metrics
from .training import dp_noise_multiplier, train_private
from .triggers import BadNets

__all__ = ["SweepPoint", "EpsilonSweep", "asr_epsilon_sweep", "mean_interval"]


def mean_interval(values: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean, clipped to [0, 1]; with one
    value, (v, 0, 1) (nothing is known about the spread)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0, 1.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


@dataclass
class SweepPoint:
    """One (k, epsilon) cell: the poisoned victims' ASR and the bound.

    ``asr_*``: mean and interval over the seeds; ``clean_rate_*``: the same for the
    clean victims (the event's probability p); ``bound``: the group-privacy bound from
    ``clean_rate_high``; ``vacuous``: the bound is 1; ``consistent``: ``asr_low <= bound``.
    """

    k: int
    epsilon: float
    asr_mean: float
    asr_low: float
    asr_high: float
    asr_per_seed: list[float]
    clean_rate_mean: float
    clean_rate_high: float
    bound: float
    vacuous: bool
    consistent: bool
    clean_accuracy_mean: float
    epsilon_spent: float

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        out["epsilon"] = None if math.isinf(self.epsilon) else self.epsilon
        return out


@dataclass
class EpsilonSweep:
    """The whole sweep; ``series(k)`` gives a plot's lines."""

    points: list[SweepPoint]
    ks: list[int]
    epsilons: list[float]
    seeds: int
    delta: float
    confidence: float
    n_train: int
    target: int
    settings: dict
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def series(self, k: int) -> dict[str, list[float]]:
        """For k poisons, per finite epsilon (ascending): epsilon, ASR mean/low/high, bound."""
        pts = sorted((p for p in self.points if p.k == k and math.isfinite(p.epsilon)),
                     key=lambda p: p.epsilon)
        return {"epsilon": [p.epsilon for p in pts], "asr": [p.asr_mean for p in pts],
                "low": [p.asr_low for p in pts], "high": [p.asr_high for p in pts],
                "bound": [p.bound for p in pts]}

    @property
    def all_consistent(self) -> bool:
        return all(p.consistent for p in self.points)

    def to_json(self) -> dict:
        return {"points": [p.to_json() for p in self.points], "ks": list(self.ks),
                "epsilons": [None if math.isinf(e) else e for e in self.epsilons],
                "seeds": self.seeds, "delta": self.delta, "confidence": self.confidence,
                "n_train": self.n_train, "target": self.target, "settings": dict(self.settings),
                "all_consistent": self.all_consistent, "notes": list(self.notes),
                "seconds": self.seconds}


def asr_epsilon_sweep(model_fn: Callable[[int], nn.Module], x_train: torch.Tensor,
                      y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
                      ks: Sequence[int] = (1, 2, 5, 10),
                      epsilons: Sequence[float] = (1.0, 2.0, 4.0, 8.0, math.inf),
                      seeds: int = 5, delta: float = 1e-5, target: int = 0,
                      trigger_size: int = 3, epochs: int = 10, batch_size: int = 128,
                      lr: float = 3e-3, max_grad_norm: float = 1.0, confidence: float = 0.95,
                      progress: Callable[[str], None] | None = None) -> EpsilonSweep:
    """ASR of BadNets with k poisons against the DP-SGD epsilon, with the bound.

    Args:
        model_fn: ``seed -> fresh model`` (on the device to train on).
        x_train, y_train: the clean training set; x_test, y_test: the test set.
        ks: poison counts (each >= 1); epsilons: DP targets (``math.inf``: no DP).
        seeds: victims per cell (>= 2 for an interval).
        delta: the DP delta of every private run.
        target, trigger_size: the BadNets attack (all-to-one, bottom-right checkerboard).
        epochs, batch_size, lr, max_grad_norm: the training (Poisson batches of
            expected size ``batch_size``).
        confidence: of the intervals, in (0, 1).
        progress: called with a line per finished victim.

    Returns:
        :class:`EpsilonSweep`; its notes say where the bound is vacuous, and the bound
        at a 10% poison rate of this training set.
    """
    start = time.perf_counter()
    check_images(x_train, y_train)
    check_images(x_test, y_test)
    ks = [check_int("k", k, 1) for k in ks]
    seeds = check_int("seeds", seeds, 1)
    delta = check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
    confidence = check_in_range("confidence", confidence, 0.0, 1.0, low_open=True,
                                high_open=True)
    epsilons = [e if e == math.inf else check_positive("epsilon", e) for e in epsilons]
    n = len(y_train)
    attacks = {k: BadNets(target, k / n, size=trigger_size, seed=1000 + k) for k in ks}
    poisoned = {k: attacks[k].poison(x_train, y_train) for k in ks}
    for k, data in poisoned.items():
        if data.n_poison != k:
            raise ValueError(f"k = {k} poisons of {n} samples cannot be drawn exactly")
    reference = attacks[ks[0]]
    points: list[SweepPoint] = []

    def victim(x, y, eps, sigma, seed):
        privacy = {"target_epsilon": eps} if sigma is None else {"noise_multiplier": sigma}
        model, spent = train_private(model_fn(seed), x, y, delta=delta, epochs=epochs,
                                     batch_size=batch_size, lr=lr, max_grad_norm=max_grad_norm,
                                     seed=seed, **privacy)
        return backdoor_metrics(model, x_test, y_test, reference), spent

    for eps in epsilons:
        # One calibration per epsilon: every victim has n samples and the same schedule.
        sigma = None if math.isinf(eps) else dp_noise_multiplier(
            n, target_epsilon=eps, delta=delta, epochs=epochs, batch_size=batch_size)
        clean = [victim(x_train, y_train, eps, sigma, s)[0] for s in range(seeds)]
        if progress:
            progress(f"epsilon {eps:g}: clean victims done")
        p_mean, _, p_high = mean_interval([m.asr for m in clean], confidence)
        for k in ks:
            runs = [victim(poisoned[k].x, poisoned[k].y, eps, sigma, s) for s in range(seeds)]
            rates = [m.asr for m, _ in runs]
            mean, low, high = mean_interval(rates, confidence)
            bound = group_privacy_bound(p_high, eps, delta, k, replaced=True)
            points.append(SweepPoint(
                k=k, epsilon=eps, asr_mean=mean, asr_low=low, asr_high=high, asr_per_seed=rates,
                clean_rate_mean=p_mean, clean_rate_high=p_high, bound=bound,
                vacuous=bound >= 1.0, consistent=low <= bound + 1e-12,
                clean_accuracy_mean=sum(m.clean_accuracy for m, _ in runs) / seeds,
                epsilon_spent=max(s for _, s in runs)))
            if progress:
                progress(f"epsilon {eps:g}, k {k}: ASR {mean:.3f} [{low:.3f}, {high:.3f}], "
                         f"bound {bound:.3f}")
    sweep = EpsilonSweep(points, ks, list(epsilons), seeds, delta, confidence, n, target,
                         {"trigger_size": trigger_size, "epochs": epochs,
                          "batch_size": batch_size, "lr": lr, "max_grad_norm": max_grad_norm,
                          "replaced": True, "group_distance": {k: group_distance(k, True)
                                                               for k in ks}},
                         seconds=time.perf_counter() - start)
    _explain(sweep)
    return sweep


def _explain(sweep: EpsilonSweep) -> None:
    """Notes: where the bound is vacuous, and what a 10% poison rate would give."""
    for k in sweep.ks:
        vacuous = [p.epsilon for p in sweep.points if p.k == k and p.vacuous]
        if vacuous:
            shown = ", ".join("inf" if math.isinf(e) else f"{e:g}" for e in vacuous)
            sweep.notes.append(f"k = {k} (k' = {2 * k}): the bound is vacuous (1) "
                               f"at epsilon {shown}")
    k10 = max(1, round(0.1 * sweep.n_train))
    finite = [e for e in sweep.epsilons if math.isfinite(e)]
    if finite:
        p = max((p.clean_rate_high for p in sweep.points), default=0.0)
        values = [group_privacy_bound(p, e, sweep.delta, k10) for e in finite]
        informative = [e for e, v in zip(finite, values) if v < 1.0]
        sweep.notes.append(
            f"at a 10% poison rate (k = {k10}, k' = {2 * k10}) the bound is "
            + ("vacuous (1) at every epsilon swept" if not informative else
               f"informative only at epsilon {', '.join(f'{e:g}' for e in informative)}")
            + f"; it needs epsilon below about {math.log(1 / max(p, 1e-12)) / (2 * k10):.2g}")
