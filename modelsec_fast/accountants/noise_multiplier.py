"""Smallest noise multiplier that meets an (epsilon, delta) budget."""

import math
import warnings
from typing import Optional

from ..validation import check_positive
from .registry import create_accountant
from .validation import (
    InfiniteEpsilonError,
    check_delta,
    check_sample_rate,
    check_steps,
    check_target_epsilon,
)

__all__ = ["get_noise_multiplier", "MAX_SIGMA"]

MAX_SIGMA = 1e6
# Bisection stops once sigma_high / sigma_low <= this; the smallest feasible
# sigma lies in (sigma_low, sigma_high], so the answer is within 0.5% of it.
_BRACKET_RATIO = 1.005


def get_noise_multiplier(
    *,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    epochs: Optional[float] = None,
    steps: Optional[int] = None,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
    num_samples: Optional[int] = None,
    **kwargs,
) -> float:
    """Noise multiplier sigma so that ``steps`` steps at ``sample_rate`` spend at most
    ``target_epsilon`` at ``target_delta``.

    Brackets sigma by doubling / halving, then bisects. The returned sigma
    satisfies eps(sigma) <= target_epsilon, is within 1% (in practice 0.5%)
    of the smallest sigma that does, and target_epsilon - eps(sigma) <=
    ``epsilon_tolerance`` / 2 (Opacus guarantees the whole tolerance; half
    makes the default's epsilon round to the target at two decimals): the
    search stops only when both hold.

    Args:
        target_epsilon: budget epsilon, finite and > 0.
        target_delta: budget delta in (0, 1).
        sample_rate: Poisson sample rate q in (0, 1].
        epochs: number of epochs; steps = int(epochs / q) as in Opacus.
        steps: number of steps (give exactly one of ``epochs`` / ``steps``).
        accountant: "rdp" (the default, as in Opacus's ``get_noise_multiplier``:
            the same call returns the same sigma to within the tolerances),
            "pld" or "prv" (= "pld"), or "gdp".
        epsilon_tolerance: > 0, twice how far below the target eps(sigma) may be.
        num_samples: dataset size, if known, to warn when delta >= 1/N.
        **kwargs: passed to the accountant's ``get_epsilon`` (e.g. ``alphas``).

    Returns:
        sigma as a float.

    Raises:
        ValueError: bad arguments, or a budget that needs sigma > 1e6.
    """
    target_epsilon = check_target_epsilon(target_epsilon)
    target_delta = check_delta(target_delta, num_samples)
    sample_rate = check_sample_rate(sample_rate)
    if (steps is None) == (epochs is None):
        raise ValueError("get_noise_multiplier needs exactly one of `epochs` and `steps`")
    if steps is None:
        epochs = check_positive("epochs", epochs)
        steps = max(1, int(epochs / sample_rate))
    steps = check_steps(steps)
    epsilon_tolerance = check_positive("epsilon_tolerance", epsilon_tolerance)
    acc = create_accountant(accountant)

    def epsilon(sigma: float) -> float:
        acc.history = [(sigma, sample_rate, steps)]
        try:
            with warnings.catch_warnings():
                # "optimal RDP order at the edge" is expected for trial sigmas far from the answer
                warnings.simplefilter("ignore", UserWarning)
                return acc.get_epsilon(delta=target_delta, **kwargs)
        except InfiniteEpsilonError:
            return math.inf

    # A numerical accountant's sigma is at most the RDP one (RDP is an upper
    # bound), so the cheap RDP answer is a tight upper bracket for "pld".
    shrink = 2.0
    sigma_high = 1.0
    if acc.mechanism() != "rdp":
        sigma_high = get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=target_delta,
            sample_rate=sample_rate, steps=steps, accountant="rdp")
        shrink = 1.1
    eps_high = epsilon(sigma_high)
    while eps_high > target_epsilon:
        sigma_high *= 2.0
        if sigma_high > MAX_SIGMA:
            raise ValueError(
                f"the budget epsilon={target_epsilon}, delta={target_delta} over {steps} "
                f"steps at q={sample_rate} needs a noise multiplier above {MAX_SIGMA:g}"
            )
        eps_high = epsilon(sigma_high)
    sigma_low = sigma_high / shrink
    eps_low = epsilon(sigma_low)
    while eps_low <= target_epsilon:
        sigma_high, eps_high = sigma_low, eps_low
        sigma_low = sigma_low / shrink
        if sigma_high < 1e-3:  # even a vanishing noise meets this budget
            return sigma_high
        eps_low = epsilon(sigma_low)
    # Invariant: eps(sigma_low) > target >= eps(sigma_high). Interpolation steps
    # (log eps is nearly linear in log sigma) alternate with bisection, so the
    # bracket shrinks geometrically even where interpolation is poor.
    interpolate = True
    # Half the tolerance: Opacus users (and its own tests) expect the epsilon
    # spent to round to the target at two decimals with the default 0.01.
    stop_below = 0.5 * epsilon_tolerance
    while sigma_high / sigma_low > _BRACKET_RATIO or \
            (target_epsilon - eps_high > stop_below and sigma_high / sigma_low > 1 + 1e-12):
        sigma = _next_trial(sigma_low, eps_low, sigma_high, eps_high, target_epsilon, interpolate)
        eps = epsilon(sigma)
        if eps <= target_epsilon:
            sigma_high, eps_high = sigma, eps
            # probe just below: if infeasible the bracket is closed in one step
            probe = sigma_high / _BRACKET_RATIO
            if interpolate and probe > sigma_low:
                eps_probe = epsilon(probe)
                if eps_probe <= target_epsilon:
                    sigma_high, eps_high = probe, eps_probe
                else:
                    sigma_low, eps_low = probe, eps_probe
        else:
            sigma_low, eps_low = sigma, eps
        interpolate = not interpolate
    return sigma_high


def _next_trial(sigma_low, eps_low, sigma_high, eps_high, target, interpolate) -> float:
    """Next sigma to try inside (sigma_low, sigma_high)."""
    log_lo, log_hi = math.log(sigma_low), math.log(sigma_high)
    if interpolate and math.isfinite(eps_low) and eps_high > 0 and eps_low > eps_high:
        frac = (math.log(eps_low) - math.log(target)) / (math.log(eps_low) - math.log(eps_high))
        # aim a little above the estimated root so the trial is likely feasible
        log_root = log_lo + min(max(frac, 0.0), 1.0) * (log_hi - log_lo)
        log_trial = log_root + 0.5 * math.log(_BRACKET_RATIO)
        width = log_hi - log_lo
        return math.exp(min(max(log_trial, log_lo + 0.01 * width), log_hi - 0.01 * width))
    return math.exp(0.5 * (log_lo + log_hi))  # bisection in log space
