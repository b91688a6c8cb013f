"""Pipeline: features, model, calibration and decision for a batch of events.

The one place where an event becomes a score and maybe an alert. ``detector run`` (on Redis)
and ``detector score`` (on a file) both call :meth:`Pipeline.process`, so the same events in
the same order give the same scores either way.

Order per event: evidence from the producer's past, raw score, calibrated score, decision,
then learning, unless the event is suspect (protected learning; see ``Decision``).

Examples:
    >>> from detector.events import Event
    >>> from detector.scoring import load_spec
    >>> p = Pipeline(load_spec("stats"))
    >>> evs = [Event("s", f"{i}-0", "p1", i * 1000, "t", {"v": 1.0 + i % 2}, {}, 40)
    ...        for i in range(300)]
    >>> evs.append(Event("s", "300-0", "p1", 300_000, "t", {"v": 5000.0}, {}, 40))
    >>> out = p.process(evs)
    >>> out[0].score is None, out[-1].alert is not None, out[-1].alert.reasons[0].feature
    (True, True, 'value')
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from detector.alerts import Alert, alert_id
from detector.calibration import Calibrator, Likelihood
from detector.checkpoint import Snapshot, check_compatible, new_meta
from detector.events import Event
from detector.features import FeatureStore, ProducerState, Reason
from detector.scoring import ModelSpec

MAX_REASONS = 3
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome for one event.

    Attributes:
        event: the event.
        score: calibrated score in [0, 1]; None while the producer is warming up.
        flagged: the score crossed the threshold.
        alert: the alert to emit (None when not flagged, or held back by the cooldown).
        error: set when scoring raised; the worker dead-letters the event with it.
        held: the event came inside its producer's cooldown after an alert: whatever its
            score, it could not raise an alert of its own (flagged ones are counted in the
            next alert's ``suppressed``). Benchmarks that score alerts, not raw scores, read
            held events as "no detection".
        silence: alerts about *other* producers that this event revealed as silent (its
            event time moved the watermark past their deadline; see ``Decision``). The
            worker appends them like ``alert``; their ids derive from this entry and the
            silent producer, so a replay never writes them twice.
    """

    event: Event
    score: float | None
    flagged: bool
    alert: Alert | None
    error: str | None = None
    held: bool = False
    silence: tuple[Alert, ...] = ()


class Pipeline:
    """Stateful scorer for one model spec.

    Args:
        spec: the model spec.
        threshold: overrides the spec's threshold.
        max_producers: cap on tracked producers (LRU beyond it).
        idle_ttl_ms: producers silent this long (event time) are forgotten.
        track_changes: remember changed producers, for incremental checkpoints (the worker).
    """

    def __init__(
        self,
        spec: ModelSpec,
        threshold: float | None = None,
        max_producers: int = 100_000,
        idle_ttl_ms: int = 24 * 3600 * 1000,
        track_changes: bool = False,
    ) -> None:
        self.spec = spec
        self.decision = spec.decision
        self.threshold = spec.decision.threshold if threshold is None else threshold
        self.model = spec.build()
        self.store = FeatureStore(spec.features, max_producers, idle_ttl_ms, track_changes)
        c = spec.calibration
        self.calibrator = Calibrator(self.model.max_raw, c.bins, c.tail_points, c.min_excess)
        self.likelihood = (
            Likelihood(c.likelihood_window, c.likelihood_fading) if c.likelihood_window else None
        )
        self.events_seen = 0

    def process(self, events: Sequence[Event]) -> list[Verdict]:
        """Score, decide and learn, in order. One failing event never stops the others."""
        out = []
        for event in events:
            try:
                out.append(self._one(event))
            except Exception as exc:  # a bug must cost one event, not the worker
                log.exception("scoring failed for %s %s", event.stream, event.entry_id)
                out.append(Verdict(event, None, False, None, f"{type(exc).__name__}: {exc}"))
        return out

    def _one(self, event: Event) -> Verdict:
        store = self.store
        st = store.state(event.producer)
        evidence = store.evidence(st, event)
        raw = self.model.raw_score(evidence)
        if st.calibration is None:
            st.calibration = self.calibrator.new()
        d = self.decision
        score: float | None = None
        flagged = suspect = False
        alert = None
        reasons = evidence.reasons
        if st.n >= d.warmup_events:
            score = self.calibrator.score(st.calibration, raw)
            # Protection judges the event itself; the likelihood may flag it as part of a run.
            suspect = score >= min(d.protect_threshold, self.threshold)
            if self.likelihood is not None:
                score, reasons = self._likelihood(st, score, reasons)
            flagged = score >= self.threshold
        if suspect:
            if st.flagged_streak == 0:
                st.flagged_since_ms = event.event_time_ms
            st.flagged_streak += 1
        else:
            st.flagged_streak = 0
        held = event.event_time_ms < st.cooldown_until_ms
        if flagged:
            alert = self._decide(st, event, score or 0.0, reasons)
        store.advance_clock(st, event)
        accept = not suspect or (
            st.flagged_streak > d.adapt_after_events
            and event.event_time_ms - st.flagged_since_ms >= d.adapt_after_ms
        )
        # The calibration must see rare scores too, or its tail looks thinner than it is; but
        # only the first of a run of suspect events, so one incident cannot teach it that
        # incidents are normal. Baselines and the model learn only accepted events.
        if accept or st.flagged_streak == 1:
            self.calibrator.learn(st.calibration, raw)
        if accept:
            store.learn(st, event)
            self.model.learn(evidence)
        store.expire(event.event_time_ms)
        self.events_seen += 1
        silence = self._silence(event) if d.silence_after > 0 else ()
        return Verdict(event, score, flagged, alert, held=held, silence=silence)

    def _likelihood(
        self, st: ProducerState, score: float, reasons: list[Reason]
    ) -> tuple[float, list[Reason]]:
        """The larger of the calibrated score and the anomaly likelihood of the producer's
        recent scores; when the likelihood wins, it leads the reasons."""
        assert self.likelihood is not None  # noqa: S101 (checked by the caller)
        if st.likelihood is None:
            st.likelihood = self.likelihood.new()
        lk, mean, usual = self.likelihood.update(st.likelihood, score)
        if lk <= score:
            return score, reasons
        window = self.likelihood.window
        surprise = -math.log10(max(1.0 - lk, 1e-300))
        why = Reason(
            "likelihood", "", f"mean rarity {mean:.3g} over the last {window} events",
            f"usually {usual:.3g}", surprise,
        )  # fmt: skip
        return lk, [why, *reasons]

    def _silence(self, event: Event) -> tuple[Alert, ...]:
        """Alerts for producers the watermark has left behind: silent for longer than
        ``silence_after`` times their usual inter-arrival (and ``silence_min_ms``).

        Checked at most every ``silence_min_ms / 2`` of event time, over every tracked
        producer (O(producers) per check, like the idle sweep). Deterministic: event time
        only, and the ids derive from this entry and the silent producer.
        """
        store, d = self.store, self.decision
        now = store.watermark_ms
        if now < store.next_silence_ms:
            return ()
        store.next_silence_ms = now + max(d.silence_min_ms // 2, 1000)
        out = []
        for producer, st in store.producers.items():
            if st.silenced or st.last_ms < 0 or st.n < d.warmup_events:
                continue
            usual_ms = max(math.expm1(st.gap.get()), 1.0)  # smoothed inter-arrival
            quiet_ms = now - st.last_ms
            if quiet_ms < max(d.silence_after * usual_ms, d.silence_min_ms):
                continue
            st.silenced = True
            if store.track_changes:
                store.dirty.add(producer)
            surprise = min(quiet_ms / usual_ms / math.log(10.0), 64.0)  # exponential gaps
            reason = Reason(
                "silence", "", f"no event for {quiet_ms / 1000:.4g}s",
                f"one every ~{usual_ms / 1000:.3g}s", surprise,
            )  # fmt: skip
            out.append(
                Alert(
                    alert_id=alert_id(
                        event.stream, event.entry_id, f"{self.spec.name}\0silence\0{producer}"
                    ),
                    producer=producer,
                    source_stream=event.stream,
                    source_id=event.entry_id,
                    event_time=now,
                    score=1.0,
                    threshold=self.threshold,
                    model=self.spec.name,
                    reasons=(reason,),
                )
            )
        return tuple(out)

    def snapshot(self, offsets: dict[str, str], full: bool = False) -> Snapshot:
        """The state to checkpoint: every producer if ``full``, else only changed ones."""
        store = self.store
        names = list(store.producers) if full else [n for n in store.dirty if n in store.producers]
        meta = new_meta(
            self.spec.name, self.spec.digest, dict(offsets),
            events_seen=self.events_seen, producers=len(store), **store.counters(),
        )  # fmt: skip
        return Snapshot(
            meta, self.model, {n: store.producers[n] for n in names}, sorted(store.removed)
        )

    def committed(self) -> None:
        """The last snapshot is durable: start tracking changes afresh."""
        self.store.dirty.clear()
        self.store.removed.clear()

    def restore(self, snap: Snapshot, baseline: bool = False) -> dict[str, str]:
        """Resume from a checkpoint (or start from a baseline); returns its offsets.

        Raises:
            IncompatibleCheckpointError: another format, River version or model spec.
        """
        check_compatible(snap.meta, self.spec.name, self.spec.digest)
        self.model = snap.model  # type: ignore[assignment]
        self.store.restore(snap.producers, snap.meta, baseline)  # type: ignore[arg-type]
        self.events_seen = int(snap.meta["events_seen"])
        return dict(snap.meta.get("offsets", {}))

    def _decide(
        self, st: ProducerState, event: Event, score: float, reasons: list[Reason]
    ) -> Alert | None:
        if event.event_time_ms < st.cooldown_until_ms:
            st.suppressed += 1
            return None
        suppressed, st.suppressed = st.suppressed, 0
        st.cooldown_until_ms = event.event_time_ms + self.decision.cooldown_ms
        return Alert(
            alert_id=alert_id(event.stream, event.entry_id, self.spec.name),
            producer=event.producer,
            source_stream=event.stream,
            source_id=event.entry_id,
            event_time=event.event_time_ms,
            score=score,
            threshold=self.threshold,
            model=self.spec.name,
            # Reasons that explain something (p < 0.1), at least the top one.
            reasons=tuple([r for r in reasons[:MAX_REASONS] if r.surprise >= 1.0] or reasons[:1]),
            suppressed=suppressed,
        )
