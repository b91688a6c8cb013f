"""Pipeline: features, model, calibration and decision for a batch of events.

The one place where an event becomes a score and maybe an alert. ``detector run`` (on Redis)
and ``detector score`` (on a file) both call :meth:`Pipeline.process`, so the same events in
the same order give the same scores either way.

Order per event: the features' judgement from the producer's past, raw score, calibrated score,
decision, then learning, unless the event is suspect (protected learning; see ``Decision``).

Examples:
    >>> from detector.core.events import Event
    >>> from detector.core.scoring import load_spec
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
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import overload

from detector.core.admission import OVERFLOW, Admission
from detector.core.alerts import (
    ALERT_STORM,
    PRODUCER_EXPLOSION,
    SILENCE,
    STREAM_PAUSE,
    Alert,
    AlertBudget,
    alert_id,
)
from detector.core.calibration import (
    TAILS,
    Calibrator,
    Likelihood,
    RarityTrend,
    TailCounts,
    Tails,
)
from detector.core.checkpoint import BASE_PREFIX, Snapshot, check_compatible, new_meta, pieces
from detector.core.codec import Reader, Writer
from detector.core.errors import IncompatibleCheckpointError
from detector.core.events import Event
from detector.core.features import FeatureStore, Reason, new_producer_reason, tables
from detector.core.features.columns import column
from detector.core.features.judgements import Judgements
from detector.core.features.store import ProducerView
from detector.core.features.types import TypeFeature
from detector.core.feedback import PROTECT, SUPPRESS, Feedback, FeedbackRules, Rule
from detector.core.fingerprints import fingerprint
from detector.core.scoring import ModelSpec

MAX_REASONS = 3
EXPLAINS = 1.0  # a reason explains something from this surprise on (p < 0.1)
log = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: one per event, and a frozen __init__ sets each field slowly
class Verdict:
    """The outcome for one event.

    Attributes:
        event: the event.
        score: calibrated score in [0, 1]; None while the producer is warming up.
        flagged: the score crossed the threshold, or a decisive reason (a never-seen type,
            ``Feature.decisive``) flagged the event whatever its score.
        alert: the alert to emit (None when not flagged, or held back by the cooldown).
        error: set when scoring raised; the worker dead-letters the event with it.
        held: the event came inside its producer's cooldown after an alert (with no decisive
            reason, which goes through it): whatever its score, it could not raise an alert
            of its own (flagged ones are counted in the
            next alert's ``suppressed``). Benchmarks that score alerts, not raw scores, read
            held events as "no detection".
        side_alerts: alerts this event revealed that are not about the event itself: other
            producers gone silent (its event time moved the watermark past their deadline;
            see ``Decision``), the whole stream resuming after a pause (``stream_pause``), and
            the detector's own ``producer_explosion`` and ``alert_storm`` alerts. The worker
            appends them like ``alert``; their ids derive from this entry, the kind and the
            producer, so a replay never writes them twice.
    """

    event: Event
    score: float | None
    flagged: bool
    alert: Alert | None
    error: str | None = None
    held: bool = False
    side_alerts: tuple[Alert, ...] = ()


class Verdicts(Sequence[Verdict]):
    """A batch's outcomes as columns: per event its score (NaN while its producer warms up),
    whether it was flagged, whether a cooldown held it; the rare objects (alerts, errors, side
    alerts) by event index. Indexing builds a :class:`Verdict` (tests, tools, callbacks); the
    worker reads the columns, so a batch makes no object per event."""

    __slots__ = ("alerts", "errors", "events", "flagged", "held", "score", "side")

    def __init__(self, events: Sequence[Event]) -> None:
        n = len(events)
        self.events = events
        self.score = column("d", n)
        self.flagged = bytearray(n)
        self.held = bytearray(n)
        self.alerts: dict[int, Alert] = {}
        self.errors: dict[int, str] = {}
        self.side: dict[int, tuple[Alert, ...]] = {}

    def __len__(self) -> int:
        return len(self.events)

    @overload
    def __getitem__(self, i: int) -> Verdict: ...

    @overload
    def __getitem__(self, i: slice) -> list[Verdict]: ...

    def __getitem__(self, i: int | slice) -> Verdict | list[Verdict]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        event = self.events[i]  # IndexError beyond the batch
        score = self.score[i]
        return Verdict(
            event, None if math.isnan(score) else score, bool(self.flagged[i]),
            self.alerts.get(i), self.errors.get(i), bool(self.held[i]), self.side.get(i, ()),
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def put(
        self,
        i: int,
        score: float | None,
        flagged: bool,
        held: bool,
        alert: Alert | None,
        side: tuple[Alert, ...],
    ) -> None:
        """Event ``i``'s outcome."""
        self.score[i] = math.nan if score is None else score
        self.flagged[i], self.held[i] = flagged, held
        if alert is not None:
            self.alerts[i] = alert
        if side:
            self.side[i] = side

    def scored(self) -> int:
        """Events with a score (past their producer's warm-up, not failed)."""
        return sum(1 for s in self.score if not math.isnan(s))

    def held_back(self) -> int:
        """Flagged events that raised no alert (a cooldown or the global cap held it)."""
        return sum(self.flagged) - len(self.alerts)

    def rows(self) -> list[tuple[Event, float | None, bool]]:
        """Each event's (event, score, flagged), read from the columns (no :class:`Verdict`
        per event); events that failed are left out (they are dead letters)."""
        errors, score, flagged = self.errors, self.score, self.flagged
        return [
            (event, None if math.isnan(score[i]) else score[i], bool(flagged[i]))
            for i, event in enumerate(self.events)
            if i not in errors
        ]

    def emitted(self, start: int = 0, stop: int | None = None) -> list[Alert]:
        """Every alert of the batch (of its events ``start`` to ``stop``), in event order: an
        event's own, then its side alerts."""
        out: list[Alert] = []
        stop = len(self.events) if stop is None else stop
        for i in sorted(i for i in {*self.alerts, *self.side} if start <= i < stop):
            alert = self.alerts.get(i)
            if alert is not None:
                out.append(alert)
            out.extend(self.side.get(i, ()))
        return out


MAX_RUNS = 8  # suspect runs open at once per producer (one per event type; beyond: the oldest goes)
# With ``suspect_run_gap_ms``, a type's run breaks only after this many of the type's own
# usual inter-arrivals without a suspect event of it (and never sooner than the gap): a type
# rarer than one event per gap would otherwise start a run at each of its events and never
# adapt to a lasting change (a gap this long ends a run of Poisson arrivals with p = e^-10).
RUN_GAP_ARRIVALS = 10
MAX_RUN_GAP_MS = 86_400_000  # a day of event time


class Decisions:
    """The decision state of each producer slot (a part of the store's slots, so it is
    bounded, evicted and checkpointed with the producer): its cooldown, held-back alerts,
    current runs of suspect events, calibration histogram and likelihood trend.

    The runs are rows of a pool (typed columns), chained per slot from :attr:`run_head`
    (newest first), at most :data:`MAX_RUNS` per slot: a row is one run's key (an event
    type's fingerprint; 0: the producer's one run when runs are consecutive suspect events),
    its suspect events, its first event time and the event time it breaks at (-1: at the
    next unsuspect event). A producer with no open run holds no row."""

    __slots__ = (
        "bins", "calibration", "cooldown_until_ms", "free", "likelihood", "run_head",
        "run_key", "run_next", "run_since", "run_streak", "run_until", "suppressed",
    )  # fmt: skip

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.cooldown_until_ms: list[int] = []
        self.suppressed: list[int] = []
        self.run_head: list[int] = []  # per slot: its newest run's row, -1: none
        self.calibration = Tails(bins)  # the histograms, pooled
        self.likelihood: list[RarityTrend | None] = []  # only with a likelihood in the spec
        self.run_key: array[int] = array("q")
        self.run_streak: array[int] = array("q")
        self.run_since: array[int] = array("q")
        self.run_until: array[int] = array("q")
        self.run_next: array[int] = array("q")  # the slot's next row; free rows: the next free
        self.free = -1

    def reset(self, slot: int) -> None:
        if slot == len(self.cooldown_until_ms):
            for col in (self.cooldown_until_ms, self.suppressed, self.run_head):
                col.append(0)
            self.likelihood.append(None)
        else:
            self.drop_runs(slot)
            self.likelihood[slot] = None
        self.cooldown_until_ms[slot], self.suppressed[slot], self.run_head[slot] = -1, 0, -1
        self.calibration.reset(slot)

    def run(self, slot: int, key: int) -> int:
        """The row of the slot's run of ``key``, -1 if none."""
        r = self.run_head[slot]
        while r >= 0 and self.run_key[r] != key:
            r = self.run_next[r]
        return r

    def open_run(self, slot: int, key: int, t: int) -> int:
        """A new run of ``key`` from event time ``t`` (replacing the slot's run of ``key``,
        or its run nearest to breaking when it has :data:`MAX_RUNS`); its row. Runs broken
        by ``t`` go."""
        prev, r, runs, oldest, before = -1, self.run_head[slot], 0, -1, -1
        while r >= 0:
            after = self.run_next[r]
            if self.run_key[r] == key:
                break
            if 0 <= self.run_until[r] <= t:  # broken: its row is free again
                self._unlink(slot, prev, r)
                self.run_next[r], self.free = self.free, r
                r = after
                continue
            if oldest < 0 or self.run_until[r] <= self.run_until[oldest]:
                oldest, before = r, prev
            runs += 1
            prev, r = r, after
        if r < 0 and runs >= MAX_RUNS:
            r, prev = oldest, before
        if r >= 0:
            self._unlink(slot, prev, r)  # it goes to the head
        else:
            r = self._new_row()
        self.run_key[r], self.run_streak[r], self.run_since[r], self.run_until[r] = key, 0, t, -1
        self.run_next[r], self.run_head[slot] = self.run_head[slot], r
        return r

    def _unlink(self, slot: int, prev: int, r: int) -> None:
        if prev < 0:
            self.run_head[slot] = self.run_next[r]
        else:
            self.run_next[prev] = self.run_next[r]

    def _new_row(self) -> int:
        r = self.free
        if r >= 0:
            self.free = self.run_next[r]
            return r
        for col in (self.run_key, self.run_streak, self.run_since, self.run_until, self.run_next):
            col.append(0)
        return len(self.run_key) - 1

    def drop_runs(self, slot: int) -> None:
        """Ends every run of the slot (its rows go to the free chain)."""
        r = self.run_head[slot]
        while r >= 0:
            after = self.run_next[r]
            self.run_next[r], self.free = self.free, r
            r = after
        self.run_head[slot] = -1

    def runs(self, slot: int) -> list[int]:
        """The rows of the slot's runs, newest first."""
        rows, r = [], self.run_head[slot]
        while r >= 0:
            rows.append(r)
            r = self.run_next[r]
        return rows

    def _add_runs(self, slot: int, runs: list[tuple[int, int, int, int]]) -> None:
        """Appends ``runs`` (key, streak, since, until; newest first) as the slot's runs."""
        last = -1
        for key, streak, since, until in runs:
            r = self._new_row()
            self.run_key[r], self.run_streak[r], self.run_since[r] = key, streak, since
            self.run_until[r], self.run_next[r] = until, -1
            if last < 0:
                self.run_head[slot] = r
            else:
                self.run_next[last] = r
            last = r

    def dump(self, slot: int, w: Writer) -> None:
        w.i64(self.cooldown_until_ms[slot])
        w.i64(self.suppressed[slot])
        rows = self.runs(slot)
        w.count(len(rows))
        for r in rows:
            for col in (self.run_key, self.run_streak, self.run_since, self.run_until):
                w.i64(col[r])
        tc, rt = self.calibration.get(slot), self.likelihood[slot]
        w.count(tc is not None)
        if tc is not None:
            tc.dump(w)
        w.count(rt is not None)
        if rt is not None:
            rt.dump(w)

    def load(self, slot: int, r: Reader) -> None:
        self.cooldown_until_ms[slot], self.suppressed[slot] = r.i64(), r.i64()
        self.drop_runs(slot)
        self._add_runs(slot, [(r.i64(), r.i64(), r.i64(), r.i64()) for _ in range(r.count())])
        self.calibration.put(slot, TailCounts.load(r, self.bins) if r.count() else None)
        self.likelihood[slot] = RarityTrend.load(r) if r.count() else None

    def dump_table(self, w: Writer) -> None:
        """Every slot's decision state: two int64 columns, the runs as a column of each slot's
        count and four columns of their rows in slot order, the histograms' pool as it is held
        (its columns, no loop over slots), the likelihood trends (only a spec with a
        likelihood has them) one by one."""
        w.column(array("q", self.cooldown_until_ms))
        w.column(array("q", self.suppressed))
        per_slot = [self.runs(slot) for slot in range(len(self.run_head))]
        w.column(array("q", [len(rows) for rows in per_slot]))
        order = [r for rows in per_slot for r in rows]
        for col in (self.run_key, self.run_streak, self.run_since, self.run_until):
            w.column(array("q", [col[r] for r in order]))
        tables.dump(w, self.calibration, TAILS)
        w.count(len(self.likelihood))
        for rt in self.likelihood:
            w.count(rt is not None)
            if rt is not None:
                rt.dump(w)

    def load_table(self, r: Reader) -> None:
        self.cooldown_until_ms, self.suppressed = r.column().tolist(), r.column().tolist()
        counts = r.column()
        key, streak, since, until = (r.column() for _ in range(4))
        self.run_head = [-1] * len(counts)
        for col in (self.run_key, self.run_streak, self.run_since, self.run_until, self.run_next):
            del col[:]
        self.free = -1
        rows = zip(key, streak, since, until, strict=True)
        for slot, k in enumerate(counts):
            self._add_runs(slot, list(islice(rows, k)))
        tails = self.calibration
        tables.load(r, tails, TAILS)
        self.likelihood = [RarityTrend.load(r) if r.count() else None for _ in range(r.count())]
        if tails.nbins != self.bins or tails.slots != len(self.run_head):
            msg = "base has histograms of another spec or another number of slots"
            raise ValueError(msg)


class Pipeline:
    """Stateful scorer for one model spec.

    Args:
        spec: the model spec.
        threshold: overrides the spec's threshold.
        max_producers: cap on tracked producers. Beyond it, established producers (past
            warm-up) stay until the idle TTL; newcomers replace producers in warm-up, at most
            ``admit_per_min`` per minute of event time, and the rest share one overflow state
            (:mod:`detector.core.admission`).
        idle_ttl_ms: producers silent this long (event time) are forgotten.
        track_changes: remember changed producers, for incremental checkpoints (the worker).
        admit_per_min: newcomers admitted per minute of event time while the store is full.
        max_alerts_per_min: alerts per minute of event time over all producers; the rest are
            summarised in one ``alert_storm`` alert per minute (0: no cap).
    """

    def __init__(
        self,
        spec: ModelSpec,
        threshold: float | None = None,
        max_producers: int = 100_000,
        idle_ttl_ms: int = 24 * 3600 * 1000,
        track_changes: bool = False,
        admit_per_min: int = 60,
        max_alerts_per_min: int = 100,
    ) -> None:
        self.spec = spec
        self.decision = spec.decision
        self.threshold = spec.decision.threshold if threshold is None else threshold
        self.model = spec.build()
        self.admission = Admission(spec.decision.warmup_events, admit_per_min)
        c = spec.calibration
        self.decisions = Decisions(c.bins)
        # A model's state per producer (a River spec of scope "producer") is a part of the
        # slots too: bounded, evicted and checkpointed with its producer.
        per_slot = self.model.per_slot
        # Analyst feedback's rules: per slot too, last in the record.
        self.feedback = FeedbackRules()
        parts = [self.decisions] if per_slot is None else [self.decisions, per_slot]
        self.store = FeatureStore(
            spec.features, max_producers, idle_ttl_ms, track_changes, self.admission,
            parts=[*parts, self.feedback],
        )  # fmt: skip
        self.budget = AlertBudget(max_alerts_per_min)
        self.calibrator = Calibrator(self.model.max_raw, c.bins, c.tail_points, c.min_excess)
        self.likelihood = (
            Likelihood(c.likelihood_window, c.likelihood_fading, max_rarity=c.likelihood_max_rarity)
            if c.likelihood_window
            else None
        )
        self.events_seen = 0
        # Whether any producer ever got past warm-up: the new_producer rule's "others are
        # established", kept as a flag (a scan per new producer is quadratic at a cold start).
        self.established = False
        self.first_ms: int | None = None  # the first event time seen (new_producer settling)
        self.judged = Judgements()  # the current batch's judgements, reused batch after batch
        # The current event's run of suspect events (``_suspect_run``), read by ``_learn``.
        self.run_streak = 0
        self.run_since = -1

    def process(
        self, events: Sequence[Event], feedback: Sequence[tuple[int, Feedback]] = ()
    ) -> Verdicts:
        """Score, decide and learn, in order. One failing event never stops the others.

        ``feedback``: analyst verdicts, each applied right before the event of its index (an
        index past the last event: after them all), in order (see :func:`merge_order`).
        """
        out = Verdicts(events)
        self.process_part(out, 0, len(events), feedback)
        return out

    def process_part(
        self,
        out: Verdicts,
        start: int,
        stop: int,
        feedback: Sequence[tuple[int, Feedback]] = (),
    ) -> None:
        """:meth:`process` of ``out.events[start:stop]`` into ``out``, parts in order from 0
        to the end: the same verdicts, with the part's alerts known before the rest of the
        batch is scored (the worker writes them at once: an alert need not wait for a whole
        batch of a backlog). ``feedback`` as for :meth:`process`, the batch's whole list:
        the part applies what falls before its events (the last part: the rest too)."""
        events = out.events
        last = stop >= len(events)
        if start == 0:
            self.judged.start(events)
        pending = iter([f for f in feedback if start <= f[0] < stop or (last and f[0] >= stop)])
        due = next(pending, None)
        for i in range(start, stop):
            event = events[i]
            while due is not None and due[0] <= i:
                self.apply_feedback(due[1])
                due = next(pending, None)
            try:
                self._one(event, i, out)
            except Exception as exc:  # a bug must cost one event, not the worker
                log.exception("scoring failed for %s %s", event.stream, event.entry_id)
                out.put(i, None, False, False, None, ())
                out.errors[i] = f"{type(exc).__name__}: {exc}"
        while due is not None:
            self.apply_feedback(due[1])
            due = next(pending, None)
        if last:
            # The batch's events are the caller's (in ``out``): the reused judgements let them
            # go, or they would be held until the next batch (a batch's worth of objects).
            self.judged.events = ()

    def apply_feedback(self, fb: Feedback) -> bool:
        """Teach the producer's state an analyst's verdict (:mod:`detector.core.feedback`);
        False when the producer is not tracked here (never seen, or evicted since)."""
        slot = self.store.slot_of(fb.producer)
        if slot is None:
            self.feedback.unknown += 1
            return False
        self.store.changing(fb.producer)
        self.feedback.add(slot, fb, self.store.clock.last_ms[slot])
        return True

    def _one(self, event: Event, i: int, out: Verdicts, raw: float | None = None) -> None:
        """Event ``i`` of the batch into ``out``; ``raw``: its raw score, already judged into
        row ``i`` (:meth:`preview`)."""
        store, ds, t, judged = self.store, self.decisions, event.event_time_ms, self.judged
        pause = self._paused(t)  # first: a pause moves every producer's clock past it
        slot = store.state(event.producer, t)
        overflowed = slot == store.overflow
        n = store.clock.n[slot]
        now = max(store.watermark_ms, t)
        capped = self.budget.roll(now)  # first: this event's alerts count in its minute
        if raw is None:
            store.judge(slot, event, judged, i)
            raw = self._raw(i, n)
        tails = ds.calibration
        if tails.n[slot] < 0:
            tails.new(slot)
        d = self.decision
        score: float | None = None
        flagged = suspect = False
        alert = None
        lead: Reason | None = None  # a reason ahead of the features' own (likelihood)
        decisive: Reason | None = None  # one that alerts whatever the score (Feature.decisive)
        threshold = self.threshold
        if n >= d.warmup_events:
            self.established = True
            score = self.calibrator.score_at(tails, slot, raw)
            # Protection judges the event itself; the likelihood may flag it as part of a run.
            suspect = score >= min(d.protect_threshold, self.threshold)
            if self.likelihood is not None:
                score, lead = self._likelihood(slot, score)
            threshold = self.threshold_for(slot)
            flagged = score >= threshold
            if lead is not None and score < d.likelihood_threshold:
                flagged = False  # the likelihood's run alerts from its own level
            decisive = store.decisive(slot, event)
            if decisive is not None:
                lead, flagged, suspect = decisive, True, True
        elif (
            n == 0
            and d.new_producer
            and self._may_be_new_producer(event)  # first: it notes the first event time
            and not overflowed
        ):
            lead = new_producer_reason(event.producer, len(store) - 1)
            score, flagged = 1.0, True
        elif n and (decisive := store.early(slot, event)) is not None:
            # In warm-up but of a known kind: departing from its peers alerts (peer groups).
            lead, score, flagged, suspect = decisive, 1.0, True, True
        reasons, rule = self._taught(slot, event, lead, i, raw, score, flagged or suspect)
        if rule == SUPPRESS:  # a false positive's repeat: normal (learned, no alert)
            flagged = suspect = False
            decisive = None
        self._suspect_run(slot, event, t, suspect)
        held = t < ds.cooldown_until_ms[slot] and decisive is None
        if flagged and held:  # counted in the producer's next alert, and never explained
            ds.suppressed[slot] += 1
        elif flagged:
            reasons = reasons or self._reasons(slot, event, lead, i, raw, score or 0.0)
            alert = self._decide(slot, event, score or 0.0, threshold, reasons)
            held = alert is None  # the global cap held it back
        store.advance(slot, event)
        self._learn(slot, event, i, raw, suspect, rule == PROTECT)
        store.expire(t)
        self.events_seen += 1
        side = self._side_alerts(event, overflowed, now, capped, pause)
        out.put(i, score, flagged, held, alert, side)

    def _learn(
        self, slot: int, event: Event, i: int, raw: float, suspect: bool, protected: bool
    ) -> None:
        """Learn event ``i`` unless it is suspect, or its run has lasted long enough to be the
        new normal (never a ``protected`` one: a confirmed pattern)."""
        ds, d, t = self.decisions, self.decision, event.event_time_ms
        streak = self.run_streak
        accept = not suspect or (
            streak > d.adapt_after_events
            and t - self.run_since >= d.adapt_after_ms
            and not protected
        )
        # The calibration must see rare scores too, or its tail looks thinner than it is; but
        # only the first of a run of suspect events, so one incident cannot teach it that
        # incidents are normal; with runs over event time, not even once the run is accepted
        # as the new normal (the baselines adapt, so its later events score low anyway).
        # Baselines and the model learn only accepted events.
        adapted = suspect and streak > 1  # a run's later event (accepted once it adapts)
        if (accept and not (adapted and d.suspect_run_gap_ms)) or streak == 1:
            self.calibrator.learn_at(ds.calibration, slot, raw)  # (made by _one before)
        if accept:
            self.store.learn(slot, event)
            self.model.learn(self.judged, i)

    def _taught(
        self,
        slot: int,
        event: Event,
        lead: Reason | None,
        i: int,
        raw: float,
        score: float | None,
        unusual: bool,
    ) -> tuple[list[Reason] | None, int]:
        """The analyst feedback rule a flagged or suspect (``unusual``) event matches
        (:mod:`detector.core.feedback`; 0: none), and its reasons if computed to match them
        (then reused for its alert). Producers without rules cost one test."""
        if not unusual or not self.feedback.rules[slot]:
            return None, 0
        reasons = self._reasons(slot, event, lead, i, raw, score or 0.0)
        return reasons, self.feedback.match(slot, reasons, event.type or "", event.event_time_ms)

    def _suspect_run(self, slot: int, event: Event, t: int, suspect: bool) -> None:
        """The run of suspect events this one belongs to (see ``Decision``): its length so
        far and first event time into :attr:`run_streak` and :attr:`run_since` (0 and -1 for
        an unsuspect event). With ``suspect_run_gap_ms``, one run per event type: a rare
        type's suspect events, minutes apart among normal events of other types, are one run
        (one at each of them never adapted: a frozen row, false drift alerts for hours)."""
        ds, gap = self.decisions, self.decision.suspect_run_gap_ms
        self.run_streak, self.run_since = 0, -1
        if not suspect:
            if not gap and ds.run_head[slot] >= 0:
                ds.drop_runs(slot)  # consecutive suspect events only
            return
        # The type's fingerprint as a signed 64-bit column holds it (0: the producer's run).
        key = (fingerprint(event.type) >> 1 if event.type is not None else 1) if gap else 0
        r = ds.run(slot, key)
        if r < 0 or 0 <= ds.run_until[r] <= t:
            r = ds.open_run(slot, key, t)
        ds.run_streak[r] += 1
        if gap:
            ds.run_until[r] = t + self._run_gap(slot, event.type)
        self.run_streak, self.run_since = ds.run_streak[r], ds.run_since[r]

    def _run_gap(self, slot: int, etype: str | None) -> int:
        """How long a run of ``etype`` lasts without a suspect event of it: the spec's gap, or
        :data:`RUN_GAP_ARRIVALS` of the type's usual inter-arrival (the producer's, over the
        type's share of its learned events) if longer; at most :data:`MAX_RUN_GAP_MS`."""
        gap = self.decision.suspect_run_gap_ms
        types = self.store.by_name.get("type")
        if etype is None or not isinstance(types, TypeFeature):
            return gap
        counts = types.counts
        n, k = counts.n[slot], counts.count(slot, etype)
        if k <= 0:
            return gap
        ia = self.store.rate.usual_ms(slot) * n / k
        return int(max(gap, min(RUN_GAP_ARRIVALS * ia, MAX_RUN_GAP_MS)))

    def _raw(self, i: int, n: int) -> float:
        """The model's raw score of row ``i`` (a producer with ``n`` events before it). A
        model that cannot score yet while the producer warms up (a River forecaster before
        its first values raises) scores 0: no warm-up event alerts anyway."""
        try:
            return self.model.score(self.judged, i)
        except Exception:
            if n >= self.decision.warmup_events:
                raise
            return 0.0

    def preview(self, event: Event) -> tuple[float, float | None] | None:
        """Judge and score ``event`` (row 0 of the judgements) without deciding or learning
        anything: its raw and calibrated score (None while its producer warms up); None for a
        producer not tracked (nothing to judge it against). :meth:`conclude` then goes on with
        the same judgement (the River adapter: ``score_one``, then ``learn_one``). A pause of
        the whole stream that the event ends is noted by :meth:`conclude`: the preview judges
        against the clocks before it."""
        slot = self.store.slot_of(event.producer)
        if slot is None:
            return None
        self.judged.start((event,))
        self.store.judge(slot, event, self.judged, 0)
        n = self.store.clock.n[slot]
        raw = self._raw(0, n)
        tails = self.decisions.calibration
        if n < self.decision.warmup_events or tails.n[slot] < 0:
            return raw, None
        return raw, self.calibrator.score_at(tails, slot, raw)

    def conclude(self, event: Event, raw: float | None) -> Verdict:
        """The verdict on ``event`` (decided and learned), from the raw score :meth:`preview`
        gave just before (None: judged now)."""
        self.judged.start((event,))
        out = Verdicts((event,))
        self._one(event, 0, out, raw)
        return out[0]

    def view(self, producer: str) -> DecidedView:
        """What the pipeline holds about ``producer`` (KeyError if not tracked)."""
        slot = self.store.slot_of(producer)
        if slot is None:
            raise KeyError(producer)
        return DecidedView(self.store, self.decisions, slot, self.feedback)

    def _reasons(
        self, slot: int, event: Event, lead: Reason | None, i: int, raw: float, score: float
    ) -> list[Reason]:
        """A flagged event's reasons, explained before the producer's state moves on (only
        flagged events need them): ``lead`` (likelihood, new producer, a decisive reason)
        first, in place of its feature's own; when no feature finds the event surprising, the
        model's own (its score and inputs)."""
        if lead is not None and lead.feature == "new_producer":
            return [lead]  # a first event: no past to explain it against
        reasons = self.store.explain(slot, event)
        if lead is None and not any(r.surprise >= EXPLAINS for r in reasons):
            lead = self.model.reason(self.judged, i, raw, score)
        if lead is None:
            return reasons
        return [lead, *(r for r in reasons if r.feature != lead.feature)]

    def threshold_for(
        self, slot: int, threshold: float | None = None, horizon_ms: int | None = None
    ) -> float:
        """The producer's alert threshold: ``threshold`` (default: the pipeline's), raised so
        that events this rare come less than once per ``horizon_ms`` (default: the spec's
        ``rarity_horizon_ms``) of its event time at its usual rate. A per-event rarity alone
        alerts a busy producer more often per day than a quiet one (1 in 10^5 is ~2 a day at
        2 events/s)."""
        t = self.threshold if threshold is None else threshold
        horizon = self.decision.rarity_horizon_ms if horizon_ms is None else horizon_ms
        if not horizon:
            return t
        return max(t, 1.0 - max(self.store.rate.usual_ms(slot), 1.0) / horizon)

    def _paused(self, t: int) -> int:
        """The pause of the whole stream an event at ``t`` ends (``FeatureStore.paused``),
        judged as a producer's silence is; 0 when the spec does not judge silences."""
        d = self.decision
        return self.store.paused(t, d.silence_after, d.silence_min_ms) if d.silence_after else 0

    def _may_be_new_producer(self, event: Event) -> bool:
        """May a never-seen producer be news: others established, and the detector settled."""
        if self.first_ms is None:
            self.first_ms = event.event_time_ms
        settled = event.event_time_ms - self.first_ms >= self.decision.new_producer_after_ms
        return self.established and settled

    def _side_alerts(
        self,
        event: Event,
        overflowed: bool,
        now: int,
        capped: tuple[int, int, tuple[str, ...]] | None,
        pause: int,
    ) -> tuple[Alert, ...]:
        """Alerts this event revealed that are not about it (``Verdict.side_alerts``)."""
        out = [] if capped is None else [self._storm_alert(event, *capped)]
        if pause:
            out.append(self._pause_alert(event, pause))
        if overflowed:
            report = self.admission.take_report(now, self.decision.cooldown_ms)
            if report is not None:
                out.append(self._explosion_alert(event, *report))
        if self.decision.silence_after > 0:
            out.extend(self._silence(event))
        return tuple(out)

    def _likelihood(self, slot: int, score: float) -> tuple[float, Reason | None]:
        """The larger of the calibrated score and the anomaly likelihood of the producer's
        recent scores; when the likelihood wins, the reason that leads the features' own."""
        assert self.likelihood is not None  # noqa: S101 (checked by the caller)
        trends = self.decisions.likelihood
        trend = trends[slot]
        if trend is None:
            trend = trends[slot] = self.likelihood.new()
        lk, mean, usual = self.likelihood.update(trend, score)
        if lk <= score:
            return score, None
        window = self.likelihood.window
        surprise = -math.log10(max(1.0 - lk, 1e-300))
        why = Reason(
            "likelihood", "", f"mean rarity {mean:.3g} over the last {window} events",
            f"usually {usual:.3g}", surprise,
        )  # fmt: skip
        return lk, why

    def _silence(self, event: Event) -> list[Alert]:
        """Alerts for producers the watermark has left behind: silent for longer than
        ``silence_after`` times their usual inter-arrival (and ``silence_min_ms``).

        Checked at most every ``silence_min_ms / 2`` of event time, over every tracked
        producer (O(producers) per check, like the idle sweep). Deterministic: event time
        only, and the ids derive from this entry and the silent producer. A silence is the
        producer's alert like any other: inside its cooldown it is counted, not sent, and it
        starts one.
        """
        store, d, ds = self.store, self.decision, self.decisions
        now = store.watermark_ms
        if now < store.next_silence_ms:
            return []
        store.next_silence_ms = now + max(d.silence_min_ms // 2, 1000)
        out = []
        clock, rate = store.clock, store.rate
        for producer, slot in store.producers.items():
            last_ms = clock.last_ms[slot]
            if clock.silenced[slot] or last_ms < 0 or clock.n[slot] < d.warmup_events:
                continue
            usual_ms = max(rate.usual_ms(slot), 1.0)
            quiet_ms = now - last_ms
            if quiet_ms < max(d.silence_after * usual_ms, d.silence_min_ms):
                continue
            store.changing(producer)
            clock.silenced[slot] = True
            if now < ds.cooldown_until_ms[slot]:
                ds.suppressed[slot] += 1
                continue
            ds.cooldown_until_ms[slot] = now + d.cooldown_ms
            if not self.budget.allow(producer):
                ds.suppressed[slot] += 1  # as _decide: the next alert reports it
                continue
            suppressed, ds.suppressed[slot] = ds.suppressed[slot], 0
            surprise = min(quiet_ms / usual_ms / math.log(10.0), 64.0)  # exponential gaps
            reason = Reason(
                "silence", "", f"no event for {quiet_ms / 1000:.4g}s",
                f"one every ~{usual_ms / 1000:.3g}s", surprise,
            )  # fmt: skip
            tag = f"silence\0{producer}"
            out.append(self._side_alert(event, SILENCE, tag, producer, now, suppressed, reason))
        return out

    def _pause_alert(self, event: Event, pause_ms: int) -> Alert:
        """The whole stream resumed after ``pause_ms`` without any event (this one ends it)."""
        step_s, producers = self.store.step_ms / 1000, len(self.store)
        return self._detector_alert(
            event, STREAM_PAUSE, event.event_time_ms, 0,
            Reason("stream", "quiet", f"no event for {pause_ms / 1000:.4g}s",
                   f"one every ~{step_s:.3g}s from {producers} producers", 0.0),
        )  # fmt: skip

    def _explosion_alert(self, event: Event, refused: int, distinct: int, admitted: int) -> Alert:
        """The store is full and producers were refused (counts since the previous one)."""
        cap, per_min = self.store.max_producers, self.admission.per_minute
        return self._detector_alert(
            event, PRODUCER_EXPLOSION, event.event_time_ms, 0,
            Reason("producers", "refused_events", str(refused),
                   f"scored in the shared overflow state: {cap} producers tracked", 0.0),
            Reason("producers", "refused_producers", f"~{distinct}",
                   "distinct ids refused (estimate, ~7%)", 0.0),
            Reason("producers", "admitted", str(admitted),
                   f"at most {per_min} per minute, replacing producers in warm-up", 0.0),
        )  # fmt: skip

    def _storm_alert(
        self, event: Event, minute_ms: int, held: int, producers: tuple[str, ...]
    ) -> Alert:
        """Alerts the global cap held back in the minute starting at ``minute_ms``."""
        return self._detector_alert(
            event, ALERT_STORM, minute_ms, held,
            Reason("alerts", "held_back", str(held),
                   f"at most {self.budget.per_minute} alerts per minute", 0.0),
            Reason("alerts", "producers", ",".join(producers),
                   f"the first {len(producers)} producers held back", 0.0),
        )  # fmt: skip

    def _detector_alert(
        self, event: Event, kind: str, event_time: int, suppressed: int, *reasons: Reason
    ) -> Alert:
        """An alert about the detector itself (producer ``""``)."""
        return self._side_alert(event, kind, kind, OVERFLOW, event_time, suppressed, *reasons)

    def _side_alert(
        self,
        event: Event,
        kind: str,
        tag: str,
        producer: str,
        event_time: int,
        suppressed: int,
        *reasons: Reason,
    ) -> Alert:
        """An alert revealed by ``event`` but not about it; ``tag`` makes its id unique."""
        return Alert(
            alert_id=alert_id(event.stream, event.entry_id, f"{self.spec.name}\0{tag}"),
            producer=producer,
            source_stream=event.stream,
            source_id=event.entry_id,
            event_time=event_time,
            score=1.0,
            threshold=self.threshold,
            model=self.spec.name,
            reasons=reasons,
            suppressed=suppressed,
            kind=kind,
        )

    def snapshot(self, offsets: dict[str, str], full: bool = False) -> Snapshot:
        """The state to checkpoint: a base of every producer if ``full`` (or once the
        records written since the last base are many: ``FeatureStore.rebase_due``), else the
        records of the producers changed since the last commit (an empty one for those
        removed)."""
        store = self.store
        full = full or store.rebase_due()
        base, dropped = None, []
        if full:
            base = store.base()  # encoded now: columns copied, no loop over producers
            count = len(pieces(base))
            dropped = [BASE_PREFIX + str(k) for k in range(count, store.base_pieces)]
            removed, names = sorted(store.recorded), []
            store.base_pieces, store.recorded = count, set()
        else:
            names = [n for n in store.dirty if n in store.producers]
            if store.clock.n[store.overflow] and OVERFLOW in store.dirty:
                names.append(OVERFLOW)  # key "" cannot be a real producer's
            removed = []
            store.recorded.update(names, store.removed)
        meta = new_meta(
            self.spec.name, self.spec.digest, dict(offsets),
            events_seen=self.events_seen, established=self.established, first_ms=self.first_ms,
            producers=len(store), river_objects=self.model.river_objects, **store.counters(),
            **self.admission.to_meta(), **self.budget.to_meta(),
        )  # fmt: skip
        model = self.model if self.model.stateful else None
        # The shared state (the replayed-id window) changes with every event: encoded now.
        shared = store.shared(full)
        store.freeze(names)  # its records are read later, as they are now
        gone = [] if full else sorted(store.removed)  # an empty record each: removed
        records = Records(store, names, gone)
        return Snapshot(meta, model, records, removed, shared, base, dropped)

    def committed(self) -> None:
        """The last snapshot is durable: start tracking changes afresh."""
        self.store.committed()

    def restore(
        self, snap: Snapshot, baseline: bool = False, keep: Callable[[str], bool] | None = None
    ) -> dict[str, str]:
        """Resume from a checkpoint (or start from a baseline; with ``keep``, only the
        producers it accepts); returns its offsets.

        Raises:
            IncompatibleCheckpointError: another format, River version or model spec.
        """
        check_compatible(snap.meta, self.spec.name, self.spec.digest)
        if snap.model is not None:  # else stateless: this one is as good as a new one
            self.model = snap.model  # type: ignore[assignment]
        try:
            self.store.restore(snap.producers, snap.meta, baseline, snap.shared, snap.base, keep)
        except ValueError as exc:  # a record of another layout under the same format number
            msg = f"incompatible checkpoint: {exc}; start over with --reset-state"
            raise IncompatibleCheckpointError(msg) from None
        self.budget.restore({} if baseline else snap.meta)
        self.events_seen = int(snap.meta["events_seen"])
        self.first_ms = snap.meta.get("first_ms")
        n = self.store.clock.n
        self.established = bool(snap.meta.get("established")) or any(
            n[slot] >= self.decision.warmup_events for slot in self.store.producers.values()
        )
        return dict(snap.meta.get("offsets", {}))

    def _decide(
        self,
        slot: int,
        event: Event,
        score: float,
        threshold: float,
        reasons: list[Reason],
    ) -> Alert | None:
        """The alert of a flagged event past the producer's cooldown (or with a decisive
        reason), which starts a new cooldown, unless the global cap holds it back."""
        ds = self.decisions
        ds.cooldown_until_ms[slot] = event.event_time_ms + self.decision.cooldown_ms
        if not self.budget.allow(event.producer):
            # Counted as if sent: the producer's next alert (after its cooldown, so the cap's
            # slots rotate among producers) reports it, and so does the minute's summary.
            ds.suppressed[slot] += 1
            return None
        suppressed, ds.suppressed[slot] = ds.suppressed[slot], 0
        return Alert(
            alert_id=alert_id(event.stream, event.entry_id, self.spec.name),
            producer=event.producer,
            source_stream=event.stream,
            source_id=event.entry_id,
            event_time=event.event_time_ms,
            score=score,
            threshold=threshold,
            model=self.spec.name,
            # The top reason (a lead may explain little as a p-value), and the others that
            # explain something (p < 0.1).
            reasons=(*reasons[:1], *[r for r in reasons[1:MAX_REASONS] if r.surprise >= EXPLAINS]),
            suppressed=suppressed,
        )


class DecidedView(ProducerView):
    """A producer's features' state and its decision state, read live (see ProducerView)."""

    def __init__(
        self, store: FeatureStore, decisions: Decisions, slot: int, feedback: FeedbackRules
    ) -> None:
        super().__init__(store, slot)
        self._decisions = decisions
        self._feedback = feedback

    @property
    def calibration(self) -> TailCounts | None:
        return self._decisions.calibration.get(self.slot)  # (a copy)

    @property
    def likelihood(self) -> RarityTrend | None:
        return self._decisions.likelihood[self.slot]

    @property
    def cooldown_until_ms(self) -> int:
        return self._decisions.cooldown_until_ms[self.slot]

    @property
    def suppressed(self) -> int:
        return self._decisions.suppressed[self.slot]

    @property
    def suspect_runs(self) -> list[tuple[int, int, int, int]]:
        """The open runs of suspect events, newest first: (key: an event type's fingerprint
        or 0, suspect events, first event time, event time it breaks at or -1)."""
        ds = self._decisions
        return [
            (ds.run_key[r], ds.run_streak[r], ds.run_since[r], ds.run_until[r])
            for r in ds.runs(self.slot)
        ]

    @property
    def feedback_rules(self) -> tuple[Rule, ...]:
        """The analyst feedback's live and expired rules (:mod:`detector.core.feedback`)."""
        return self._feedback.rules[self.slot]


class Records(Mapping[str, bytes]):
    """Producers' checkpoint records as they were at the snapshot, each encoded when read
    (between reads: see ``checkpoint.FrozenCommit``), or kept by the store just before the
    producer changed (:meth:`FeatureStore.freeze`); an empty one for each of ``gone``
    (removed since the base)."""

    def __init__(self, store: FeatureStore, names: list[str], gone: Sequence[str] = ()) -> None:
        self._store = store
        self._names = [*names, *gone]
        self._gone = set(gone)

    def __getitem__(self, producer: str) -> bytes:
        if producer in self._gone:
            return b""
        return self._store.frozen_record(producer)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
