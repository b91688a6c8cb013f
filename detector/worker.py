"""Worker: the loop that reads, scores, alerts, checkpoints and acknowledges.

Start: load the signed checkpoint (or a baseline), re-read this consumer's pending entries
(those at or below the checkpoint's offsets are only acked; the rest are replayed into the
restored state), then read new entries. Each batch: decode, score with the
:class:`~detector.pipeline.Pipeline`, append its alerts and dead letters (each at most once).
Every ``checkpoint_every`` entries or ``checkpoint_interval_ms``, one transaction writes the
changed state with its offsets and XACKs everything since the previous one. See
docs/design.md for the delivery semantics and the commit order.
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

from detector.checkpoint import PRODUCER_PREFIX, Signer, decode_fields, encode_fields, load_file
from detector.errors import ConfigError, InvalidEventError
from detector.events import Decoder, Event
from detector.metrics import Metrics
from detector.pipeline import Pipeline, Verdict
from detector.scoring import ModelSpec, load_spec
from detector.settings import CHECKPOINT_KEY, HEALTH_KEY, Settings
from detector.streams import CONNECTION_ERRORS, DeadLetter, Entry, Output, Streams, connect

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 1.0
GROUP_INFO_INTERVAL_S = 5.0
CLAIM_INTERVAL_S = 30.0
MAX_BACKOFF_S = 5.0


@dataclass(slots=True)
class RunStats:
    """Counters of a :class:`Worker`, cumulative over its :meth:`Worker.run` calls."""

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
        if settings.checkpoint_key is None:
            msg = "a worker needs a checkpoint key (DETECTOR_CHECKPOINT_KEY)"
            raise ConfigError(msg)
        self.signer = Signer(settings.checkpoint_key)
        self.settings = settings
        self.spec = spec or load_spec(settings.model)
        self.pipeline = Pipeline(
            self.spec,
            threshold=settings.threshold,
            max_producers=settings.max_producers,
            idle_ttl_ms=int(settings.producer_idle_ttl_s * 1000),
            track_changes=True,
        )
        self.decoder = Decoder(settings.event_format)
        self.client = client or connect(
            settings.redis_url or "",
            block_ms=settings.block_ms,
            password=settings.redis_password,
            tls_ca_cert=settings.tls_ca_cert,
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
        )
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
        # Last entry id folded into the state, per stream (restored from the checkpoint):
        # own pending entries up to it are acked without being learned twice.
        self.processed_upto: dict[str, str] = {}
        self._checkpoint_key = CHECKPOINT_KEY.format(
            group=settings.group, consumer=settings.consumer
        )
        self._to_ack: dict[str, list[str]] = {}
        self._since_commit = 0
        self._last_commit = time.monotonic()
        self._restored = False
        self._full_next_commit = False
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
            the worker's counters, cumulative over its runs (``max_events`` counts them too).
        """
        until_idle = self.settings.until_idle if until_idle is None else until_idle
        started = self._started = time.monotonic()
        self._install_signals()
        self._with_retries(self.streams.ensure_groups)
        self._restore()
        self._with_retries(
            lambda: self._drain_own_pending(dict.fromkeys(self.settings.streams, "0"))
        )
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
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The group (or stream) was deleted under us: recreate it and carry on.
                log.warning("consumer group missing, recreating: %s", exc)
                self._with_retries(self.streams.ensure_groups)
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
        self._checkpoint()
        self.stats.elapsed_s = time.monotonic() - started
        self._report_health(final=True)
        log.info("worker stopped", extra={"stats": asdict(self.stats)})
        return self.stats

    # -- reading -----------------------------------------------------------------------

    def _restore(self) -> None:
        """Resume from this consumer's checkpoint, else from the baseline, else empty."""
        if self._restored:
            return
        key = self._checkpoint_key
        if self.settings.reset_state:
            log.warning("deleting checkpoint %s (--reset-state)", key)
            self._with_retries(lambda: self.client.delete(key))
        fields: dict[bytes, bytes] = {}
        self._with_retries(lambda: fields.update(self.streams.load_checkpoint(key)))
        if fields:
            self.processed_upto = self.pipeline.restore(decode_fields(self.signer, fields))
            log.info(
                "resumed from checkpoint %s: %d producers, offsets %s",
                key, len(self.pipeline.store), self.processed_upto,
            )  # fmt: skip
        elif self.settings.baseline is not None:
            self.pipeline.restore(load_file(self.settings.baseline, self.signer), baseline=True)
            self._full_next_commit = True  # the checkpoint must hold every baseline producer
            log.info(
                "started from baseline %s: %d producers",
                self.settings.baseline, len(self.pipeline.store),
            )  # fmt: skip
        self._restored = True

    def _drain_own_pending(self, cursors: dict[str, str]) -> None:
        """Re-read this consumer's pending entries after ``cursors`` (restart or lost reply).

        Entries delivered more than ``max_deliveries`` times are dead-lettered as poison: each
        restart re-delivers them, so a crash loop on one entry ends there.
        """
        while cursors and not self._stop.is_set():
            entries = self.streams.read(cursors, self.settings.batch_size, None)
            if not entries:
                break
            poison = self._poison(entries)
            self._handle(entries, poison=poison)
            for stream in list(cursors):
                ids = [eid for s, eid, _ in entries if s == stream]
                if ids:
                    cursors[stream] = ids[-1]
                else:
                    del cursors[stream]

    def _poison(self, entries: list[Entry]) -> dict[str, int]:
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id, _ in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        poison = {}
        for stream, ids in by_stream.items():
            counts = self.streams.delivery_counts(stream, ids[0], ids[-1], len(ids))
            for entry_id, n in counts.items():
                if n > self.settings.max_deliveries:
                    poison[entry_id] = n
        return poison

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
                # Our own entries wait for the next checkpoint's ack and may look idle: they
                # are already in the state, so only other consumers' entries are work.
                mine = set(self._to_ack.get(stream, ()))
                entries = [e for e in entries if e[1] not in mine]
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

    def _handle(
        self,
        entries: list[Entry],
        claimed: bool = False,
        poison: dict[str, int] | None = None,
    ) -> None:
        started = time.perf_counter()
        events, out = self._decode_all(entries, claimed, poison or {})
        verdicts = self.pipeline.process(events)
        for v in verdicts:
            if v.error is not None:
                e = v.event
                out.dead_letters.append(DeadLetter(e.stream, e.entry_id, {}, "error", v.error))
            elif v.alert is not None:
                out.alerts.append(v.alert)
            out.alerts.extend(v.silence)  # producers this event's time revealed as silent
        if not claimed:
            # A read returns each stream's entries in id order: its last one is its highest.
            last = {stream: entry_id for stream, entry_id, _ in entries}
            for stream, entry_id in last.items():
                if not _id_leq(entry_id, self.processed_upto.get(stream)):
                    self.processed_upto[stream] = entry_id
        self._with_retries(lambda: self.streams.emit(out), even_when_stopping=True)
        self._since_commit += len(entries)
        self._count(entries, verdicts, out, time.perf_counter() - started)
        # Claimed entries may lie below our offsets: commit them with the state at once.
        if claimed or self._checkpoint_due():
            self._checkpoint()
        self.stats.busy_s = time.monotonic() - self._started
        if self.on_verdicts is not None:
            self.on_verdicts(verdicts)

    def _decode_all(
        self, entries: list[Entry], claimed: bool, poison: dict[str, int]
    ) -> tuple[list[Event], Output]:
        """Events to score, and dead letters for what cannot be; every entry is to be acked."""
        out = Output()
        events: list[Event] = []
        for stream, entry_id, fields in entries:
            self._to_ack.setdefault(stream, []).append(entry_id)
            if not claimed and _id_leq(entry_id, self.processed_upto.get(stream)):
                self.stats.replayed += 1  # already in the state: ack only
                self.metrics.events.labels("replayed").inc()
                continue
            if entry_id in poison:
                detail = f"delivered {poison[entry_id]} times"
                out.dead_letters.append(DeadLetter(stream, entry_id, fields, "poison", detail))
                self.stats.poison += 1
                continue
            try:
                events.append(self.decoder.decode(stream, entry_id, fields))
            except InvalidEventError as exc:
                letter = DeadLetter(stream, entry_id, fields, exc.reason, exc.detail)
                out.dead_letters.append(letter)
        return events, out

    def _checkpoint_due(self) -> bool:
        if self._since_commit >= self.settings.checkpoint_every:
            return True
        elapsed_ms = (time.monotonic() - self._last_commit) * 1000
        return bool(self._to_ack) and elapsed_ms >= self.settings.checkpoint_interval_ms

    def _checkpoint(self) -> None:
        """Write the changed state with its offsets and ack everything since the last one.

        One MULTI/EXEC, retried through connection errors (it is idempotent): the entries it
        acks are exactly those the state it writes has learned.
        """
        pipeline = self.pipeline
        if not self._to_ack and not pipeline.store.dirty and not self._full_next_commit:
            return
        started = time.perf_counter()
        snap = pipeline.snapshot(self.processed_upto, full=self._full_next_commit)
        fields = encode_fields(self.signer, snap)
        removed = [PRODUCER_PREFIX + p for p in snap.removed]
        acks = self._to_ack
        self._with_retries(
            lambda: self.streams.commit(self._checkpoint_key, fields, removed, acks),
            even_when_stopping=True,
        )
        pipeline.committed()
        self._to_ack = {}
        self._since_commit = 0
        self._full_next_commit = False
        self._last_commit = time.monotonic()
        self.stats.checkpoints += 1
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        self.metrics.checkpoint_bytes.set(sum(len(v) for v in fields.values()))

    def _count(
        self, entries: list[Entry], verdicts: list[Verdict], out: Output, seconds: float
    ) -> None:
        m, s = self.metrics, self.stats
        s.batches += 1
        s.events += len(entries)
        scored = sum(1 for v in verdicts if v.score is not None)
        warmup = len(verdicts) - scored
        s.scored += scored
        s.warmup += warmup
        s.invalid += len(out.dead_letters)
        s.alerts += len(out.alerts)
        suppressed = sum(1 for v in verdicts if v.flagged and v.alert is None)
        s.suppressed += suppressed
        m.events.labels("scored").inc(scored)
        m.events.labels("warmup").inc(warmup)
        m.events.labels("invalid").inc(len(out.dead_letters))
        for letter in out.dead_letters:
            m.dead_lettered.labels(letter.reason).inc()
        m.alerts.inc(len(out.alerts))
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
        if self._checkpoint_due():
            self._checkpoint()

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
        # Entries a lost reply delivered are pending after the last one we processed.
        cursors = {s: self.processed_upto.get(s, "0") for s in self.settings.streams}
        self._with_retries(lambda: self._drain_own_pending(dict(cursors)))

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
