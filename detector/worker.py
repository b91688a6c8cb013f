"""Worker: the loop that reads, scores, alerts and acknowledges.

Each iteration: read a batch (own pending entries first, then new ones), decode, score with
the :class:`~detector.pipeline.Pipeline`, then commit alerts, dead letters and acks in one
transaction (:meth:`Streams.commit`). A failed commit is retried until it succeeds, since
acks must never overtake alerts. See docs/design.md for the delivery semantics.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import FrameType

import orjson
import redis
from prometheus_client import CollectorRegistry

from detector.errors import InvalidEventError
from detector.events import Decoder, Event
from detector.metrics import Metrics
from detector.pipeline import Pipeline, Verdict
from detector.scoring import ModelSpec, load_spec
from detector.settings import HEALTH_KEY, Settings
from detector.streams import CONNECTION_ERRORS, Batch, DeadLetter, Entry, Streams, connect

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 1.0
GROUP_INFO_INTERVAL_S = 5.0
CLAIM_INTERVAL_S = 30.0
MAX_BACKOFF_S = 5.0


@dataclass(slots=True)
class RunStats:
    """Counters of one :meth:`Worker.run`."""

    events: int = 0
    scored: int = 0
    warmup: int = 0
    invalid: int = 0
    replayed: int = 0
    alerts: int = 0
    suppressed: int = 0
    claimed: int = 0
    batches: int = 0
    redis_errors: int = 0
    elapsed_s: float = 0.0
    busy_s: float = 0.0  # from the start to the last commit: excludes the final idle wait

    @property
    def events_per_s(self) -> float:
        return self.events / self.busy_s if self.busy_s > 0 else 0.0


class Worker:
    """One consumer of the group.

    Args:
        settings: the worker's settings.
        client: Redis client (from :func:`detector.streams.connect`); created if None.
        spec: model spec; loaded from ``settings.model`` if None.
        metrics: metrics; a private registry if None.
        on_verdicts: called with every batch's verdicts after its commit (demo, tests).
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        *,
        spec: ModelSpec | None = None,
        metrics: Metrics | None = None,
        on_verdicts: Callable[[list[Verdict]], None] | None = None,
    ) -> None:
        if settings.redis_url is None and client is None:
            msg = "a worker needs a redis_url or a client"
            raise ValueError(msg)
        self.settings = settings
        self.spec = spec or load_spec(settings.model)
        self.pipeline = Pipeline(
            self.spec,
            threshold=settings.threshold,
            max_producers=settings.max_producers,
            idle_ttl_ms=int(settings.producer_idle_ttl_s * 1000),
        )
        self.decoder = Decoder(settings.event_format)
        self.client = client or connect(settings.redis_url or "", block_ms=settings.block_ms)
        self.streams = Streams(
            self.client,
            streams=settings.streams,
            group=settings.group,
            consumer=settings.consumer,
            alerts_stream=settings.alerts_stream,
            dead_letter_stream=settings.dead_letter_stream,
            maxlen=settings.alerts_maxlen,
        )
        self.metrics = metrics or Metrics(CollectorRegistry(), settings.streams, self.spec.name)
        self.on_verdicts = on_verdicts
        self.stats = RunStats()
        # Last entry id this process folded into its state, per stream: after a connection
        # error, own pending entries up to it are acked without being learned twice.
        self.processed_upto: dict[str, str] = {}
        self._stop = threading.Event()
        self._signals = 0
        self._health_key = HEALTH_KEY.format(group=settings.group, consumer=settings.consumer)
        self._next = {"health": 0.0, "info": 0.0, "claim": 0.0}
        self._claim_cursor = dict.fromkeys(settings.streams, "0-0")
        self._started = time.monotonic()

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"<Worker {self.settings.consumer} events={s.events} alerts={s.alerts} "
            f"invalid={s.invalid} producers={len(self.pipeline.store)}>"
        )

    def stop(self) -> None:
        """Finish the current batch, commit it, and return from :meth:`run`."""
        self._stop.set()

    def run(self, *, max_events: int | None = None, until_idle: bool | None = None) -> RunStats:
        """Consume until stopped, ``max_events`` are processed, or (``until_idle``) quiet.

        Returns:
            the counters of this run.
        """
        until_idle = self.settings.until_idle if until_idle is None else until_idle
        started = self._started = time.monotonic()
        self._install_signals()
        self._with_retries(self.streams.ensure_groups)
        self._with_retries(self._drain_own_pending)
        block_ms = self.settings.block_ms
        if until_idle:
            block_ms = min(block_ms, self.settings.idle_timeout_ms)
        last_activity = time.monotonic()
        cursors = dict.fromkeys(self.settings.streams, ">")
        while not self._stop.is_set():
            if max_events is not None and self.stats.events >= max_events:
                break
            self._housekeeping()
            try:
                entries = self.streams.read(cursors, self.settings.batch_size, block_ms)
            except CONNECTION_ERRORS as exc:
                self._recover_connection(exc)
                continue
            if entries:
                self._handle(entries)
                last_activity = time.monotonic()
            elif until_idle and (time.monotonic() - last_activity) * 1000 >= (
                self.settings.idle_timeout_ms
            ):
                # Quiet: but entries other consumers left pending are work too.
                if self._claim_safely() == 0:
                    break
                last_activity = time.monotonic()
        self.stats.elapsed_s = time.monotonic() - started
        self._report_health(final=True)
        log.info("worker stopped", extra={"stats": asdict(self.stats)})
        return self.stats

    # -- reading -----------------------------------------------------------------------

    def _drain_own_pending(self) -> None:
        """Re-read this consumer's pending entries (from a previous run or a lost reply)."""
        cursors = dict.fromkeys(self.settings.streams, "0")
        while cursors and not self._stop.is_set():
            entries = self.streams.read(cursors, self.settings.batch_size, None)
            if not entries:
                break
            self._handle(entries)
            for stream in list(cursors):
                ids = [eid for s, eid, _ in entries if s == stream]
                if ids:
                    cursors[stream] = ids[-1]
                else:
                    del cursors[stream]

    def _claim(self) -> int:
        """Take over entries that dead consumers left pending for longer than claim_idle_ms.

        Walks each stream's pending list with the XAUTOCLAIM cursor until it wraps; returns
        how many entries were claimed (and processed).
        """
        total = 0
        for stream in self.settings.streams:
            while not self._stop.is_set():
                cursor, entries, deleted = self.streams.claim(
                    stream, self.settings.claim_idle_ms, self._claim_cursor[stream],
                    self.settings.batch_size,
                )  # fmt: skip
                self._claim_cursor[stream] = cursor
                if deleted:
                    log.warning("%d pending entries were deleted before processing", deleted)
                if entries:
                    total += len(entries)
                    self.stats.claimed += len(entries)
                    self.metrics.claimed.inc(len(entries))
                    log.info("claimed %d pending entries on %s", len(entries), stream)
                    self._handle(entries, claimed=True)
                if cursor == "0-0":
                    break
        return total

    # -- processing --------------------------------------------------------------------

    def _handle(self, entries: list[Entry], claimed: bool = False) -> None:
        started = time.perf_counter()
        batch = Batch()
        events: list[Event] = []
        for stream, entry_id, fields in entries:
            batch.ack(stream, entry_id)
            if not claimed and _id_leq(entry_id, self.processed_upto.get(stream)):
                self.stats.replayed += 1
                self.metrics.events.labels("replayed").inc()
                continue
            try:
                events.append(self.decoder.decode(stream, entry_id, fields))
            except InvalidEventError as exc:
                batch.dead_letters.append(
                    DeadLetter(stream, entry_id, fields, exc.reason, exc.detail)
                )
        verdicts = self.pipeline.process(events)
        for v in verdicts:
            if v.error is not None:
                e = v.event
                batch.dead_letters.append(DeadLetter(e.stream, e.entry_id, {}, "error", v.error))
            elif v.alert is not None:
                batch.alerts.append(v.alert)
        for stream, ids in batch.acks.items():
            if not claimed:
                self.processed_upto[stream] = ids[-1]
        self._commit(batch)
        self._count(entries, verdicts, batch, time.perf_counter() - started)
        self.stats.busy_s = time.monotonic() - self._started
        if self.on_verdicts is not None:
            self.on_verdicts(verdicts)

    def _commit(self, batch: Batch) -> None:
        """Commit, retrying through connection errors: the state already holds the batch."""
        self._with_retries(lambda: self.streams.commit(batch), even_when_stopping=True)

    def _count(
        self, entries: list[Entry], verdicts: list[Verdict], batch: Batch, seconds: float
    ) -> None:
        m, s = self.metrics, self.stats
        s.batches += 1
        s.events += len(entries)
        scored = sum(1 for v in verdicts if v.score is not None)
        warmup = len(verdicts) - scored
        s.scored += scored
        s.warmup += warmup
        s.invalid += len(batch.dead_letters)
        s.alerts += len(batch.alerts)
        suppressed = sum(1 for v in verdicts if v.flagged and v.alert is None)
        s.suppressed += suppressed
        m.events.labels("scored").inc(scored)
        m.events.labels("warmup").inc(warmup)
        m.events.labels("invalid").inc(len(batch.dead_letters))
        for letter in batch.dead_letters:
            m.dead_lettered.labels(letter.reason).inc()
        m.alerts.inc(len(batch.alerts))
        m.suppressed.inc(suppressed)
        m.batch_seconds.observe(seconds)
        per_event = seconds / max(len(entries), 1)
        for _ in entries:
            m.event_seconds.observe(per_event)
        m.producers.set(len(self.pipeline.store))
        m.evicted.set(self.pipeline.store.evicted)

    # -- housekeeping and failures -----------------------------------------------------

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next["health"]:
            self._next["health"] = now + HEALTH_INTERVAL_S
            self._guarded(self._report_health)
        if now >= self._next["info"]:
            self._next["info"] = now + GROUP_INFO_INTERVAL_S
            self._guarded(self._report_group)
        if now >= self._next["claim"]:
            self._next["claim"] = now + CLAIM_INTERVAL_S
            self._claim_safely()

    def _claim_safely(self) -> int:
        try:
            return self._claim()
        except CONNECTION_ERRORS as exc:
            self._note_error(exc)
            return 0

    def _report_group(self) -> None:
        for stream, (lag, pending) in self.streams.group_info().items():
            if lag is not None:
                self.metrics.lag.labels(stream).set(lag)
            self.metrics.pending.labels(stream).set(pending)

    def _report_health(self, final: bool = False) -> None:
        if final:
            self._guarded(lambda: self.client.delete(self._health_key))
            return
        summary = orjson.dumps(
            {
                "consumer": self.settings.consumer,
                "pid": os.getpid(),
                "at_ms": int(time.time() * 1000),
                "events": self.stats.events,
                "alerts": self.stats.alerts,
                "producers": len(self.pipeline.store),
            }
        )
        ttl_ms = max(10_000, 5 * self.settings.block_ms)
        self.streams.set_health(self._health_key, summary, ttl_ms)

    def _guarded(self, step: Callable[[], object]) -> None:
        """Run an optional step; a connection error is counted and left to the main loop."""
        try:
            step()
        except CONNECTION_ERRORS as exc:
            self._note_error(exc)

    def _with_retries(self, step: Callable[[], object], even_when_stopping: bool = False) -> None:
        delay = 0.1
        while True:
            try:
                step()
                return
            except CONNECTION_ERRORS as exc:
                self._note_error(exc)
                if self._stop.is_set() and not even_when_stopping:
                    return
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    def _recover_connection(self, exc: Exception) -> None:
        """After a failed read: back off, then pick up entries whose reply may have been lost."""
        self._note_error(exc)
        time.sleep(0.1)
        self._with_retries(self._drain_own_pending)

    def _note_error(self, exc: Exception) -> None:
        self.stats.redis_errors += 1
        self.metrics.redis_errors.inc()
        log.warning("redis error: %s: %s", type(exc).__name__, exc)

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals > 1:
                os._exit(128 + signum)  # second signal: leave now, pending entries stay pending
            log.info("stopping after the current batch (signal %d)", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def _id_leq(entry_id: str, upto: str | None) -> bool:
    if upto is None:
        return False
    a_ms, _, a_seq = entry_id.partition("-")
    b_ms, _, b_seq = upto.partition("-")
    return (int(a_ms), int(a_seq or 0)) <= (int(b_ms), int(b_seq or 0))
