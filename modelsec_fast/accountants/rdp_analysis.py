"""Renyi-DP of the Poisson-subsampled Gaussian mechanism, and RDP -> (eps, delta).

The formulas are those of Mironov, Talwar and Zhang, "Renyi Differential
Privacy of the Sampled Gaussian Mechanism" (2019, arXiv:1908.10530, Sec. 3.3),
as used by TF-Privacy and Opacus 1.6, and the conversion of Balle et al.
(2020, arXiv:1905.09982, Thm. 21). Keeping the same formulas and the same
orders makes our RDP epsilon equal Opacus's.
"""

import math
import warnings
from functools import lru_cache
from typing import Sequence, Tuple

import numpy as np
from scipy import special

__all__ = ["DEFAULT_ORDERS", "rdp_per_step", "rdp_to_epsilon"]

# Opacus 1.6's default orders: 1.1, 1.2, ..., 10.9, then 12, 13, ..., 63.
DEFAULT_ORDERS: Tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)]
)

# Terms of the fractional-order series below exp(-30) are dropped (as TF-Privacy).
_SERIES_CUTOFF = -30.0


def _log_sub(log_x: float, log_y: float) -> float:
    """log(exp(log_x) - exp(log_y)) for log_x >= log_y."""
    if log_y == -math.inf:
        return log_x
    if log_x == log_y:
        return -math.inf
    if log_x < log_y:
        raise ValueError("log-space subtraction would be negative")
    try:
        return math.log(math.expm1(log_x - log_y)) + log_y
    except OverflowError:
        return log_x


def _log_a_integer_order(q: float, sigma: float, order: int) -> float:
    """log A_alpha for integer alpha: a finite binomial sum, done in log space."""
    i = np.arange(order + 1, dtype=np.float64)
    log_binom = special.gammaln(order + 1) - special.gammaln(i + 1) - special.gammaln(order - i + 1)
    terms = log_binom + i * math.log(q) + (order - i) * math.log1p(-q) + (i * i - i) / (2 * sigma**2)
    return float(special.logsumexp(terms))


def _log_erfc(x: float) -> float:
    """log(erfc(x)), accurate for large x."""
    return math.log(2.0) + float(special.log_ndtr(-x * math.sqrt(2.0)))


def _log_a_fractional_order(q: float, sigma: float, order: float) -> float:
    """log A_alpha for fractional alpha: the two-sided series of MTZ19, Sec. 3.3."""
    log_lower, log_upper = -math.inf, -math.inf
    z0 = sigma**2 * math.log(1.0 / q - 1.0) + 0.5
    log_q, log_1mq = math.log(q), math.log1p(-q)
    i = 0
    while True:
        coef = special.binom(order, i)
        log_abs_coef = math.log(abs(coef))
        j = order - i
        log_lower_term = (
            log_abs_coef + i * log_q + j * log_1mq + (i * i - i) / (2 * sigma**2)
            + math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2.0) * sigma))
        )
        log_upper_term = (
            log_abs_coef + j * log_q + i * log_1mq + (j * j - j) / (2 * sigma**2)
            + math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2.0) * sigma))
        )
        if coef > 0:
            log_lower = np.logaddexp(log_lower, log_lower_term)
            log_upper = np.logaddexp(log_upper, log_upper_term)
        else:
            log_lower = _log_sub(log_lower, log_lower_term)
            log_upper = _log_sub(log_upper, log_upper_term)
        i += 1
        if max(log_lower_term, log_upper_term) < _SERIES_CUTOFF:
            break
    return float(np.logaddexp(log_lower, log_upper))


def _rdp_one_order(q: float, sigma: float, order: float) -> float:
    if sigma == 0.0:
        return math.inf
    if q == 1.0:
        return order / (2 * sigma**2)
    if float(order).is_integer():
        log_a = _log_a_integer_order(q, sigma, int(order))
    else:
        log_a = _log_a_fractional_order(q, sigma, order)
    return log_a / (order - 1)


@lru_cache(maxsize=4096)
def _rdp_per_step_cached(q: float, sigma: float, orders: Tuple[float, ...]) -> np.ndarray:
    with np.errstate(over="ignore"):
        values = np.array([_rdp_one_order(q, sigma, a) for a in orders], dtype=np.float64)
    values[np.isnan(values)] = math.inf  # overflow in the series: no finite bound at this order
    values.setflags(write=False)
    return values


def rdp_per_step(q: float, sigma: float, orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP of one step of the Poisson-subsampled Gaussian mechanism.

    Args:
        q: sample rate in (0, 1].
        sigma: noise multiplier (noise std / L2 sensitivity), >= 0.
        orders: RDP orders alpha > 1.

    Returns:
        Read-only float64 array, shape (len(orders),); ``inf`` where unbounded.
        Multiply by the number of steps for a homogeneous segment.
    """
    return _rdp_per_step_cached(float(q), float(sigma), tuple(float(a) for a in orders))


def rdp_to_epsilon(orders: Sequence[float], rdp: np.ndarray, delta: float) -> Tuple[float, float]:
    """Best epsilon over ``orders`` for a total RDP curve, and the order used.

    Balle et al. 2020, Thm. 21:
    eps = rdp - (log delta + log alpha) / (alpha - 1) + log((alpha - 1) / alpha).

    Returns:
        (epsilon, order); epsilon is ``inf`` when every order is unbounded.
    """
    orders_arr = np.asarray(orders, dtype=np.float64)
    rdp_arr = np.asarray(rdp, dtype=np.float64)
    if orders_arr.shape != rdp_arr.shape:
        raise ValueError(f"orders {orders_arr.shape} and rdp {rdp_arr.shape} differ in shape")
    with np.errstate(invalid="ignore"):
        eps = (
            rdp_arr
            - (math.log(delta) + np.log(orders_arr)) / (orders_arr - 1)
            + np.log((orders_arr - 1) / orders_arr)
        )
    finite = np.isfinite(eps)
    if not finite.any():
        return math.inf, math.nan
    eps = np.where(finite, eps, np.inf)
    best = int(np.argmin(eps))
    if best in (0, len(eps) - 1):
        side = "smallest" if best == 0 else "largest"
        warnings.warn(
            f"the optimal RDP order is the {side} one ({orders_arr[best]}); "
            f"a wider range of orders may give a tighter epsilon",
            UserWarning,
            stacklevel=3,
        )
    return float(max(eps[best], 0.0)), float(orders_arr[best])
