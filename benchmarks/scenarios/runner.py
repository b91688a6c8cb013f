"""One seeded shop run through the worker's code path, as alerts.

``detector run`` handles each batch by decoding every entry with :class:`Decoder` and
calling :meth:`Pipeline.process` on the valid events; its alerts are each verdict's
``alert`` plus its ``side_alerts`` (``Worker._handle``). This does the same, batch by
batch, without Redis: the pipeline's state depends only on the events and their order, so
the alerts are the ones the worker would append.

Other decision settings (``sweep``: thresholds and rarity horizons) are simulated in the same
pass, as the pipeline decides: an event alerts when its calibrated score reaches the threshold
(raised per producer by the rarity horizon, as ``Pipeline.threshold_for``) and its producer is
out of the cooldown, or when a reason is decisive (``FeatureStore.decisive``: whatever the
threshold, through the cooldown). Learning depends on neither as long as the threshold is at
or above the spec's ``protect_threshold`` (suspect events are judged against the lower of the
two), so one pass serves them all; side alerts (silences, pauses) are taken as they really
were, and a silence starts its producer's cooldown in every setting.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.scenarios.matching import GRACE_MS, Hit, Score, score
from detector.core.alerts import Alert
from detector.core.errors import InvalidEventError
from detector.core.events import Decoder, Event
from detector.core.features import Reason
from detector.core.features.judgements import Judgements
from detector.core.feedback import FALSE_POSITIVE, Feedback, MarkedReason
from detector.core.pipeline import Pipeline, Verdict
from detector.core.scoring import ModelSpec
from detector.shop.simulator import Incident, incident_for, iter_events

BATCH = 500  # the worker's default batch_size
DAY_MS = 86_400_000
Setting = tuple[float, int]  # a simulated (threshold, rarity_horizon_ms)


@dataclass(frozen=True, slots=True)
class SeedRun:
    """One seed's events, speed, score at the spec's threshold, and the simulated sweep."""

    seed: int
    events: int
    rejected: int
    events_per_s: float
    score: Score
    sweep: dict[Setting, Score] = field(default_factory=dict)
    incidents: Sequence[Incident] = ()
    hits: Sequence[Hit] = ()
    feedback: int = 0  # false positives the simulated analyst marked
    feedback_applied: int = 0  # of which on a producer the pipeline tracked
    first_ms: int = 0  # the first event's time

    def false_by_day(self) -> list[int]:
        """False alerts per day of event time from the first event."""
        days = [(h.event_time_ms - self.first_ms) // DAY_MS for h in self.score.false_hits]
        return [days.count(d) for d in range(max(days, default=-1) + 1)]

    def later(self, hits: Sequence[Hit] | None = None) -> tuple[int, int]:
        """(caught, injected) over the incidents that start after the first day."""
        later = [i for i in self.incidents if i.start_ms >= self.first_ms + DAY_MS]
        sc = score(later, self.hits if hits is None else hits, 1.0)
        return sum(k.caught for k in sc.kinds.values()), len(later)


class _Sweep:
    """Alerts each extra setting would have raised (cooldown per producer, as ``_decide``)."""

    def __init__(self, settings: Sequence[Setting], cooldown_ms: int) -> None:
        self.hits: dict[Setting, list[Hit]] = {s: [] for s in settings}
        self.until: dict[Setting, dict[str, int]] = {s: {} for s in settings}
        self.cooldown_ms = cooldown_ms
        self.reasons: tuple[str, ...] = ()
        self.decisive: Reason | None = None

    def evidence_of(self, pipeline: Pipeline) -> None:
        """Note each event's reasons as the pipeline computes them (for the top reason), and
        its decisive reason if any."""
        store = pipeline.store
        judge, explain, decisive = store.judge, store.explain, store.decisive

        def noted(slot: int, event: Event, out: Judgements, i: int) -> None:
            judge(slot, event, out, i)
            self.reasons = tuple(r.feature for r in explain(slot, event))
            self.decisive = None

        def decided(slot: int, event: Event) -> Reason | None:
            self.decisive = decisive(slot, event)
            return self.decisive

        store.judge = noted  # type: ignore[method-assign]
        store.decisive = decided  # type: ignore[method-assign]

    def see(
        self, pipeline: Pipeline, event: Event, score: float | None, side: Sequence[Hit]
    ) -> None:
        slot = pipeline.store.slot_of(event.producer)
        decisive = self.decisive
        for (t, horizon_ms), hits in self.hits.items():
            hits.extend(side)
            until = self.until[t, horizon_ms]
            for h in side:  # a silence starts its producer's cooldown too (as it really did)
                if h.producer:
                    until[h.producer] = h.event_time_ms + self.cooldown_ms
            if score is None or slot is None:
                continue
            if decisive is None and score < pipeline.threshold_for(slot, t, horizon_ms):
                continue
            if event.event_time_ms >= until.get(event.producer, -1) or decisive is not None:
                until[event.producer] = event.event_time_ms + self.cooldown_ms
                reasons = self.reasons
                if decisive is not None:  # it leads, in place of its feature's own
                    rest = (f for f in reasons if f != decisive.feature)
                    reasons = (decisive.feature, *rest)
                hits.append(Hit(event.producer, event.event_time_ms, reasons))


def run_seed(
    spec: ModelSpec,
    seed: int,
    hours: float,
    kinds: Sequence[str],
    threshold: float | None = None,
    warmup_h: float = 1.0,
    rate_scale: float = 1.0,
    sweep: Sequence[Setting] = (),
    feedback_first_day: bool = False,
) -> SeedRun:
    """Generate the shop for ``seed``, score it, and match the alerts to its incidents; with
    ``feedback_first_day``, a simulated analyst marks the first day's false alerts
    (:class:`_Analyst`)."""
    low = [t for t, _ in sweep if t < spec.decision.protect_threshold]
    if low:
        msg = f"sweep thresholds {low} are below protect_threshold: learning would differ"
        raise ValueError(msg)
    incidents, entries = iter_events(
        seed=seed,
        duration_s=hours * 3600,
        kinds=kinds,
        warmup_s=warmup_h * 3600,
        rate_scale=rate_scale,
    )
    decoder = Decoder()
    pipeline = Pipeline(spec, threshold)
    simulated = _Sweep(sweep, spec.decision.cooldown_ms)
    if sweep:
        simulated.evidence_of(pipeline)
    hits: list[Hit] = []
    span: dict[str, list[int]] = {}
    analyst = _Analyst(incidents) if feedback_first_day else None
    n = rejected = 0
    busy_s = 0.0
    it = iter(entries)
    while batch := list(itertools.islice(it, BATCH)):
        started = time.perf_counter()
        events = []
        for fields in batch:
            raw = {k.encode(): v.encode() for k, v in fields.items()}
            try:
                events.append(decoder.decode("shop", f"{n}-0", raw))
            except InvalidEventError:
                rejected += 1  # a dead letter in the worker; never an alert
            n += 1
        # The analyst's verdicts arrive once the first day is over: between two events.
        cut = len(events) if analyst is None else analyst.cut(events)
        for part in (events[:cut], events[cut:]) if cut < len(events) else (events,):
            if analyst is not None and part and part[0].event_time_ms >= analyst.due_ms:
                analyst.tell(pipeline)
            verdicts = pipeline.process(part) if not sweep else []
            if sweep:  # one at a time, so each verdict pairs with the reasons just computed
                for e in part:
                    v = pipeline.process([e])[0]
                    verdicts.append(v)
                    side = [_hit(a) for a in v.side_alerts]
                    simulated.see(pipeline, e, v.score, side)
            _record(verdicts, span, hits, analyst)
        busy_s += time.perf_counter() - started
    producer_days = sum(b - a for a, b in span.values()) / DAY_MS
    return SeedRun(
        seed,
        n,
        rejected,
        n / busy_s if busy_s else 0.0,
        score(incidents, hits, producer_days),
        {t: score(incidents, h, producer_days) for t, h in simulated.hits.items()},
        incidents,
        hits,
        0 if analyst is None else analyst.told,
        0 if analyst is None else pipeline.feedback.applied,
        min((a for a, _ in span.values()), default=0),
    )


def _record(
    verdicts: Sequence[Verdict],
    span: dict[str, list[int]],
    hits: list[Hit],
    analyst: _Analyst | None,
) -> None:
    """Each producer's first and last event time, the alerts, and what the analyst sees."""
    for v in verdicts:
        e = v.event
        s = span.setdefault(e.producer, [e.event_time_ms, e.event_time_ms])
        s[1] = e.event_time_ms
        if analyst is not None:
            analyst.see(v)
        if v.alert is not None:
            hits.append(_hit(v.alert))
        hits.extend(_hit(a) for a in v.side_alerts)


class _Analyst:
    """Simulated analyst feedback: at the end of the first day of event time, every false
    alert of that day (no incident explains it, as the matching rule says) is marked a false
    positive, in alert order, as ``detector feedback`` would append it."""

    def __init__(self, incidents: Sequence[Incident]) -> None:
        self.incidents = incidents
        self.due_ms = -1  # set by the first event: its time plus a day
        self.alerts: list[tuple[Alert, str]] = []
        self.told = 0
        self.done = False

    def cut(self, events: Sequence[Event]) -> int:
        """Index of the first event at or past the due time (the end: none, or told already)."""
        if self.done or not events:
            return len(events)
        if self.due_ms < 0:
            self.due_ms = events[0].event_time_ms + DAY_MS
        due = (k for k, e in enumerate(events) if e.event_time_ms >= self.due_ms)
        return next(due, len(events))

    def see(self, v: Verdict) -> None:
        if not self.done and v.alert is not None:
            self.alerts.append((v.alert, v.event.type or ""))

    def tell(self, pipeline: Pipeline) -> None:
        if self.done:
            return
        self.done = True
        for alert, event_type in self.alerts:
            inc = incident_for(alert.producer, alert.event_time, self.incidents, GRACE_MS)
            if inc is not None or not alert.producer:
                continue
            reasons = tuple(MarkedReason(r.feature, r.field, r.observed) for r in alert.reasons)
            fb = Feedback(alert.alert_id, FALSE_POSITIVE, alert.producer, alert.event_time,
                          reasons, event_type)  # fmt: skip
            pipeline.apply_feedback(fb)
            self.told += 1


def _hit(alert: Alert) -> Hit:
    return Hit(alert.producer, alert.event_time, tuple(r.feature for r in alert.reasons))
