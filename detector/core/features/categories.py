"""Counts of categorical values (event types, payload shapes, categorical fields) and the
novelty bursts they take part in."""

from __future__ import annotations

import math
import sys
from array import array

from detector.core.codec import Reader, Writer, fingerprint
from detector.core.features.surprise import MAX_SURPRISE


class Categories:
    """Counts of a categorical field's values, until it shows id-like cardinality (then it
    is saturated: its counts are dropped and it no longer changes; see ``ID_FIELD``).

    Values seen twice or more are kept by name (interned: shared among producers); values
    seen once only as 64-bit fingerprints (8 bytes each, in ``once``): most of a field's
    values before it saturates are ids seen once, and as strings in a dict they cost ~100 bytes
    each, most of a producer's memory. The reasons list the usual values (seen twice or more).
    """

    __slots__ = ("counts", "n", "once", "saturated")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}  # values seen at least twice
        self.once = array("Q")  # fingerprints of the values seen once
        self.n = 0
        self.saturated = False

    def count(self, value: str) -> int:
        """How often ``value`` was seen."""
        count = self.counts.get(value)
        if count is not None:
            return count
        return 1 if self.once and find(self.once, fingerprint(value)) >= 0 else 0

    def surprise(self, value: str, prior: float, burst: float = 0.0, min_count: int = 1) -> float:
        """``-log10`` of the chance of a value this rare (Good-Turing for unseen ones; an
        unseen one counts ``1 + burst`` times, ``burst`` being the recent novelties). Not
        judged before ``min_count`` values: a young vocabulary is still growing."""
        if self.saturated or self.n < max(min_count, 1):
            return 0.0
        count = self.count(value)
        if count == 0:
            p = (len(self.once) + prior) / (self.n + 1)
            return min(-(1.0 + burst) * math.log10(min(p, 1.0)), MAX_SURPRISE)
        elif count * 20 >= self.n:
            return 0.0  # common value: skip the tail sum
        else:
            below = 0  # a loop, not sum() over a generator: compiled, it runs on C integers
            for c in self.counts.values():
                if c <= count:
                    below += c
            p = (below + len(self.once) + 1) / (self.n + 1)
        return min(-math.log10(min(p, 1.0)), MAX_SURPRISE)

    def is_new(self, value: str, min_count: int) -> bool:
        """A value never seen in a field judged (``min_count`` values, not saturated)."""
        return self.n >= max(min_count, 1) and not self.saturated and self.count(value) == 0

    def update(self, value: str, cap: int) -> None:
        if self.saturated:
            return
        self.n += 1
        counts = self.counts
        count = counts.get(value)
        if count is not None:
            counts[value] = count + 1
            return
        fp = fingerprint(value)
        i = find(self.once, fp)
        if i >= 0:
            # Seen again: a categorical value, shared among producers from now on. An id is
            # seen once and never interned: the interpreter's table of interned strings would
            # grow with every id held and never shrink.
            del self.once[i]
            counts[sys.intern(value)] = 2
        elif len(counts) + len(self.once) >= cap:
            self.saturated = True
            counts.clear()
            self.once = array("Q")
        else:
            self.once.append(fp)

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
        w.u64s(self.once)

    @classmethod
    def load(cls, r: Reader) -> Categories:
        c = cls()
        c.n, c.saturated = r.i64(), bool(r.count())
        for _ in range(r.count()):
            value, count = r.text(), r.i64()
            c.counts[sys.intern(value)] = count
        c.once = array("Q", r.u64s().tolist())
        return c


def find(once: array[int], fp: int) -> int:
    """The index of the fingerprint ``fp`` in ``once``, or -1.

    ``fp in once`` compares each element as a Python int; compiled, this loop reads the
    array's buffer as C integers (``once`` holds up to ``max_categories`` of them).
    """
    view = once
    for i in range(len(view)):
        if view[i] == fp:
            return i
    return -1


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
