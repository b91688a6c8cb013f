"""Replayed id: an event id the producer already sent (a replay, or a producer stuck
resending), among its last ``replay_window`` ids."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import numpy.typing as npt

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.feature import Feature
from detector.core.features.surprise import MAX_SURPRISE, Reason


class IdMemory:
    """A producer's last ``size`` event ids as 64-bit fingerprints, its recent repeats, and how
    often it repeated one in accepted events. The ring grows by an eighth (at least 64 ids) up
    to ``size``, so slow producers hold little and at most ~1/9 of it is unused (doubling left
    up to half of it empty: 4 KB per producer at 600 ids); a restored ring holds just its ids.
    64 bits: a fresh id collides with one of 8192 remembered ones about once in 2 * 10^15
    events.

    A bit per fingerprint (8 bits per ring slot, rebuilt from the ring when it grows or wraps;
    not pickled) answers most questions: a fresh id's bit is clear ~88% of the time, and only
    a set bit costs the scan of the ring, the largest per-event cost of the features before.
    Every remembered id has its bit set, so the answers are the scan's.

    Which ids were sent is a fact, remembered for every event (:meth:`remember`); whether
    repeats are usual for this producer is a belief, learned from accepted events only
    (:meth:`learn`), so a replay attack does not teach that replays are normal.

    Examples:
        >>> m = IdMemory(4)
        >>> for i in range(6):
        ...     _ = m.remember(f"id-{i}", 1000 * i, 60_000)
        ...     m.learn()
        >>> m.seen("id-5"), m.seen("id-1"), m.n, m.remember("id-5", 6000, 60_000), m.recent
        (True, False, 4, True, 1.0)
    """

    __slots__ = (
        "asked", "bits", "events", "fp", "last_ms", "n", "pos", "recent", "repeated", "repeats",
        "size",
    )  # fmt: skip

    def __init__(self, size: int) -> None:
        self.fp: npt.NDArray[np.uint64] = np.zeros(min(size, 64), dtype=np.uint64)
        self.size = size
        self.n = 0
        self.pos = 0
        self.events = 0  # accepted events with an id
        self.repeats = 0  # accepted events whose id was a repeat
        self.recent = 0.0  # repeats of any event, decayed over the burst horizon
        self.last_ms = -1
        self.repeated = False  # the last remembered id was a repeat
        # The last seen() question and answer: remember() follows it for the same event, and
        # a scan of up to `size` fingerprints is worth doing once.
        self.asked: tuple[str, int, bool] | None = None
        self.bits: bytearray | None = None  # built on the first question

    def dump(self, w: Writer) -> None:
        # Only the filled part of the ring: a restored ring holds just its ids (until the ring
        # is full, pos == n, and the next id grows it as a fed one would).
        w.u64s(self.fp[: self.n])
        w.i64(self.size)
        for v in (self.n, self.pos, self.events, self.repeats):
            w.i64(v)
        w.f64(self.recent)
        w.i64(self.last_ms)
        w.count(int(self.repeated))

    @classmethod
    def load(cls, r: Reader) -> IdMemory:
        fp = r.u64s()
        m = cls(r.i64())
        m.fp = fp
        m.n, m.pos, m.events, m.repeats = r.i64(), r.i64(), r.i64(), r.i64()
        m.recent, m.last_ms, m.repeated = r.f64(), r.i64(), bool(r.count())
        return m

    def seen(self, event_id: str) -> bool:
        return self._ask(event_id)[2]

    def _ask(self, event_id: str) -> tuple[str, int, bool]:
        fp = _fingerprint(event_id)
        bits = self.bits
        if bits is None:
            bits = self._rebuild_bits()
        bit = fp % (len(bits) << 3)
        seen = bool(bits[bit >> 3] >> (bit & 7) & 1) and bool((self.fp[: self.n] == fp).any())
        self.asked = (event_id, fp, seen)
        return self.asked

    def _rebuild_bits(self) -> bytearray:
        """The filter of the ring's ids: 8 bits per slot of its capacity (a restored ring may
        hold none)."""
        size = max(len(self.fp), 1) << 3
        on = np.zeros(size, dtype=bool)
        on[self.fp[: self.n] % np.uint64(size)] = True
        self.bits = bytearray(np.packbits(on, bitorder="little").tobytes())
        return self.bits

    def remember(self, event_id: str, t_ms: int, burst_ms: float) -> bool:
        """Note the id (a fact, whatever the verdict); True if it is a repeat."""
        if self.last_ms >= 0:
            self.recent *= math.exp(-max(t_ms - self.last_ms, 0) / burst_ms)
        self.last_ms = max(self.last_ms, t_ms)
        asked = self.asked
        if asked is None or asked[0] != event_id:
            asked = self._ask(event_id)
        _, fp, self.repeated = asked
        self.asked = None
        if self.repeated:
            self.recent += 1.0
            return True
        if self.pos == len(self.fp):
            if len(self.fp) < self.size:
                capacity = len(self.fp) + max(64, len(self.fp) // 8)
                grown = np.zeros(min(capacity, self.size), dtype=np.uint64)
                grown[: self.n] = self.fp[: self.n]
                self.fp = grown
            else:
                self.pos = 0
            self.bits = None  # sized to the new capacity, or cleared of the ids overwritten
        self.fp[self.pos] = fp
        self.pos += 1
        self.n = max(self.n, self.pos)
        bits = self.bits
        if bits is not None:
            bit = fp % (len(bits) << 3)
            bits[bit >> 3] |= 1 << (bit & 7)
        return False

    def learn(self) -> None:
        """The last remembered event was accepted: count it (and its repeat) as usual."""
        self.events += 1
        self.repeats += self.repeated

    def surprise(self, prior: float, t_ms: int, burst_ms: float) -> float:
        """``-log10`` of the chance of this repeat given the producer's past: one repeat as
        rare as its accepted repeats say, times one more for each repeat in the current
        burst (independent repeats multiply)."""
        one = -math.log10((self.repeats + prior) / (self.events + 1))
        burst = self.recent * math.exp(-max(t_ms - self.last_ms, 0) / burst_ms)
        return min((1.0 + burst) * one, MAX_SURPRISE)


def _fingerprint(event_id: str) -> int:
    # blake2b, not hash(): the same in every process (checkpoints, replays). A Python int
    # below 2^64: numpy compares and stores it as the ring's uint64.
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class ReplayFeature(Feature[IdMemory | None]):
    name = "replayed_id"

    def new(self) -> IdMemory | None:
        return None  # allocated with the producer's first id

    def _id(self, slot: int, event: Event) -> tuple[IdMemory, str] | None:
        ids = self.slots[slot]
        event_id = event.strings.get(self.cfg.id_field)
        if ids is None or event_id is None or not ids.seen(event_id):
            return None
        return ids, event_id

    def judge(self, slot: int, event: Event) -> float:
        repeat = self._id(slot, event)
        if repeat is None:
            return 0.0
        cfg = self.cfg
        return repeat[0].surprise(cfg.novelty_prior, event.event_time_ms, cfg.burst_s * 1000)

    def explain(self, slot: int, event: Event) -> Reason | None:
        repeat = self._id(slot, event)
        if repeat is None:
            return None
        ids, event_id = repeat
        expected = f"unique ids ({ids.repeats} repeats in {ids.events} events)"
        return Reason("replayed_id", self.cfg.id_field, event_id, expected, self.judge(slot, event))

    def advance(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        if cfg.replay_window and (event_id := event.strings.get(cfg.id_field)) is not None:
            ids = self.slots[slot]
            if ids is None:
                ids = self.slots[slot] = IdMemory(cfg.replay_window)
            ids.remember(event_id, event.event_time_ms, cfg.burst_s * 1000)

    def learn(self, slot: int, event: Event) -> None:
        ids = self.slots[slot]
        if ids is not None and event.strings.get(self.cfg.id_field) is not None:
            ids.learn()  # remembered by advance

    def dump(self, slot: int, w: Writer) -> None:
        ids = self.slots[slot]
        w.count(ids is not None)
        if ids is not None:
            ids.dump(w)

    def load(self, slot: int, r: Reader) -> None:
        self.slots[slot] = IdMemory.load(r) if r.count() else None
