"""The accountant interface, history book-keeping and state dicts.

Mirrors ``opacus.accountants.IAccountant`` so that code written against Opacus
ports by changing the import. Differences, each deliberate:

* ``len(accountant)`` is the total number of steps (Opacus 1.6 returns the
  number of history segments, which is not what its docstring promises).
* ``step`` validates its arguments, and ``get_epsilon`` raises
  :class:`InfiniteEpsilonError` instead of returning ``inf``.
* ``history`` may be assigned directly, as Opacus's ``get_noise_multiplier``
  does; subclasses key their caches on the history's contents, not on calls
  to ``step``.
"""

import abc
from collections import OrderedDict
from typing import Callable, List, Tuple

from .validation import (
    InfiniteEpsilonError,
    check_noise_multiplier,
    check_sample_rate,
    check_steps,
)

__all__ = ["Accountant", "Segment"]

# (noise_multiplier, sample_rate, steps): `steps` consecutive Poisson-sampled
# Gaussian steps with the same sigma and sample rate q.
Segment = Tuple[float, float, int]


class Accountant(abc.ABC):
    """Base class: tracks (noise_multiplier, sample_rate, steps) segments."""

    # Other mechanism names whose saved histories this accountant may load.
    compatible_mechanisms: Tuple[str, ...] = ()

    def __init__(self):
        self.history: List[Segment] = []

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        """Record one Poisson-sampled Gaussian step.

        Consecutive steps with equal (sigma, q) are merged into one segment.

        Raises:
            ValueError / TypeError: sigma < 0 or not finite, q outside (0, 1].
        """
        sigma = check_noise_multiplier(noise_multiplier)
        q = check_sample_rate(sample_rate)
        if self.history:
            last_sigma, last_q, last_steps = self.history[-1]
            if last_sigma == sigma and last_q == q:
                self.history[-1] = (last_sigma, last_q, last_steps + 1)
                return
        self.history.append((sigma, q, 1))

    def __len__(self) -> int:
        """Total number of steps taken so far."""
        return sum(int(steps) for _, _, steps in self.history)

    @abc.abstractmethod
    def get_epsilon(self, delta: float, **kwargs) -> float:
        """Epsilon spent so far at ``delta``; 0.0 for an empty history."""

    @classmethod
    @abc.abstractmethod
    def mechanism(cls) -> str:
        """Name under which :func:`create_accountant` builds this class."""

    def _checked_history(self) -> Tuple[Segment, ...]:
        """The history as a validated tuple; raise if epsilon is infinite."""
        segments = tuple(_check_segment(seg) for seg in self.history)
        for sigma, q, steps in segments:
            if sigma == 0.0:
                raise InfiniteEpsilonError(
                    f"the history holds {steps} step(s) with noise_multiplier=0 "
                    f"(sample_rate={q}): epsilon is infinite, there is no privacy"
                )
        return segments

    def get_optimizer_hook_fn(self, sample_rate: float) -> Callable:
        """A callback ``fn(optimizer)`` that records one step per private step.

        Reads ``optimizer.noise_multiplier`` at call time, so a noise schedule
        that changes sigma is accounted with the sigma actually used.
        """
        sample_rate = check_sample_rate(sample_rate)

        def hook_fn(optimizer) -> None:
            self.step(noise_multiplier=optimizer.noise_multiplier, sample_rate=sample_rate)

        return hook_fn

    def state_dict(self, destination=None):
        """``{"history": [...], "mechanism": name}`` (a copy of the history)."""
        if destination is None:
            destination = OrderedDict()
        destination["history"] = [tuple(seg) for seg in self.history]
        destination["mechanism"] = self.mechanism()
        return destination

    def load_state_dict(self, state_dict) -> None:
        """Replace the history by the one in ``state_dict``.

        Raises:
            ValueError: missing keys, another mechanism, or a malformed segment.
        """
        if not state_dict:
            raise ValueError("accountant state_dict is None or empty")
        for key in ("history", "mechanism"):
            if key not in state_dict:
                raise ValueError(f"accountant state_dict has no key {key!r}")
        if state_dict["mechanism"] not in (self.mechanism(), *self.compatible_mechanisms):
            raise ValueError(
                f"accountant state_dict is for mechanism {state_dict['mechanism']!r}, "
                f"this accountant is {self.mechanism()!r}"
            )
        self.history = [_check_segment(seg) for seg in state_dict["history"]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={len(self)}, segments={len(self.history)})"


def _check_segment(segment) -> Segment:
    try:
        sigma, q, steps = segment
    except (TypeError, ValueError):
        raise ValueError(
            f"history entries must be (noise_multiplier, sample_rate, steps), got {segment!r}"
        ) from None
    sigma = check_noise_multiplier(sigma)
    q = check_sample_rate(q)
    steps = check_steps(steps)
    return (sigma, q, steps)
