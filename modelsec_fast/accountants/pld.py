"""Privacy-loss-distribution accountant on Google's ``dp-accounting`` package.

The default accountant of modelsec_fast. Each history segment (sigma, q, k)
is the dp-accounting event ``SelfComposedDpEvent(PoissonSampledDpEvent(q,
GaussianDpEvent(sigma)), k)``; segments are composed in order. We build the
same privacy loss distributions that ``dp_accounting.pld.PLDAccountant``
builds for those events (add-or-remove-one neighbours, pessimistic rounding,
connect-the-dots, discretisation interval 1e-4 by default), through
dp-accounting's public ``privacy_loss_distribution`` API, and compose them
incrementally:

* the composition of every segment but the last (the "closed" prefix) is
  cached, and a new segment is composed onto it once;
* the last segment, which grows one step at a time during training, is
  self-composed afresh at each ``get_epsilon`` (one FFT exponentiation) and
  composed with the cached prefix.

So a 100-epoch history whose sigma changes every epoch costs one or two FFT
compositions per epoch instead of a recomposition of the whole history, whose
cost would grow with every segment added.

Opacus 1.6's default accountant is ``"prv"`` (Gopi et al. 2021); ours is
``"pld"``. The two are the same numerical method and agree closely, but not to
the last digit, so ``make_private_with_epsilon`` may pick a slightly different
sigma than Opacus. ``"prv"`` is accepted and maps to this class.
"""

import math
from typing import Optional, Tuple

from ..validation import check_in_range
from .base import Accountant, Segment
from .validation import InfiniteEpsilonError, check_delta

__all__ = ["PLDAccountant"]

DEFAULT_DISCRETIZATION = 1e-4

# Below this sigma one subsampled Gaussian step's privacy loss spans so many
# discretisation buckets (~ 20 / (sigma * interval)) that building it takes
# minutes and gigabytes; epsilon is then astronomically large anyway.
_MIN_SIGMA = 0.1


def _pld_module():
    try:
        from dp_accounting.pld import privacy_loss_distribution
    except ImportError as err:  # pragma: no cover - dp-accounting is a dependency
        raise ImportError(
            "the PLD accountant needs Google's dp-accounting package "
            "(pip install dp-accounting); use accountant='rdp' to avoid it"
        ) from err
    return privacy_loss_distribution


class PLDAccountant(Accountant):
    """Tight numerical accountant for Poisson-subsampled Gaussian steps.

    Args:
        value_discretization_interval: PLD grid step (default 1e-4). Smaller is
            tighter and slower; rounding is always pessimistic, so the epsilon
            returned is an upper bound for any interval.

    Note:
        ``create_accountant("prv")`` also returns this class: see
        :mod:`modelsec_fast.accountants.registry`.
    """

    def __init__(self, value_discretization_interval: float = DEFAULT_DISCRETIZATION):
        super().__init__()
        self.value_discretization_interval = check_in_range(
            "value_discretization_interval", value_discretization_interval, 0.0, 0.1,
            low_open=True)
        self._prefix: Tuple[Segment, ...] = ()
        self._prefix_pld = None
        self._last_key: Optional[Segment] = None
        self._last_pld = None
        self._epsilon_cache: dict = {}

    # Opacus's PRV histories have the same (sigma, q, steps) format and meaning.
    compatible_mechanisms = ("prv",)

    @classmethod
    def mechanism(cls) -> str:
        return "pld"

    def _segment_pld(self, segment: Segment):
        sigma, q, steps = segment
        pld = _pld_module().from_gaussian_mechanism(
            standard_deviation=sigma,
            sensitivity=1.0,
            pessimistic_estimate=True,
            value_discretization_interval=self.value_discretization_interval,
            sampling_prob=q,
            use_connect_dots=True,
        )
        return pld.self_compose(steps) if steps > 1 else pld

    def _composed_prefix(self, prefix: Tuple[Segment, ...]):
        """PLD of ``prefix``, extending the cached prefix when it is a prefix of it."""
        cached = self._prefix
        if prefix[: len(cached)] != cached:
            cached, self._prefix_pld = (), None
        pld = self._prefix_pld
        for segment in prefix[len(cached):]:
            # the segment that just closed was the open one: its PLD is already built
            seg_pld = self._last_pld if segment == self._last_key else self._segment_pld(segment)
            pld = seg_pld if pld is None else pld.compose(seg_pld)
        self._prefix, self._prefix_pld = prefix, pld
        return pld

    def _history_pld(self, segments: Tuple[Segment, ...]):
        prefix_pld = self._composed_prefix(segments[:-1])
        last = segments[-1]
        if last != self._last_key:
            self._last_key, self._last_pld = last, self._segment_pld(last)
        return self._last_pld if prefix_pld is None else prefix_pld.compose(self._last_pld)

    def get_epsilon(self, delta: float, **kwargs) -> float:
        """Epsilon spent so far at ``delta`` (0.0 before the first step).

        Raises:
            ValueError: delta outside (0, 1).
            InfiniteEpsilonError: sigma = 0 in the history, or a sigma below
                0.1 (see ``_MIN_SIGMA``), or no finite epsilon at ``delta``.
        """
        delta = check_delta(delta)
        segments = self._checked_history()
        if not segments:
            return 0.0
        for sigma, q, steps in segments:
            if sigma < _MIN_SIGMA:
                raise InfiniteEpsilonError(
                    f"noise_multiplier={sigma} (sample_rate={q}, {steps} steps) is below "
                    f"{_MIN_SIGMA}: the PLD accountant cannot discretise it and epsilon "
                    f"is effectively unbounded; use a larger noise multiplier"
                )
        key = (segments, delta)
        if key not in self._epsilon_cache:
            eps = float(self._history_pld(segments).get_epsilon_for_delta(delta))
            if not math.isfinite(eps):
                raise InfiniteEpsilonError(
                    f"no finite epsilon at delta={delta} for this history "
                    f"({len(self)} steps): the noise is too small"
                )
            self._epsilon_cache = {key: eps}  # only the latest answer is worth keeping
        return self._epsilon_cache[key]

    def state_dict(self, destination=None):
        destination = super().state_dict(destination)
        destination["value_discretization_interval"] = self.value_discretization_interval
        return destination

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        interval = state_dict.get("value_discretization_interval", DEFAULT_DISCRETIZATION)
        if interval != self.value_discretization_interval:
            self.__init__(interval)
            super().load_state_dict(state_dict)
