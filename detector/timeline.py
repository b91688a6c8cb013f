"""Timeline: what the detector saw of one producer, event by event (``detector plot``).

The file is scored exactly as ``detector score`` scores it (:func:`detector.offline.scored`).
Right before each of the producer's events, its state is read (``Pipeline.view``) for what
the features judge that event against: each numeric field's expected band, from the moments
of that field *for that event type* (the value feature keeps them per type), the categorical
novelties, and the producer's alert threshold. The worker keeps none of this: bands are
computed here, for the picture only.

The band is the usual range the alert reasons quote: the running mean ± 3 standard deviations
of ``sign(x)·log1p(|x|)``, the deviation floored at the spec's ``min_sd``, back in the field's
units; none before the field has ``min_count`` values (it is not judged then). With a
time-of-day profile (the ``metrics`` spec), the bucket's band replaces it
(``seasonal_explains``) or narrows it (the feature judges by the larger surprise); the rank
window of the last values is not drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from detector.core.alerts import Alert
from detector.core.events import Event
from detector.core.features.categories import Categories
from detector.core.features.config import FeatureConfig
from detector.core.features.schema import shape_of
from detector.core.features.store import ProducerView
from detector.core.features.surprise import type_prefix, unlog
from detector.core.features.value import ValueFeature
from detector.core.fingerprints import fingerprint
from detector.core.pipeline import Pipeline
from detector.offline import Scoring, scored

BAND_SD = 3.0  # MomentsTable.expected: the range a value reason quotes as expected
NOVELTY_FEATURES = ("type", "category", "schema")


@dataclass(frozen=True, slots=True)
class Band:
    """A numeric field's expected range at one event, in the field's units."""

    low: float
    mean: float
    high: float


@dataclass(frozen=True, slots=True)
class Novelty:
    """A type, categorical value or shape the producer never sent before (``new``), or one
    the type, category or schema feature found rare (``surprise`` > 0; 0: never seen, but the
    field's vocabulary is too young to be judged).

    Examples:
        >>> str(Novelty("category", "client=curl/8.5.0", 5.5, True))
        'new category client=curl/8.5.0 (surprise 5.5)'
    """

    feature: str
    what: str
    surprise: float
    new: bool

    def __str__(self) -> str:
        judged = f" (surprise {self.surprise:.2g})" if self.surprise > 0 else ""
        return f"{'new' if self.new else 'rare'} {self.feature} {self.what}{judged}"


@dataclass(slots=True)
class Point:
    """One event of the producer and what the detector made of it.

    Attributes:
        values: per series (:func:`series_name`): the event's value and the band it was
            judged against (None: not judged yet).
        novelties: what was new or rare: the type, categorical values or shape the type,
            category and schema features found surprising (with their reasons), and, once
            the producer is scored, those never seen before that are not judged yet (a
            young vocabulary).
        threshold: the producer's alert threshold then (the spec's, raised by its rarity
            horizon).
    """

    time_ms: int
    values: dict[str, tuple[float, Band | None]]
    novelties: list[Novelty]
    threshold: float
    score: float | None = None
    flagged: bool = False
    alert: Alert | None = None


@dataclass(slots=True)
class Timeline:
    """One producer's events, in order, and every alert about it (silences included)."""

    producer: str
    model: str
    points: list[Point] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)

    @property
    def series(self) -> list[str]:
        """The numeric series, in the order they first came."""
        return list(dict.fromkeys(name for p in self.points for name in p.values))

    @property
    def novelties(self) -> int:
        """Events with something never seen before."""
        return sum(1 for p in self.points if any(n.new for n in p.novelties))


def series_name(etype: str | None, name: str) -> str:
    """A numeric field's series: its name and, the moments being per type, its event type.

    >>> series_name("payment.authorized", "amount"), series_name(None, "v")
    ('amount [payment.authorized]', 'v')
    """
    return name if etype is None else f"{name} [{etype}]"


def trace(
    input_path: Path,
    scoring: Scoring,
    producer: str,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> Timeline:
    """Score ``input_path`` as ``detector score`` does and follow ``producer``, keeping its
    events (and alerts) from ``start_ms`` to ``end_ms`` of event time (None: no bound)."""
    pipeline = scoring.pipeline()
    timeline = Timeline(producer, pipeline.spec.name)
    seen: list[Point] = []
    low, high = -(2**63) if start_ms is None else start_ms, 2**63 if end_ms is None else end_ms

    def before(event: Event) -> None:
        if event.producer == producer and low <= event.event_time_ms <= high:
            seen.append(observe(pipeline, event))

    for event, verdict in scored(input_path, scoring, pipeline, before):
        if event is None or verdict is None:
            continue
        # Alerts this event revealed about others: the producer's silence.
        timeline.alerts += [
            a for a in verdict.side_alerts if a.producer == producer and low <= a.event_time <= high
        ]
        if event.producer != producer or not low <= event.event_time_ms <= high:
            continue
        point = seen.pop()
        point.score, point.flagged, point.alert = verdict.score, verdict.flagged, verdict.alert
        timeline.points.append(point)
        if verdict.alert is not None:
            timeline.alerts.append(verdict.alert)
    timeline.alerts.sort(key=lambda a: a.event_time)
    return timeline


def observe(pipeline: Pipeline, event: Event) -> Point:
    """What the pipeline judges ``event`` against, read before it is scored."""
    store = pipeline.store
    slot = store.slot_of(event.producer)
    if slot is None or not store.clock.n[slot]:  # no past: nothing to judge against
        bare: dict[str, tuple[float, Band | None]] = {
            series_name(event.type, k): (x, None) for k, x in event.numbers.items()
        }
        return Point(event.event_time_ms, bare, [], pipeline.threshold)
    view = pipeline.view(event.producer)
    cfg = pipeline.spec.features
    value = store.by_name["value"]
    assert isinstance(value, ValueFeature)  # noqa: S101 (the registry's)
    b = value.bucket(event.event_time_ms) if cfg.seasonal_buckets else 0
    values: dict[str, tuple[float, Band | None]] = {}
    for name, x in event.numbers.items():
        key = type_prefix(event.type) + name
        band = None if "value" in cfg.disabled else expected_band(view, cfg, key, b)
        values[series_name(event.type, name)] = (x, band)
    scored_now = store.clock.n[slot] >= pipeline.decision.warmup_events
    novel = novelties_of(pipeline, slot, view, event, first_seen=scored_now)
    return Point(event.event_time_ms, values, novel, pipeline.threshold_for(slot))


def expected_band(view: ProducerView, cfg: FeatureConfig, key: str, bucket: int) -> Band | None:
    """The band the value feature judges the field ``key`` (type-prefixed) against."""
    band = None
    moments = view.numeric.get(key)
    if moments is not None and moments.count >= cfg.min_count:
        band = normal_band(moments.mean, moments.var, cfg.min_sd)
    profile = view.seasonal.get(key)
    if profile is not None and profile.count[bucket] >= cfg.seasonal_min_count:
        hourly = normal_band(float(profile.mean[bucket]), float(profile.var[bucket]), cfg.min_sd)
        if band is None or cfg.seasonal_explains:
            band = hourly
        else:  # judged by the larger surprise: outside either band is unusual
            low, high = max(band.low, hourly.low), min(band.high, hourly.high)
            band = Band(low, band.mean, high) if low <= high else hourly
    return band


def normal_band(mean: float, var: float, min_sd: float) -> Band:
    """Mean ± :data:`BAND_SD` deviations in signed-log space, in the field's units.

    >>> b = normal_band(math.log1p(100.0), 0.0, 0.05)
    >>> round(b.low, 1), round(b.mean, 1), round(b.high, 1)
    (85.9, 100.0, 116.3)
    """
    sd = max(math.sqrt(max(var, 0.0)), min_sd)
    return Band(unlog(mean - BAND_SD * sd), unlog(mean), unlog(mean + BAND_SD * sd))


def novelties_of(
    pipeline: Pipeline, slot: int, view: ProducerView, event: Event, *, first_seen: bool
) -> list[Novelty]:
    """The event's surprising or never-seen type, categorical values and shape (never-seen
    ones that are not judged yet only with ``first_seen``)."""
    store, disabled = pipeline.store, pipeline.spec.features.disabled
    prefix = type_prefix(event.type)
    shape = shape_of(event)[0]
    out: list[Novelty] = []
    for name in NOVELTY_FEATURES:
        feature = store.by_name[name]
        if name in disabled or not feature.judge(slot, event) > 0:
            continue
        r = feature.explain(slot, event)
        if r is None:
            continue
        if name == "type":
            new = not _seen(view.types, r.observed)
        elif name == "category":
            new = not _seen(view.categorical[prefix + r.field], r.observed)
        else:
            new = not _seen(view.schemas, shape)
        what = f"{r.field}={r.observed}" if name == "category" else r.observed
        out.append(Novelty(name, what, r.surprise, new))
    if not first_seen:
        return out
    said = {(n.feature, n.what.partition("=")[0] if n.feature == "category" else "") for n in out}
    if event.type is not None and ("type", "") not in said and not _seen(view.types, event.type):
        out.append(Novelty("type", event.type, 0.0, True))
    for name, text in event.strings.items():
        values = view.categorical.get(prefix + name)
        if values is not None and ("category", name) not in said and not _seen(values, text):
            out.append(Novelty("category", f"{name}={text}", 0.0, True))
    if ("schema", "") not in said and not _seen(view.schemas, shape):
        out.append(Novelty("schema", "new shape", 0.0, True))
    return out


def _seen(values: Categories, value: str) -> bool:
    """Whether a tracked categorical row has seen ``value`` (an id-like one: as if so)."""
    if values.saturated or not values.n:
        return True
    return value in values.counts or fingerprint(value) in values.once
