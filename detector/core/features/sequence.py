"""Sequence: the shape of a numeric field's last few values against the shapes it has taken
before (a window-distance, "discord", judgement), which no per-value judge sees: a periodic
pattern changing its period or its form while every value stays within its usual range."""

from __future__ import annotations

import math
from array import array
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.clock import Clock
from detector.core.features.config import FeatureConfig
from detector.core.features.feature import Feature
from detector.core.features.surprise import MAX_SURPRISE, Reason, signed_log, two_sided
from detector.core.features.value import FieldRows, ValueFeature

_LOG10_2 = math.log10(2.0)
_EPS = 1e-3  # distances are in z-normalised units; a repeat of a past window is ~0


class Shapes:
    """One numeric field's last ``history`` values (a float64 ring, signed-log scale) and the
    running moments of ``log`` of the nearest-neighbour distance of its windows.

    The distance of a window of the last ``window`` values is the smallest z-normalised
    Euclidean distance (per value) to any earlier window that does not overlap it, among
    those the ring holds: 0 for a shape seen before, about 1.4 for one unlike any. Its log
    is judged against its own exponentially weighted mean and variance (``fading`` per
    value): the field's usual novelty of shapes, so a noisy field is not always surprising.

    Examples:
        >>> s = Shapes(64)
        >>> for i in range(400):
        ...     _ = s.push([0.0, 1.0, 2.0, 1.0][i % 4], 4, 0.05, 0.05)
        >>> s.distance(0.0, 4, 0.05) < 0.01 < 1.0 < s.distance(1.9, 4, 0.05)
        True
    """

    __slots__ = ("count", "filled", "mean", "pos", "values", "var")

    def __init__(self, history: int) -> None:
        self.values: npt.NDArray[np.float64] = np.zeros(history, dtype=np.float64)
        self.pos = 0
        self.filled = 0
        self.count = 0
        self.mean = 0.0
        self.var = 0.0

    def recent(self) -> npt.NDArray[np.float64]:
        """The values held, oldest first."""
        if self.filled < len(self.values):
            return self.values[: self.filled]
        return np.concatenate((self.values[self.pos :], self.values[: self.pos]))

    def distance(self, y: float, window: int, min_sd: float) -> float:
        """The nearest-neighbour distance of the window ending with ``y`` (NaN: too few
        values yet for two windows apart)."""
        if self.filled < 2 * window:
            return math.nan
        seq = np.append(self.recent(), y)
        views = np.lib.stride_tricks.sliding_window_view(seq, window)
        # The query is the last window; its neighbours end at least `window` values earlier.
        past, query = views[: len(views) - window], views[-1]
        mu = past.mean(axis=1, keepdims=True)
        sd = np.maximum(past.std(axis=1, keepdims=True), min_sd)
        q = (query - query.mean()) / max(float(query.std()), min_sd)
        d2 = (((past - mu) / sd - q) ** 2).sum(axis=1)
        return math.sqrt(float(d2.min()) / window)

    def surprise(self, d: float, min_count: int, min_sd: float) -> float:
        """``-log10`` of the one-sided normal tail of ``log d`` against the usual distances
        (0 for a distance at most usual, or too few judged yet)."""
        if math.isnan(d) or self.count < min_count:
            return 0.0
        z = (math.log(d + _EPS) - self.mean) / max(math.sqrt(max(self.var, 0.0)), min_sd)
        return min(two_sided(z) + _LOG10_2, MAX_SURPRISE) if z > 0 else 0.0

    def push(
        self, y: float, window: int, min_sd: float, fading: float, d: float | None = None
    ) -> float:
        """Append ``y``; its window's distance (``d`` if already known) enters the moments.
        Returns the distance."""
        if d is None:
            d = self.distance(y, window, min_sd)
        self.values[self.pos] = y
        self.pos = (self.pos + 1) % len(self.values)
        self.filled = min(self.filled + 1, len(self.values))
        if not math.isnan(d):
            self.fold(math.log(d + _EPS), fading)
        return d

    def fold(self, ld: float, fading: float) -> None:
        self.count += 1
        if self.count == 1:
            self.mean = ld
            return
        a = max(fading, 1.0 / self.count)  # a plain mean of the first distances
        delta = ld - self.mean
        self.mean += a * delta
        self.var = (1.0 - a) * (self.var + a * delta * delta)

    def dump(self, w: Writer) -> None:
        w.f64s(self.values)
        for v in (self.pos, self.filled, self.count):
            w.i64(v)
        w.f64(self.mean)
        w.f64(self.var)

    @classmethod
    def load(cls, r: Reader) -> Shapes:
        s = cls(0)
        s.values = r.f64s()
        s.pos, s.filled, s.count = r.i64(), r.i64(), r.i64()
        s.mean, s.var = r.f64(), r.f64()
        return s


class ShapeTable:
    """A :class:`Shapes` (or None) per row of the value feature's numeric fields."""

    def __init__(self) -> None:
        self.shapes: list[Shapes | None] = []

    def reserve(self, rows: int) -> None:
        if rows > len(self.shapes):
            self.shapes.extend([None] * (rows - len(self.shapes)))

    def clear(self, row: int) -> None:
        self.shapes[row] = None

    def __reduce__(self) -> tuple[Any, ...]:
        return _table, (self.shapes,)


def _table(shapes: list[Shapes | None]) -> ShapeTable:
    t = ShapeTable()
    t.shapes = shapes
    return t


class SequenceFeature(Feature):
    """Per numeric field (per event type) the value feature tracks, its :class:`Shapes`, for
    at most ``max_profiled_fields`` fields per producer; the surprise is the largest among the
    event's fields, times ``sequence_weight``. Every event's value enters the ring (the
    sequence is a fact, whatever the verdict). Off (no state, nothing checkpointed) unless
    ``sequence_window`` > 0."""

    name = "sequence"

    def __init__(self, cfg: FeatureConfig, clock: Clock, value: ValueFeature) -> None:
        super().__init__(cfg, clock)
        self.value = value
        self.on = cfg.sequence_window > 0
        self.table = ShapeTable()
        value.rows.attach(self.table)
        # The distances of the event judged last, by row: judge, explain and advance see the
        # same event in a row, and the distance is the costly part.
        self._event: Event | None = None
        self._distances: dict[int, float] = {}

    def reset(self, slot: int) -> None:
        """The value feature's rows are the rows here: it frees them."""

    def _fields(self, slot: int, event: Event) -> list[tuple[str, int, Shapes, float]]:
        """(field, row, shapes, signed-log value) of the event's fields that have shapes."""
        rows: FieldRows = self.value.rows
        known = rows.keys.by_type.get(event.type)
        if known is None:
            return []
        out = []
        shapes = self.table.shapes
        for name, x in event.numbers.items():
            kid = known.get(name)
            row = -1 if kid is None else rows.find(slot, kid)
            if row >= 0:
                s = shapes[row]
                if s is not None:
                    out.append((name, row, s, signed_log(x)))
        return out

    def _best(self, slot: int, event: Event) -> tuple[float, str, float, Shapes | None]:
        best, best_name, best_d, best_s = 0.0, "", 0.0, None
        if not self.on:
            return best, best_name, best_d, best_s
        cfg = self.cfg
        for name, row, s, y in self._fields(slot, event):
            d = self._distance(event, row, s, y)
            surprise = s.surprise(d, cfg.min_count, cfg.min_sd) * cfg.sequence_weight
            if surprise > best:
                best, best_name, best_d, best_s = surprise, name, d, s
        return min(best, MAX_SURPRISE), best_name, best_d, best_s

    def _distance(self, event: Event, row: int, s: Shapes, y: float) -> float:
        if event is not self._event:
            self._event, self._distances = event, {}
        d = self._distances.get(row)
        if d is None:
            d = self._distances[row] = s.distance(y, self.cfg.sequence_window, self.cfg.min_sd)
        return d

    def judge(self, slot: int, event: Event) -> float:
        return self._best(slot, event)[0]

    def explain(self, slot: int, event: Event) -> Reason | None:
        s, name, d, shapes = self._best(slot, event)
        if not name or shapes is None:
            return None
        w = self.cfg.sequence_window
        usual = math.exp(shapes.mean) - _EPS
        return Reason(
            "sequence", name, f"last {w} values {d:.3g} from their nearest past shape",
            f"usually {max(usual, 0.0):.3g} (among the last {shapes.filled} values)", s,
        )  # fmt: skip

    def advance(self, slot: int, event: Event) -> None:
        """Each value of a tracked field enters its ring; a field the value feature tracks
        gets shapes (up to ``max_profiled_fields`` per producer)."""
        if not self.on:
            return
        cfg = self.cfg
        rows: FieldRows = self.value.rows
        known = rows.keys.by_type.get(event.type)
        if known is None:
            return
        shapes = self.table.shapes
        for name, x in event.numbers.items():
            kid = known.get(name)
            row = -1 if kid is None else rows.find(slot, kid)
            if row < 0:
                continue  # untracked, or its first value: the value feature adds it
            s = shapes[row]
            if s is None:
                if sum(shapes[r] is not None for r in rows.rows(slot)) >= cfg.max_profiled_fields:
                    continue
                s = shapes[row] = Shapes(cfg.sequence_history)
            y = signed_log(x)
            s.push(y, cfg.sequence_window, cfg.min_sd, cfg.sequence_fading,
                   self._distance(event, row, s, y))  # fmt: skip
        self._event = None  # the rings moved on: the distances are stale

    def rows(self, slot: int) -> list[int]:
        """``slot``'s rows that have shapes, in the order they came."""
        shapes = self.table.shapes
        return [row for row in self.value.rows.rows(slot) if shapes[row] is not None]

    def dump(self, slot: int, w: Writer) -> None:
        if not self.on:
            return  # no state: records stay as they were without the feature
        rows = self.rows(slot)
        names, key = self.value.rows.keys.names, self.value.rows.key
        w.count(len(rows))
        for row in rows:
            w.text(names[key[row]])
            s = self.table.shapes[row]
            assert s is not None  # noqa: S101 (rows() keeps those with shapes)
            s.dump(w)

    def dump_table(self, w: Writer) -> None:
        """Every row's shapes at once: which rows have them, their counters and moments as
        columns, and their rings one after another (their lengths in one more column)."""
        shapes = self.table.shapes if self.on else []
        w.count(len(shapes))
        rows = [row for row, s in enumerate(shapes) if s is not None]
        held = [s for s in shapes if s is not None]
        w.column(array("q", rows))
        for name in ("pos", "filled", "count"):
            w.column(array("q", [getattr(s, name) for s in held]))
        for name in ("mean", "var"):
            w.column(array("d", [getattr(s, name) for s in held]))
        w.column(array("q", [len(s.values) for s in held]))
        values = np.concatenate([s.values for s in held]) if held else np.zeros(0)
        w.column(np.ascontiguousarray(values, dtype=np.float64))

    def load_table(self, r: Reader) -> None:
        n, rows = r.count(), r.column()
        pos, filled, count, mean, var, lengths = (r.column() for _ in range(6))
        values = np.frombuffer(r.column(), dtype=np.float64)
        if self.on:
            shapes: list[Shapes | None] = [None] * max(n, len(self.table.shapes))
            at = 0
            for i, row in enumerate(rows):
                s = Shapes(0)
                s.values = values[at : at + lengths[i]].copy()
                at += lengths[i]
                s.pos, s.filled, s.count = pos[i], filled[i], count[i]
                s.mean, s.var = mean[i], var[i]
                shapes[row] = s
            self.table.shapes = shapes
        elif rows:
            msg = "base has sequence shapes, this spec has no sequence feature"
            raise ValueError(msg)

    def load(self, slot: int, r: Reader) -> None:
        if not self.on:
            return
        for _ in range(r.count()):
            row = self.value.rows._known_row(slot, r.text())  # ValueError if untracked
            self.table.shapes[row] = Shapes.load(r)
