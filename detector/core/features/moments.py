"""Exponentially weighted moments: the state of the clock's smoothed inter-arrival and of the
rate, size and value features, as columns of rows (a row per producer slot, or per producer
and numeric field)."""

from __future__ import annotations

import math
from array import array
from typing import Any

from detector.core.codec import Reader, Writer
from detector.core.features.columns import capacity, column, grown, restored
from detector.core.features.surprise import unlog

MAX_COUNT = 2**31 - 1  # a row's 4-byte count of values stops here (the moments go on)


class MomentsTable:
    """Exponentially weighted mean and variance per row, in signed-log space.

    River's ``stats.EWMean`` / ``stats.EWVar`` update formulas (the first value sets the mean;
    ``var = E[x²] - E[x]²``), bit for bit (``tests/test_features.py`` holds River as the oracle),
    kept as three columns: ``count`` (int32: it stops at :data:`MAX_COUNT`), ``mean`` and
    ``sq`` (float64, the weighted mean of x²): 20 bytes a row.
    """

    def __init__(self, fading_factor: float) -> None:
        self.fading = fading_factor
        self.count: array[int] = column("i", 0)
        self.mean: array[float] = column("d", 0)
        self.sq: array[float] = column("d", 0)
        self._bind()

    def _bind(self) -> None:
        # moments.pxd types these as memoryviews of the columns (the .py: the same arrays).
        self._count, self._mean, self._sq = self.count, self.mean, self.sq

    def __reduce__(self) -> tuple[Any, ...]:
        state = {"fading": self.fading, "count": self.count, "mean": self.mean, "sq": self.sq}
        return restored, (MomentsTable, state)

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` rows."""
        if rows > len(self.count):
            n = capacity(len(self.count), rows)
            self.count, self.mean, self.sq = (
                grown(self.count, n),
                grown(self.mean, n),
                grown(self.sq, n),
            )
            self._bind()

    def clear(self, row: int) -> None:
        self._count[row] = 0
        self._mean[row] = 0.0
        self._sq[row] = 0.0

    def update(self, row: int, x: float) -> None:
        if self._count[row]:
            a = self.fading
            self._mean[row] = a * x + (1.0 - a) * self._mean[row]
            self._sq[row] = a * (x * x) + (1.0 - a) * self._sq[row]
        else:
            self._mean[row] = x
            self._sq[row] = x * x
        if self._count[row] < MAX_COUNT:
            self._count[row] += 1

    def var(self, row: int) -> float:
        m: float = self._mean[row]
        return self._sq[row] - m * m

    def z(self, row: int, x: float, min_sd: float) -> float:
        m: float = self._mean[row]
        sd = max(math.sqrt(max(self._sq[row] - m * m, 0.0)), min_sd)
        return (x - m) / sd

    def expected(self, row: int, min_sd: float) -> str:
        """Usual range (mean ± 3 sd) back in the original units."""
        m: float = self.mean[row]
        sd = max(math.sqrt(max(self.var(row), 0.0)), min_sd)
        return f"{unlog(m - 3 * sd):.4g}..{unlog(m + 3 * sd):.4g}"

    def dump(self, row: int, w: Writer) -> None:
        w.i64(self._count[row])
        w.f64(self._mean[row])
        w.f64(self._sq[row])

    def load(self, row: int, r: Reader) -> None:
        self.count[row], self.mean[row], self.sq[row] = r.i64(), r.f64(), r.f64()


class Moments:
    """One row of a :class:`MomentsTable`, read and updated live (a view for inspection and
    tests; without a table, a table of its own with one row)."""

    __slots__ = ("row", "table")

    def __init__(self, fading_factor: float, table: MomentsTable | None = None, row: int = 0):
        if table is None:
            table = MomentsTable(fading_factor)
            table.reserve(1)
        self.table, self.row = table, row

    @property
    def count(self) -> int:
        count: int = self.table.count[self.row]
        return count

    @property
    def mean(self) -> float:
        mean: float = self.table.mean[self.row]
        return mean

    @property
    def sq(self) -> float:
        sq: float = self.table.sq[self.row]
        return sq

    @property
    def var(self) -> float:
        return self.table.var(self.row)

    def update(self, x: float) -> None:
        self.table.update(self.row, x)

    def z(self, x: float, min_sd: float) -> float:
        return self.table.z(self.row, x, min_sd)

    def expected(self, min_sd: float) -> str:
        return self.table.expected(self.row, min_sd)
