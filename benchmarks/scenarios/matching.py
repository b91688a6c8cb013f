"""How alerts are matched to the injected incidents, and what they score.

Matching rule: an alert (event alert or silence alert) belongs to an incident when it is on
the incident's producer and its event time lies in ``[start, end + grace]``, where grace is
:data:`GRACE_MS` for the kind (``detector.shop.simulator.incident_for``; inside the window wins over
grace). An incident is *caught* when at least one alert belongs to it; its *detection delay*
is the first such alert's time minus the incident start (event time). Every other alert is a
*false alert*. The *top-reason match* asks whether the first matching alert's first reason is
one of :data:`CAUSES` for the kind.

A ``stream_pause`` is no producer's incident (its producer is ``""``): the detector's
``stream_pause`` alert (producer ``""``) catches it, and any producer's alert inside it or its
grace that no incident explains is false and also counts in :attr:`Score.during_pauses`
(there must be none).

A ``release`` is a group's incident (its producer is ``cart-*``): an alert on any instance of
the group catches it, and it must page once: each further alert belonging to it is false
(counted in :attr:`Score.repeats` too).

Examples:
    >>> from detector.shop.simulator import Incident
    >>> inc = Incident("flood", "cart-1", 10_000, 20_000, "")
    >>> hits = [Hit("cart-1", 15_000, ("rate",)), Hit("cart-2", 15_000, ("rate",))]
    >>> s = score([inc], hits, producer_days=2.0)
    >>> s.kinds["flood"].caught, s.kinds["flood"].delays_ms, s.false, s.false_per_producer_day
    (1, [5000], 1, 0.5)
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from detector.shop.simulator import DEFAULT_GRACE_MS, INCIDENT_KINDS, Incident, incident_for

GRACE_MS: dict[str, int] = {
    **dict.fromkeys(INCIDENT_KINDS, DEFAULT_GRACE_MS),
    # The producer's traffic coming back after a silence, and the level falling back after a
    # slow poisoning (or a group departure), are consequences of the incident, not new ones.
    "silence": 300_000,
    "slow_poisoning": 900_000,
    "group_departure": 900_000,
    "group_rate_departure": 900_000,
    "stream_pause": 300_000,  # every producer's traffic coming back
}
"""Grace after each kind's end during which an alert on its producer still belongs to it."""

CAUSES: dict[str, frozenset[str]] = {
    "flood": frozenset({"rate"}),
    "value_outlier": frozenset({"value"}),
    "foreign_type": frozenset({"type", "peer"}),
    "schema_drift": frozenset({"schema"}),
    # A payload made large by new fields (attributes, dump chunks) is also a new shape.
    "oversized_payload": frozenset({"size", "schema"}),
    "new_categorical_value": frozenset({"category"}),
    "replayed_ids": frozenset({"replayed_id"}),
    "new_producer": frozenset({"new_producer"}),
    "off_hours_burst": frozenset({"rate"}),
    "silence": frozenset({"silence"}),
    "slow_poisoning": frozenset({"drift", "value"}),
    "new_type": frozenset({"type"}),
    "new_type_shape": frozenset({"type", "schema"}),
    "stream_pause": frozenset({"stream"}),
    "release": frozenset({"type", "peer"}),
    "correlation_break": frozenset({"joint"}),
    "group_departure": frozenset({"peer", "drift"}),
    "group_rate_departure": frozenset({"peer", "rate"}),
}
"""Reason features that name each kind's injected cause."""

ONCE = frozenset({"release"})
"""Kinds that must page once: every alert after the first that belongs to one is false."""


@dataclass(frozen=True, slots=True)
class Hit:
    """What the matching needs of an alert: producer, event time, reason features in order."""

    producer: str
    event_time_ms: int
    features: tuple[str, ...]


@dataclass(slots=True)
class KindScore:
    """One incident kind's result."""

    injected: int = 0
    caught: int = 0
    delays_ms: list[int] = field(default_factory=list)
    top_reason_matches: int = 0
    missed: list[str] = field(default_factory=list)  # details of the missed incidents

    @property
    def recall(self) -> float:
        return self.caught / self.injected if self.injected else float("nan")

    @property
    def top_reason_rate(self) -> float:
        return self.top_reason_matches / self.caught if self.caught else float("nan")

    def delay_s(self, which: str) -> float:
        if not self.delays_ms:
            return float("nan")
        d = statistics.median(self.delays_ms) if which == "median" else max(self.delays_ms)
        return d / 1000.0


@dataclass(slots=True)
class Score:
    """Every kind's result and the alert totals."""

    kinds: dict[str, KindScore] = field(default_factory=dict)
    alerts: int = 0
    true: int = 0
    false: int = 0
    producer_days: float = 0.0
    false_by_reason: dict[str, int] = field(default_factory=dict)
    false_hits: list[Hit] = field(default_factory=list)
    during_pauses: int = 0  # producers' false alerts inside a stream_pause or its grace
    repeats: int = 0  # a group's incident paging more than once (ONCE kinds): false alerts

    @property
    def precision(self) -> float:
        return self.true / self.alerts if self.alerts else float("nan")

    @property
    def false_per_producer_day(self) -> float:
        return self.false / self.producer_days if self.producer_days else float("nan")

    def add(self, other: Score) -> None:
        """Fold another seed's result into this one."""
        for kind, ks in other.kinds.items():
            mine = self.kinds.setdefault(kind, KindScore())
            mine.injected += ks.injected
            mine.caught += ks.caught
            mine.delays_ms += ks.delays_ms
            mine.top_reason_matches += ks.top_reason_matches
            mine.missed += ks.missed
        self.alerts += other.alerts
        self.true += other.true
        self.false += other.false
        self.producer_days += other.producer_days
        self.false_hits += other.false_hits
        self.during_pauses += other.during_pauses
        self.repeats += other.repeats
        for reason, n in other.false_by_reason.items():
            self.false_by_reason[reason] = self.false_by_reason.get(reason, 0) + n


def score(incidents: Sequence[Incident], hits: Iterable[Hit], producer_days: float) -> Score:
    """Match ``hits`` (in event-time order) to ``incidents`` under the rule above."""
    out = Score(producer_days=producer_days)
    first: dict[Incident, Hit] = {}
    grace = GRACE_MS["stream_pause"]
    pauses = [(i.start_ms, i.end_ms + grace) for i in incidents if i.kind == "stream_pause"]
    for hit in sorted(hits, key=lambda h: h.event_time_ms):
        out.alerts += 1
        inc = incident_for(hit.producer, hit.event_time_ms, incidents, GRACE_MS)
        repeat = inc is not None and inc.kind in ONCE and inc in first
        out.repeats += repeat
        if inc is None or repeat:
            out.false += 1
            if hit.producer and any(a <= hit.event_time_ms <= b for a, b in pauses):
                out.during_pauses += 1
            top = hit.features[0] if hit.features else ""
            out.false_by_reason[top] = out.false_by_reason.get(top, 0) + 1
            out.false_hits.append(hit)
            continue
        out.true += 1
        first.setdefault(inc, hit)
    for inc in incidents:
        ks = out.kinds.setdefault(inc.kind, KindScore())
        ks.injected += 1
        found = first.get(inc)
        if found is None:
            ks.missed.append(inc.detail)
            continue
        ks.caught += 1
        ks.delays_ms.append(found.event_time_ms - inc.start_ms)
        ks.top_reason_matches += bool(found.features) and found.features[0] in CAUSES[inc.kind]
    return out
