"""Counts of categorical values (event types, payload shapes, categorical fields) and the
novelty bursts they take part in."""

from __future__ import annotations

import math
import sys

from detector.core.codec import Reader, Writer
from detector.core.features.surprise import MAX_SURPRISE


class Categories:
    """Counts of a categorical field's values, until it shows id-like cardinality (then it
    is saturated: its counts are dropped and it no longer changes; see ``ID_FIELD``)."""

    __slots__ = ("counts", "n", "saturated")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.n = 0
        self.saturated = False

    def surprise(self, value: str, prior: float, burst: float = 0.0, min_count: int = 1) -> float:
        """``-log10`` of the chance of a value this rare (Good-Turing for unseen ones; an
        unseen one counts ``1 + burst`` times, ``burst`` being the recent novelties). Not
        judged before ``min_count`` values: a young vocabulary is still growing."""
        if self.saturated or self.n < max(min_count, 1):
            return 0.0
        count = self.counts.get(value, 0)
        if count == 0:
            singletons = list(self.counts.values()).count(1)  # counted in C
            p = (singletons + prior) / (self.n + 1)
            return min(-(1.0 + burst) * math.log10(min(p, 1.0)), MAX_SURPRISE)
        elif count * 20 >= self.n:
            return 0.0  # common value: skip the tail sum
        else:
            p = (sum(c for c in self.counts.values() if c <= count) + 1) / (self.n + 1)
        return min(-math.log10(min(p, 1.0)), MAX_SURPRISE)

    def is_new(self, value: str, min_count: int) -> bool:
        """A value never seen in a field judged (``min_count`` values, not saturated)."""
        return self.n >= max(min_count, 1) and not self.saturated and value not in self.counts

    def update(self, value: str, cap: int) -> None:
        if self.saturated:
            return
        self.n += 1
        counts = self.counts
        count = counts.get(value, 0)
        if count > 1:
            counts[value] = count + 1
        elif count == 1:
            # Seen again: a categorical value, shared among producers from now on. An id is
            # seen once and not interned: the interpreter's table of interned strings would
            # grow with every id held and never shrink.
            del counts[value]
            counts[sys.intern(value)] = 2
        elif len(counts) >= cap:
            self.saturated = True
            counts.clear()
        else:
            counts[value] = 1

    def expected(self) -> str:
        top = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        return ",".join(v for v, _ in top)

    def dump(self, w: Writer) -> None:
        w.i64(self.n)
        w.count(int(self.saturated))
        w.count(len(self.counts))
        for value, count in self.counts.items():
            w.text(value)
            w.i64(count)

    @classmethod
    def load(cls, r: Reader) -> Categories:
        c = cls()
        c.n, c.saturated = r.i64(), bool(r.count())
        for _ in range(r.count()):
            value, count = r.text(), r.i64()
            c.counts[sys.intern(value) if count > 1 else value] = count
        return c


# The one saturated table every producer's id-like categorical fields share: it holds nothing
# and never changes, and a producer has several (event and order ids, per event type).
ID_FIELD = Categories()
ID_FIELD.saturated = True


class Novelties:
    """Recent never-seen values per key (a type, a shape, a field), decayed over a burst.

    Each novelty in a burst multiplies the evidence of the next (independent rare events
    multiply; a broken producer repeats itself). One entry per key: at most one per tracked
    field.
    """

    __slots__ = ("recent",)

    def __init__(self) -> None:
        self.recent: dict[str, tuple[float, int]] = {}

    def burst(self, key: str, t_ms: int, burst_ms: float) -> float:
        """Recent novelties of ``key``, decayed to ``t_ms``."""
        seen = self.recent.get(key)
        if seen is None:
            return 0.0
        count, last_ms = seen
        return count * math.exp(-max(t_ms - last_ms, 0) / burst_ms)

    def note(self, key: str, t_ms: int, burst_ms: float) -> None:
        self.recent[sys.intern(key)] = (self.burst(key, t_ms, burst_ms) + 1.0, t_ms)

    def dump(self, w: Writer) -> None:
        w.count(len(self.recent))
        for key, (count, last_ms) in self.recent.items():
            w.text(key)
            w.f64(count)
            w.i64(last_ms)

    @classmethod
    def load(cls, r: Reader) -> Novelties:
        nov = cls()
        for _ in range(r.count()):
            key = r.text()
            nov.recent[sys.intern(key)] = (r.f64(), r.i64())
        return nov
