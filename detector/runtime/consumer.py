"""Consumer: one consumer of the group and the state it owns.

Unpartitioned, the worker is one consumer (named after the worker) with one checkpoint: its
one partition. Partitioned, each owned partition ``p`` is a consumer named ``p<k>`` with its own
:class:`~detector.core.pipeline.Pipeline`, checkpoint and pending list, so ownership moves between
workers with the partition's lease (no claiming needed).

Start: load the signed checkpoint (or a baseline), re-read the consumer's pending entries
(those at or below the checkpoint's offsets are only acked; the rest are replayed into the
restored state), then read new ones. Each batch: decode, score, append its alerts and dead
letters (each at most once), and tell its :class:`~detector.runtime.checkpointer.Checkpointer`,
which commits the state with its offsets and acks the entries (see docs/design.md for the delivery
semantics and the commit order).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import redis

from detector.core.alerts import Alert
from detector.core.checkpoint import BaselineEnd, Signer, decode_fields
from detector.core.checkpoint import load_file as load_baseline
from detector.core.errors import InvalidEventError
from detector.core.events import Decoder, Event
from detector.core.feedback import Feedback, id_key, merge_order
from detector.core.pipeline import Pipeline, Verdicts
from detector.core.scoring import ModelSpec
from detector.core.settings import Settings
from detector.gateway.partitions import partition_of
from detector.gateway.streams import DeadLetter, Entry, Output, Streams, retry
from detector.runtime.checkpointer import Checkpointer, settle
from detector.runtime.metrics import Metrics

log = logging.getLogger(__name__)

# A batch is scored in parts of this many events, and a part's alerts are written before the
# next part is scored: a batch of a backlog (up to batch_size, 500 by default) takes ~50-100 ms
# to score, and its first alerts would otherwise wait for the last event (benchmarks README
# §42). One more append per part with alerts; the verdicts are the same.
ALERT_PART_EVENTS = 64


@dataclass(slots=True)
class RunStats:
    """Counters of a worker, cumulative over its runs and over all its consumers."""

    events: int = 0
    scored: int = 0
    warmup: int = 0
    invalid: int = 0
    replayed: int = 0
    alerts: int = 0
    suppressed: int = 0
    claimed: int = 0
    poison: int = 0
    batches: int = 0
    checkpoints: int = 0
    redis_errors: int = 0
    fenced: int = 0  # commits or reads refused because the partition's lease was lost
    elapsed_s: float = 0.0
    busy_s: float = 0.0  # from the start to the last commit: excludes the final idle wait

    @property
    def events_per_s(self) -> float:
        return self.events / self.busy_s if self.busy_s > 0 else 0.0


@dataclass(slots=True)
class Runtime:
    """What a worker's consumers share: settings, model spec, signer, metrics, counters."""

    settings: Settings
    spec: ModelSpec
    signer: Signer
    decoder: Decoder
    metrics: Metrics
    stats: RunStats = field(default_factory=RunStats)
    stop: threading.Event = field(default_factory=threading.Event)
    on_verdicts: Callable[[Verdicts], None] | None = None
    started: float = field(default_factory=time.monotonic)
    # Drops the client's connections (after a READONLY reply: see note_error).
    reconnect: Callable[[], object] = lambda: None

    def with_retries(self, step: Callable[[], object], even_when_stopping: bool = False) -> None:
        """Run ``step`` until it gets through connection errors (not once stopping, unless
        ``even_when_stopping``: commits and appends must land)."""
        retry(step, self.stop, self.note_error, even_when_stopping=even_when_stopping)

    def note_error(self, exc: Exception) -> None:
        self.stats.redis_errors += 1
        self.metrics.redis_errors.inc()
        log.warning("redis error: %s: %s", type(exc).__name__, exc)
        if isinstance(exc, redis.ReadOnlyError):
            self.reconnect()  # still connected to a demoted primary: connect anew


class Consumer:
    """A group consumer: its streams, its pipeline, its checkpointer.

    Args:
        rt: the worker's shared runtime.
        streams: the consumer's Redis view (fenced for a partition owner).
        checkpoint_key: its checkpoint hash.
        partition: its partition, of ``partitions`` (an unpartitioned worker's: 0 of 1).
    """

    def __init__(
        self,
        rt: Runtime,
        streams: Streams,
        checkpoint_key: str,
        partition: int = 0,
        partitions: int = 1,
    ) -> None:
        self.rt = rt
        self.streams = streams
        self.checkpoint_key = checkpoint_key
        self.partition = partition
        self.partitions = partitions
        self.restored = False
        s = rt.settings
        self.pipeline = Pipeline(
            rt.spec,
            threshold=s.threshold,
            max_producers=s.max_producers,
            idle_ttl_ms=int(s.producer_idle_ttl_s * 1000),
            track_changes=True,
        )
        self.checkpointer = Checkpointer(rt, self.pipeline, streams, checkpoint_key)
        self.claim_cursor = dict.fromkeys(streams.streams, "0-0")
        # Started from a baseline: skip the events it learned (see detector.baselines).
        self.baseline_end: BaselineEnd | None = None
        # The feedback stream (the last input, when read), and its entries read but held
        # until the events before them are read too (see _due_feedback).
        fb = s.feedback_stream
        self.feedback_stream = streams.streams[-1] if fb and fb not in s.streams else None
        self.held: list[tuple[Entry, Feedback]] = []

    @property
    def processed_upto(self) -> dict[str, str]:
        """Last entry id folded into the state, per stream (restored from the checkpoint):
        own pending entries up to it are acked without being learned twice."""
        return self.checkpointer.offsets

    # -- start -------------------------------------------------------------------------

    def restore(self) -> None:
        """Resume from the checkpoint, else from the baseline, else empty."""
        rt, key = self.rt, self.checkpoint_key
        if rt.settings.reset_state:
            log.warning("deleting checkpoint %s (--reset-state)", key)
            rt.with_retries(lambda: self.streams.r.delete(key))
        self.restored = True
        fields: dict[bytes, bytes] = {}
        rt.with_retries(lambda: fields.update(self.streams.load_checkpoint(key)))
        if fields:
            offsets = self.pipeline.restore(decode_fields(rt.signer, fields))
            self.checkpointer.offsets = offsets
            log.info(
                "resumed from checkpoint %s: %d producers, offsets %s",
                key, len(self.pipeline.store), self.processed_upto,
            )  # fmt: skip
            if rt.settings.baseline is not None:
                log.warning(
                    "--baseline %s ignored: %s resumes from its checkpoint (--reset-state "
                    "deletes the checkpoint and starts over from the baseline)",
                    rt.settings.baseline, key,
                )  # fmt: skip
        elif rt.settings.baseline is not None:
            snap = load_baseline(rt.settings.baseline, rt.signer)
            offsets = self.pipeline.restore(snap, baseline=True, keep=self._owns)
            # Where the baseline's data ended: entries up to there are not learned again.
            self.checkpointer.offsets = {
                s: i for s, i in offsets.items() if s in self.streams.streams
            }
            self.baseline_end = BaselineEnd.of(
                snap, self.processed_upto, self.pipeline.store.producers
            )
            self.checkpointer.require_full()  # the checkpoint must hold every baseline producer
            log.info(
                "started %s from baseline %s: %d producers, learned up to entry %s, event "
                "time %s", key, rt.settings.baseline, len(self.pipeline.store),
                self.processed_upto or "(none recorded)", snap.meta.get("watermark_ms"),
            )  # fmt: skip
        settle()

    def _owns(self, producer: str) -> bool:
        """Whether ``producer`` is this partition's (a baseline is cut down to them)."""
        return partition_of(producer, self.partitions) == self.partition

    def drain_own_pending(self, cursors: dict[str, str], *, check_poison: bool = True) -> None:
        """Re-read this consumer's pending entries after ``cursors`` (start or lost reply).

        With ``check_poison``, entries delivered more than ``max_deliveries`` times are
        dead-lettered as poison: each restart re-delivers them, so a crash loop on one entry
        ends there.
        """
        while cursors and not self.rt.stop.is_set():
            entries = self.streams.read(cursors, self.rt.settings.batch_size, None)
            if not entries:
                break
            self.handle(entries, poison=self._poison(entries) if check_poison else None)
            for stream in list(cursors):
                ids = [eid for s, eid, _ in entries if s == stream]
                if ids:
                    cursors[stream] = ids[-1]
                else:
                    del cursors[stream]

    def resync(self) -> None:
        """After a failed read: entries a lost reply delivered are pending after the last one
        processed; read them before any new one."""
        cursors = {s: self.processed_upto.get(s, "0") for s in self.streams.streams}
        # No poison check: this process is alive, so these deliveries did not crash it; each
        # lost reply re-delivers, and a flapping network would otherwise poison valid entries.
        self.rt.with_retries(lambda: self.drain_own_pending(dict(cursors), check_poison=False))

    def _poison(self, entries: list[Entry]) -> dict[str, int]:
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id, _ in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        poison = {}
        for stream, ids in by_stream.items():
            counts = self.streams.delivery_counts(stream, ids[0], ids[-1], len(ids))
            for entry_id, n in counts.items():
                if n > self.rt.settings.max_deliveries:
                    poison[entry_id] = n
        return poison

    def claim(self) -> int:
        """Take over entries that dead consumers left pending for longer than claim_idle_ms.

        Walks each stream's pending list with the XAUTOCLAIM cursor until it wraps; returns
        how many entries were claimed (and processed).
        """
        rt, total = self.rt, 0
        for stream in self.streams.streams:
            while not rt.stop.is_set():
                cursor, entries, deleted = self.streams.claim(
                    stream, rt.settings.claim_idle_ms, self.claim_cursor[stream],
                    rt.settings.batch_size,
                )  # fmt: skip
                self.claim_cursor[stream] = cursor
                if deleted:
                    log.warning("%d pending entries were deleted before processing", deleted)
                # Our own entries wait for the next checkpoint's ack and may look idle: they
                # are already in the state, so only other consumers' entries are work.
                mine = self.checkpointer.unacked(stream)
                entries = [e for e in entries if e[1] not in mine]
                if entries:
                    total += len(entries)
                    rt.stats.claimed += len(entries)
                    rt.metrics.claimed.inc(len(entries))
                    log.info("claimed %d pending entries on %s", len(entries), stream)
                    self.handle(entries, claimed=True)
                if cursor == "0-0":
                    break
        return total

    # -- processing --------------------------------------------------------------------

    def handle(
        self,
        entries: list[Entry],
        claimed: bool = False,
        poison: dict[str, int] | None = None,
    ) -> None:
        """Score a batch, append its alerts and dead letters, commit when due.

        Raises:
            FencedError: (partition owners) the commit was refused: drop this consumer.
        """
        rt = self.rt
        started = time.perf_counter()
        events, fresh, out = self._decode_all(entries, claimed, poison or {})
        feedback, entries = self._due_feedback(entries, fresh)
        fr = self.pipeline.feedback
        applied, unknown = fr.applied, fr.unknown
        positions = merge_order([e.entry_id for e in events], [e[1] for e, _ in feedback])
        due = [(i, fb) for i, (_, fb) in zip(positions, feedback, strict=True)]
        verdicts = Verdicts(events)
        written, alerted = 0, []  # events whose alerts are written so far; those alerts
        for start in range(0, max(len(events), 1), ALERT_PART_EVENTS):
            stop = min(start + ALERT_PART_EVENTS, len(events))
            self.pipeline.process_part(verdicts, start, stop, due)
            alerts = verdicts.emitted(written, stop) if stop < len(events) else ()
            if alerts:  # written now, not after the rest of the batch
                early = Output(alerts=list(alerts))
                rt.with_retries(partial(self.streams.emit, early), even_when_stopping=True)
                written = stop
                alerted += early.alerts
        rt.metrics.feedback.labels("applied").inc(fr.applied - applied)
        rt.metrics.feedback.labels("unknown_producer").inc(fr.unknown - unknown)
        rt.metrics.feedback_rules_evicted.set(fr.evicted)
        for i, error in verdicts.errors.items():
            e = events[i]
            out.dead_letters.append(DeadLetter(e.stream, e.entry_id, {}, "error", error))
        # Alerts in event order; side alerts: producers an event's time revealed as silent.
        out.alerts.extend(verdicts.emitted(written))
        if self.streams.scores_stream is not None:  # with the alerts, before the acks
            out.scores = verdicts.rows()
            out.model = self.pipeline.spec.name
        if not claimed:
            # A read returns each stream's entries in id order: its last one is its highest.
            last = {stream: entry_id for stream, entry_id, _ in entries}
            for stream, entry_id in last.items():
                if not id_leq(entry_id, self.processed_upto.get(stream)):
                    self.processed_upto[stream] = entry_id
        rt.with_retries(lambda: self.streams.emit(out), even_when_stopping=True)
        self.checkpointer.received(entries)
        alerted += out.alerts
        self._count(entries, verdicts, out, alerted, time.perf_counter() - started)
        self.checkpointer.after_batch(claimed)
        rt.stats.busy_s = time.monotonic() - rt.started
        if rt.on_verdicts is not None:
            rt.on_verdicts(verdicts)

    def _due_feedback(
        self, entries: list[Entry], fresh: list[tuple[Entry, Feedback]]
    ) -> tuple[list[tuple[Entry, Feedback]], list[Entry]]:
        """The feedback to apply with this batch (ids ascending), and the entries handled now.

        Feedback is ordered against the events by stream id. An input stream that filled the
        read (``batch_size`` entries) may hold more events before a feedback entry's id: such
        feedback is held (read, not acked, not in the offsets) until a later read passes it;
        a crash re-delivers it from the pending list.
        """
        if not fresh and not self.held:
            return [], entries
        counts: dict[str, int] = {}
        last: dict[str, str] = {}
        for stream, entry_id, _ in entries:
            if stream != self.feedback_stream:
                counts[stream] = counts.get(stream, 0) + 1
                last[stream] = entry_id
        full = [last[s] for s, n in counts.items() if n >= self.rt.settings.batch_size]
        limit = min((id_key(i) for i in full), default=None)
        known = {e[1] for e, _ in self.held}
        pending = sorted(
            [*self.held, *(f for f in fresh if f[0][1] not in known)], key=lambda f: id_key(f[0][1])
        )
        due = [f for f in pending if limit is None or id_key(f[0][1]) <= limit]
        self.held = pending[len(due) :]
        fb = self.feedback_stream
        # Feedback entries past the limit wait (an invalid one stays pending until a restart
        # re-delivers it: its ack must not move the offset past held feedback).
        now = [e for e in entries if e[0] == fb and (limit is None or id_key(e[1]) <= limit)]
        now += [e for e, _ in due if e not in now]
        now.sort(key=lambda e: id_key(e[1]))
        handled = [e for e in entries if e[0] != fb] + now
        return due, handled

    def _decode_all(
        self, entries: list[Entry], claimed: bool, poison: dict[str, int]
    ) -> tuple[list[Event], list[tuple[Entry, Feedback]], Output]:
        """Events to score, feedback to apply, and dead letters for what cannot be either;
        every entry is to be acked."""
        out = Output()
        events: list[Event] = []
        feedback: list[tuple[Entry, Feedback]] = []
        stats = self.rt.stats
        # Per stream, whether the batch starts at or below our offset; ids increase within a
        # stream, so if its first entry is above, all are (the usual case: one compare).
        starts_below: dict[str, bool] = {}
        for stream, entry_id, fields in entries:
            below = starts_below.get(stream)
            if below is None:
                below = starts_below[stream] = id_leq(entry_id, self.processed_upto.get(stream))
            if not claimed and below and id_leq(entry_id, self.processed_upto.get(stream)):
                stats.replayed += 1  # already in the state: ack only
                self.rt.metrics.outcome["replayed"].inc()
                continue
            if entry_id in poison:
                detail = f"delivered {poison[entry_id]} times"
                out.dead_letters.append(DeadLetter(stream, entry_id, fields, "poison", detail))
                stats.poison += 1
                continue
            if stream == self.feedback_stream:
                try:
                    feedback.append(((stream, entry_id, fields), Feedback.from_fields(fields)))
                except InvalidEventError as exc:
                    letter = DeadLetter(stream, entry_id, fields, exc.reason, exc.detail)
                    out.dead_letters.append(letter)
                    self.rt.metrics.feedback.labels("invalid").inc()
                continue
            try:
                event = self.rt.decoder.decode(stream, entry_id, fields)
            except InvalidEventError as exc:
                letter = DeadLetter(stream, entry_id, fields, exc.reason, exc.detail)
                out.dead_letters.append(letter)
                continue
            if self.baseline_end is not None and self.baseline_end.covers(event):
                stats.replayed += 1  # the baseline learned it: ack only
                self.rt.metrics.outcome["replayed"].inc()
                continue
            events.append(event)
        return events, feedback, out

    def checkpoint(self) -> None:
        """Commit everything handled so far.

        Raises:
            FencedError: the partition's lease is lost; nothing more was written.
        """
        self.checkpointer.commit()

    @property
    def encoding(self) -> bool:
        """Whether a frozen commit is being encoded (its encoding goes on between reads)."""
        return self.checkpointer.frozen is not None

    def housekeeping(self, deadline: float) -> None:
        """Between reads: a commit due by time, and encoding until ``deadline``.

        Raises:
            FencedError: the partition's lease is lost; nothing was written.
        """
        self.checkpointer.tick(deadline)

    def _count(
        self,
        entries: list[Entry],
        verdicts: Verdicts,
        out: Output,
        alerts: list[Alert],
        seconds: float,
    ) -> None:
        m, s = self.rt.metrics, self.rt.stats
        s.batches += 1
        s.events += len(entries)
        scored = verdicts.scored()
        warmup = len(verdicts) - scored - len(verdicts.errors)
        s.scored += scored
        s.warmup += warmup
        s.invalid += len(out.dead_letters)
        s.alerts += len(alerts)
        suppressed = verdicts.held_back()
        s.suppressed += suppressed
        m.outcome["scored"].inc(scored)
        if warmup:
            m.outcome["warmup"].inc(warmup)
        if out.dead_letters:
            m.outcome["invalid"].inc(len(out.dead_letters))
            for letter in out.dead_letters:
                m.dead_lettered.labels(letter.reason).inc()
        for alert in alerts:
            m.alerts_of[alert.kind].inc()
        if suppressed:
            m.suppressed.inc(suppressed)
        m.batch_seconds.observe(seconds)
        m.event_seconds.observe(seconds / max(len(entries), 1))  # once per batch: see metrics


def id_leq(entry_id: str, upto: str | None) -> bool:
    """``entry_id <= upto`` as stream ids (None: nothing is below it)."""
    if upto is None:
        return False
    a_ms, _, a_seq = entry_id.partition("-")
    b_ms, _, b_seq = upto.partition("-")
    return (int(a_ms), int(a_seq or 0)) <= (int(b_ms), int(b_seq or 0))
