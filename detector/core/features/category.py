# cython: wraparound=False
"""Category: a categorical field's value (per event type) the producer rarely or never sent.
Fields with id-like cardinality (more than ``max_categories`` values) are not judged."""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Callable

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.categories import (
    ID_FIELD,
    Categories,
    Counts,
    Pool,
    Vocab,
    dump_saturated,
    grown_block,
    pickled,
    regrow,
    resized,
    unpickled,
)
from detector.core.features.clock import Clock
from detector.core.features.columns import capacity
from detector.core.features.config import FeatureConfig
from detector.core.features.feature import Feature
from detector.core.features.surprise import Reason, type_prefix

SATURATED = -1  # the row of a field with id-like cardinality: it holds nothing
MISSING = -2  # a field the producer does not track


class Fields:
    """Every producer's categorical fields: per slot, its (field, row) pairs in the order it
    first sent them (a block of the ``key``/``row`` columns), each field a type-prefixed name
    interned in :attr:`keys` (shared by all producers) and its counts a row of
    :attr:`counts`; and per slot, the recent novelties per field name (a field's novelties
    count together over event types): a block of the ``name``/``recent``/``last_ms``
    columns, in the order the names first came, each name interned in :attr:`names`."""

    def __init__(self) -> None:
        self.counts = Counts()
        self.keys = Vocab()
        # Key ids by event type and field name: no `prefix + name` string per event.
        self.by_type: dict[str | None, dict[str, int]] = {}
        self.pairs: list[list[tuple[str | None, str]]] = []  # by key id: its (type, name)s
        self.pool = Pool()
        self.key = array("i")
        self.row = array("i")
        self.start = array("i")
        self.size = array("i")
        self.used = array("i")
        self.names = Vocab()
        self.npool = Pool()
        self.name = array("i")
        self.recent = array("d")
        self.last_ms = array("q")
        self.nstart = array("i")
        self.nsize = array("i")
        self.nused = array("i")

    def __reduce__(self) -> tuple[object, ...]:
        columns = {"key": "i", "row": "i", "start": "i", "size": "i", "used": "i",
                   "name": "i", "recent": "d", "last_ms": "q", "nstart": "i", "nsize": "i",
                   "nused": "i"}  # fmt: skip
        others = ("counts", "keys", "by_type", "pairs", "pool", "names", "npool")
        return (Fields, (), pickled(self, columns, others))

    def __setstate__(self, state: dict[str, object]) -> None:
        unpickled(self, state)

    def reset(self, slot: int) -> None:
        """Slot ``slot`` afresh: its rows, keys and block freed."""
        if slot >= len(self.used):
            size = capacity(len(self.used), slot + 1)
            self.start = resized(self.start, "i", size)
            self.size = resized(self.size, "i", size)
            self.used = resized(self.used, "i", size)
            self.nstart = resized(self.nstart, "i", size)
            self.nsize = resized(self.nsize, "i", size)
            self.nused = resized(self.nused, "i", size)
        start = self.start[slot]
        for i in range(start, start + self.used[slot]):
            if self.row[i] >= 0:
                self.counts.drop(self.row[i])
            self._release_key(self.key[i])
        self.pool.release(start, self.size[slot])
        self.start[slot] = 0
        self.size[slot] = 0
        self.used[slot] = 0
        start = self.nstart[slot]
        for i in range(start, start + self.nused[slot]):
            self.names.release(self.name[i])
        self.npool.release(start, self.nsize[slot])
        self.nstart[slot] = 0
        self.nsize[slot] = 0
        self.nused[slot] = 0

    def hold(self, key: str) -> int:
        """The id of the type-prefixed field ``key``, held once more (by a slot)."""
        kid = self.keys.add(key)
        if self.keys.refs[kid] == 1:
            while len(self.pairs) <= kid:
                self.pairs.append([])
            self.pairs[kid] = []
        return kid

    def kid_of(self, etype: str | None, name: str) -> int:
        """The id of the (type, field) pair's key, -1 if no slot holds it."""
        names = self.by_type.get(etype)
        if names is not None:
            kid = names.get(name)
            if kid is not None:
                return kid
        found = self.keys.ids.get(type_prefix(etype) + name)
        if found is None:
            return -1
        if names is None:
            names = self.by_type[etype] = {}
        names[sys.intern(name)] = found  # the pair's key without a string built next time
        self.pairs[found].append((etype, name))
        return found

    def _release_key(self, kid: int) -> None:
        if self.keys.release(kid):
            for etype, name in self.pairs[kid]:
                names = self.by_type[etype]
                del names[name]
                if not names:
                    del self.by_type[etype]
            self.pairs[kid] = []

    def add(self, slot: int, kid: int, row: int) -> None:
        """Append the (field, row) pair to the slot's."""
        if self.used[slot] == self.size[slot]:
            self._grow(slot, grown_block(self.size[slot]))
        i = self.start[slot] + self.used[slot]
        self.key[i] = kid
        self.row[i] = row
        self.used[slot] += 1

    def _grow(self, slot: int, size: int) -> None:
        """Move the slot's block to a new one of ``size``."""
        self.key, self.row = regrow(
            self.pool, self.start, self.size, self.used, len(self.used), slot, size,
            [(self.key, "i"), (self.row, "i")],
        )  # fmt: skip

    def find(self, slot: int, kid: int) -> int:
        """The index of the field ``kid`` among the slot's pairs, or -1."""
        start = self.start[slot]
        for i in range(start, start + self.used[slot]):
            if self.key[i] == kid:
                return i
        return -1

    def row_of(self, slot: int, key: str) -> int:
        """The row of the slot's field ``key`` (type-prefixed): SATURATED, or MISSING."""
        kid = self.keys.ids.get(key)
        i = -1 if kid is None else self.find(slot, kid)
        return MISSING if i < 0 else self.row[i]

    def _find_name(self, slot: int, name: str) -> int:
        """The index of the field ``name`` among the slot's novelties, or -1."""
        nid = self.names.ids.get(name)
        if nid is None:
            return -1
        start = self.nstart[slot]
        for i in range(start, start + self.nused[slot]):
            if self.name[i] == nid:
                return i
        return -1

    def burst(self, slot: int, name: str, t_ms: int, burst_ms: float) -> float:
        """Recent novelties of the field ``name``, decayed to ``t_ms``."""
        i = self._find_name(slot, name)
        if i < 0:
            return 0.0
        return self.recent[i] * math.exp(-max(t_ms - self.last_ms[i], 0) / burst_ms)

    def note(self, slot: int, name: str, t_ms: int, burst_ms: float) -> None:
        self.set_novelty(slot, name, self.burst(slot, name, t_ms, burst_ms) + 1.0, t_ms)

    def set_novelty(self, slot: int, name: str, recent: float, last_ms: int) -> None:
        """The field ``name``'s recent novelties in the slot (a new name goes last)."""
        i = self._find_name(slot, name)
        if i < 0:
            if self.nused[slot] == self.nsize[slot]:
                self._grow_novel(slot, grown_block(self.nsize[slot]))
            i = self.nstart[slot] + self.nused[slot]
            self.name[i] = self.names.add(name)
            self.nused[slot] += 1
        self.recent[i] = recent
        self.last_ms[i] = last_ms

    def _grow_novel(self, slot: int, size: int) -> None:
        """Move the slot's novelties to a new block of ``size``."""
        self.name, self.recent, self.last_ms = regrow(
            self.npool, self.nstart, self.nsize, self.nused, len(self.nused), slot, size,
            [(self.name, "i"), (self.recent, "d"), (self.last_ms, "q")],
        )  # fmt: skip

    def dump(self, slot: int, w: Writer) -> None:
        """Slot ``slot``'s fields and novelties (its part of a producer's record)."""
        start, used = self.start[slot], self.used[slot]
        w.count(used)
        for i in range(start, start + used):
            w.text(self.keys.text(self.key[i]))
            if self.row[i] < 0:
                dump_saturated(w)
            else:
                self.counts.dump(self.row[i], w)
        start, used = self.nstart[slot], self.nused[slot]
        w.count(used)
        for i in range(start, start + used):
            w.text(self.names.text(self.name[i]))
            w.f64(self.recent[i])
            w.i64(self.last_ms[i])


class CategoryFeature(Feature):
    name = "category"

    def __init__(self, cfg: FeatureConfig, clock: Clock) -> None:
        super().__init__(cfg, clock)
        self.fields = Fields()

    def reset(self, slot: int) -> None:
        self.fields.reset(slot)

    def _best(self, slot: int, event: Event) -> tuple[float, str, int]:
        cfg = self.cfg
        return best_category(
            self.fields, slot, event.type, event.strings, event.event_time_ms,
            cfg.burst_s * 1000, cfg.novelty_prior, cfg.min_count,
        )  # fmt: skip

    def judge(self, slot: int, event: Event) -> float:
        return self._best(slot, event)[0]

    def explain(self, slot: int, event: Event) -> Reason | None:
        s, name, row = self._best(slot, event)
        if row < 0:
            return None
        expected = self.fields.counts.expected(row)
        return Reason("category", name, event.strings[name], expected, s)

    def advance(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        if cfg.novelty_burst and self.clock.n[slot] > 1:
            note_novelties(
                self.fields, slot, event.type, event.strings, event.event_time_ms,
                cfg.burst_s * 1000, cfg.min_count,
            )  # fmt: skip

    def learn(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        learn_categories(
            self.fields, slot, event.type, event.strings, cfg.max_categorical_fields,
            cfg.max_categories,
        )  # fmt: skip

    def dump_table(self, w: Writer) -> None:
        from detector.core.features import tables  # (it knows the categorical classes)

        tables.dump(w, self, ("fields",))

    def load_table(self, r: Reader) -> None:
        from detector.core.features import tables

        tables.load(r, self, ("fields",))

    def dump(self, slot: int, w: Writer) -> None:
        self.fields.dump(slot, w)

    def load(self, slot: int, r: Reader) -> None:
        f = self.fields
        f.reset(slot)
        for _ in range(r.count()):
            key = r.text()
            kid = f.hold(key)
            row = f.counts.add_row()
            f.counts.load(row, r)
            if f.counts.sat[row]:  # the one shared id table
                f.counts.drop(row)
                row = -1
            f.add(slot, kid, row)
        for _ in range(r.count()):
            name = r.text()
            f.set_novelty(slot, name, r.f64(), r.i64())

    def view(self, slot: int) -> dict[str, Categories]:
        """The slot's fields by type-prefixed name, read live (ID_FIELD: saturated)."""
        f = self.fields

        def row(key: str) -> Callable[[], int]:
            return lambda: max(f.row_of(slot, key), SATURATED)  # gone: reads as saturated

        out: dict[str, Categories] = {}
        for i in range(f.start[slot], f.start[slot] + f.used[slot]):
            key = f.keys.text(f.key[i])
            out[key] = ID_FIELD if f.row[i] < 0 else Categories(f.counts, row(key))
        return out


# The per-event loops over an event's categorical fields, as functions of plain arguments:
# compiled, they run over the typed columns (category.pxd, categories.pxd) with C calls.


def best_category(
    f: Fields, slot: int, etype: str | None, strings: dict[str, str], t_ms: int,
    burst_ms: float, prior: float, min_count: int,
) -> tuple[float, str, int]:  # fmt: skip
    """(surprise, field, its row) of the field whose value is the most surprising (row -1:
    none)."""
    best, best_field, best_row = 0.0, "", -1
    if not f.used[slot]:
        return best, best_field, best_row
    bursts = f.nused[slot] > 0  # no novelty yet: no burst to look up
    counts = f.counts
    for name, value in strings.items():
        kid = f.kid_of(etype, name)
        i = -1 if kid < 0 else f.find(slot, kid)
        if i < 0:
            continue
        row = f.row[i]
        if row < 0:  # an id field: never judged, skip the burst
            continue
        burst = f.burst(slot, name, t_ms, burst_ms) if bursts else 0.0
        s = counts.surprise(row, value, prior, burst, min_count)
        if s > best:
            best, best_field, best_row = s, name, row
    return best, best_field, best_row


def note_novelties(
    f: Fields, slot: int, etype: str | None, strings: dict[str, str], t_ms: int,
    burst_ms: float, min_count: int,
) -> None:  # fmt: skip
    """Note each judged field's never-seen value among the field's recent novelties."""
    counts = f.counts
    for name, value in strings.items():
        kid = f.kid_of(etype, name)
        i = -1 if kid < 0 else f.find(slot, kid)
        if i >= 0 and f.row[i] >= 0 and counts.is_new(f.row[i], value, min_count):
            f.note(slot, name, t_ms, burst_ms)


def learn_categories(
    f: Fields, slot: int, etype: str | None, strings: dict[str, str], max_fields: int,
    cap: int,
) -> None:  # fmt: skip
    """Count each field's value (a new field while fewer than ``max_fields`` are tracked)."""
    counts = f.counts
    for name, value in strings.items():
        kid = f.kid_of(etype, name)
        i = -1 if kid < 0 else f.find(slot, kid)
        if i < 0:
            if f.used[slot] >= max_fields:
                continue
            kid = f.hold(type_prefix(etype) + name)
            f.add(slot, kid, counts.add_row())
            i = f.start[slot] + f.used[slot] - 1
        row = f.row[i]
        if row < 0:
            continue  # an id field: nothing left to count
        counts.update(row, value, cap)
        if counts.sat[row]:
            counts.drop(row)
            f.row[i] = SATURATED
