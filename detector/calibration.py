"""Calibration: raw model scores to one [0, 1] scale, per producer.

A calibrated score is ``1 - tail``, where ``tail`` estimates how often this producer's past
events scored at least this high: the empirical tail from a histogram of its own raw scores,
extended beyond the data by an exponential (peaks-over-threshold) fit of its top scores. A
threshold of 0.999 then means "rarer than one in a thousand of this producer's events",
whatever the model and whatever the producer.

Examples:
    >>> cal = Calibrator(max_raw=32.0, bins=128)
    >>> counts = cal.new()
    >>> for i in range(1000):
    ...     cal.learn(counts, (i % 10) / 10)
    >>> round(cal.score(counts, 0.0), 3), cal.score(counts, 0.95) < 0.99 < cal.score(counts, 6.0)
    (0.0, True)
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt


class TailCounts:
    """One producer's histogram of past raw scores."""

    __slots__ = ("counts", "n")

    def __init__(self, bins: int) -> None:
        self.counts: npt.NDArray[np.int64] = np.zeros(bins, dtype=np.int64)
        self.n = 0


class Calibrator:
    """Maps raw scores in ``[0, max_raw]`` to calibrated scores in ``[0, 1]``.

    Args:
        max_raw: top of the histogram (higher raw scores land in the last bin).
        bins: histogram resolution.
        tail_points: past scores needed above a value to trust the empirical tail there.
        min_excess: floor on the fitted tail's scale, so a narrow past never over-extrapolates.
    """

    def __init__(
        self, max_raw: float, bins: int = 64, tail_points: int = 10, min_excess: float = 0.1
    ) -> None:
        self.max_raw = max_raw
        self.bins = bins
        self.width = max_raw / bins
        self.tail_points = tail_points
        self.min_excess = min_excess * max_raw / 32.0
        self._mid = (np.arange(bins) + 0.5) * self.width

    def new(self) -> TailCounts:
        return TailCounts(self.bins)

    def _bin(self, raw: float) -> int:
        return min(max(int(raw / self.width), 0), self.bins - 1)

    def learn(self, tc: TailCounts, raw: float) -> None:
        tc.counts[self._bin(raw)] += 1
        tc.n += 1

    def tail(self, tc: TailCounts, raw: float) -> float:
        """Estimated probability of a past score at least ``raw`` (in ``(0, 1]``)."""
        b = self._bin(raw)
        above = np.cumsum(tc.counts[::-1])[::-1]  # above[i]: past scores in bin i or higher
        at_or_above = int(above[b])
        if at_or_above >= self.tail_points or tc.n < self.tail_points:
            return (at_or_above + 1) / (tc.n + 1)
        # Peaks over threshold: u is the lowest bin edge with tail_points scores above it.
        j = int(np.flatnonzero(above >= self.tail_points)[-1])
        u = j * self.width
        # The last bin also holds everything beyond max_raw, whose true values are unknown:
        # one extreme past score there would inflate the fitted scale for good, so the scale
        # comes from the bins below it (when there are any).
        end = self.bins - 1 if j < self.bins - 1 else self.bins
        top = tc.counts[j:end]
        total = float(top.sum())
        excess = float(np.dot(top, self._mid[j:end] - u)) / total if total else 0.0
        scale = max(excess, self.min_excess)
        return float(above[j]) / (tc.n + 1) * math.exp(-(raw - u) / scale)

    def score(self, tc: TailCounts, raw: float) -> float:
        return 1.0 - self.tail(tc, raw)
