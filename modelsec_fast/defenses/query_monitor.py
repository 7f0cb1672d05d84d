"""PRADA (Juuti et al. 2019): detecting model extraction from a client's query stream.

Benign queries of natural inputs lie at distances from one another whose minima
look normally distributed; an extraction attack that synthesises inputs (Jacobian
augmentation, small steps around seeds) does not. For each query x with the
victim's label c, PRADA takes the minimum L2 distance from x to the growing set
G_c of that class's earlier queries, adds it to the set D of minimum distances,
adds x to G_c when that distance exceeds the class threshold T_c (then raises
T_c to ``max(T_c, mean - std)`` of the distances that grew G_c), and flags the
client once D holds at least ``min_distances`` values and the Shapiro-Wilk
statistic W of D (less the values more than three standard deviations below its
mean) falls below ``delta``. The detection delay is the number of
queries seen when the flag is first raised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validation import check_in_range, check_int

__all__ = ["PradaMonitor", "PradaResult"]


@dataclass(frozen=True)
class PradaResult:
    """``detected``: whether the client was flagged; ``detection_delay``: queries seen
    when it first was (None if never); ``queries``: queries observed; ``last_w``: the
    last Shapiro-Wilk statistic (None before ``min_distances`` distances);
    ``delta``: the threshold."""

    detected: bool
    detection_delay: int | None
    queries: int
    last_w: float | None
    delta: float
    min_distances: int

    def to_json(self) -> dict:
        return {"detected": self.detected, "detection_delay": self.detection_delay,
                "queries": self.queries, "last_w": self.last_w, "delta": self.delta,
                "min_distances": self.min_distances}


class PradaMonitor:
    """One client's PRADA state; pass it as a :class:`~modelsec_fast.stealing.Victim`'s
    ``monitor`` (or call :meth:`observe` yourself).

    Args:
        delta: the Shapiro-Wilk threshold in (0, 1). The default suits the digits
            data (benign streams stay above 0.97 there); calibrate it on benign
            streams of your own data (:meth:`calibrate`) so that they are not flagged.
        min_distances: distances needed before the test runs (Juuti et al.: 100).
    """

    def __init__(self, delta: float = 0.95, min_distances: int = 100):
        self.delta = check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
        self.min_distances = check_int("min_distances", min_distances, 3)
        self.reset()

    def reset(self) -> None:
        """Forgets every query (a new client)."""
        self._growing: dict[int, torch.Tensor] = {}
        self._grown_by: dict[int, list[float]] = {}
        self._threshold: dict[int, float] = {}
        self._distances: list[float] = []
        self._distance_query: list[int] = []  # the query count when each distance came
        self.queries = 0
        self.detection_delay: int | None = None
        self.last_w: float | None = None

    @property
    def detected(self) -> bool:
        return self.detection_delay is not None

    def result(self) -> PradaResult:
        return PradaResult(self.detected, self.detection_delay, self.queries, self.last_w,
                           self.delta, self.min_distances)

    @torch.no_grad()
    def observe(self, x: torch.Tensor, outputs: torch.Tensor) -> None:
        """Adds a batch of queries ``x`` (B, ...) with the victim's answers ``outputs``
        ((B,) labels or (B, K) rows, whose argmax is the label), in order."""
        known = len(self._distances)
        flat = x.detach().reshape(len(x), -1).double().cpu()
        labels = (outputs if outputs.dim() == 1 else outputs.argmax(1)).long().cpu()
        # Distances batched per class: to the class's growing set before this batch,
        # and between the batch's own queries of that class.
        groups = {}
        for c in torch.unique(labels).tolist():
            rows = (labels == c).nonzero()[:, 0]
            xs = flat[rows]
            before = self._growing.get(c)
            to_set = (torch.cdist(xs, before).amin(1) if before is not None
                      else torch.full((len(rows),), float("inf"), dtype=torch.float64))
            groups[c] = (xs, to_set.tolist(), torch.cdist(xs, xs), [])
        position = torch.empty(len(labels), dtype=torch.long)
        for c in groups:
            rows = (labels == c).nonzero()[:, 0]
            position[rows] = torch.arange(len(rows))
        for i, (c, j) in enumerate(zip(labels.tolist(), position.tolist())):
            xs, to_set, within, added = groups[c]  # scalar book-keeping, in query order
            d = to_set[j]
            if added:
                d = min(d, float(within[j, added].min()))
            self.queries += 1
            if d == float("inf"):  # the class's first query starts its set
                added.append(j)
                self._threshold[c], self._grown_by[c] = 0.0, []
                continue
            self._distances.append(d)
            self._distance_query.append(self.queries)
            if d > self._threshold[c]:
                added.append(j)
                grown = self._grown_by[c]
                grown.append(d)
                spread = float(torch.tensor(grown).std()) if len(grown) > 1 else 0.0
                self._threshold[c] = max(self._threshold[c], sum(grown) / len(grown) - spread)
        for c, (xs, _, _, added) in groups.items():
            if added:
                before = self._growing.get(c)
                self._growing[c] = xs[added] if before is None else torch.cat([before, xs[added]])
        self._test(known)

    def _test(self, known: int) -> None:
        """Shapiro-Wilk on D after each distance added since D held ``known`` (D's
        prefixes, in query order); the first W below delta sets the detection delay."""
        from scipy.stats import shapiro

        n = len(self._distances)
        for size in range(max(self.min_distances, known + 1), n + 1):
            if self.detected:
                return
            self.last_w = _w(self._distances[:size], shapiro)
            if self.last_w < self.delta:
                self.detection_delay = self._distance_query[size - 1]

    def calibrate(self, benign: torch.Tensor, labels: torch.Tensor, *,
                  false_alarm_margin: float = 0.02) -> float:
        """Sets ``delta`` just below the smallest W a benign stream ``benign`` (N, ...)
        with labels ``labels`` (N,) reaches (minus ``false_alarm_margin``); returns it."""
        from scipy.stats import shapiro

        if len(benign) != len(labels):
            raise ValueError(f"benign ({len(benign)}) and labels ({len(labels)}) differ in length")
        probe = PradaMonitor(delta=0.5, min_distances=self.min_distances)
        probe.observe(benign, labels)
        d = probe._distances
        if len(d) < self.min_distances:
            raise ValueError(f"calibration needs at least {self.min_distances} distances, the "
                             f"benign stream gave {len(d)}")
        lowest = min(_w(d[:n], shapiro) for n in range(self.min_distances, len(d) + 1))
        self.delta = check_in_range("delta", lowest - false_alarm_margin, 0.0, 1.0,
                                    low_open=True, high_open=True)
        return self.delta


def _w(distances: list[float], shapiro) -> float:
    """Shapiro-Wilk W of the distances, without those more than three standard
    deviations below the mean (Juuti et al.'s outlier rule)."""
    d = torch.tensor(distances, dtype=torch.float64)
    kept = d[d > d.mean() - 3 * d.std()]
    return float(shapiro(kept.numpy()).statistic)
