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

from river import stats

from detector.calibration import TailCounts
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
        "n",
        "numeric",
        "rate",
        "schema_fields",
        "schemas",
        "seq",
        "size",
        "suppressed",
        "types",
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
        # Decision state, kept here so it is bounded and evicted with the producer.
        self.cooldown_until_ms = -1
        self.suppressed = 0
        self.flagged_streak = 0
        self.flagged_since_ms = -1
        self.calibration: TailCounts | None = None
        self.seq = 0  # last use, so a restored store keeps its LRU order


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
        # Changed and evicted since the last checkpoint commit (if tracking): only those are
        # written. Untracked stores (offline scoring, training) keep no such sets.
        self.dirty: set[str] = set()
        self.removed: set[str] = set()

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
            counters = {**counters, "watermark_ms": 0, "next_sweep_ms": 0}
        self.evicted = counters["evicted"]
        self.tick = counters["tick"]
        self.watermark_ms = counters["watermark_ms"]
        self.next_sweep_ms = counters["next_sweep_ms"]
        self.dirty.clear()
        self.removed.clear()

    def counters(self) -> dict[str, int]:
        return {
            "evicted": self.evicted,
            "tick": self.tick,
            "watermark_ms": self.watermark_ms,
            "next_sweep_ms": self.next_sweep_ms,
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
        reasons = [
            r
            for r in (
                self._rate(st, event),
                self._value(st, event),
                self._size(st, event),
                self._type(st, event),
                self._category(st, event),
                self._schema(st, event),
            )
            if r is not None
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
        cfg = self.cfg
        best, best_field, best_x = 0.0, "", 0.0
        best_m: Moments | None = None
        prefix = _type_prefix(event)
        for name, x in event.numbers.items():
            m = st.numeric.get(prefix + name)
            if m is not None and m.count >= cfg.min_count:
                s = _two_sided(m.z(_signed_log(x), cfg.min_sd))
                if s > best:
                    best, best_field, best_x, best_m = s, name, x, m
        if best_m is None:
            return None
        return Reason("value", best_field, f"{best_x:.6g}", best_m.expected(cfg.min_sd), best)

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

    def _schema(self, st: ProducerState, event: Event) -> Reason | None:
        key, names = _schema_key(event)
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

    def learn(self, st: ProducerState, event: Event) -> None:
        """Fold the event into the producer's baselines."""
        cfg = self.cfg
        if st.n > 1:
            st.rate.update(st.gap.get())
        st.size.update(math.log(max(event.size_bytes, 1)))
        prefix = _type_prefix(event)
        for name, x in event.numbers.items():
            m = st.numeric.get(prefix + name)
            if m is None:
                if len(st.numeric) >= cfg.max_numeric_fields:
                    continue
                m = st.numeric[prefix + name] = Moments(cfg.fading_factor)
            m.update(_signed_log(x))
        for name, value in event.strings.items():
            c = st.categorical.get(prefix + name)
            if c is None:
                if len(st.categorical) >= cfg.max_categorical_fields:
                    continue
                c = st.categorical[prefix + name] = Categories()
            c.update(value, cfg.max_categories)
        if event.type is not None:
            st.types.update(event.type, cfg.max_categories)
        key, names = _schema_key(event)
        st.schemas.update(key, cfg.max_schemas)
        if key not in st.schema_fields and len(st.schema_fields) < cfg.max_schemas:
            st.schema_fields[key] = names

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
