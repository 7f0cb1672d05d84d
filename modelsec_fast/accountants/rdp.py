"""Renyi-DP accountant with Opacus 1.6's orders and conversion (same epsilon)."""

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from .base import Accountant
from .rdp_analysis import DEFAULT_ORDERS, rdp_per_step, rdp_to_epsilon
from .validation import InfiniteEpsilonError, check_delta

__all__ = ["RDPAccountant"]


class RDPAccountant(Accountant):
    """Moments / Renyi-DP accountant for Poisson-subsampled Gaussian steps.

    Drop-in for ``opacus.accountants.RDPAccountant``: same default orders,
    same RDP formulas and same RDP -> (eps, delta) conversion, so epsilons
    agree with Opacus to floating-point rounding. Per-(sigma, q) RDP curves
    are cached, so ``get_epsilon`` over a long history with many distinct
    segments costs one vector sum per segment.

    Example:
        >>> acc = RDPAccountant()
        >>> for _ in range(2250):
        ...     acc.step(noise_multiplier=1.5, sample_rate=0.04)
        >>> round(acc.get_epsilon(1e-5), 6)
        7.329111
    """

    DEFAULT_ALPHAS = list(DEFAULT_ORDERS)

    @classmethod
    def mechanism(cls) -> str:
        return "rdp"

    def get_privacy_spent(
        self, *, delta: float, alphas: Optional[Sequence[float]] = None
    ) -> Tuple[float, float]:
        """(epsilon, best order) spent so far at ``delta``.

        Raises:
            ValueError: delta outside (0, 1), or an order <= 1.
            InfiniteEpsilonError: sigma = 0 in the history, or sigma so small
                that the RDP bound overflows at every order.
        """
        delta = check_delta(delta)
        orders = tuple(float(a) for a in (DEFAULT_ORDERS if alphas is None else alphas))
        if not orders or min(orders) <= 1.0:
            raise ValueError(f"RDP orders must all be > 1, got {orders}")
        segments = self._checked_history()
        if not segments:
            return 0.0, math.nan
        total = np.zeros(len(orders), dtype=np.float64)
        for sigma, q, steps in segments:
            total += steps * rdp_per_step(q, sigma, orders)
        eps, order = rdp_to_epsilon(orders, total, delta)
        if not math.isfinite(eps):
            raise InfiniteEpsilonError(
                f"the RDP bound is infinite at every order for history {segments[:3]}"
                f"{'...' if len(segments) > 3 else ''}: the noise multiplier is too "
                f"small for a finite epsilon"
            )
        return eps, order

    def get_epsilon(self, delta: float, alphas: Optional[Sequence[float]] = None, **kwargs) -> float:
        """Epsilon spent so far at ``delta`` (0.0 before the first step)."""
        eps, _ = self.get_privacy_spent(delta=delta, alphas=alphas)
        return eps
