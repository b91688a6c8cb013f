"""Features: bounded per-producer state and the evidence it gives about each event.

Every feature is a *surprise* in log10 units, ``-log10(p)``, where ``p`` is the probability of
seeing something at least this unusual given the producer's own past. Surprises are comparable
across features and producers, and the models combine them. Extraction reads the state before
the event updates it, so a score only sees the past (:meth:`FeatureStore.observe`).

Examples:
    >>> from detector.events import Event
    >>> store = FeatureStore(FeatureConfig())
    >>> def ev(t, amount, cur="EUR"):
    ...     return Event("s", f"{t}-0", "pay-1", t, "paid", {"amount": amount}, {"cur": cur}, 50)
    >>> for i in range(200):
    ...     _ = store.observe(ev(1000 * i, 10.0 + i % 3), learn=True)
    >>> normal = store.observe(ev(200_000, 11.0), learn=False)
    >>> odd = store.observe(ev(201_000, 900.0, "XMR"), learn=False)
    >>> normal.surprise["value"] < 1 < 5 < odd.surprise["value"], odd.surprise["category"] > 2
    (True, True)
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from river import stats

from detector.calibration import RarityTrend, TailCounts
from detector.events import Event

FEATURES = ("rate", "value", "size", "type", "category", "schema")
_LOG10 = math.log(10.0)
_SQRT2 = math.sqrt(2.0)
_SQRT_PI = math.sqrt(math.pi)
MAX_SURPRISE = 64.0


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """How producer baselines learn and what they may hold.

    Attributes:
        fading_factor: weight of the newest event in running moments (memory ~ 1/fading).
        rate_fading_factor: smoothing of the inter-arrival time, in events.
        min_count: observations of a numeric field before it is judged.
        min_sd: floor on a standard deviation in log space (about a 5% change).
        max_numeric_fields: numeric (type, field) pairs tracked per producer.
        max_categorical_fields: categorical (type, field) pairs tracked per producer.
        max_categories: distinct values per field before it counts as an id (not judged).
        max_schemas: distinct payload shapes tracked per producer.
        novelty_prior: pseudo-count of "new value" observations (Good-Turing smoothing).
        disabled: features never computed (their surprise stays 0), e.g. ``("rate", "size")``
            for univariate metric streams, where irregular sampling and the number of digits
            of a value say nothing about the metric.
        seasonal_buckets: a per-field time-of-period profile of numeric values with this many
            buckets of ``seasonal_period_s / seasonal_buckets`` (UTC, event time); 0 = off.
            A value is also judged against its bucket, so a daily cycle is not "spread".
        seasonal_period_s: the period the buckets divide (86400: time of day).
        seasonal_fading: memory of each bucket, in its own observations.
        seasonal_min_count: observations of a bucket before it is judged.
        seasonal_explains: once a bucket is judged, it replaces the running moments (a value
            usual for its time of day is usual, however far from the overall mean); else the
            larger of the two surprises counts.
        window_values: last values kept per numeric field for an empirical (rank) judgement:
            robust where a normal fit is not (counts, spikes, few distinct values); 0 = off.
        window_tail: values beyond which the window's tail is extrapolated (exponential).
        window_weight: multiplier of the window surprise (its p-values are rank based and
            coarser than the fitted ones; the calibration puts everything on one scale).
        max_profiled_fields: numeric fields per producer with a seasonal profile or window.
    """

    fading_factor: float = 0.01
    rate_fading_factor: float = 0.1
    min_count: int = 20
    min_sd: float = 0.05
    max_numeric_fields: int = 64
    max_categorical_fields: int = 64
    max_categories: int = 64
    max_schemas: int = 32
    novelty_prior: float = 0.1
    disabled: tuple[str, ...] = ()
    seasonal_buckets: int = 0
    seasonal_period_s: int = 86_400
    seasonal_fading: float = 0.1
    seasonal_min_count: int = 12
    seasonal_explains: bool = False
    window_values: int = 0
    window_tail: int = 20
    window_weight: float = 2.0
    max_profiled_fields: int = 8

    def __post_init__(self) -> None:
        unknown = sorted(set(self.disabled) - set(FEATURES))
        if unknown:
            msg = f"disabled: unknown features {unknown} (known: {list(FEATURES)})"
            raise ValueError(msg)
        if self.seasonal_buckets < 0 or self.window_values < 0:
            msg = "seasonal_buckets and window_values must be >= 0"
            raise ValueError(msg)
        if self.seasonal_buckets and self.seasonal_period_s * 1000 < self.seasonal_buckets:
            msg = "seasonal_period_s is shorter than one millisecond per bucket"
            raise ValueError(msg)
        if self.window_values and self.window_values < 2 * self.window_tail:
            msg = "window_values must be at least 2 * window_tail"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a feature is surprising: what was seen against what is usual.

    Attributes:
        feature: feature name (one of ``FEATURES``).
        field: payload field, type or shape concerned ("" when not field specific).
        observed: what the event showed.
        expected: the producer's usual range or values.
        surprise: ``-log10(p)`` of this observation.
    """

    feature: str
    field: str
    observed: str
    expected: str
    surprise: float


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one event looks like against its producer's past.

    Attributes:
        surprise: ``-log10(p)`` per feature name, 0 for usual.
        reasons: one explanation per surprising feature, largest surprise first.
        history: events the producer had before this one.
    """

    surprise: dict[str, float]
    reasons: list[Reason]
    history: int


class Moments:
    """Exponentially weighted mean and variance (River), in signed-log space."""

    __slots__ = ("count", "mean", "var")

    def __init__(self, fading_factor: float) -> None:
        self.count = 0
        self.mean = stats.EWMean(fading_factor)
        self.var = stats.EWVar(fading_factor)

    def update(self, x: float) -> None:
        self.count += 1
        self.mean.update(x)
        self.var.update(x)

    def z(self, x: float, min_sd: float) -> float:
        sd = max(math.sqrt(max(self.var.get(), 0.0)), min_sd)
        return float((x - self.mean.get()) / sd)

    def expected(self, min_sd: float) -> str:
        """Usual range (mean ± 3 sd) back in the original units."""
        m = self.mean.get()
        sd = max(math.sqrt(max(self.var.get(), 0.0)), min_sd)
        return f"{_unlog(m - 3 * sd):.4g}..{_unlog(m + 3 * sd):.4g}"


class Categories:
    """Counts of a categorical field's values, until it shows id-like cardinality."""

    __slots__ = ("counts", "n", "saturated")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.n = 0
        self.saturated = False

    def surprise(self, value: str, prior: float) -> float:
        """``-log10`` of the chance of a value this rare (Good-Turing for unseen ones)."""
        if self.saturated or self.n == 0:
            return 0.0
        count = self.counts.get(value, 0)
        if count == 0:
            singletons = sum(1 for c in self.counts.values() if c == 1)
            p = (singletons + prior) / (self.n + 1)
        elif count * 20 >= self.n:
            return 0.0  # common value: skip the tail sum
        else:
            p = (sum(c for c in self.counts.values() if c <= count) + 1) / (self.n + 1)
        return min(-math.log10(min(p, 1.0)), MAX_SURPRISE)

    def update(self, value: str, cap: int) -> None:
        self.n += 1
        if self.saturated:
            return
        if value in self.counts:
            self.counts[value] += 1
        elif len(self.counts) >= cap:
            self.saturated = True
            self.counts.clear()
        else:
            self.counts[value] = 1

    def expected(self) -> str:
        top = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        return ",".join(v for v, _ in top)


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
        self.count[b] += 1
        if self.count[b] == 1:
            self.mean[b] = x
            return
        d = x - float(self.mean[b])
        inc = fading * d
        self.mean[b] += inc
        self.var[b] = (1.0 - fading) * (float(self.var[b]) + d * inc)

    def sd(self, b: int, min_sd: float) -> float:
        return max(math.sqrt(max(float(self.var[b]), 0.0)), min_sd)

    def z(self, b: int, x: float, min_sd: float) -> float:
        return (x - float(self.mean[b])) / self.sd(b, min_sd)

    def expected(self, b: int, min_sd: float) -> str:
        m, sd = float(self.mean[b]), self.sd(b, min_sd)
        return f"{_unlog(m - 3 * sd):.4g}..{_unlog(m + 3 * sd):.4g}"


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
        self.values[self.pos] = x
        self.pos = (self.pos + 1) % len(self.values)
        self.n = min(self.n + 1, len(self.values))

    def surprise(self, x: float, tail: int, min_sd: float) -> float:
        """``-log10`` of the two-sided chance of a value at least this extreme."""
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
        if below < tail:
            low = np.partition(past, tail - 1)[:tail]
            u = float(low.max())
            scale = max((u - float(low.min())) / tail, min_sd)
            p_down = tail / (n + 1) * math.exp(-(u - x) / scale)
        p = min(2.0 * min(p_up, p_down), 1.0)
        return min(-math.log10(max(p, 1e-300)), MAX_SURPRISE)

    def expected(self) -> str:
        past = self.values[: self.n]
        lo, hi = np.quantile(past, [0.001, 0.999])
        return f"{_unlog(float(lo)):.4g}..{_unlog(float(hi)):.4g} (last {self.n} values)"


class ProducerState:
    """Everything the detector keeps about one producer (bounded by FeatureConfig caps)."""

    __slots__ = (
        "calibration",
        "categorical",
        "cooldown_until_ms",
        "flagged_since_ms",
        "flagged_streak",
        "gap",
        "last_ms",
        "likelihood",
        "n",
        "numeric",
        "rate",
        "schema_fields",
        "schemas",
        "seasonal",
        "seq",
        "silenced",
        "size",
        "suppressed",
        "types",
        "windows",
    )

    def __init__(self, cfg: FeatureConfig) -> None:
        self.n = 0
        self.last_ms = -1
        self.gap = stats.EWMean(cfg.rate_fading_factor)  # smoothed log inter-arrival
        self.rate = Moments(cfg.fading_factor)  # moments of the smoothed log inter-arrival
        self.size = Moments(cfg.fading_factor)
        self.numeric: dict[str, Moments] = {}
        self.categorical: dict[str, Categories] = {}
        self.types = Categories()
        self.schemas = Categories()
        self.schema_fields: dict[str, tuple[str, ...]] = {}
        # Per numeric field, when the spec asks for them (at most max_profiled_fields each).
        self.seasonal: dict[str, Seasonal] = {}
        self.windows: dict[str, ValueWindow] = {}
        # Decision state, kept here so it is bounded and evicted with the producer.
        self.cooldown_until_ms = -1
        self.suppressed = 0
        self.flagged_streak = 0
        self.flagged_since_ms = -1
        self.silenced = False  # a silence alert was raised since the producer's last event
        self.calibration: TailCounts | None = None
        self.likelihood: RarityTrend | None = None  # only with a likelihood in the spec
        self.seq = 0  # last use, so a restored store keeps its LRU order

    def __setstate__(self, state: Any) -> None:
        """Unpickle, giving slots added since the checkpoint was written their empty value."""
        self.seasonal, self.windows, self.silenced, self.likelihood = {}, {}, False, None
        _, slots = state if isinstance(state, tuple) else (None, state)
        for name, value in (slots or {}).items():
            setattr(self, name, value)


def _signed_log(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


def _unlog(y: float) -> float:
    return math.copysign(math.expm1(min(abs(y), 700.0)), y)


def _two_sided(z: float) -> float:
    """-log10 of the two-sided normal tail probability of z.

    Beyond z = 8 erfc loses precision: use its asymptote, erfc(x) ~ exp(-x^2) / (x sqrt(pi)).
    """
    z = abs(z)
    if z < 8.0:
        return -math.log10(math.erfc(z / _SQRT2))
    x = z / _SQRT2
    return min((x * x + math.log(x * _SQRT_PI)) / _LOG10, MAX_SURPRISE)


def _type_prefix(event: Event) -> str:
    """Payload statistics are kept per event type: one type's fields say little of another's."""
    return f"{event.type}\x1f" if event.type is not None else ""


def _schema_key(event: Event) -> tuple[str, tuple[str, ...]]:
    names = tuple(sorted((*event.numbers, *event.strings)))
    # crc32, not hash(): the key must be the same in every process (checkpoints, replays).
    key = f"{event.type}|{zlib.crc32('|'.join(names).encode()):08x}"
    return key, names


class FeatureStore:
    """Per-producer state, bounded by a cap (LRU) and an idle TTL in event time."""

    def __init__(
        self,
        cfg: FeatureConfig,
        max_producers: int = 100_000,
        idle_ttl_ms: int = 24 * 3600 * 1000,
        track_changes: bool = False,
    ) -> None:
        self.cfg = cfg
        self.track_changes = track_changes
        self.max_producers = max_producers
        self.idle_ttl_ms = idle_ttl_ms
        self.producers: OrderedDict[str, ProducerState] = OrderedDict()
        self.evicted = 0
        self.tick = 0
        self.watermark_ms = 0
        self.next_sweep_ms = 0
        self.next_silence_ms = 0  # next silence check, in event time (see Pipeline)
        # Changed and evicted since the last checkpoint commit (if tracking): only those are
        # written. Untracked stores (offline scoring, training) keep no such sets.
        self.dirty: set[str] = set()
        self.removed: set[str] = set()
        # One-event memo: the shape key is needed by the evidence and again by the learning.
        self._schema_event: Event | None = None
        self._schema_memo: tuple[str, tuple[str, ...]] = ("", ())

    def __len__(self) -> int:
        return len(self.producers)

    def state(self, producer: str) -> ProducerState:
        """The producer's state, created on first sight; marks it most recently used."""
        st = self.producers.get(producer)
        if st is None:
            st = ProducerState(self.cfg)
            self.producers[producer] = st
            if len(self.producers) > self.max_producers:
                self._evict(next(iter(self.producers)))
        else:
            self.producers.move_to_end(producer)
        self.tick += 1
        st.seq = self.tick
        if self.track_changes:
            self.dirty.add(producer)
            self.removed.discard(producer)  # evicted, then back before the commit
        return st

    def _evict(self, producer: str) -> None:
        del self.producers[producer]
        self.evicted += 1
        if self.track_changes:
            self.dirty.discard(producer)
            self.removed.add(producer)

    def restore(
        self, producers: dict[str, ProducerState], counters: dict[str, int], baseline: bool = False
    ) -> None:
        """Replace the state with a checkpoint's, in its LRU order.

        A baseline comes from another time: its producers keep what they learned but forget
        when they were last seen, so live event time does not expire them at once.
        """
        self.producers = OrderedDict(sorted(producers.items(), key=lambda kv: kv[1].seq))
        if baseline:
            for st in self.producers.values():
                st.last_ms = -1
            counters = {**counters, "watermark_ms": 0, "next_sweep_ms": 0, "next_silence_ms": 0}
        self.evicted = counters["evicted"]
        self.tick = counters["tick"]
        self.watermark_ms = counters["watermark_ms"]
        self.next_sweep_ms = counters["next_sweep_ms"]
        self.next_silence_ms = counters.get("next_silence_ms", 0)  # absent before silence
        self.dirty.clear()
        self.removed.clear()

    def counters(self) -> dict[str, int]:
        return {
            "evicted": self.evicted,
            "tick": self.tick,
            "watermark_ms": self.watermark_ms,
            "next_sweep_ms": self.next_sweep_ms,
            "next_silence_ms": self.next_silence_ms,
        }

    def observe(self, event: Event, learn: bool) -> Evidence:
        """Evidence for ``event``; then, if ``learn``, fold it into the producer's baseline.

        The arrival clock (last time, inter-arrival) always advances: time is a fact, not a
        belief to protect. Baselines only learn from events the caller accepts.
        """
        st = self.state(event.producer)
        evidence = self.evidence(st, event)
        self.advance_clock(st, event)
        if learn:
            self.learn(st, event)
        self.expire(event.event_time_ms)
        return evidence

    def evidence(self, st: ProducerState, event: Event) -> Evidence:
        """Surprise per feature and the reasons, from the state before this event."""
        surprise = dict.fromkeys(FEATURES, 0.0)
        if st.n == 0:
            return Evidence(surprise, [], 0)
        off = self.cfg.disabled
        reasons = [
            r
            for name, judge in (
                ("rate", self._rate),
                ("value", self._value),
                ("size", self._size),
                ("type", self._type),
                ("category", self._category),
                ("schema", self._schema),
            )
            if name not in off and (r := judge(st, event)) is not None
        ]
        for r in reasons:
            surprise[r.feature] = r.surprise
        reasons.sort(key=lambda r: -r.surprise)
        return Evidence(surprise, reasons, st.n)

    def _rate(self, st: ProducerState, event: Event) -> Reason | None:
        if st.rate.count < self.cfg.min_count or st.last_ms < 0:
            return None
        smoothed = self._next_gap(st, event)
        z = -st.rate.z(smoothed, self.cfg.min_sd)  # positive: faster than usual
        s = _two_sided(z) - math.log10(2.0) if z > 0 else 0.0  # one-sided: floods only
        if s <= 0:
            return None
        observed = f"{_rate_per_s(smoothed):.3g}/s"
        return Reason("rate", "", observed, f"{_rate_per_s(st.rate.mean.get()):.3g}/s", s)

    def _value(self, st: ProducerState, event: Event) -> Reason | None:
        """Per numeric field, the largest of: the surprise against the field's running moments,
        against its time-of-period bucket, and (weighted) its rank among the last values."""
        cfg = self.cfg
        best: Reason | None = None
        prefix = _type_prefix(event)
        for name, x in event.numbers.items():
            key = prefix + name
            y = _signed_log(x)
            s, expected = 0.0, ""
            m = st.numeric.get(key)
            if m is not None and m.count >= cfg.min_count:
                s, expected = _two_sided(m.z(y, cfg.min_sd)), m.expected(cfg.min_sd)
            prof = st.seasonal.get(key)
            if prof is not None:
                b = self._bucket(event.event_time_ms)
                if prof.count[b] >= cfg.seasonal_min_count:
                    ss = _two_sided(prof.z(b, y, cfg.min_sd))
                    if ss > s or cfg.seasonal_explains:
                        s, expected = ss, f"{prof.expected(b, cfg.min_sd)} at this time of day"
            win = st.windows.get(key)
            if win is not None:
                ws = cfg.window_weight * win.surprise(y, cfg.window_tail, cfg.min_sd)
                if ws > s:
                    s, expected = min(ws, MAX_SURPRISE), win.expected()
            if s > 0 and (best is None or s > best.surprise):
                best = Reason("value", name, f"{x:.6g}", expected, s)
        return best

    def _bucket(self, t_ms: int) -> int:
        """Time-of-period bucket of an event time (UTC; event time, so replays agree)."""
        cfg = self.cfg
        width = cfg.seasonal_period_s * 1000 // cfg.seasonal_buckets
        return (t_ms // width) % cfg.seasonal_buckets

    def _size(self, st: ProducerState, event: Event) -> Reason | None:
        if st.size.count < self.cfg.min_count:
            return None
        s = _two_sided(st.size.z(math.log(max(event.size_bytes, 1)), self.cfg.min_sd))
        if s <= 0:
            return None
        return Reason("size", "", f"{event.size_bytes}B", st.size.expected(self.cfg.min_sd), s)

    def _type(self, st: ProducerState, event: Event) -> Reason | None:
        if event.type is None:
            return None
        s = st.types.surprise(event.type, self.cfg.novelty_prior)
        return Reason("type", "type", event.type, st.types.expected(), s) if s > 0 else None

    def _category(self, st: ProducerState, event: Event) -> Reason | None:
        best, best_field = 0.0, ""
        best_c: Categories | None = None
        prefix = _type_prefix(event)
        for name, value in event.strings.items():
            c = st.categorical.get(prefix + name)
            if c is not None:
                s = c.surprise(value, self.cfg.novelty_prior)
                if s > best:
                    best, best_field, best_c = s, name, c
        if best_c is None:
            return None
        observed = event.strings[best_field]
        return Reason("category", best_field, observed, best_c.expected(), best)

    def _schema_of(self, event: Event) -> tuple[str, tuple[str, ...]]:
        """The event's shape key, computed once for its evidence and its learning."""
        if self._schema_event is not event:
            self._schema_event, self._schema_memo = event, _schema_key(event)
        return self._schema_memo

    def _schema(self, st: ProducerState, event: Event) -> Reason | None:
        key, names = self._schema_of(event)
        s = st.schemas.surprise(key, self.cfg.novelty_prior)
        return Reason("schema", "", _schema_diff(st, names), "usual shape", s) if s > 0 else None

    def _next_gap(self, st: ProducerState, event: Event) -> float:
        """The smoothed log inter-arrival this event would give, without updating."""
        gap = math.log1p(max(event.event_time_ms - st.last_ms, 0))
        a = self.cfg.rate_fading_factor
        return float(a * gap + (1 - a) * st.gap.get())

    def advance_clock(self, st: ProducerState, event: Event) -> None:
        if st.last_ms >= 0:
            st.gap.update(math.log1p(max(event.event_time_ms - st.last_ms, 0)))
        st.last_ms = max(st.last_ms, event.event_time_ms)
        st.n += 1
        st.silenced = False

    def learn(self, st: ProducerState, event: Event) -> None:
        """Fold the event into the producer's baselines."""
        cfg = self.cfg
        if st.n > 1:
            st.rate.update(st.gap.get())
        st.size.update(math.log(max(event.size_bytes, 1)))
        prefix = _type_prefix(event)
        for name, x in event.numbers.items():
            key = prefix + name
            m = st.numeric.get(key)
            if m is None:
                if len(st.numeric) >= cfg.max_numeric_fields:
                    continue
                m = st.numeric[key] = Moments(cfg.fading_factor)
            y = _signed_log(x)
            m.update(y)
            if cfg.seasonal_buckets or cfg.window_values:
                self._learn_profiles(st, key, y, event.event_time_ms)
        for name, value in event.strings.items():
            c = st.categorical.get(prefix + name)
            if c is None:
                if len(st.categorical) >= cfg.max_categorical_fields:
                    continue
                c = st.categorical[prefix + name] = Categories()
            c.update(value, cfg.max_categories)
        if event.type is not None:
            st.types.update(event.type, cfg.max_categories)
        key, names = self._schema_of(event)
        st.schemas.update(key, cfg.max_schemas)
        if key not in st.schema_fields and len(st.schema_fields) < cfg.max_schemas:
            st.schema_fields[key] = names

    def _learn_profiles(self, st: ProducerState, key: str, y: float, t_ms: int) -> None:
        """Seasonal bucket and value window of one numeric field (if the spec has them)."""
        cfg = self.cfg
        cap = cfg.max_profiled_fields
        if cfg.seasonal_buckets:
            prof = st.seasonal.get(key)
            if prof is None and len(st.seasonal) < cap:
                prof = st.seasonal[key] = Seasonal(cfg.seasonal_buckets)
            if prof is not None:
                prof.update(self._bucket(t_ms), y, cfg.seasonal_fading)
        if cfg.window_values:
            win = st.windows.get(key)
            if win is None and len(st.windows) < cap:
                win = st.windows[key] = ValueWindow(cfg.window_values)
            if win is not None:
                win.update(y)

    def expire(self, now_ms: int) -> None:
        """Evict producers idle for longer than the TTL, at most once a minute of event time."""
        if now_ms > self.watermark_ms:
            self.watermark_ms = now_ms
        if self.watermark_ms < self.next_sweep_ms:
            return
        self.next_sweep_ms = self.watermark_ms + 60_000
        horizon = self.watermark_ms - self.idle_ttl_ms
        # LRU order is order of last event: stop at the first producer still fresh. Producers
        # from a baseline not seen live yet (last_ms < 0) only leave under the LRU cap.
        stale = []
        for producer, st in self.producers.items():
            if st.last_ms >= horizon:
                break
            if st.last_ms >= 0:
                stale.append(producer)
        for producer in stale:
            self._evict(producer)


def _rate_per_s(smoothed_log_gap: float) -> float:
    gap_ms = math.expm1(smoothed_log_gap)
    return 1000.0 / gap_ms if gap_ms > 0 else float("inf")


def _schema_diff(st: ProducerState, names: tuple[str, ...]) -> str:
    """Added and missing fields against the producer's most common shape."""
    if not st.schemas.counts:
        return "unusual shape"
    usual_key = max(st.schemas.counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
    usual = set(st.schema_fields.get(usual_key, ()))
    added = sorted(set(names) - usual)[:5]
    missing = sorted(usual - set(names))[:5]
    parts = []
    if added:
        parts.append("+" + ",".join(added))
    if missing:
        parts.append("-" + ",".join(missing))
    return " ".join(parts) or "known fields, unusual combination"
