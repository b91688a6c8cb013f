"""Exponentially weighted moments: the state of the clock's smoothed inter-arrival and of the
rate, size and value features."""

from __future__ import annotations

import math

from detector.core.codec import Reader, Writer
from detector.core.features.surprise import unlog


class Moments:
    """Exponentially weighted mean and variance, in signed-log space.

    River's ``stats.EWMean`` / ``stats.EWVar`` update formulas (the first value sets the mean;
    ``var = E[x²] - E[x]²``), bit for bit (``tests/test_features.py`` holds River as the oracle),
    kept as three floats.
    """

    __slots__ = ("count", "fading", "mean", "sq")

    def __init__(self, fading_factor: float) -> None:
        self.count = 0
        self.fading = fading_factor
        self.mean = 0.0
        self.sq = 0.0  # weighted mean of x²

    def update(self, x: float) -> None:
        if self.count:
            a = self.fading
            self.mean = a * x + (1.0 - a) * self.mean
            self.sq = a * (x * x) + (1.0 - a) * self.sq
        else:
            self.mean, self.sq = x, x * x
        self.count += 1

    @property
    def var(self) -> float:
        return self.sq - self.mean * self.mean

    def z(self, x: float, min_sd: float) -> float:
        sd = max(math.sqrt(max(self.sq - self.mean * self.mean, 0.0)), min_sd)
        return (x - self.mean) / sd

    def expected(self, min_sd: float) -> str:
        """Usual range (mean ± 3 sd) back in the original units."""
        m = self.mean
        sd = max(math.sqrt(max(self.var, 0.0)), min_sd)
        return f"{unlog(m - 3 * sd):.4g}..{unlog(m + 3 * sd):.4g}"

    def dump(self, w: Writer) -> None:
        w.i64(self.count)
        w.f64(self.mean)
        w.f64(self.sq)

    @classmethod
    def load(cls, r: Reader, fading_factor: float) -> Moments:
        m = cls(fading_factor)
        m.count, m.mean, m.sq = r.i64(), r.f64(), r.f64()
        return m
