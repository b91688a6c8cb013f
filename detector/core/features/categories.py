# cython: wraparound=False
"""Counts of categorical values (event types, payload shapes, categorical fields) as rows of
typed columns shared by all producers, and the novelty bursts they take part in.

A *row* is one producer's counts of one thing (its event types, its shapes, one of its
categorical fields). A row's values are in two blocks of typed columns (blocks of 2, 4, 8...
from a :class:`Pool`, moved to a block twice as large when full): a value seen once is only
its 64-bit fingerprint (8 bytes: most of a field's values before it saturates are ids seen
once); a value seen twice or more is the id of its string in :class:`Vocab` (interned: shared
among rows and producers) and its count. Each block keeps its order (arrival; first seen
twice): a row's record lists them in that order.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Callable
from typing import Any

from detector.core.codec import Reader, Writer
from detector.core.features.columns import capacity
from detector.core.features.surprise import MAX_SURPRISE
from detector.core.fingerprints import fingerprint

# Block starts are 4-byte ints: a pool holds fewer entries (16 GiB of fingerprints).
_MAX_INDEX = 2**31 - 1
# Counts are 4-byte ints too: a row that counted this many values counts no more (its
# counts stay as they are, in proportion; 2^31 - 1 events of one producer's field).
MAX_COUNT = 2**31 - 1


def resized(old: object, code: str, size: int) -> array[Any]:
    """A copy of the typed column ``old`` (an array, or compiled its typed memoryview) with
    ``size`` items, zeros after the old ones."""
    new = array(code)
    new.frombytes(bytes(old))  # type: ignore[call-overload]
    missing = size - len(new)
    if missing > 0:
        new.frombytes(bytes(new.itemsize * missing))
    return new


def pickled(obj: object, columns: dict[str, str], others: tuple[str, ...]) -> dict[str, object]:
    """The state of a class of typed columns (``columns``: name -> array type code) and other
    attributes, to pickle (a pipeline is pickled whole; compiled, the columns are memoryviews,
    which Cython does not pickle)."""
    state: dict[str, object] = {n: getattr(obj, n) for n in others}
    for name, code in columns.items():
        column = getattr(obj, name)
        state[name] = resized(column, code, len(column))
    return state


def unpickled(obj: object, state: dict[str, object]) -> None:
    for name, value in state.items():
        setattr(obj, name, value)


class Pool:
    """Blocks of consecutive indices of some columns, given from the top; a block given back
    is garbage until the owner compacts the columns (:func:`compact`), which it does once the
    garbage passes a quarter of the indices given (a freed block is not reused: saturating
    rows free large blocks, growing rows want small ones, and reusing split halves left most
    of the columns unused).

    ``top`` is the end of the indices given so far: the owner grows its columns past it.
    """

    __slots__ = ("garbage", "top")

    def __init__(self) -> None:
        self.top = 0
        self.garbage = 0  # indices given back since the last compaction

    def alloc(self, size: int) -> int:
        """The first index of a new block of ``size`` indices."""
        start = self.top
        self.top += size
        return start

    def release(self, start: int, size: int) -> None:
        self.garbage += size

    def full_of_garbage(self) -> bool:
        return self.garbage > max(self.top >> 2, 256)


def block_size(n: int) -> int:
    """The block for ``n`` entries: a quarter more, room to grow without a move at once."""
    return n + (n >> 2)


def grown_block(size: int) -> int:
    """The block a full one of ``size`` entries moves to: half as large again."""
    return size + (size >> 1) + 2


def compact(
    pool: Pool, start: Any, size: Any, used: Any, rows: int, columns: list[tuple[Any, str]]
) -> list[array[Any]]:
    """The columns (``(column, type code)`` pairs) with rows ``0..rows``'s blocks moved down
    to one after the other, in row order, each cut to :func:`block_size` of its entries;
    ``start`` and ``size`` rewritten, the pool's garbage gone. The new columns have a
    quarter more room than the blocks, for the next ones."""
    olds = [resized(column, code, len(column)) for column, code in columns]
    news = [array(code) for _, code in columns]
    top = 0
    for r in range(rows):
        if not size[r]:
            continue
        s, u = start[r], used[r]
        n = block_size(u)
        for k in range(len(news)):
            news[k].extend(olds[k][s : s + u])
            news[k].frombytes(bytes((n - u) * news[k].itemsize))
        start[r] = top if n else 0
        size[r] = n
        top += n
    pool.top, pool.garbage = top, 0
    for new in news:
        new.frombytes(bytes((top >> 2) * new.itemsize))
    return news


def regrow(
    pool: Pool, start: Any, size: Any, used: Any, rows: int, r: int, new_size: int,
    columns: list[tuple[Any, str]],
) -> list[Any]:  # fmt: skip
    """The columns after row ``r``'s block moved to a new one of ``new_size`` (the pool
    compacted first when it is full of garbage; the row then keeps its cut block if that has
    room), grown when the pool outgrew them."""
    if pool.full_of_garbage():
        new = compact(pool, start, size, used, rows, columns)
        columns = [(new[k], columns[k][1]) for k in range(len(columns))]
        if size[r] > used[r]:
            return new  # room in its block as cut
    s = pool.alloc(new_size)
    if pool.top > _MAX_INDEX:
        msg = "a pool of categorical counts outgrew its 4-byte block starts"
        raise OverflowError(msg)
    if pool.top > len(columns[0][0]):
        total = max(pool.top + (pool.top >> 2), 64)
        columns = [(resized(column, code, total), code) for column, code in columns]
    old, u = start[r], used[r]
    for column, _ in columns:
        view = memoryview(column)
        view[s : s + u] = view[old : old + u]
    pool.release(old, size[r])
    start[r] = s
    size[r] = new_size
    return [_array(column) for column, _ in columns]


def _array(column: Any) -> array[Any]:
    """The array under a typed column. Compiled, a column passed as an object is a memoryview
    of its array; assigning that view back would make the new typed view hold the last one, a
    chain growing by one per move that, freed, overflows the C stack (a segfault restoring 100k
    producers)."""
    while not isinstance(column, array):
        column = column.base
    return column


class Vocab:
    """Strings by small int id, shared by the rows that hold them (counted: an id is freed,
    and its string let go, when no row holds it any more)."""

    __slots__ = ("free", "ids", "refs", "strs")

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.strs: list[str | None] = []
        self.refs: list[int] = []
        self.free: list[int] = []

    def add(self, s: str) -> int:
        """The id of ``s`` (interned when new), held once more."""
        i = self.ids.get(s)
        if i is None:
            # Interned: the reasons and records read these strings, and producers share them.
            s = sys.intern(s)
            if self.free:
                i = self.free.pop()
                self.strs[i], self.refs[i] = s, 0
            else:
                i = len(self.strs)
                self.strs.append(s)
                self.refs.append(0)
            self.ids[s] = i
        self.refs[i] += 1
        return i

    def release(self, i: int) -> bool:
        """Hold ``i`` once less; True when that freed it."""
        self.refs[i] -= 1
        if self.refs[i]:
            return False
        del self.ids[self.strs[i]]  # type: ignore[arg-type]
        self.strs[i] = None
        self.free.append(i)
        return True

    def text(self, i: int) -> str:
        s = self.strs[i]
        assert s is not None  # noqa: S101 (a held id)
        return s


class Counts:
    """Rows of counts of categorical values, until a row shows id-like cardinality (more
    than ``cap`` values: it is then *saturated*, holds nothing and no longer changes).

    A row has two blocks: the fingerprints of its values seen once (``fp``, from
    :attr:`once_pool`), and its values seen twice or more (``vid``: the string's id in
    :attr:`values`; ``cnt``: its count, 4-byte as ``n``: :data:`MAX_COUNT`; from
    :attr:`multi_pool`), each in order of arrival.
    Row columns: ``n`` (values counted), ``sat`` (saturated), and per block its ``*start``,
    ``*size`` and ``*used`` (``o``: once, ``m``: multi).
    """

    def __init__(self) -> None:
        self.values = Vocab()
        self.vfp = array("Q")  # the fingerprint of each string of `values`, by id
        self.rows = 0
        self.free_rows = array("i")
        self.n = array("i")
        self.sat = array("b")
        self.ostart = array("i")
        self.osize = array("i")
        self.oused = array("i")
        self.mstart = array("i")
        self.msize = array("i")
        self.mused = array("i")
        self.once_pool = Pool()
        self.multi_pool = Pool()
        self.fp = array("Q")
        self.cnt = array("i")
        self.vid = array("i")

    def __reduce__(self) -> tuple[object, ...]:
        columns = {"vfp": "Q", "n": "i", "sat": "b", "ostart": "i", "osize": "i", "oused": "i",
                   "mstart": "i", "msize": "i", "mused": "i", "fp": "Q", "cnt": "i",
                   "vid": "i"}  # fmt: skip
        others = ("values", "rows", "free_rows", "once_pool", "multi_pool")
        return (Counts, (), pickled(self, columns, others))

    def __setstate__(self, state: dict[str, object]) -> None:
        unpickled(self, state)

    def extents(self) -> dict[str, int]:
        """How much of each column holds state (a checkpoint writes no more: the rest is
        room to grow, which a restored column gets again as it grows)."""
        rows, once, multi = self.rows, self.once_pool.top, self.multi_pool.top
        by_row = ("n", "sat", "ostart", "osize", "oused", "mstart", "msize", "mused")
        return {"fp": once, "cnt": multi, "vid": multi} | dict.fromkeys(by_row, rows)

    # -- rows --------------------------------------------------------------------------------

    def add_row(self) -> int:
        """A row for new counts (a freed one if any)."""
        if self.free_rows:
            r: int = self.free_rows.pop()
            return r
        r = self.rows
        if r == len(self.n):
            size = capacity(r, r + 1)
            self.n = resized(self.n, "i", size)
            self.sat = resized(self.sat, "b", size)
            self.ostart = resized(self.ostart, "i", size)
            self.osize = resized(self.osize, "i", size)
            self.oused = resized(self.oused, "i", size)
            self.mstart = resized(self.mstart, "i", size)
            self.msize = resized(self.msize, "i", size)
            self.mused = resized(self.mused, "i", size)
        self.rows += 1
        return r

    def clear(self, r: int) -> None:
        """Drop row ``r``'s values (its strings let go, its blocks freed)."""
        start = self.mstart[r]
        for i in range(start, start + self.mused[r]):
            self.values.release(self.vid[i])
        self.multi_pool.release(start, self.msize[r])
        self.once_pool.release(self.ostart[r], self.osize[r])
        self.ostart[r] = 0
        self.osize[r] = 0
        self.oused[r] = 0
        self.mstart[r] = 0
        self.msize[r] = 0
        self.mused[r] = 0

    def reset(self, r: int) -> None:
        """Row ``r`` afresh: nothing counted."""
        self.clear(r)
        self.n[r] = 0
        self.sat[r] = 0

    def drop(self, r: int) -> None:
        """Free row ``r`` for another use."""
        self.reset(r)
        self.free_rows.append(r)

    def _grow_once(self, r: int, size: int) -> None:
        """Move row ``r``'s once block to a new one of ``size``."""
        (self.fp,) = regrow(
            self.once_pool, self.ostart, self.osize, self.oused, self.rows, r, size,
            [(self.fp, "Q")],
        )  # fmt: skip

    def _grow_multi(self, r: int, size: int) -> None:
        """Move row ``r``'s multi block to a new one of ``size``."""
        self.cnt, self.vid = regrow(
            self.multi_pool, self.mstart, self.msize, self.mused, self.rows, r, size,
            [(self.cnt, "i"), (self.vid, "i")],
        )  # fmt: skip

    def _intern(self, value: str, fp: int) -> int:
        vid = self.values.add(value)
        if vid == len(self.vfp):
            self.vfp = resized(self.vfp, "Q", max(2 * vid, 64))
        self.vfp[vid] = fp
        return vid

    def _add_once(self, r: int, fp: int) -> None:
        if self.oused[r] == self.osize[r]:
            self._grow_once(r, grown_block(self.osize[r]))
        self.fp[self.ostart[r] + self.oused[r]] = fp
        self.oused[r] += 1

    def _add_multi(self, r: int, vid: int, count: int) -> None:
        if self.mused[r] == self.msize[r]:
            self._grow_multi(r, grown_block(self.msize[r]))
        i = self.mstart[r] + self.mused[r]
        self.vid[i] = vid
        self.cnt[i] = count
        self.mused[r] += 1

    # -- judging and learning ----------------------------------------------------------------

    def find_multi(self, r: int, vid: int) -> int:
        """The index of the string ``vid`` among row ``r``'s values seen twice, or -1."""
        start = self.mstart[r]
        for i in range(start, start + self.mused[r]):
            if self.vid[i] == vid:
                return i
        return -1

    def find_once(self, r: int, fp: int) -> int:
        """The index of the fingerprint ``fp`` among row ``r``'s values seen once, or -1."""
        start = self.ostart[r]
        for i in range(start, start + self.oused[r]):
            if self.fp[i] == fp:
                return i
        return -1

    def count(self, r: int, value: str) -> int:
        """How often ``value`` was seen in row ``r``."""
        vid = self.values.ids.get(value)
        if vid is not None:  # a string some row holds: no fingerprint to compute
            i = self.find_multi(r, vid)
            if i >= 0:
                return self.cnt[i]
            fp = self.vfp[vid]
        elif not self.oused[r]:
            return 0
        else:
            fp = fingerprint(value)
        return 1 if self.find_once(r, fp) >= 0 else 0

    def surprise(
        self, r: int, value: str, prior: float, burst: float = 0.0, min_count: int = 1
    ) -> float:
        """``-log10`` of the chance of a value this rare (Good-Turing for unseen ones; an
        unseen one counts ``1 + burst`` times, ``burst`` being the recent novelties). Not
        judged before ``min_count`` values: a young vocabulary is still growing."""
        n = self.n[r]
        if self.sat[r] or n < max(min_count, 1):
            return 0.0
        once = self.oused[r]
        count = self.count(r, value)
        if count == 0:
            p = (once + prior) / (n + 1)
            return min(-(1.0 + burst) * math.log10(min(p, 1.0)), MAX_SURPRISE)
        if count * 20 >= n:
            return 0.0  # common value: skip the tail sum
        below = 0
        start = self.mstart[r]
        for j in range(start, start + self.mused[r]):
            if self.cnt[j] <= count:
                below += self.cnt[j]
        p = (below + once + 1) / (n + 1)
        return min(-math.log10(min(p, 1.0)), MAX_SURPRISE)

    def distinct(self, r: int) -> int:
        """Values row ``r`` holds (seen once or more; 0 once saturated)."""
        return self.oused[r] + self.mused[r]

    def is_new(self, r: int, value: str, min_count: int) -> bool:
        """A value never seen in a row judged (``min_count`` values, not saturated)."""
        return self.n[r] >= max(min_count, 1) and not self.sat[r] and self.count(r, value) == 0

    def update(self, r: int, value: str, cap: int) -> None:
        """Count ``value`` in row ``r`` (saturating it beyond ``cap`` values)."""
        if self.sat[r] or self.n[r] >= MAX_COUNT:
            return
        self.n[r] += 1
        vid = self.values.ids.get(value)
        if vid is not None:
            i = self.find_multi(r, vid)
            if i >= 0:
                self.cnt[i] += 1
                return
            fp = self.vfp[vid]
        else:
            fp = fingerprint(value)
        i = self.find_once(r, fp)
        if i >= 0:
            # Seen again: a categorical value, shared among producers from now on. An id is
            # seen once and never interned: the interpreter's table of interned strings would
            # grow with every id held and never shrink.
            end = self.ostart[r] + self.oused[r] - 1
            for j in range(i, end):  # the values after it move up: the order is kept
                self.fp[j] = self.fp[j + 1]
            self.oused[r] -= 1
            self._add_multi(r, self._intern(value, fp), 2)
        elif self.oused[r] + self.mused[r] >= cap:
            self.clear(r)
            self.sat[r] = 1
        else:
            self._add_once(r, fp)

    # -- reading -----------------------------------------------------------------------------

    def counts(self, r: int) -> dict[str, int]:
        """The values seen twice or more and their counts, in the order they were."""
        start = self.mstart[r]
        return {
            self.values.text(self.vid[i]): self.cnt[i] for i in range(start, start + self.mused[r])
        }

    def once(self, r: int) -> array[int]:
        """The fingerprints of the values seen once, in the order they came."""
        start = self.ostart[r]
        return array("Q", [self.fp[i] for i in range(start, start + self.oused[r])])

    def expected(self, r: int) -> str:
        top = sorted(self.counts(r).items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        return ",".join(v for v, _ in top)

    def dump(self, r: int, w: Writer) -> None:
        # The layout of counts() and once(), written from the columns (a record holds a
        # dozen rows: no dict or list per row).
        w.i64(self.n[r])
        w.count(self.sat[r])
        start, used = self.mstart[r], self.mused[r]
        w.count(used)
        for i in range(start, start + used):
            w.text(self.values.text(self.vid[i]))
            w.i64(self.cnt[i])
        w.u64s(self.once(r))

    def load(self, r: int, rd: Reader) -> None:
        """Row ``r`` (fresh) from its record; a saturated one keeps nothing but its count."""
        self.n[r], self.sat[r] = rd.i64(), int(bool(rd.count()))
        counts = [(rd.text(), rd.i64()) for _ in range(rd.count())]
        once = rd.u64s().tolist()
        if self.sat[r]:
            return
        if counts:
            self._grow_multi(r, block_size(len(counts)))
        if once:
            self._grow_once(r, block_size(len(once)))
        for value, count in counts:
            vid = self.values.ids.get(value)
            fp = self.vfp[vid] if vid is not None else fingerprint(value)
            self._add_multi(r, self._intern(value, fp), count)
        for fp in once:
            self._add_once(r, fp)


def dump_saturated(w: Writer) -> None:
    """The record of a saturated row that counted nothing (an id field's)."""
    w.i64(0)
    w.count(1)
    w.count(0)
    w.u64s([])


class Categories:
    """A read-only view of one row of :class:`Counts`, read live (tests, inspection)."""

    __slots__ = ("_row", "_table")

    def __init__(self, table: Counts | None, row: Callable[[], int]) -> None:
        self._table = table
        self._row = row  # the row now, -1 for a saturated one that holds nothing

    @property
    def n(self) -> int:
        r = self._row()
        return 0 if r < 0 or self._table is None else self._table.n[r]

    @property
    def saturated(self) -> bool:
        r = self._row()
        return r < 0 or self._table is None or bool(self._table.sat[r])

    @property
    def counts(self) -> dict[str, int]:
        r = self._row()
        return {} if r < 0 or self._table is None else self._table.counts(r)

    @property
    def once(self) -> array[int]:
        r = self._row()
        return array("Q") if r < 0 or self._table is None else self._table.once(r)


# Every producer's id-like categorical fields read as this one saturated view: they hold
# nothing and never change, and a producer has several (event and order ids, per event type).
ID_FIELD = Categories(None, lambda: -1)


class Novelty:
    """Per slot, the recent never-seen values of one key (a type, a shape), decayed over a
    burst: each novelty in a burst multiplies the evidence of the next (independent rare
    events multiply; a broken producer repeats itself)."""

    def __init__(self, key: str) -> None:
        self.key = key  # the name the records give it
        self.has = array("i")
        self.recent = array("d")
        self.last_ms = array("q")

    def __reduce__(self) -> tuple[object, ...]:
        columns = {"has": "i", "recent": "d", "last_ms": "q"}
        return (Novelty, (self.key,), pickled(self, columns, ()))

    def __setstate__(self, state: dict[str, object]) -> None:
        unpickled(self, state)

    def reset(self, slot: int) -> None:
        if slot >= len(self.has):
            size = max(2 * len(self.has), slot + 1, 16)
            self.has = resized(self.has, "i", size)
            self.recent = resized(self.recent, "d", size)
            self.last_ms = resized(self.last_ms, "q", size)
        self.has[slot] = 0
        self.recent[slot] = 0.0
        self.last_ms[slot] = 0

    def burst(self, slot: int, t_ms: int, burst_ms: float) -> float:
        """Recent novelties, decayed to ``t_ms``."""
        if not self.has[slot]:
            return 0.0
        return self.recent[slot] * math.exp(-max(t_ms - self.last_ms[slot], 0) / burst_ms)

    def within(self, slot: int, t_ms: int, burst_ms: float) -> bool:
        """Whether the last novelty came less than ``burst_ms`` before ``t_ms``."""
        return bool(self.has[slot]) and t_ms - self.last_ms[slot] < burst_ms

    def note(self, slot: int, t_ms: int, burst_ms: float) -> None:
        self.recent[slot] = self.burst(slot, t_ms, burst_ms) + 1.0
        self.last_ms[slot] = t_ms
        self.has[slot] = 1

    def dump(self, slot: int, w: Writer) -> None:
        w.count(self.has[slot])
        if self.has[slot]:
            w.text(self.key)
            w.f64(self.recent[slot])
            w.i64(self.last_ms[slot])

    def load(self, slot: int, r: Reader) -> None:
        self.reset(slot)
        for _ in range(r.count()):
            key, recent, last_ms = r.text(), r.f64(), r.i64()
            if key == self.key:
                self.has[slot], self.recent[slot], self.last_ms[slot] = 1, recent, last_ms
