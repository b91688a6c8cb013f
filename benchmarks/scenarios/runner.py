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

from benchmarks.scenarios.matching import Hit, Score, score
from detector.core.alerts import Alert
from detector.core.errors import InvalidEventError
from detector.core.events import Decoder, Event
from detector.core.features import Reason
from detector.core.features.judgements import Judgements
from detector.core.pipeline import Pipeline
from detector.core.scoring import ModelSpec
from detector.shop.simulator import iter_events

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
) -> SeedRun:
    """Generate the shop for ``seed``, score it, and match the alerts to its incidents."""
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
        verdicts = pipeline.process(events) if not sweep else []
        if sweep:  # one at a time, so each verdict pairs with the reasons just computed
            for e in events:
                v = pipeline.process([e])[0]
                verdicts.append(v)
                side = [_hit(a) for a in v.side_alerts]
                simulated.see(pipeline, e, v.score, side)
        busy_s += time.perf_counter() - started
        for v in verdicts:
            e = v.event
            s = span.setdefault(e.producer, [e.event_time_ms, e.event_time_ms])
            s[1] = e.event_time_ms
            if v.alert is not None:
                hits.append(_hit(v.alert))
            hits.extend(_hit(a) for a in v.side_alerts)
    producer_days = sum(b - a for a, b in span.values()) / DAY_MS
    return SeedRun(
        seed,
        n,
        rejected,
        n / busy_s if busy_s else 0.0,
        score(incidents, hits, producer_days),
        {t: score(incidents, h, producer_days) for t, h in simulated.hits.items()},
    )


def _hit(alert: Alert) -> Hit:
    return Hit(alert.producer, alert.event_time, tuple(r.feature for r in alert.reasons))
