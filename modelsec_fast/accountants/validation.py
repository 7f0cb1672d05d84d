"""Argument checks shared by every accountant.

Privacy is a correctness property: a bad sample rate, delta or noise level must
raise a clear error, never produce a silently wrong epsilon.
"""

import math
import numbers
import warnings

__all__ = [
    "check_noise_multiplier",
    "check_sample_rate",
    "check_delta",
    "check_target_epsilon",
    "check_steps",
    "InfiniteEpsilonError",
]


class InfiniteEpsilonError(ValueError):
    """Raised when a history gives no finite epsilon (for example sigma = 0).

    A subclass of ``ValueError`` so that callers may catch either.
    """


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def check_noise_multiplier(noise_multiplier) -> float:
    """Return ``noise_multiplier`` as a float; raise if negative or not finite.

    Zero is accepted here (a non-private debugging step); the accountant raises
    ``InfiniteEpsilonError`` when asked for epsilon over such a history.
    """
    value = _real(noise_multiplier, "noise_multiplier")
    if value < 0 or math.isinf(value):
        raise ValueError(
            f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}"
        )
    return value


def check_sample_rate(sample_rate) -> float:
    """Return ``sample_rate`` as a float; raise unless it lies in (0, 1]."""
    value = _real(sample_rate, "sample_rate")
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"sample_rate must lie in (0, 1] (the Poisson inclusion probability "
            f"of each example), got {sample_rate}"
        )
    return value


def check_delta(delta, num_samples=None) -> float:
    """Return ``delta`` as a float; raise unless 0 < delta < 1.

    Args:
        delta: target delta of the (epsilon, delta) guarantee.
        num_samples: dataset size N, when known. A delta >= 1/N allows a
            mechanism that publishes one whole record, so it warns.

    Raises:
        ValueError: delta outside the open interval (0, 1).
    """
    value = _real(delta, "delta")
    if not 0.0 < value < 1.0:
        raise ValueError(f"delta must lie in the open interval (0, 1), got {delta}")
    if num_samples is not None and num_samples > 0 and value >= 1.0 / num_samples:
        warnings.warn(
            f"delta={value} is >= 1/N = 1/{num_samples}: such a guarantee permits "
            f"releasing a whole training record; use delta << 1/N.",
            UserWarning,
            stacklevel=3,
        )
    return value


def check_target_epsilon(target_epsilon) -> float:
    """Return ``target_epsilon`` as a float; raise unless it is finite and > 0."""
    value = _real(target_epsilon, "target_epsilon")
    if value <= 0 or math.isinf(value):
        raise ValueError(f"target_epsilon must be finite and > 0, got {target_epsilon}")
    return value


def check_steps(steps) -> int:
    """Return ``steps`` as an int; raise unless it is a positive integer."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise TypeError(f"steps must be an integer, got {type(steps).__name__}")
    if steps <= 0:
        raise ValueError(f"steps must be > 0, got {steps}")
    return int(steps)
