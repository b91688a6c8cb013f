"""Replayed id: an event id the producer already sent within ``replay_horizon_s`` of event time
(a replay, or a producer stuck resending).

Which ids were sent is remembered in one :class:`IdWindow` shared by all producers: its memory
grows with events, not producers, so it has its own bound (``replay_max_ids`` ids at
:data:`BYTES_PER_ID` each) and its own checkpoint records. Each producer keeps only its
counters (a row of :class:`IdTable`).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.clock import Clock
from detector.core.features.columns import capacity, column, grown, restored
from detector.core.features.config import FeatureConfig
from detector.core.features.feature import Feature
from detector.core.features.surprise import MAX_SURPRISE, Reason
from detector.core.fingerprints import pair_fingerprint

# Per id of capacity: 2 table slots of 4 bytes (a ring index; load <= 1/2) + the ring's
# fingerprint and time.
BYTES_PER_ID = 24
_FIRST_CAPACITY = 1024  # ids; the ring doubles from here up to max_ids (rounded to a power of 2)
_BLOCK_IDS = 4096  # ids per checkpoint record (64 KB): a commit writes the blocks it filled
_NEVER = -(2**62)


class IdWindow:
    """The (producer, event id) pairs sent within ``horizon_ms`` of the newest event time, at
    most ``max_ids`` of them, as 64-bit fingerprints.

    A FIFO ring of (fingerprint, event time) in the order remembered holds the ids, and an
    open-addressing hash table of ring indices (plus 1: 0 = empty; linear probing on the
    fingerprint, deletion by backward shift: no tombstones) answers :meth:`seen`; the ring
    says what to forget: the oldest first, once older than the
    newest event time remembered less the horizon, or to make room beyond ``max_ids``. An
    id remembered after a newer one (events out of order) waits behind it, so an id is
    remembered for *at least* the horizon. The ring doubles as ids come (from 1024 up to
    ``max_ids`` rounded up to a power of 2), the table is twice the ring: 24 bytes per id of
    capacity (:data:`BYTES_PER_ID`), the capacity at most twice the most ids ever held
    (``max_ids = 1,000,000``: at most 24 MiB).

    64 bits: a fresh id collides with one of 10^6 remembered ones about once in 2 * 10^13
    events (and is then taken for a repeat).

    Examples:
        >>> w = IdWindow(horizon_ms=60_000, max_ids=3)
        >>> [w.remember(fp, t) for fp, t in ((11, 0), (12, 1000), (11, 2000))]
        [False, False, True]
        >>> w.remember(13, 3000), w.remember(14, 4000), w.seen(11), w.seen(14)  # 3 at most
        (False, False, False, True)
        >>> _ = w.remember(15, 63_500)  # over 60 s after 12 and 13 were sent: forgotten
        >>> [w.seen(fp) for fp in (12, 13, 14, 15)], len(w), w.nbytes == BYTES_PER_ID * 4
        ([False, False, True, True], 2, True)
    """

    __slots__ = (
        "_fresh", "_fv", "_mask", "_ring_mask", "_table", "_tv", "changed", "count", "fps",
        "head", "horizon_ms", "max_ids", "newest_ms", "table", "times",
    )  # fmt: skip

    def __init__(self, horizon_ms: int, max_ids: int, capacity: int = 0) -> None:
        self.horizon_ms = horizon_ms
        self.max_ids = max_ids
        self.head = 0  # ring index of the oldest id
        self.count = 0
        self.newest_ms = _NEVER
        self._fresh = 0  # ids remembered since the last commit (their blocks are rewritten)
        self.changed = False  # anything moved since the last commit
        self._allocate(capacity or min(_FIRST_CAPACITY, _pow2(max_ids)))

    def _allocate(self, capacity: int) -> None:
        self.fps: npt.NDArray[np.uint64] = np.zeros(capacity, dtype=np.uint64)
        self.times: npt.NDArray[np.int64] = np.zeros(capacity, dtype=np.int64)
        # 4-byte ring indices, not the 8-byte fingerprints: a quarter less per id.
        self.table: npt.NDArray[np.uint32] = np.zeros(2 * capacity, dtype=np.uint32)
        # Memoryviews read and write single items as Python ints, twice as fast as numpy's
        # scalar indexing; the arrays are never resized (growth allocates new ones).
        self._fv = self.fps.data
        self._tv = self.times.data
        self._table = self.table.data
        self._ring_mask = capacity - 1
        self._mask = 2 * capacity - 1

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict[str, object]:  # memoryviews do not pickle
        keep = ("count", "head", "horizon_ms", "max_ids", "newest_ms", "times", "fps")
        return {"_fresh": self._fresh, "changed": self.changed} | {
            k: getattr(self, k) for k in keep
        }

    def __setstate__(self, state: dict[str, object]) -> None:
        fps, times = np.asarray(state.pop("fps")), np.asarray(state.pop("times"))
        for k, v in state.items():
            setattr(self, k, v)
        self._allocate(len(fps))
        self.fps[:], self.times[:] = fps, times
        self.table[:] = _build_table(self.fps, self._ring(), len(self.table))

    @property
    def capacity(self) -> int:
        """Ids the ring holds before it grows (or, at ``max_ids``, forgets the oldest)."""
        return len(self.fps)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays: :data:`BYTES_PER_ID` per id of :attr:`capacity`."""
        return self.fps.nbytes + self.times.nbytes + self.table.nbytes

    def seen(self, fp: int) -> bool:
        """Whether the fingerprint is remembered."""
        return self._find(fp) >= 0

    def remember(self, fp: int, t_ms: int) -> bool:
        """Note an id sent at ``t_ms`` (a fact, whatever the verdict); True if it is a repeat
        (seen, as :meth:`seen` said before the call). A repeat is not remembered again: the
        horizon counts from its first send."""
        self.changed = True
        repeat = self._find(fp) >= 0
        if t_ms > self.newest_ms:
            self.newest_ms = t_ms
        limit = self.newest_ms - self.horizon_ms
        tv = self._tv
        while self.count and tv[self.head] < limit:
            self._forget_oldest()
        if repeat or t_ms < limit:  # a late event already beyond the horizon: forgotten
            return repeat
        if self.count >= self.max_ids:
            self._forget_oldest()
        elif self.count == len(self.fps):
            self._grow()
        i = (self.head + self.count) & self._ring_mask
        self._fv[i] = fp
        self._tv[i] = t_ms
        self._insert(fp, i)
        self.count += 1
        self._fresh += 1
        return False

    def _find(self, fp: int) -> int:
        """The table slot of the fingerprint, or -1."""
        table, fv, mask = self._table, self._fv, self._mask
        i = fp & mask
        while True:
            x = table[i]
            if x == 0:
                return -1
            if fv[x - 1] == fp:
                return i
            i = (i + 1) & mask

    def _insert(self, fp: int, at: int) -> None:
        """Note that ring slot ``at`` holds the fingerprint."""
        table, mask = self._table, self._mask
        i = fp & mask
        while table[i]:
            i = (i + 1) & mask
        table[i] = at + 1

    def _forget_oldest(self) -> None:
        """Drop the ring's oldest id from the table: the ids after it in its probe run move
        back into the hole, unless their home lies between the hole and them."""
        table, fv, mask = self._table, self._fv, self._mask
        i = self._find(fv[self.head])
        j = i
        while True:
            j = (j + 1) & mask
            x = table[j]
            if x == 0:
                break
            if (j - (fv[x - 1] & mask)) & mask >= (j - i) & mask:  # its home is not in (i, j]
                table[i] = x
                i = j
        table[i] = 0
        self.head = (self.head + 1) & self._ring_mask
        self.count -= 1

    def _ring(self) -> npt.NDArray[np.int64]:
        """The ring slots of the remembered ids, oldest first."""
        return (self.head + np.arange(self.count, dtype=np.int64)) & self._ring_mask

    def _grow(self) -> None:
        """Twice the capacity: the ring unrolled to start at 0, the table rebuilt (every
        block is rewritten at the next commit)."""
        at = self._ring()
        fps, times = self.fps[at], self.times[at]
        self._allocate(2 * len(self.fps))
        self.fps[: self.count], self.times[: self.count] = fps, times
        self.table[:] = _build_table(self.fps, np.arange(self.count), len(self.table))
        self.head = 0
        self._fresh = self.count

    # -- checkpoint records ------------------------------------------------------------

    def records(self, name: str, full: bool) -> dict[str, bytes]:
        """Records to checkpoint: ``name`` (capacity, head, count, newest time) and the
        blocks ``name.<k>`` of :data:`_BLOCK_IDS` ring slots holding ids remembered since the
        last :meth:`committed` (``full``: every block holding an id). Nothing if nothing
        moved. Earlier blocks are still in the checkpoint: their ids have not changed."""
        if not (full or self.changed):
            return {}
        w = Writer()
        for v in (len(self.fps), self.head, self.count, self.newest_ms):
            w.i64(v)
        out = {name: w.bytes()}
        new = self.count if full else min(self._fresh, self.count)
        size = min(_BLOCK_IDS, len(self.fps))
        start = (self.head + self.count - new) & self._ring_mask
        for k in self._blocks(start, new):
            w = Writer()
            w.u64s(self.fps[k * size : (k + 1) * size])
            w.i64s(self.times[k * size : (k + 1) * size])
            out[f"{name}.{k}"] = w.bytes()
        return out

    def committed(self) -> None:
        self._fresh = 0
        self.changed = False

    def _blocks(self, start: int, n: int) -> list[int]:
        """The blocks holding ring slots ``start`` .. ``start + n - 1`` (wrapping)."""
        if n <= 0:
            return []
        cap, size = len(self.fps), min(_BLOCK_IDS, len(self.fps))
        end = start + n
        if end <= cap:
            return list(range(start // size, (end - 1) // size + 1))
        tail = range(start // size, cap // size)
        return sorted({*tail, *range((end - cap - 1) // size + 1)})

    @classmethod
    def load(
        cls, records: Mapping[str, bytes], name: str, horizon_ms: int, max_ids: int
    ) -> IdWindow:
        """The window :meth:`records` wrote under ``name`` (empty if it wrote none).

        Raises:
            ValueError: a record is missing or has another layout.
        """
        header = records.get(name)
        if header is None:
            return cls(horizon_ms, max_ids)
        r = Reader(header)
        capacity, head, count, newest_ms = r.i64(), r.i64(), r.i64(), r.i64()
        fits = 0 < capacity == _pow2(capacity) <= _pow2(max_ids)
        if not r.done() or not fits or not 0 <= head < capacity:
            msg = f"{name}: not a replay window header"
            raise ValueError(msg)
        if not 0 <= count <= min(capacity, max_ids):
            msg = f"{name}: {count} ids do not fit this window"
            raise ValueError(msg)
        w = cls(horizon_ms, max_ids, capacity)
        size = min(_BLOCK_IDS, capacity)
        for k in w._blocks(head, count):
            block = records.get(f"{name}.{k}")
            if block is None:
                msg = f"{name}: block {k} is missing"
                raise ValueError(msg)
            r = Reader(block)
            fps, times = r.u64s(), r.i64s()
            if not r.done() or len(fps) != size or len(times) != size:
                msg = f"{name}.{k}: not a replay window block"
                raise ValueError(msg)
            w.fps[k * size : (k + 1) * size], w.times[k * size : (k + 1) * size] = fps, times
        w.head, w.count, w.newest_ms = head, count, newest_ms
        w.table[:] = _build_table(w.fps, w._ring(), len(w.table))
        return w


def _pow2(n: int) -> int:
    """The smallest power of 2 >= ``n`` (and >= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def _build_table(
    ring: npt.NDArray[np.uint64], at: npt.NDArray[np.int64], size: int
) -> npt.NDArray[np.uint32]:
    """A linear-probing table of ``size`` slots holding the ring slots ``at`` (plus 1) of
    the distinct fingerprints ``ring[at]`` (homed by fingerprint), built at once: sorted by
    home slot, each goes to the first slot past its home and its
    predecessor; those pushed past the end take the first free slots from 0, as a wrapping
    insertion would. (Any layout where every slot from an id's home to the id is full
    answers the same.)"""
    table = np.zeros(size, dtype=np.uint32)
    n = len(at)
    if not n:
        return table
    fps = ring[at]
    home = (fps & np.uint64(size - 1)).astype(np.int64)
    order = np.argsort(home, kind="stable")
    i = np.arange(n, dtype=np.int64)
    pos = i + np.maximum.accumulate(home[order] - i)
    over = pos >= size
    if over.any():
        taken = np.zeros(size, dtype=bool)
        taken[pos[~over]] = True
        pos[over] = np.flatnonzero(~taken)[: int(over.sum())]
    table[pos] = at[order] + 1
    return table


class IdCounts:
    """One producer's repeats (:class:`IdTable`'s row, as its record and a view): how often its
    accepted events repeated an id, and its recent repeats (of any event, decayed over the
    burst horizon)."""

    __slots__ = ("events", "last_ms", "recent", "repeated", "repeats")

    def __init__(self) -> None:
        self.events = 0  # accepted events with an id
        self.repeats = 0  # accepted events whose id was a repeat
        self.recent = 0.0  # repeats of any event, decayed over the burst horizon
        self.last_ms = -1
        self.repeated = False  # the last noted id was a repeat

    def dump(self, w: Writer) -> None:
        w.i64(self.events)
        w.i64(self.repeats)
        w.f64(self.recent)
        w.i64(self.last_ms)
        w.count(int(self.repeated))

    @classmethod
    def load(cls, r: Reader) -> IdCounts:
        c = cls()
        c.events, c.repeats, c.recent, c.last_ms = r.i64(), r.i64(), r.f64(), r.i64()
        c.repeated = bool(r.count())
        return c


# A row's columns, in a base's order.
_ID_COLUMNS = ("events", "repeats", "recent", "last_ms", "repeated")


class IdTable:
    """Every slot's :class:`IdCounts` as columns: ``events`` (-1: no id yet), ``repeats``,
    ``last_ms`` (int64), ``recent`` (float64), ``repeated`` (int8); ``rows`` of them hold
    state. No object per producer, and a base writes the columns as they are.

    Which ids were sent is a fact, noted for every event (:meth:`note`); whether repeats are
    usual for this producer is a belief, learned from accepted events only (:meth:`learn`),
    so a replay attack does not teach that replays are normal.
    """

    def __init__(self) -> None:
        self.events: array[int] = column("q", 0)
        self.repeats: array[int] = column("q", 0)
        self.recent: array[float] = column("d", 0)
        self.last_ms: array[int] = column("q", 0)
        self.repeated: array[int] = column("b", 0)
        self.rows = 0
        self._bind()

    def _bind(self) -> None:
        # replay.pxd types these as memoryviews of the columns (the .py: the same arrays).
        self._events, self._repeats, self._recent = self.events, self.repeats, self.recent
        self._last_ms, self._repeated = self.last_ms, self.repeated

    def __reduce__(self) -> tuple[Any, ...]:
        return restored, (IdTable, {name: getattr(self, name) for name in (*_ID_COLUMNS, "rows")})

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` rows (those below it hold state)."""
        if rows > len(self.events):
            n = capacity(len(self.events), rows)
            self.events, self.repeats = grown(self.events, n), grown(self.repeats, n)
            self.recent, self.last_ms = grown(self.recent, n), grown(self.last_ms, n)
            self.repeated = grown(self.repeated, n)
            self._bind()
        if rows > self.rows:
            self.rows = rows

    def clear(self, row: int) -> None:
        """No id yet (and the counts of a fresh :class:`IdCounts`)."""
        self._events[row] = -1
        self._repeats[row] = 0
        self._recent[row] = 0.0
        self._last_ms[row] = -1
        self._repeated[row] = 0

    def note(self, row: int, repeat: bool, t_ms: int, burst_ms: float) -> None:
        if self._events[row] < 0:
            self._events[row] = 0  # its first id
        if self._last_ms[row] >= 0:
            self._recent[row] *= math.exp(-max(t_ms - self._last_ms[row], 0) / burst_ms)
        self._last_ms[row] = max(self._last_ms[row], t_ms)
        self._repeated[row] = repeat
        if repeat:
            self._recent[row] += 1.0

    def learn(self, row: int) -> None:
        """The last noted event was accepted: count it (and its repeat) as usual."""
        if self._events[row] >= 0:
            self._events[row] += 1
            self._repeats[row] += self._repeated[row]

    def surprise(self, row: int, prior: float, t_ms: int, burst_ms: float) -> float:
        """``-log10`` of the chance of this repeat given the producer's past: one repeat as
        rare as its accepted repeats say, times one more for each repeat in the current
        burst (independent repeats multiply). A row with no id yet: none counted."""
        events = max(self._events[row], 0)
        one = -math.log10((self._repeats[row] + prior) / (events + 1))
        burst = self._recent[row] * math.exp(-max(t_ms - self._last_ms[row], 0) / burst_ms)
        return min((1.0 + burst) * one, MAX_SURPRISE)

    def get(self, row: int) -> IdCounts | None:
        """A copy of the row (None: no id yet)."""
        if self._events[row] < 0:
            return None
        c = IdCounts()
        c.events, c.repeats, c.recent = self._events[row], self._repeats[row], self._recent[row]
        c.last_ms, c.repeated = self._last_ms[row], bool(self._repeated[row])
        return c

    def put(self, row: int, c: IdCounts | None) -> None:
        self.clear(row)
        if c is not None:
            self._events[row], self._repeats[row], self._recent[row] = c.events, c.repeats, c.recent
            self._last_ms[row], self._repeated[row] = c.last_ms, c.repeated


class ReplayFeature(Feature):
    """Per slot the producer's repeats (a row of :attr:`table`; none until its first id); the
    ids of all producers in one :attr:`window` (None: off, ``replay_horizon_s = 0`` or
    disabled).

    The window outlives a producer's slot: a producer evicted and back within the horizon
    still has its ids remembered (judged against fresh counts)."""

    name = "replayed_id"

    def __init__(self, cfg: FeatureConfig, clock: Clock) -> None:
        super().__init__(cfg, clock)
        self.window = self._new_window()
        self.table = IdTable()  # each slot's repeats
        # The last pair fingerprinted, and its fingerprint.
        self._last_producer, self._last_id, self._last_fp = "", "", 0

    def _new_window(self) -> IdWindow | None:
        cfg = self.cfg
        if not cfg.replay_horizon_s or self.name in cfg.disabled:
            return None
        return IdWindow(round(cfg.replay_horizon_s * 1000), cfg.replay_max_ids)

    def new(self) -> IdCounts | None:
        return None  # allocated with the producer's first id

    def _fingerprint(self, producer: str, event_id: str) -> int:
        # judge and advance fingerprint the same pair, one after the other (a cache of a pure
        # function: no answer depends on the order of calls).
        if producer != self._last_producer or event_id != self._last_id:
            self._last_fp = pair_fingerprint(producer, event_id)
            self._last_producer, self._last_id = producer, event_id
        return self._last_fp

    def _repeat(self, event: Event) -> str | None:
        """The event's id, if the window remembers it from this producer."""
        event_id = event.strings.get(self.cfg.id_field)
        window = self.window
        if window is None or event_id is None:
            return None
        return event_id if window.seen(self._fingerprint(event.producer, event_id)) else None

    def reset(self, slot: int) -> None:
        self.table.reserve(slot + 1)
        self.table.clear(slot)

    def judge(self, slot: int, event: Event) -> float:
        if self._repeat(event) is None:
            return 0.0
        cfg = self.cfg
        return self.table.surprise(slot, cfg.novelty_prior, event.event_time_ms, cfg.burst_s * 1000)

    def explain(self, slot: int, event: Event) -> Reason | None:
        event_id = self._repeat(event)
        if event_id is None:
            return None
        t = self.table
        repeats, events = t.repeats[slot], max(t.events[slot], 0)
        expected = f"unique ids ({repeats} repeats in {events} events)"
        return Reason("replayed_id", self.cfg.id_field, event_id, expected, self.judge(slot, event))

    def advance(self, slot: int, event: Event) -> None:
        window = self.window
        if window is not None and (event_id := event.strings.get(self.cfg.id_field)) is not None:
            t = event.event_time_ms
            repeat = window.remember(self._fingerprint(event.producer, event_id), t)
            self.table.note(slot, repeat, t, self.cfg.burst_s * 1000)

    def learn(self, slot: int, event: Event) -> None:
        if event.strings.get(self.cfg.id_field) is not None:
            self.table.learn(slot)  # noted by advance (none noted: no id yet, nothing)

    def dump(self, slot: int, w: Writer) -> None:
        counts = self.table.get(slot)
        w.count(counts is not None)
        if counts is not None:
            counts.dump(w)

    def load(self, slot: int, r: Reader) -> None:
        self.table.put(slot, IdCounts.load(r) if r.count() else None)

    def dump_table(self, w: Writer) -> None:
        """Every slot's counts as the table's columns (-1 events: none yet)."""
        t = self.table
        for name in _ID_COLUMNS:
            w.column(memoryview(getattr(t, name))[: t.rows])

    def load_table(self, r: Reader) -> None:
        t = IdTable()
        for name in _ID_COLUMNS:
            setattr(t, name, r.column())
        t.rows = len(t.events)
        if any(len(getattr(t, name)) != t.rows for name in _ID_COLUMNS):
            msg = "base has replay columns of unequal lengths"
            raise ValueError(msg)
        t._bind()
        self.table = t

    def shared(self, full: bool) -> dict[str, bytes]:
        return {} if self.window is None else self.window.records(self.name, full)

    def committed(self) -> None:
        if self.window is not None:
            self.window.committed()

    def load_shared(self, records: Mapping[str, bytes]) -> None:
        window = self._new_window()
        if window is not None and records:
            window = IdWindow.load(records, self.name, window.horizon_ms, window.max_ids)
        self.window = window
