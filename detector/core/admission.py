"""Admission: which new producers get state of their own once the feature store is full.

Producer ids are chosen by producers, so an attacker can mint millions of them. Under plain
LRU each new id would evict the least recently seen producer and wipe a learned baseline.
Instead, once the store is full:

- an *established* producer (at least ``established_events`` events, i.e. past warm-up)
  leaves only by the idle TTL;
- at most ``per_minute`` new producers are admitted per minute of event time, each taking
  the place of the least recently seen producer still in warm-up;
- every other new producer is *refused*: its events are scored, learned and counted in one
  shared overflow state (:data:`OVERFLOW`), so nothing is lost and memory stays flat.

Everything here is driven by event time and is part of the checkpoint (``to_meta``), so a
replay from a checkpoint admits and refuses exactly the same producers. See docs/security.md,
"Resource exhaustion".
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from detector.core.fingerprints import fingerprint

# Key of the shared overflow state in checkpoints and of the detector's own alerts. The decoder
# refuses empty producer ids (``empty_producer``), so no real producer can collide with it.
OVERFLOW = ""
MINUTE_MS = 60_000


class DistinctSketch:
    """Approximate count of distinct strings in 256 bytes (HyperLogLog, ~6.5% standard error).

    Deterministic (BLAKE2b fingerprints, not ``hash()``), so a replay gives the same estimate.

    Examples:
        >>> s = DistinctSketch()
        >>> for i in range(10_000):
        ...     s.add(f"id-{i % 5000}")
        >>> again = DistinctSketch.from_hex(s.to_hex())
        >>> 4500 < s.estimate() < 5500, again.estimate() == s.estimate()
        (True, True)
    """

    __slots__ = ("registers",)
    M = 256
    _ALPHA = 0.7213 / (1 + 1.079 / M)

    def __init__(self) -> None:
        self.registers = bytearray(self.M)

    def add(self, key: str) -> None:
        h = fingerprint(key)
        rest = h >> 8
        rank = 57 - rest.bit_length()  # leading zeros of the 56 remaining bits, plus one
        if rank > self.registers[h & 0xFF]:
            self.registers[h & 0xFF] = rank

    def estimate(self) -> int:
        m = self.M
        zeros = self.registers.count(0)
        if zeros == m:
            return 0
        raw = self._ALPHA * m * m / sum(2.0**-r for r in self.registers)
        if raw <= 2.5 * m and zeros:
            return round(m * math.log(m / zeros))  # small range: linear counting
        return round(raw)

    def clear(self) -> None:
        self.registers = bytearray(self.M)

    def to_hex(self) -> str:
        return self.registers.hex()

    @classmethod
    def from_hex(cls, text: str) -> DistinctSketch:
        s = cls()
        if len(text) == 2 * cls.M:
            s.registers = bytearray.fromhex(text)
        return s


class Admission:
    """The admission policy and its counters (see the module docstring).

    Attributes:
        established_events: events after which a producer is never evicted to make room.
        per_minute: new producers admitted per minute of event time while the store is full.
        young: producers still in warm-up, least recently seen first (eviction candidates;
            pruned lazily, so it may hold some that have since graduated).
        refused: events scored in the overflow state, in total.
        admitted: producers admitted while the store was full (each evicted one in warm-up).
        report_refused, report_admitted, report_sketch: the same since the last
            ``producer_explosion`` report (events, admissions, distinct refused ids).
        next_report_ms: event time before which no new report is made.
    """

    __slots__ = (
        "admitted",
        "admitted_in_minute",
        "established_events",
        "minute",
        "next_report_ms",
        "per_minute",
        "refused",
        "report_admitted",
        "report_refused",
        "report_sketch",
        "young",
    )

    def __init__(self, established_events: int, per_minute: int) -> None:
        self.established_events = established_events
        self.per_minute = per_minute
        self.young: OrderedDict[str, None] = OrderedDict()
        self.minute = -1
        self.admitted_in_minute = 0
        self.refused = 0
        self.admitted = 0
        self.report_refused = 0
        self.report_admitted = 0
        self.report_sketch = DistinctSketch()
        self.next_report_ms = 0

    def created(self, producer: str) -> None:
        self.young[producer] = None

    def seen(self, producer: str, events: int) -> None:
        """A tracked producer's event (``events`` so far): keep the warm-up list in
        least-recently-seen order."""
        if producer in self.young:
            if events >= self.established_events:
                del self.young[producer]
            else:
                self.young.move_to_end(producer)

    def forget(self, producer: str) -> None:
        self.young.pop(producer, None)

    def victim(self, events_of: Callable[[str], int | None], now_ms: int) -> str | None:
        """The producer to evict for a newcomer, or None to refuse the newcomer
        (``events_of``: a tracked producer's events so far, None if not tracked).

        Amortised O(1): graduated producers are dropped from the front of ``young`` once.
        """
        minute = now_ms // MINUTE_MS
        if minute != self.minute:
            self.minute, self.admitted_in_minute = minute, 0
        if self.admitted_in_minute >= self.per_minute:
            return None
        while self.young:
            name = next(iter(self.young))
            events = events_of(name)
            if events is not None and events < self.established_events:
                self.admitted_in_minute += 1
                self.admitted += 1
                self.report_admitted += 1
                return name
            del self.young[name]
        return None

    def refuse(self, producer: str) -> None:
        self.refused += 1
        self.report_refused += 1
        self.report_sketch.add(producer)

    def take_report(self, now_ms: int, interval_ms: int) -> tuple[int, int, int] | None:
        """(refused events, distinct refused ids (estimate), admitted) since the last report,
        at most once per ``interval_ms`` of event time; the counts start over."""
        if now_ms < self.next_report_ms or self.report_refused == 0:
            return None
        report = (self.report_refused, self.report_sketch.estimate(), self.report_admitted)
        self.report_refused = self.report_admitted = 0
        self.report_sketch.clear()
        self.next_report_ms = now_ms + interval_ms
        return report

    def to_meta(self) -> dict[str, Any]:
        return {
            "admission_minute": self.minute,
            "admitted_in_minute": self.admitted_in_minute,
            "refused": self.refused,
            "admitted": self.admitted,
            "report_refused": self.report_refused,
            "report_admitted": self.report_admitted,
            "report_sketch": self.report_sketch.to_hex(),
            "next_report_ms": self.next_report_ms,
        }

    def restore(self, meta: Mapping[str, Any], young: Iterable[str]) -> None:
        """Counters from a checkpoint's meta; ``young``: the restored producers still in
        warm-up, least recently seen first."""
        self.minute = int(meta.get("admission_minute", -1))
        self.admitted_in_minute = int(meta.get("admitted_in_minute", 0))
        self.refused = int(meta.get("refused", 0))
        self.admitted = int(meta.get("admitted", 0))
        self.report_refused = int(meta.get("report_refused", 0))
        self.report_admitted = int(meta.get("report_admitted", 0))
        self.report_sketch = DistinctSketch.from_hex(str(meta.get("report_sketch", "")))
        self.next_report_ms = int(meta.get("next_report_ms", 0))
        self.young = OrderedDict.fromkeys(young)
