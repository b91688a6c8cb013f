"""Drift: a numeric field's level creeping away from a slow reference (slow poisoning), which
the ~100-event baselines of the value feature follow unnoticed."""

from __future__ import annotations

import math
from array import array
from typing import Any

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.clock import Clock
from detector.core.features.columns import capacity, column, grown, restored
from detector.core.features.config import FeatureConfig
from detector.core.features.feature import Feature
from detector.core.features.surprise import (
    LOG10,
    MAX_SURPRISE,
    Reason,
    duration,
    signed_log,
    type_prefix,
    unlog,
)
from detector.core.features.value import FieldRows, ValueFeature

MAX_COUNT = 2**31 - 1  # a row's 4-byte count stops here (as moments.MAX_COUNT)


class DriftTable:
    """Per row, a slow reference level of one numeric field and a two-sided CUSUM against it.

    The reference is an exponentially weighted mean and variance whose memory is a span of
    event time (``horizon_ms``), not a count of events, so a busy producer's reference is as
    slow as a quiet one's. Each value adds its standardised distance from the reference
    (clipped to ``clip``, so one outlier cannot look like a drift), less a slack ``k``, to the
    CUSUM (``hi`` upwards, ``lo`` downwards; floored at 0). Under no change the statistic
    ``S`` stays small (P(S > s) ~ exp(-2ks)); a level creeping away by a fraction of a
    standard deviation per hour makes it climb without bound.

    The CUSUM advances with every event (:meth:`step_by`: how far values are from the
    reference is a fact), the reference only with accepted ones (:meth:`learn`), so a drift
    keeps accumulating evidence while its events are held back from the baselines.

    Columns (a row per producer slot, or per producer and field): ``count`` (int32: it stops
    at ``MAX_COUNT``), ``first_ms``, ``last_ms`` (int64), ``mean``, ``var``, ``hi``, ``lo``
    (float64) and ``seen`` (int8: the row has learned a value since it was cleared).
    :class:`Drift` is one row.
    """

    def __init__(self) -> None:
        self.count: array[int] = column("i", 0)
        self.first_ms: array[int] = column("q", 0)
        self.last_ms: array[int] = column("q", 0)
        self.mean: array[float] = column("d", 0)
        self.var: array[float] = column("d", 0)
        self.hi: array[float] = column("d", 0)
        self.lo: array[float] = column("d", 0)
        self.seen: array[int] = column("b", 0)
        self._bind()

    def _bind(self) -> None:
        # drift.pxd types these as memoryviews of the columns (the .py: the same arrays).
        self._count, self._first_ms, self._last_ms = self.count, self.first_ms, self.last_ms
        self._mean, self._var, self._hi, self._lo = self.mean, self.var, self.hi, self.lo
        self._seen = self.seen

    def __reduce__(self) -> tuple[Any, ...]:
        names = ("count", "first_ms", "last_ms", "mean", "var", "hi", "lo", "seen")
        return restored, (DriftTable, {name: getattr(self, name) for name in names})

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` rows."""
        if rows > len(self.count):
            n = capacity(len(self.count), rows)
            self.count, self.first_ms = grown(self.count, n), grown(self.first_ms, n)
            self.last_ms, self.mean = grown(self.last_ms, n), grown(self.mean, n)
            self.var, self.hi, self.lo = grown(self.var, n), grown(self.hi, n), grown(self.lo, n)
            self.seen = grown(self.seen, n)
            self._bind()

    def clear(self, row: int) -> None:
        self._count[row] = 0
        self._mean[row] = self._var[row] = self._hi[row] = self._lo[row] = 0.0
        self._first_ms[row] = self._last_ms[row] = -1
        self._seen[row] = 0

    def dump(self, row: int, w: Writer) -> None:
        w.i64(self._count[row])
        w.f64(self._mean[row])
        w.f64(self._var[row])
        w.f64(self._hi[row])
        w.f64(self._lo[row])
        w.i64(self._first_ms[row])
        w.i64(self._last_ms[row])

    def load(self, row: int, r: Reader) -> None:
        self.count[row], self.mean[row], self.var[row] = r.i64(), r.f64(), r.f64()
        self.hi[row], self.lo[row] = r.f64(), r.f64()
        self.first_ms[row], self.last_ms[row] = r.i64(), r.i64()
        self.seen[row] = 1

    def skip(self, gap_ms: int) -> None:
        """A pause of the whole stream: ``gap_ms`` did not happen for any reference (the next
        value stands for the time since the last one less the pause, and the time covered
        leaves it out)."""
        first, last = self._first_ms, self._last_ms
        for row in range(len(first)):
            if first[row] >= 0:
                first[row] += gap_ms
                last[row] += gap_ms

    def covered_ms(self, row: int) -> int:
        """Event time the reference has learned over since it (re)started."""
        first = self._first_ms[row]
        return max(self._last_ms[row] - first, 0) if first >= 0 else 0

    def z(self, row: int, y: float, min_sd: float) -> float:
        """Standardised distance of ``y`` from the reference."""
        return (y - self._mean[row]) / max(math.sqrt(max(self._var[row], 0.0)), min_sd)

    def clipped_z(self, row: int, y: float, min_sd: float, clip: float) -> float:
        """:meth:`z` clipped to ``±clip`` (inlined: per numeric field per event)."""
        z = (y - self._mean[row]) / max(math.sqrt(max(self._var[row], 0.0)), min_sd)
        return min(max(z, -clip), clip)

    def statistic_of(self, row: int, z: float, k: float) -> float:
        """The CUSUM statistic a value of :meth:`clipped_z` ``z`` would give, without the
        step."""
        return max(self._hi[row] + z - k, self._lo[row] - z - k, 0.0)

    def step_by(self, row: int, z: float, k: float) -> None:
        """Advance the CUSUM by a value of :meth:`clipped_z` ``z`` (every event, whatever its
        verdict)."""
        self._hi[row] = max(self._hi[row] + z - k, 0.0)
        self._lo[row] = max(self._lo[row] - z - k, 0.0)

    def learn(self, row: int, y: float, t_ms: int, horizon_ms: float, restart: float) -> None:
        """Fold an accepted value into the reference."""
        self._seen[row] = 1
        count = self._count[row]
        if count == 0:  # first value, or a restart: the variance is kept
            self._mean[row] = y
            self._first_ms[row] = self._last_ms[row] = t_ms
            self._count[row] = 1
            return
        if max(self._hi[row], self._lo[row]) > restart:
            # Accepting a large statistic means a new normal (or a drift the calibration finds
            # usual): the reference starts afresh from here.
            self._count[row] = 0
            self._hi[row] = self._lo[row] = 0.0
            return
        # Each value stands for the time since the previous one (a flood's hundred events in
        # a second weigh one second), relative to the time covered so far: a young reference
        # is a time-weighted average from its start, an old one forgets over the horizon.
        last = self._last_ms[row]
        dt = max(t_ms - last, 0)
        covered = -math.expm1(-max(t_ms - self._first_ms[row], 0) / horizon_ms)
        w = -math.expm1(-dt / horizon_ms) / covered if covered > 0 else 1.0 / (count + 1)
        # At most 1: event time may go backwards (late or hostile timestamps), and a weight
        # above 1 would overshoot and make the reference diverge.
        w = min(w, 1.0)
        mean = self._mean[row]
        d = y - mean
        self._mean[row] = mean + w * d
        self._var[row] = (1.0 - w) * (self._var[row] + w * d * d)
        self._count[row] = min(count + 1, MAX_COUNT)
        self._last_ms[row] = max(last, t_ms)


class Drift:
    """One row of a :class:`DriftTable`, read and moved live (a view for inspection and tests;
    without a table, a table of its own with one row).

    Examples:
        >>> d = Drift()
        >>> for i in range(400):
        ...     d.step(5.0 + 0.1 * (i % 3), 0.5, 0.05, 3.0)
        ...     d.learn(5.0 + 0.1 * (i % 3), 1000 * i, 3_600_000, 30.0)
        >>> d.statistic(5.1, 0.5, 0.05, 3.0) < 1 < 2 < d.statistic(7.0, 0.5, 0.05, 3.0) < 3
        True
        >>> for _ in range(20):
        ...     d.step(7.0, 0.5, 0.05, 3.0)
        >>> d.statistic(7.0, 0.5, 0.05, 3.0) > 50
        True
    """

    __slots__ = ("row", "table")

    def __init__(self, table: DriftTable | None = None, row: int = 0) -> None:
        if table is None:
            table = DriftTable()
            table.reserve(1)
            table.clear(0)
        self.table, self.row = table, row

    @property
    def count(self) -> int:
        return int(self.table.count[self.row])

    @property
    def first_ms(self) -> int:
        return int(self.table.first_ms[self.row])

    @property
    def last_ms(self) -> int:
        return int(self.table.last_ms[self.row])

    @property
    def mean(self) -> float:
        return float(self.table.mean[self.row])

    @property
    def var(self) -> float:
        return float(self.table.var[self.row])

    @property
    def hi(self) -> float:
        return float(self.table.hi[self.row])

    @property
    def lo(self) -> float:
        return float(self.table.lo[self.row])

    def z(self, y: float, min_sd: float) -> float:
        return self.table.z(self.row, y, min_sd)

    def statistic(self, y: float, k: float, min_sd: float, clip: float) -> float:
        """The CUSUM statistic this value would give, without taking the step."""
        return self.table.statistic_of(self.row, self.table.clipped_z(self.row, y, min_sd, clip), k)

    def step(self, y: float, k: float, min_sd: float, clip: float) -> None:
        """Advance the CUSUM by one value."""
        self.table.step_by(self.row, self.table.clipped_z(self.row, y, min_sd, clip), k)

    def learn(self, y: float, t_ms: int, horizon_ms: float, restart: float) -> None:
        self.table.learn(self.row, y, t_ms, horizon_ms, restart)


class DriftFeature(Feature):
    """Per numeric field (per event type), a drift row (:class:`DriftTable`) beside the value
    feature's row of the field; the surprise is the largest CUSUM statistic among the event's
    fields. Tracks the fields the value feature tracks."""

    name = "drift"

    def __init__(self, cfg: FeatureConfig, clock: Clock, value: ValueFeature) -> None:
        super().__init__(cfg, clock)
        self.value = value
        self.drifts = DriftTable()
        value.rows.attach(self.drifts)

    def reset(self, slot: int) -> None:
        """The value feature's rows are the drift rows: it frees them."""

    def skip(self, gap_ms: int) -> None:
        self.drifts.skip(gap_ms)

    def _best(self, slot: int, event: Event) -> tuple[float, str]:
        cfg = self.cfg
        return best_drift(
            self.value.rows, self.drifts, slot, event.type, event.numbers, cfg.min_count,
            cfg.min_sd, cfg.drift_clip, cfg.drift_slack,
        )  # fmt: skip

    def judge(self, slot: int, event: Event) -> float:
        return self._best(slot, event)[0]

    def explain(self, slot: int, event: Event) -> Reason | None:
        s, name = self._best(slot, event)
        if not name:
            return None
        rows = self.value.rows
        row = rows.row_of(slot, type_prefix(event.type) + name)
        level = unlog(rows.moments.mean[row])
        # The time the reference has really learned over: its horizon only once it spans it.
        horizon_ms = self.cfg.drift_horizon_s * 1000
        covered = self.drifts.covered_ms(row)
        span = f"~{duration(horizon_ms)}" if covered >= horizon_ms else duration(covered)
        return Reason(
            "drift", name, f"recent level {level:.4g}",
            f"{unlog(self.drifts.mean[row]):.4g} (reference over {span})", s,
        )  # fmt: skip

    def advance(self, slot: int, event: Event) -> None:
        """The CUSUMs of judged fields advance with every event."""
        cfg = self.cfg
        step_drifts(
            self.value.rows, self.drifts, slot, event.type, event.numbers, cfg.min_count,
            cfg.min_sd, cfg.drift_clip, cfg.drift_slack,
        )  # fmt: skip

    def learn(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        if cfg.drift_horizon_s <= 0:
            return
        learn_drifts(
            self.value.rows, self.drifts, slot, event.type, event.numbers, event.event_time_ms,
            cfg.drift_horizon_s * 1000, cfg.drift_restart,
        )  # fmt: skip

    def rows(self, slot: int) -> list[int]:
        """``slot``'s rows that have a drift, in the order they came."""
        seen = self.drifts.seen
        return [row for row in self.value.rows.rows(slot) if seen[row]]

    def dump(self, slot: int, w: Writer) -> None:
        rows = self.rows(slot)
        names, key = self.value.rows.keys.names, self.value.rows.key
        w.count(len(rows))
        for row in rows:
            w.text(names[key[row]])
            self.drifts.dump(row, w)

    def load(self, slot: int, r: Reader) -> None:
        for _ in range(r.count()):
            key = r.text()
            row = self.value.rows.row_of(slot, key)
            if row < 0:
                msg = f"record has a drift for the untracked numeric field {key!r}"
                raise ValueError(msg)
            self.drifts.load(row, r)

    def dump_table(self, w: Writer) -> None:
        from detector.core.features import tables  # (it knows this module's classes)

        tables.dump(w, self, ("drifts",))

    def load_table(self, r: Reader) -> None:
        from detector.core.features import tables

        tables.load(r, self, ("drifts",))


def best_drift(
    rows: FieldRows, drifts: DriftTable, slot: int, etype: str | None,
    numbers: dict[str, float], min_count: int, min_sd: float, clip: float, k: float,
) -> tuple[float, str]:  # fmt: skip
    """(surprise, field) of the field whose CUSUM statistic this event would raise most."""
    best, best_name = 0.0, ""
    known = rows.keys.by_type.get(etype)
    if known is None:
        return best, best_name
    for name, x in numbers.items():
        row = drift_row(rows, drifts, slot, known.get(name), min_count)
        if row < 0:
            continue
        z = drifts.clipped_z(row, signed_log(x), min_sd, clip)
        # P(S > s) ~ exp(-2 k s) for a CUSUM under no change: -log10 of that.
        s = min(2.0 * k * drifts.statistic_of(row, z, k) / LOG10, MAX_SURPRISE)
        if s > 0 and (not best_name or s > best):
            best, best_name = s, name
    return best, best_name


def drift_row(
    rows: FieldRows, drifts: DriftTable, slot: int, kid: int | None, min_count: int
) -> int:
    """The row of key ``kid`` in ``slot`` if its drift is judged (``min_count`` values), or -1."""
    if kid is None:
        return -1
    row = rows.find(slot, kid)
    if row < 0 or not drifts._seen[row] or drifts._count[row] < min_count:
        return -1
    return row


def step_drifts(
    rows: FieldRows, drifts: DriftTable, slot: int, etype: str | None,
    numbers: dict[str, float], min_count: int, min_sd: float, clip: float, k: float,
) -> None:  # fmt: skip
    """Advance the CUSUM of every judged field by the event's value."""
    known = rows.keys.by_type.get(etype)
    if known is None:
        return
    for name, x in numbers.items():
        row = drift_row(rows, drifts, slot, known.get(name), min_count)
        if row >= 0:
            drifts.step_by(row, drifts.clipped_z(row, signed_log(x), min_sd, clip), k)


def learn_drifts(
    rows: FieldRows, drifts: DriftTable, slot: int, etype: str | None,
    numbers: dict[str, float], t_ms: int, horizon_ms: float, restart: float,
) -> None:  # fmt: skip
    """Fold an accepted event's values into the references of its fields, for the fields the
    value feature tracks (a row in ``rows``)."""
    known = rows.keys.by_type.get(etype)
    if known is None:
        return
    for name, x in numbers.items():
        kid = known.get(name)
        row = -1 if kid is None else rows.find(slot, kid)
        if row >= 0:  # else the value feature's cap: untracked field
            drifts.learn(row, signed_log(x), t_ms, horizon_ms, restart)
