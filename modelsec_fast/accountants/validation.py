"""Argument checks shared by every accountant, on :mod:`modelsec_fast.validation`'s primitives.

Privacy is a correctness property: a bad sample rate, delta or noise level must
raise a clear error, never produce a silently wrong epsilon.
"""

import warnings

from ..validation import check_in_range, check_int, check_non_negative, check_positive

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


def check_noise_multiplier(noise_multiplier) -> float:
    """Return ``noise_multiplier`` as a float; raise if negative or not finite.

    Zero is accepted here (a non-private debugging step); the accountant raises
    ``InfiniteEpsilonError`` when asked for epsilon over such a history.
    """
    return check_non_negative("noise_multiplier", noise_multiplier)


def check_sample_rate(sample_rate) -> float:
    """Return ``sample_rate`` as a float; raise unless it lies in (0, 1]."""
    return check_in_range("sample_rate", sample_rate, 0.0, 1.0, low_open=True,
                          reason=" (the Poisson inclusion probability of each example)")


def check_delta(delta, num_samples=None) -> float:
    """Return ``delta`` as a float; raise unless 0 < delta < 1.

    Args:
        delta: target delta of the (epsilon, delta) guarantee.
        num_samples: dataset size N, when known. A delta >= 1/N allows a
            mechanism that publishes one whole record, so it warns.

    Raises:
        TypeError: delta is not a number.
        ValueError: delta outside the open interval (0, 1).
    """
    value = check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
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
    return check_positive("target_epsilon", target_epsilon)


def check_steps(steps) -> int:
    """Return ``steps`` as an int; raise unless it is a positive integer."""
    return check_int("steps", steps, 1)
