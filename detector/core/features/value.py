"""Value: each numeric field (per event type) against the producer's running moments, and
optionally its time-of-period profile and its rank among the field's last values."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.config import FeatureConfig
from detector.core.features.feature import Feature
from detector.core.features.moments import Moments
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


@dataclass(slots=True)
class Fields:
    """One producer's numeric fields: running moments, and (when the spec asks for them, for
    at most ``max_profiled_fields``) time-of-period profiles and value windows."""

    numeric: dict[str, Moments]
    seasonal: dict[str, Seasonal]
    windows: dict[str, ValueWindow]

    def get(self, key: str) -> Moments | None:
        return self.numeric.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.numeric

    def __len__(self) -> int:
        return len(self.numeric)


class ValueFeature(Feature[Fields]):
    """Per numeric field, the largest of: the surprise against the field's running moments,
    against its time-of-period bucket, and (weighted) its rank among the last values."""

    name = "value"

    def new(self) -> Fields:
        return Fields({}, {}, {})

    def bucket(self, t_ms: int) -> int:
        """Time-of-period bucket of an event time (UTC; event time, so replays agree)."""
        cfg = self.cfg
        width = cfg.seasonal_period_s * 1000 // cfg.seasonal_buckets
        return (t_ms // width) % cfg.seasonal_buckets

    def _best(self, slot: int, event: Event) -> tuple[float, str, float, str]:
        """(surprise, field, value, source) of the most surprising field."""
        f = self.slots[slot]
        b = self.bucket(event.event_time_ms) if f.seasonal else 0
        return best_value(f, type_prefix(event.type), event.numbers, b, self.cfg)

    def judge(self, slot: int, event: Event) -> float:
        return self._best(slot, event)[0]

    def explain(self, slot: int, event: Event) -> Reason | None:
        s, name, x, source = self._best(slot, event)
        if not source:
            return None
        cfg, f = self.cfg, self.slots[slot]
        key = type_prefix(event.type) + name
        if source == "moments":
            expected = f.numeric[key].expected(cfg.min_sd)
        elif source == "seasonal":
            b = self.bucket(event.event_time_ms)
            expected = f"{f.seasonal[key].expected(b, cfg.min_sd)} at this time of day"
        else:
            expected = f.windows[key].expected()
        return Reason("value", name, f"{x:.6g}", expected, s)

    def learn(self, slot: int, event: Event) -> None:
        f = self.slots[slot]
        b = self.bucket(event.event_time_ms) if self.cfg.seasonal_buckets else 0
        learn_values(f, type_prefix(event.type), event.numbers, b, self.cfg)

    def dump(self, slot: int, w: Writer) -> None:
        f = self.slots[slot]
        w.count(len(f.numeric))
        for key, m in f.numeric.items():
            w.text(key)
            m.dump(w)
        w.count(len(f.seasonal))
        for key, prof in f.seasonal.items():
            w.text(key)
            prof.dump(w)
        w.count(len(f.windows))
        for key, win in f.windows.items():
            w.text(key)
            win.dump(w)

    def load(self, slot: int, r: Reader) -> None:
        fading = self.cfg.fading_factor
        numeric = {sys.intern(r.text()): Moments.load(r, fading) for _ in range(r.count())}
        seasonal = {sys.intern(r.text()): Seasonal.load(r) for _ in range(r.count())}
        windows = {sys.intern(r.text()): ValueWindow.load(r) for _ in range(r.count())}
        self.slots[slot] = Fields(numeric, seasonal, windows)


def best_value(
    f: Fields, prefix: str, numbers: dict[str, float], b: int, cfg: FeatureConfig
) -> tuple[float, str, float, str]:
    """(surprise, field, value, source) of the event's most surprising numeric field; the
    source says what it is judged against ("moments", "seasonal", "window"). ``b``: the event's
    time-of-period bucket."""
    numeric = f.numeric
    min_count, min_sd = cfg.min_count, cfg.min_sd
    profiled = bool(f.seasonal or f.windows)
    best, best_name, best_x, best_source = 0.0, "", 0.0, ""
    for name, x in numbers.items():
        key = prefix + name
        y = signed_log(x)
        s, source = 0.0, ""
        m = numeric.get(key)
        if m is not None and m.count >= min_count:
            s, source = two_sided(m.z(y, min_sd)), "moments"
        if profiled:
            s, source = judge_profiles(f, key, y, b, s, source, cfg)
        if s > 0 and (not best_source or s > best):
            best, best_name, best_x, best_source = s, name, x, source
    return best, best_name, best_x, best_source


def judge_profiles(
    f: Fields, key: str, y: float, b: int, s: float, source: str, cfg: FeatureConfig
) -> tuple[float, str]:
    """One field's (surprise, source) once its time-of-period bucket and value window (if
    it has them) have their say over the moments' ``s``."""
    prof = f.seasonal.get(key)
    if prof is not None and prof.count[b] >= cfg.seasonal_min_count:
        ss = two_sided(prof.z(b, y, cfg.min_sd))
        if ss > s or cfg.seasonal_explains:
            s, source = ss, "seasonal"
    win = f.windows.get(key)
    if win is not None:
        ws = cfg.window_weight * win.surprise(y, cfg.window_tail, cfg.min_sd, cfg.window_floor)
        if ws > s:
            s, source = min(ws, MAX_SURPRISE), "window"
    return s, source


def learn_values(
    f: Fields, prefix: str, numbers: dict[str, float], b: int, cfg: FeatureConfig
) -> None:
    """Fold an accepted event's numeric fields into their moments (a new field only while the
    producer tracks fewer than ``max_numeric_fields``) and, if the spec has them, profiles."""
    numeric = f.numeric
    fading, cap = cfg.fading_factor, cfg.max_numeric_fields
    profiles = bool(cfg.seasonal_buckets or cfg.window_values)
    for name, x in numbers.items():
        key = prefix + name
        m = numeric.get(key)
        if m is None:
            if len(numeric) >= cap:
                continue
            key = sys.intern(key)
            m = numeric[key] = Moments(fading)
        y = signed_log(x)
        m.update(y)
        if profiles:
            learn_profiles(f, key, y, b, cfg)


def learn_profiles(f: Fields, key: str, y: float, b: int, cfg: FeatureConfig) -> None:
    """Seasonal bucket ``b`` and value window of one numeric field, each made while the
    producer has fewer than ``max_profiled_fields`` of them."""
    cap = cfg.max_profiled_fields
    if cfg.seasonal_buckets:
        prof = f.seasonal.get(key)
        if prof is None and len(f.seasonal) < cap:
            prof = f.seasonal[key] = Seasonal(cfg.seasonal_buckets)
        if prof is not None:
            prof.update(b, y, cfg.seasonal_fading)
    if cfg.window_values:
        win = f.windows.get(key)
        if win is None and len(f.windows) < cap:
            win = f.windows[key] = ValueWindow(cfg.window_values)
        if win is not None:
            win.update(y)
