"""Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with
Adaptive Clipping"), Opacus's ``clipping="adaptive"``.

After every step the bound C moves geometrically towards the
``target_unclipped_quantile`` of the per-sample norms:
C <- clamp(C * exp(-eta (b - gamma)), min, max), where b is the fraction of
the logical batch left unclipped, released with Gaussian noise
N(0, ``unclipped_num_std``^2) on its count and divided by E[B]. That count is a
second query of sensitivity 1 on the same batch; its noise is accounted by
lowering the gradient's noise multiplier to
sigma_g = (sigma^-2 - (2 sigma_b)^-2)^(-1/2), so that the two releases
together cost exactly one Gaussian step of noise multiplier sigma (Andrew et
al., Theorem 1). The accountant is therefore charged sigma, the
``noise_multiplier`` passed in; ``gradient_noise_multiplier`` is sigma_g.
"""

from __future__ import annotations

import math

import torch

from ..validation import check_in_range, check_positive
from .optimizer import DPOptimizer, _add_noise

__all__ = ["AdaptiveClipDPOptimizer"]


class AdaptiveClipDPOptimizer(DPOptimizer):
    """A DPOptimizer whose flat clipping bound adapts to a quantile of the norms.

    Args (beyond :class:`DPOptimizer`'s; Opacus's names):
        target_unclipped_quantile: gamma in [0, 1], the fraction of samples to
            leave unclipped.
        clipbound_learning_rate: eta > 0 of the geometric update.
        max_clipbound, min_clipbound: bounds on C (min > 0, max >= min).
        unclipped_num_std: sigma_b > 0, std of the noise on the unclipped
            count; needs 2 sigma_b > sigma (else the gradient would need
            infinite noise).

    Raises:
        ValueError: a bad argument, naming it.
    """

    def __init__(self, optimizer, *, noise_multiplier, max_grad_norm, expected_batch_size,
                 target_unclipped_quantile, clipbound_learning_rate, max_clipbound,
                 min_clipbound, unclipped_num_std, **kwargs):
        super().__init__(optimizer, noise_multiplier=noise_multiplier,
                         max_grad_norm=max_grad_norm, expected_batch_size=expected_batch_size,
                         **kwargs)
        self.target_unclipped_quantile = check_in_range(
            "target_unclipped_quantile", target_unclipped_quantile, 0.0, 1.0)
        self.clipbound_learning_rate = check_positive("clipbound_learning_rate",
                                                      clipbound_learning_rate)
        self.min_clipbound = check_positive("min_clipbound", min_clipbound)
        self.max_clipbound = check_positive("max_clipbound", max_clipbound)
        if self.max_clipbound < self.min_clipbound:
            raise ValueError(f"max_clipbound ({max_clipbound}) must be >= min_clipbound "
                             f"({min_clipbound})")
        self.unclipped_num_std = check_positive("unclipped_num_std", unclipped_num_std)
        sigma = self.noise_multiplier
        if sigma > 0 and 2 * self.unclipped_num_std <= sigma:
            raise ValueError(
                f"unclipped_num_std={unclipped_num_std} must exceed noise_multiplier / 2 = "
                f"{sigma / 2}: the unclipped count's noise is taken out of the gradient's")
        self._unclipped = 0

    @property
    def gradient_noise_multiplier(self) -> float:
        """sigma_g = (sigma^-2 - (2 sigma_b)^-2)^(-1/2); 0 when sigma is 0."""
        sigma = self.noise_multiplier
        if sigma == 0:
            return 0.0
        return (sigma ** -2 - (2 * self.unclipped_num_std) ** -2) ** -0.5

    def gradient_noise_std(self) -> float:
        return self.gradient_noise_multiplier * self.max_grad_norm

    def observe_norms(self, norms: torch.Tensor) -> None:
        self._unclipped += int((norms <= self.max_grad_norm).sum())

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not self._is_last_step_skipped:
            self._unclipped = 0
        super().zero_grad(set_to_none)

    def after_step(self) -> None:
        count = torch.tensor([float(self._unclipped)], dtype=torch.float64)
        if self.noise_multiplier > 0 and self.adds_noise:
            _add_noise([count], self.unclipped_num_std, 1.0, self.noise_generator,
                       self.noise_source)
        fraction = float(count) / (self.expected_batch_size or 1)
        bound = self.max_grad_norm * math.exp(
            -self.clipbound_learning_rate * (fraction - self.target_unclipped_quantile))
        self.max_grad_norm = min(self.max_clipbound, max(self.min_clipbound, bound))
        self._unclipped = 0
