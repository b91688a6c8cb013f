"""The clock of each tracked producer: events seen, last event time and the smoothed
inter-arrival, which the rate feature, the silence check and the thresholds read."""

from __future__ import annotations

import math

from detector.core.codec import Reader, Writer
from detector.core.features.moments import Moments


class Clock:
    """Per-slot columns: ``n`` (events seen), ``last_ms`` (latest event time, -1: none yet),
    ``gap`` (moments of the log inter-arrival; its mean is the smoothed one), ``silenced``
    (a silence alert was raised since its last event) and ``seq`` (last use: the LRU order a
    restored store keeps)."""

    __slots__ = ("gap", "gap_fading", "last_ms", "n", "seq", "silenced")

    def __init__(self, gap_fading: float) -> None:
        self.gap_fading = gap_fading
        self.n: list[int] = []
        self.last_ms: list[int] = []
        self.gap: list[Moments] = []
        self.silenced: list[bool] = []
        self.seq: list[int] = []

    def reset(self, slot: int) -> None:
        if slot == len(self.n):
            self.n.append(0)
            self.last_ms.append(-1)
            self.gap.append(Moments(self.gap_fading))
            self.silenced.append(False)
            self.seq.append(0)
        else:
            self.n[slot], self.last_ms[slot], self.gap[slot] = 0, -1, Moments(self.gap_fading)
            self.silenced[slot], self.seq[slot] = False, 0

    def next_gap(self, slot: int, t_ms: int) -> float:
        """The smoothed log inter-arrival an event at ``t_ms`` would give, without updating."""
        last: int = self.last_ms[slot]  # locals that clock.pxd types: a C int, a cdef Moments
        moments: Moments = self.gap[slot]
        gap = math.log1p(max(t_ms - last, 0))
        a = self.gap_fading
        return a * gap + (1 - a) * moments.mean

    def advance(self, slot: int, t_ms: int) -> None:
        last: int = self.last_ms[slot]
        if last >= 0:
            moments: Moments = self.gap[slot]
            moments.update(math.log1p(max(t_ms - last, 0)))
        self.last_ms[slot] = max(last, t_ms)
        self.n[slot] += 1
        self.silenced[slot] = False

    def dump(self, slot: int, w: Writer) -> None:
        w.i64(self.n[slot])
        w.i64(self.last_ms[slot])
        self.gap[slot].dump(w)
        w.count(int(self.silenced[slot]))
        w.i64(self.seq[slot])

    def load(self, slot: int, r: Reader) -> None:
        self.reset(slot)
        self.n[slot], self.last_ms[slot] = r.i64(), r.i64()
        self.gap[slot] = Moments.load(r, self.gap_fading)
        self.silenced[slot], self.seq[slot] = bool(r.count()), r.i64()
