"""The clock of each tracked producer: events seen, last event time and the smoothed
inter-arrival, which the rate feature, the silence check and the thresholds read."""

from __future__ import annotations

import math
from array import array
from typing import Any

from detector.core.codec import Reader, Writer
from detector.core.features import tables
from detector.core.features.columns import capacity, column, grown, restored
from detector.core.features.moments import MomentsTable

_COLUMNS = ("n", "last_ms", "seq", "silenced", "gap")  # every slot's, in the checkpoint's base


class Clock:
    """Per-slot columns: ``n`` (events seen), ``last_ms`` (latest event time, -1: none yet),
    ``gap`` (moments of the log inter-arrival, a row per slot; its mean is the smoothed one),
    ``silenced`` (a silence alert was raised since its last event) and ``seq`` (last use: the
    LRU order a restored store keeps)."""

    def __init__(self, gap_fading: float) -> None:
        self.gap_fading = gap_fading
        self.gap = MomentsTable(gap_fading)
        self.n: array[int] = column("q", 0)
        self.last_ms: array[int] = column("q", 0)
        self.seq: array[int] = column("q", 0)
        self.silenced: array[int] = column("b", 0)
        self._bind()

    def _bind(self) -> None:
        # clock.pxd types these as memoryviews of the columns (the .py: the same arrays).
        self._n, self._last_ms, self._silenced = self.n, self.last_ms, self.silenced

    def __reduce__(self) -> tuple[Any, ...]:
        names = ("gap_fading", "gap", "n", "last_ms", "seq", "silenced")
        return restored, (Clock, {name: getattr(self, name) for name in names})

    def reset(self, slot: int) -> None:
        if slot >= len(self.n):
            size = capacity(len(self.n), slot + 1)
            self.n, self.last_ms = grown(self.n, size), grown(self.last_ms, size)
            self.seq, self.silenced = grown(self.seq, size), grown(self.silenced, size)
            self._bind()
        self.gap.reserve(slot + 1)
        self.gap.clear(slot)
        self._n[slot] = 0
        self._last_ms[slot] = -1
        self._silenced[slot] = 0
        self.seq[slot] = 0

    def next_gap(self, slot: int, t_ms: int) -> float:
        """The smoothed log inter-arrival an event at ``t_ms`` would give, without updating."""
        last = self._last_ms[slot]
        gap = math.log1p(max(t_ms - last, 0))
        a = self.gap_fading
        return a * gap + (1 - a) * self.gap._mean[slot]

    def advance(self, slot: int, t_ms: int) -> None:
        last = self._last_ms[slot]
        if last >= 0:
            self.gap.update(slot, math.log1p(max(t_ms - last, 0)))
        self._last_ms[slot] = max(last, t_ms)
        self._n[slot] += 1
        self._silenced[slot] = 0

    def skip(self, gap_ms: int) -> None:
        """A pause of the whole stream: ``gap_ms`` did not happen for any producer (their next
        inter-arrival and their silence leave it out)."""
        last = self._last_ms
        for slot in range(len(last)):
            if last[slot] >= 0:
                last[slot] += gap_ms

    def dump(self, slot: int, w: Writer) -> None:
        w.i64(self.n[slot])
        w.i64(self.last_ms[slot])
        self.gap.dump(slot, w)
        w.count(self.silenced[slot])
        w.i64(self.seq[slot])

    def dump_table(self, w: Writer) -> None:
        tables.dump(w, self, _COLUMNS)

    def load_table(self, r: Reader) -> None:
        tables.load(r, self, _COLUMNS)

    def load(self, slot: int, r: Reader) -> None:
        self.reset(slot)
        self.n[slot], self.last_ms[slot] = r.i64(), r.i64()
        self.gap.load(slot, r)
        self.silenced[slot], self.seq[slot] = int(bool(r.count())), r.i64()
