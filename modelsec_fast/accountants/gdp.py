"""Gaussian-DP accountant (Dong, Roth and Su 2019), Opacus's ``"gdp"``.

Poisson-subsampled Gaussian steps compose, by the central limit theorem of
f-DP, to approximately mu-GDP with mu = q sqrt(T (exp(sigma^-2) - 1)); epsilon
solves delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2). The CLT
is an approximation that can *underestimate* epsilon (Gopi et al. 2021,
arXiv:2106.02848), so, as in Opacus, constructing it warns, and it is never a
default: prefer "pld" (tight) or "rdp" (an upper bound). Like Opacus's, it
takes one (sigma, q) for the whole run.
"""

import math
import warnings

from scipy import optimize, stats

from .base import Accountant
from .validation import check_delta

__all__ = ["GaussianAccountant", "GDP_WARNING"]

GDP_WARNING = ("GDP accounting is experimental and can underestimate privacy expenditure. "
               "Proceed with caution. More details: https://arxiv.org/pdf/2106.02848.pdf")


def _mu_poisson(steps: int, sigma: float, q: float) -> float:
    return math.sqrt(math.expm1(sigma ** -2)) * math.sqrt(steps) * q


def _delta(eps: float, mu: float) -> float:
    return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)


class GaussianAccountant(Accountant):
    """mu-GDP accountant (approximate; warns on construction, as Opacus's does).

    Raises:
        ValueError: a step with another (sigma, q) than the first (Opacus's
            rule), or sigma = 0 (no finite epsilon).
    """

    def __init__(self):
        warnings.warn(GDP_WARNING, UserWarning, stacklevel=2)
        super().__init__()

    @classmethod
    def mechanism(cls) -> str:
        return "gdp"

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        if self.history:
            sigma, q, _ = self.history[-1]
            if (sigma, q) != (float(noise_multiplier), float(sample_rate)):
                raise ValueError("noise_multiplier and sample_rate have to stay constant in "
                                 "the GDP accountant")
        super().step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)

    def get_epsilon(self, delta: float, poisson: bool = True, **kwargs) -> float:
        """Epsilon at ``delta`` (Poisson sampling; ``poisson=False`` is not offered)."""
        if not poisson:
            raise ValueError("the GDP accountant here covers Poisson sampling only")
        delta = check_delta(delta)
        segments = self._checked_history()
        if not segments:
            return 0.0
        sigma, q, _ = segments[-1]
        mu = _mu_poisson(len(self), sigma, q)
        if _delta(0.0, mu) <= delta:
            return 0.0
        return float(optimize.root_scalar(lambda e: _delta(e, mu) - delta, bracket=[0, 500],
                                          method="brentq").root)
