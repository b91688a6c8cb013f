"""Value: each numeric field (per event type) against the producer's running moments, and
optionally its time-of-period profile and its rank among the field's last values."""

from __future__ import annotations

import math
import sys
from array import array
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.clock import Clock
from detector.core.features.columns import capacity, chain, column, grown, restored
from detector.core.features.config import FeatureConfig
from detector.core.features.feature import Feature
from detector.core.features.moments import MomentsTable
from detector.core.features.surprise import (
    MAX_SURPRISE,
    Reason,
    signed_log,
    two_sided,
    type_prefix,
    unlog,
)


class Seasonal:
    """Exponentially weighted mean and variance of a numeric field per time bucket.

    Three float64 arrays of ``buckets`` entries (24 buckets: 576 bytes of data). A bucket's
    first observation sets its mean; each bucket forgets at its own pace (``fading`` per
    observation in that bucket), so a daily profile follows slow changes day by day.

    Examples:
        >>> s = Seasonal(24)
        >>> for day in range(20):
        ...     for hour in range(24):
        ...         s.update(hour, 10.0 * hour + day % 2, 0.1)
        >>> abs(s.z(3, 30.5, 0.05)) < 2 < abs(s.z(3, 130.0, 0.05))
        True
    """

    __slots__ = ("count", "mean", "var")

    def __init__(self, buckets: int) -> None:
        self.count: npt.NDArray[np.int64] = np.zeros(buckets, dtype=np.int64)
        self.mean: npt.NDArray[np.float64] = np.zeros(buckets, dtype=np.float64)
        self.var: npt.NDArray[np.float64] = np.zeros(buckets, dtype=np.float64)

    def update(self, b: int, x: float, fading: float) -> None:
        count, mean, var = self.count, self.mean, self.var  # value.pxd: typed memoryviews
        count[b] += 1
        if count[b] == 1:
            mean[b] = x
            return
        d = x - float(mean[b])
        inc = fading * d
        mean[b] += inc
        var[b] = (1.0 - fading) * (float(var[b]) + d * inc)

    def dump(self, w: Writer) -> None:
        w.i64s(self.count)
        w.f64s(self.mean)
        w.f64s(self.var)

    @classmethod
    def load(cls, r: Reader) -> Seasonal:
        s = cls(0)
        s.count, s.mean, s.var = r.i64s(), r.f64s(), r.f64s()
        return s

    def sd(self, b: int, min_sd: float) -> float:
        return max(math.sqrt(max(float(self.var[b]), 0.0)), min_sd)

    def z(self, b: int, x: float, min_sd: float) -> float:
        return (x - float(self.mean[b])) / self.sd(b, min_sd)

    def expected(self, b: int, min_sd: float) -> str:
        m, sd = float(self.mean[b]), self.sd(b, min_sd)
        return f"{unlog(m - 3 * sd):.4g}..{unlog(m + 3 * sd):.4g}"


class ValueWindow:
    """The last ``size`` values of a numeric field (a float64 ring: 8 bytes per value), and how
    rare a value is among them: its rank, and beyond the ``tail`` most extreme values an
    exponential tail whose scale is their mean spacing (peaks over threshold).

    Examples:
        >>> w = ValueWindow(200)
        >>> for i in range(400):
        ...     w.update(float(i % 5))
        >>> w.surprise(2.0, 20, 0.05) < 1 < 5 < w.surprise(9.0, 20, 0.05)
        True
    """

    __slots__ = ("n", "pos", "values")

    def __init__(self, size: int) -> None:
        self.values: npt.NDArray[np.float64] = np.zeros(size, dtype=np.float64)
        self.n = 0
        self.pos = 0

    def update(self, x: float) -> None:
        values = self.values  # value.pxd: a typed memoryview
        values[self.pos] = x
        self.pos = (self.pos + 1) % len(values)
        self.n = min(self.n + 1, len(values))

    def dump(self, w: Writer) -> None:
        w.f64s(self.values)
        w.i64(self.n)
        w.i64(self.pos)

    @classmethod
    def load(cls, r: Reader) -> ValueWindow:
        win = cls(0)
        win.values, win.n, win.pos = r.f64s(), r.i64(), r.i64()
        return win

    def surprise(self, x: float, tail: int, min_sd: float, floor: bool = False) -> float:
        """``-log10`` of the two-sided chance of a value at least this extreme; with
        ``floor``, the extrapolated tail never reads rarer than the values seen beyond ``x``."""
        n = self.n
        if n < 2 * tail:
            return 0.0
        past = self.values[:n]
        above, below = int((past >= x).sum()), int((past <= x).sum())
        p_up, p_down = (above + 1) / (n + 1), (below + 1) / (n + 1)
        if above < tail:
            top = np.partition(past, n - tail)[n - tail :]  # the tail largest, unordered
            u = float(top.min())
            scale = max((float(top.max()) - u) / tail, min_sd)
            p_up = tail / (n + 1) * math.exp(-(x - u) / scale)
            if floor:
                p_up = max(p_up, above / (n + 1))
        if below < tail:
            low = np.partition(past, tail - 1)[:tail]
            u = float(low.max())
            scale = max((u - float(low.min())) / tail, min_sd)
            p_down = tail / (n + 1) * math.exp(-(u - x) / scale)
            if floor:
                p_down = max(p_down, below / (n + 1))
        p = min(2.0 * min(p_up, p_down), 1.0)
        return min(-math.log10(max(p, 1e-300)), MAX_SURPRISE)

    def expected(self) -> str:
        past = self.values[: self.n]
        lo, hi = np.quantile(past, [0.001, 0.999])
        return f"{unlog(float(lo)):.4g}..{unlog(float(hi)):.4g} (last {self.n} values)"


class Keys:
    """The numeric fields' keys (event type prefix and field name) as small ints shared by all
    producers (:attr:`names`: each id's key), and per event type its field names' ids, so an
    event's fields are found without building a key per field."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []
        self.by_type: dict[str | None, dict[str, int]] = {}

    def id_of(self, key: str) -> int:
        """The id of ``key``, given on first sight."""
        kid = self.ids.get(key)
        if kid is None:
            kid = self.ids[sys.intern(key)] = len(self.names)
            self.names.append(sys.intern(key))
            # Every (type, name) that builds this key finds it (a type or name may hold the
            # separator): the type-less name first, then each split at a separator.
            self.by_type.setdefault(None, {})[self.names[kid]] = kid
            at = key.find("\x1f")
            while at >= 0:
                etype, name = sys.intern(key[:at]), sys.intern(key[at + 1 :])
                self.by_type.setdefault(etype, {})[name] = kid
                at = key.find("\x1f", at + 1)
        return kid


class FieldRows:
    """Every producer's numeric fields as rows: one per (slot, key) in use, holding the key id
    and the next row of the slot (a chain in the order the fields came), the moments in
    :attr:`moments` (a row of it per row) and, for the fields profiled, a :class:`Seasonal` and a
    :class:`ValueWindow`. Other features keep columns by the same rows (:meth:`attach`: the
    drift feature). Freed rows (a slot reset) are reused."""

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.keys = Keys()
        self.moments = MomentsTable(cfg.fading_factor)
        self.attached: list[Any] = []
        self.key: array[int] = column("i", 0)
        self.next: array[int] = column("i", 0)
        self.seasonal: list[Seasonal | None] = []
        self.windows: list[ValueWindow | None] = []
        # Per slot: first and last row, and how many rows, profiles and windows it has.
        self.head: array[int] = column("i", 0)
        self.tail: array[int] = column("i", 0)
        self.fields: array[int] = column("i", 0)
        self.profiles: array[int] = column("i", 0)
        self.windowed: array[int] = column("i", 0)
        self.used = 0  # rows ever given (the free ones chained from free)
        self.free = -1
        self.min_count, self.min_sd = cfg.min_count, cfg.min_sd
        self.cap, self.profiled_cap = cfg.max_numeric_fields, cfg.max_profiled_fields
        self.buckets, self.window_values = cfg.seasonal_buckets, cfg.window_values
        self.profiled = bool(cfg.seasonal_buckets or cfg.window_values)
        self._bind()

    def __reduce__(self) -> tuple[Any, ...]:
        names = (
            "cfg", "keys", "moments", "attached", "key", "next", "seasonal", "windows", "head",
            "tail", "fields", "profiles", "windowed", "used", "free", "min_count", "min_sd",
            "cap", "profiled_cap", "buckets", "window_values", "profiled",
        )  # fmt: skip
        return restored, (FieldRows, {name: getattr(self, name) for name in names})

    def _bind(self) -> None:
        self._bind_rows()
        self._bind_slots()

    def _bind_rows(self) -> None:
        # value.pxd types these as memoryviews of the columns (the .py: the same arrays).
        self._key, self._next = self.key, self.next

    def _bind_slots(self) -> None:
        self._head, self._tail, self._fields = self.head, self.tail, self.fields
        self._profiles, self._windowed = self.profiles, self.windowed

    def attach(self, table: Any) -> None:
        """Keep ``table`` (``reserve(rows)``, ``clear(row)``) row for row with these rows."""
        table.reserve(len(self.key))
        self.attached.append(table)

    def reset(self, slot: int) -> None:
        """Free ``slot``'s rows (a new producer takes it)."""
        if slot >= len(self.head):
            have, n = len(self.head), capacity(len(self.head), slot + 1)
            self.head, self.tail, self.fields = (
                grown(self.head, n),
                grown(self.tail, n),
                grown(self.fields, n),
            )
            for c in (self.head, self.tail):
                for i in range(have, n):
                    c[i] = -1  # no rows
            self.profiles, self.windowed = grown(self.profiles, n), grown(self.windowed, n)
            self._bind_slots()
        else:
            row = self._head[slot]
            while row >= 0:
                after = self._next[row]
                self.seasonal[row] = self.windows[row] = None
                self._next[row] = self.free
                self.free = row
                row = after
        self._head[slot] = self._tail[slot] = -1
        self._fields[slot] = self._profiles[slot] = self._windowed[slot] = 0

    def find(self, slot: int, kid: int) -> int:
        """The row of key ``kid`` in ``slot``, or -1."""
        row = self._head[slot]
        while row >= 0 and self._key[row] != kid:
            row = self._next[row]
        return row

    def add(self, slot: int, kid: int) -> int:
        """A cleared row for key ``kid``, last of ``slot``'s."""
        row = self.free
        if row >= 0:
            self.free = self._next[row]
        else:
            row = self.used
            self.used += 1
            if row >= len(self.key):
                n = capacity(len(self.key), row + 1)
                self.key, self.next = grown(self.key, n), grown(self.next, n)
                self._bind_rows()
                self.seasonal.extend([None] * (n - len(self.seasonal)))
                self.windows.extend([None] * (n - len(self.windows)))
                self.moments.reserve(n)
                for table in self.attached:
                    table.reserve(n)
        self._key[row] = kid
        self._next[row] = -1
        self.moments.clear(row)
        for table in self.attached:
            table.clear(row)
        last = self._tail[slot]
        if last >= 0:
            self._next[last] = row
        else:
            self._head[slot] = row
        self._tail[slot] = row
        self._fields[slot] += 1
        return row

    def rows(self, slot: int) -> list[int]:
        """``slot``'s rows, in the order its fields came."""
        return chain(self.head, self.next, slot)

    def row_of(self, slot: int, key: str) -> int:
        """The row of ``key`` in ``slot``, or -1."""
        kid = self.keys.ids.get(key)
        return -1 if kid is None else self.find(slot, kid)

    def best(
        self, slot: int, etype: str | None, numbers: dict[str, float], b: int
    ) -> tuple[float, str, float, str]:
        """(surprise, field, value, source) of the event's most surprising numeric field; the
        source says what it is judged against ("moments", "seasonal", "window"). ``b``: the
        event's time-of-period bucket."""
        best, best_name, best_x, best_source = 0.0, "", 0.0, ""
        known = self.keys.by_type.get(etype)
        if known is None or self._head[slot] < 0:
            return best, best_name, best_x, best_source
        moments = self.moments
        profiled = bool(self._profiles[slot] or self._windowed[slot])
        for name, x in numbers.items():
            kid = known.get(name)
            if kid is None:
                continue
            row = self.find(slot, kid)
            if row < 0:
                continue
            y = signed_log(x)
            s, source = 0.0, ""
            if moments._count[row] >= self.min_count:
                s, source = two_sided(moments.z(row, y, self.min_sd)), "moments"
            if profiled:
                s, source = self.judge_profiles(row, y, b, s, source)
            if s > 0 and (not best_source or s > best):
                best, best_name, best_x, best_source = s, name, x, source
        return best, best_name, best_x, best_source

    def judge_profiles(
        self, row: int, y: float, b: int, s: float, source: str
    ) -> tuple[float, str]:
        """One field's (surprise, source) once its time-of-period bucket and value window (if
        it has them) have their say over the moments' ``s``."""
        cfg = self.cfg
        prof = self.seasonal[row]
        if prof is not None and prof.count[b] >= cfg.seasonal_min_count:
            ss = two_sided(prof.z(b, y, cfg.min_sd))
            if ss > s or cfg.seasonal_explains:
                s, source = ss, "seasonal"
        win = self.windows[row]
        if win is not None:
            ws = cfg.window_weight * win.surprise(y, cfg.window_tail, cfg.min_sd, cfg.window_floor)
            if ws > s:
                s, source = min(ws, MAX_SURPRISE), "window"
        return s, source

    def learn(self, slot: int, etype: str | None, numbers: dict[str, float], b: int) -> None:
        """Fold an accepted event's numeric fields into their moments (a new field only while
        the producer tracks fewer than ``max_numeric_fields``) and, if the spec has them,
        profiles."""
        known = self.keys.by_type.get(etype)
        for name, x in numbers.items():
            row = -1
            kid = None if known is None else known.get(name)
            if kid is not None:
                row = self.find(slot, kid)
            if row < 0:
                if self._fields[slot] >= self.cap:
                    continue
                if kid is None:
                    kid = self.keys.id_of(type_prefix(etype) + name)
                    known = self.keys.by_type.get(etype)
                row = self.add(slot, kid)
            y = signed_log(x)
            self.moments.update(row, y)
            if self.profiled:
                self.learn_profiles(slot, row, y, b)

    def learn_profiles(self, slot: int, row: int, y: float, b: int) -> None:
        """Seasonal bucket ``b`` and value window of one numeric field, each made while the
        producer has fewer than ``max_profiled_fields`` of them."""
        if self.buckets:
            prof = self.seasonal[row]
            if prof is None and self._profiles[slot] < self.profiled_cap:
                prof = self.seasonal[row] = Seasonal(self.buckets)
                self._profiles[slot] += 1
            if prof is not None:
                prof.update(b, y, self.cfg.seasonal_fading)
        if self.window_values:
            win = self.windows[row]
            if win is None and self._windowed[slot] < self.profiled_cap:
                win = self.windows[row] = ValueWindow(self.window_values)
                self._windowed[slot] += 1
            if win is not None:
                win.update(y)

    def dump(self, slot: int, w: Writer) -> None:
        names, rows = self.keys.names, self.rows(slot)
        w.count(len(rows))
        for row in rows:
            w.text(names[self._key[row]])
            self.moments.dump(row, w)
        profiles = [row for row in rows if self.seasonal[row] is not None]
        w.count(len(profiles))
        for row in profiles:
            w.text(names[self._key[row]])
            self.seasonal[row].dump(w)  # type: ignore[union-attr]
        windows = [row for row in rows if self.windows[row] is not None]
        w.count(len(windows))
        for row in windows:
            w.text(names[self._key[row]])
            self.windows[row].dump(w)  # type: ignore[union-attr]

    def load(self, slot: int, r: Reader) -> None:
        for _ in range(r.count()):
            row = self.add(slot, self.keys.id_of(r.text()))
            self.moments.load(row, r)
        for _ in range(r.count()):
            row = self._known_row(slot, r.text())  # the key comes first
            self.seasonal[row] = Seasonal.load(r)
            self._profiles[slot] += 1
        for _ in range(r.count()):
            row = self._known_row(slot, r.text())
            self.windows[row] = ValueWindow.load(r)
            self._windowed[slot] += 1

    def _known_row(self, slot: int, key: str) -> int:
        row = self.row_of(slot, key)
        if row < 0:
            msg = f"record has state for the untracked numeric field {key!r}"
            raise ValueError(msg)
        return row


class ValueFeature(Feature):
    """Per numeric field, the largest of: the surprise against the field's running moments,
    against its time-of-period bucket, and (weighted) its rank among the last values. The
    state of every producer is in :attr:`rows`."""

    name = "value"

    def __init__(self, cfg: FeatureConfig, clock: Clock) -> None:
        super().__init__(cfg, clock)
        self.rows = FieldRows(cfg)

    def reset(self, slot: int) -> None:
        self.rows.reset(slot)

    def bucket(self, t_ms: int) -> int:
        """Time-of-period bucket of an event time (UTC; event time, so replays agree)."""
        cfg = self.cfg
        width = cfg.seasonal_period_s * 1000 // cfg.seasonal_buckets
        return (t_ms // width) % cfg.seasonal_buckets

    def _best(self, slot: int, event: Event) -> tuple[float, str, float, str]:
        """(surprise, field, value, source) of the most surprising field."""
        rows = self.rows
        b = self.bucket(event.event_time_ms) if rows.profiles[slot] else 0
        return rows.best(slot, event.type, event.numbers, b)

    def judge(self, slot: int, event: Event) -> float:
        return self._best(slot, event)[0]

    def explain(self, slot: int, event: Event) -> Reason | None:
        s, name, x, source = self._best(slot, event)
        if not source:
            return None
        cfg, rows = self.cfg, self.rows
        row = rows.row_of(slot, type_prefix(event.type) + name)
        if source == "moments":
            expected = rows.moments.expected(row, cfg.min_sd)
        elif source == "seasonal":
            b = self.bucket(event.event_time_ms)
            prof = rows.seasonal[row]
            assert prof is not None  # noqa: S101 (judged against it)
            expected = f"{prof.expected(b, cfg.min_sd)} at this time of day"
        else:
            win = rows.windows[row]
            assert win is not None  # noqa: S101 (judged against it)
            expected = win.expected()
        return Reason("value", name, f"{x:.6g}", expected, s)

    def learn(self, slot: int, event: Event) -> None:
        b = self.bucket(event.event_time_ms) if self.cfg.seasonal_buckets else 0
        self.rows.learn(slot, event.type, event.numbers, b)

    def dump(self, slot: int, w: Writer) -> None:
        self.rows.dump(slot, w)

    def load(self, slot: int, r: Reader) -> None:
        self.rows.load(slot, r)

    def dump_table(self, w: Writer) -> None:
        from detector.core.features import tables  # (it knows this module's classes)

        tables.dump(w, self, ("rows",))

    def load_table(self, r: Reader) -> None:
        from detector.core.features import tables

        tables.load(r, self, ("rows",))
        # The tables other features keep row for row (attach) have as many rows again; those
        # without columns of their own (the sequence feature's) load their rows after this.
        for table in self.rows.attached:
            table.reserve(len(self.rows.key))
