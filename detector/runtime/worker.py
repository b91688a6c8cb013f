"""Worker: the loop that drives the group consumers it owns, one per partition.

Unpartitioned, the worker owns one partition (0): one :class:`~detector.runtime.consumer.Consumer`
named after the worker, reading every input stream with a blocking ``XREADGROUP``, under a fence
that never refuses (:class:`~detector.gateway.ownership.NoFence`). Partitioned (``--partitions P``),
it owns some of the P partitions, one consumer each, each behind a lease
(:mod:`detector.gateway.ownership`): statically (``p % worker_count == worker_index``) or
dynamically (rendezvous over the live members, rebalanced as workers join and leave). The same loop
drives both; an :class:`Assignment` says which partitions are the worker's and what they are named.
With several partitions, each round reads every owned partition without blocking in one pipelined
round trip; when all are empty it blocks briefly on one partition in rotation, with a plain
``XREAD`` that consumes nothing, so an idle worker neither spins nor holds an entry for long. See
docs/design.md.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from types import FrameType
from typing import Protocol

import orjson
import redis
from prometheus_client import CollectorRegistry
from redis.sentinel import SentinelConnectionPool

from detector.core.checkpoint import Signer
from detector.core.errors import ConfigError
from detector.core.events import Decoder
from detector.core.pipeline import Pipeline, Verdicts
from detector.core.scoring import ModelSpec, load_spec
from detector.core.settings import CHECKPOINT_KEY, CLUSTER_CHECKPOINT_KEY, HEALTH_KEY, Settings
from detector.gateway import partitions
from detector.gateway.ownership import NO_FENCE, Fence, FencedError, Leases, Membership, NoFence
from detector.gateway.streams import (
    CONNECTION_ERRORS,
    Client,
    Entry,
    FencedStreams,
    Outage,
    Replication,
    Streams,
    connect,
    connect_kwargs,
    sweep,
)
from detector.runtime import peering
from detector.runtime.consumer import Consumer, RunStats, Runtime
from detector.runtime.metrics import Metrics
from detector.runtime.status import StatusReporter

__all__ = ["RunStats", "Worker"]

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 1.0
# The gauges (producers tracked, evicted, refused ...) this often, and once more at the end
# of a run: each update sums over the pipelines, a cost per read round that small rounds of a
# live stream (a few events each) paid for nothing between scrapes.
GAUGE_INTERVAL_S = 0.5
GROUP_INFO_INTERVAL_S = 5.0
# Through Sentinel: ask which node is the primary this often. A primary replaced while it
# stayed up keeps serving its clients until Sentinel demotes it, 8 s or more later; a worker
# that reads nothing from it would not notice before.
PRIMARY_CHECK_INTERVAL_S = 1.0
CLAIM_INTERVAL_S = 30.0
# A worker missing some of its target partitions retries their leases this often.
ACQUIRE_RETRY_S = 0.2
# Longest blocking wait on one partition while owning several: the latency added to an
# entry arriving on another one.
ROTATING_WAIT_MS = 50


class Assignment(Protocol):
    """Which partitions are the worker's, what they are named, and how they are held."""

    count: int  # partitions in all

    def held(self) -> list[int]:
        """The partitions the worker holds from the start, before any ownership round."""
        ...

    def target(self) -> list[int]:
        """The partitions the worker should own now (sorted)."""
        ...

    def acquire(self, p: int) -> Fence | NoFence | None:
        """Take partition ``p``: its fence, or None if another worker holds it."""
        ...

    def renew(self, fence: Fence | NoFence) -> bool:
        """Whether the partition is still the worker's."""
        ...

    def release(self, fence: Fence | NoFence) -> bool:
        """Whether the (committed) partition leaves the worker, its lease freed."""
        ...

    def view(self, p: int, fence: Fence | NoFence) -> tuple[Streams, str]:
        """Partition ``p``'s Redis view and checkpoint key."""
        ...

    def leave(self) -> None:
        """The worker stops."""
        ...


class Unpartitioned:
    """An unpartitioned worker's one partition: its own consumer over every input stream,
    held from the start under a fence that never refuses, kept across runs."""

    count = 1

    def __init__(self, settings: Settings, make: Callable[..., Streams]) -> None:
        self.settings = settings
        self._make = make

    def held(self) -> list[int]:
        return [0]

    def target(self) -> list[int]:
        return [0]

    def acquire(self, p: int) -> NoFence:
        return NO_FENCE

    def renew(self, fence: Fence | NoFence) -> bool:
        return True

    def release(self, fence: Fence | NoFence) -> bool:
        return False  # the next run resumes it as it is

    def view(self, p: int, fence: Fence | NoFence) -> tuple[Streams, str]:
        s = self.settings
        # On a cluster: one input stream, without braces (checked at start).
        template = CLUSTER_CHECKPOINT_KEY if s.cluster else CHECKPOINT_KEY
        key = template.format(group=s.group, consumer=s.consumer, stream=s.streams[0])
        return self._make(Streams, streams=s.inputs, consumer=s.consumer), key

    def leave(self) -> None:
        pass


class Leased:
    """A partitioned worker's partitions: each behind a lease, assigned statically or by
    rendezvous over the group's live members."""

    def __init__(
        self, settings: Settings, client: Client, rt: Runtime, make: Callable[..., Streams]
    ) -> None:
        self.settings = s = settings
        self.count = s.partitions or 1
        self.leases = Leases(client, s.group, s.consumer, s.lease_ttl_ms)
        self.membership = Membership(client, s.group, s.consumer, s.lease_ttl_ms)
        self.rt = rt
        self._make = make
        self._target: list[int] = []

    def held(self) -> list[int]:
        return []

    def target(self) -> list[int]:
        s = self.settings
        if s.assignment == "static":
            target = partitions.assigned_partitions(
                self.count, index=s.worker_index or 0, count=s.worker_count or 1
            )
        else:
            members = self.membership.heartbeat()
            target = partitions.rendezvous(self.count, members)[s.consumer]
        if target != self._target:
            if self._target:
                self.rt.metrics.rebalances.inc()
            log.info("target partitions %s", target)
            self._target = target
        return target

    def acquire(self, p: int) -> Fence | None:
        fence = self.leases.acquire(p)
        if fence is not None:
            log.info("partition %d acquired, epoch %d", p, fence.epoch)
        return fence

    def renew(self, fence: Fence | NoFence) -> bool:
        return isinstance(fence, Fence) and self.leases.renew(fence)

    def release(self, fence: Fence | NoFence) -> bool:
        if isinstance(fence, Fence):
            log.info("partition %d releasing, epoch %d", fence.partition, fence.epoch)
            self.rt.with_retries(lambda: self.leases.release(fence), even_when_stopping=True)
        return True

    def view(self, p: int, fence: Fence | NoFence) -> tuple[Streams, str]:
        if not isinstance(fence, Fence):
            msg = "a partition owner reads through its lease"
            raise TypeError(msg)
        streams = tuple(partitions.partition_stream(b, p) for b in self.settings.inputs)
        view = self._make(FencedStreams, streams=streams, consumer=partitions.consumer_name(p),
                          fence=fence)  # fmt: skip
        return view, partitions.checkpoint_key(self.settings.group, p)

    def leave(self) -> None:
        if self.settings.assignment == "dynamic":
            self.membership.leave()


class Worker:
    """Consumes the group's input through the consumers it owns, one per partition.

    Args:
        settings: the worker's settings.
        client: Redis client (from :func:`detector.gateway.streams.connect`); created if None.
        spec: model spec; loaded from ``settings.model`` if None.
        metrics: metrics; a private registry if None.
        on_verdicts: called with every batch's verdicts after it is processed (demo, tests).
    """

    def __init__(
        self,
        settings: Settings,
        client: Client | None = None,
        *,
        spec: ModelSpec | None = None,
        metrics: Metrics | None = None,
        on_verdicts: Callable[[Verdicts], None] | None = None,
    ) -> None:
        if settings.redis_url is None and not settings.sentinels and client is None:
            msg = "a worker needs a redis_url, sentinels or a client"
            raise ValueError(msg)
        if settings.checkpoint_secret is None:
            msg = "a worker needs a checkpoint key (DETECTOR_CHECKPOINT_KEY)"
            raise ConfigError(msg)
        _check_partitioning(settings)
        _check_scores_stream(settings)
        _check_feedback_stream(settings)
        self.settings = settings
        self.spec = spec or load_spec(settings.model)
        self.client: Client = client or connect(
            settings.redis_url or "", **connect_kwargs(settings)
        )
        self.rt = Runtime(
            settings=settings,
            spec=self.spec,
            signer=Signer(settings.checkpoint_secret),
            decoder=Decoder(settings.event_format),
            metrics=metrics or Metrics(CollectorRegistry(), settings.inputs, self.spec.name),
            on_verdicts=on_verdicts,
        )
        self.metrics = self.rt.metrics
        self.stats: RunStats = self.rt.stats
        # A primary demoted under a plain client answers READONLY: drop the connections, so
        # the retry reconnects (through a name that now points at the new primary).
        pool = getattr(self.client, "connection_pool", None)  # a cluster client has none
        if pool is not None:
            self.rt.reconnect = pool.disconnect
        self.replication = (
            Replication(settings.min_replicas_acked, settings.min_replicas_timeout_ms,
                        stop=self.rt.stop, observe=self.metrics.waited)
            if settings.min_replicas_acked
            else None
        )  # fmt: skip
        self.assignment: Assignment = (
            Unpartitioned(settings, self._streams)
            if settings.partitions is None
            else Leased(settings, self.client, self.rt, self._streams)
        )
        # Partition -> its consumer.
        self.consumers: dict[int, Consumer] = {}
        self._health_key = HEALTH_KEY.format(group=settings.group, consumer=settings.consumer)
        self._next = {
            "health": 0.0, "info": 0.0, "claim": 0.0, "own": 0.0, "primary": 0.0, "peers": 0.0,
            "gauges": 0.0,
        }  # fmt: skip
        self._signals = 0
        self._rotation = 0
        self._tails: dict[int, dict[str, str]] = {}
        self._target: list[int] = []
        self.status = StatusReporter(self, settings.status_interval_s)
        self._outage = Outage(log)  # logs "reconnected after N s" once reads work again
        for p in self.assignment.held():
            self.consumers[p] = self._consumer(p, NO_FENCE)

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"<Worker {self.settings.consumer} events={s.events} alerts={s.alerts} "
            f"invalid={s.invalid} producers={self.producers} partitions={self.owned}>"
        )

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline of the worker's only consumer (unpartitioned)."""
        if len(self.consumers) != 1:
            msg = "a partitioned worker has one pipeline per partition: see .consumers"
            raise AttributeError(msg)
        return next(iter(self.consumers.values())).pipeline

    @property
    def owned(self) -> list[int]:
        """The partitions this worker owns under a lease now (sorted)."""
        return sorted(p for p, c in self.consumers.items() if c.streams.fence.refuses)

    @property
    def producers(self) -> int:
        return sum(len(c.pipeline.store) for c in self.consumers.values())

    def _checkpoint(self) -> None:
        """Commit all the consumers have handled (benchmarks)."""
        for p, c in list(self.consumers.items()):
            self._guard_fence(p, c.checkpoint)

    def stop(self) -> None:
        """Finish the current batch, commit, release the partitions, return from :meth:`run`."""
        self.rt.stop.set()

    def run(self, *, max_events: int | None = None, until_idle: bool | None = None) -> RunStats:
        """Consume until stopped, ``max_events`` are processed, or (``until_idle``) quiet.

        Returns:
            the worker's counters, cumulative over its runs (``max_events`` counts them too).
        """
        s, rt = self.settings, self.rt
        until_idle = s.until_idle if until_idle is None else until_idle
        started = rt.started = time.monotonic()
        self._install_signals()
        for p in list(self.consumers):  # held from the start, or kept from the previous run
            self._start(p)
        last_activity = time.monotonic()
        while not rt.stop.is_set():
            if max_events is not None and self.stats.events >= max_events:
                break
            self._housekeeping()
            self.status.tick()
            try:
                n = self._read_round(until_idle)
            except CONNECTION_ERRORS as exc:
                self._outage.failed()
                self._recover_connection(exc)
                last_activity = time.monotonic()  # an outage is not quiet: --until-idle waits
                continue
            except redis.ResponseError as exc:
                if str(exc).startswith("UNBLOCKED"):  # a blocked read on a demoted primary
                    self._outage.failed()
                    self._recover_connection(exc)
                    last_activity = time.monotonic()
                    continue
                if "NOGROUP" not in str(exc):
                    raise
                # The group (or stream) was deleted under us: recreate it and carry on.
                log.warning("consumer group missing, recreating: %s", exc)
                for c in self.consumers.values():
                    rt.with_retries(partial(c.streams.ensure_groups, c.processed_upto))
                continue
            self._outage.ok()
            if n:
                last_activity = time.monotonic()
            elif until_idle and (time.monotonic() - last_activity) * 1000 >= s.idle_timeout_ms:
                if self._quiet():
                    break
                last_activity = time.monotonic()
        self.status.close()
        self._shutdown()
        self._update_gauges()
        self.stats.elapsed_s = time.monotonic() - started
        log.info("worker stopped", extra={"stats": asdict(self.stats)})
        return self.stats

    # -- reading -----------------------------------------------------------------------

    def _streams(self, kind: type[Streams], **view: object) -> Streams:
        """A consumer's Redis view: ``kind`` with this worker's group and output streams."""
        s = self.settings
        return kind(
            self.client,
            group=s.group,
            alerts_stream=s.alerts_stream,
            dead_letter_stream=s.dead_letter_stream,
            maxlen=s.alerts_maxlen,
            scores_stream=s.scores_stream,
            scores_maxlen=s.scores_maxlen,
            replication=self.replication,
            **view,  # type: ignore[arg-type]
        )

    def _consumer(self, p: int, fence: Fence | NoFence) -> Consumer:
        streams, key = self.assignment.view(p, fence)
        return Consumer(self.rt, streams, key, p, self.assignment.count)

    def _start(self, p: int) -> None:
        """Resume partition ``p``'s consumer: its checkpoint (once; first, so that a refused
        baseline or checkpoint leaves no group behind), its groups, its pending entries.
        Behind a fence that refuses, the replay is committed at once: another handoff would
        re-deliver it (delivery counts grow, and past max_deliveries entries go to the dead
        letters as poison)."""
        c = self.consumers[p]
        if not c.restored:
            c.restore()
        self.rt.with_retries(lambda: c.streams.ensure_groups(c.processed_upto))
        cursors = dict.fromkeys(c.streams.streams, "0")
        replayed = self._guard_fence(
            p, lambda: self.rt.with_retries(lambda: c.drain_own_pending(cursors))
        )
        if replayed and c.streams.fence.refuses:
            self._guard_fence(p, c.checkpoint)

    def _read_round(self, until_idle: bool) -> int:
        """Read and process one round; returns the entries processed."""
        s = self.settings
        block_ms = min(s.block_ms, s.idle_timeout_ms) if until_idle else s.block_ms
        owned = sorted(self.consumers)
        if not owned:
            time.sleep(min(block_ms, ROTATING_WAIT_MS) / 1000)
            return 0
        owners = [self.consumers[p] for p in owned]
        encoding = any(c.encoding for c in owners)
        results: list[tuple[list[Entry], dict[str, str]] | Exception]
        if len(owners) == 1:  # one read, waiting in it if it can (its encoding goes on at once)
            only = owners[0].streams
            try:
                results = [only.read_new(s.batch_size, None if encoding else block_ms)]
            except FencedError as exc:
                results = [exc]
        else:
            fenced = [c.streams for c in owners if isinstance(c.streams, FencedStreams)]
            results = sweep(self.client, fenced, s.batch_size)
        total = 0
        for p, c, result in zip(owned, owners, results, strict=True):
            if isinstance(result, FencedError):
                self._lost(p, result)
            elif isinstance(result, redis.exceptions.NoScriptError):
                continue  # Redis restarted: the sweep reloaded the script for the next round
            elif isinstance(result, Exception):
                raise result
            elif result[0]:
                self._tails.pop(p, None)
                total += len(result[0])
                self._guard_fence(p, partial(c.handle, result[0]))
            elif result[1]:
                self._tails[p] = result[1]
        if total == 0 and not encoding:
            self._wait(block_ms)
        else:
            self._linger(total)
        return total

    def _linger(self, total: int) -> None:
        """After a round of a few entries (``total``), wait ``read_linger_ms``: a round costs a
        read, an append and bookkeeping whatever its size, and a live stream read as it
        arrives pays them for every few events. The wait ends the round, so the housekeeping
        comes next (a partition owner back from a pause tries its due commit before its next
        read); a commit being encoded lingers by itself, a slice per round."""
        s = self.settings
        if (
            s.read_linger_ms
            and 0 < total < s.batch_size // 8
            and not any(c.encoding for c in self.consumers.values())
        ):
            self.rt.stop.wait(s.read_linger_ms / 1000)

    def _wait(self, block_ms: int) -> None:
        """Nothing anywhere: block on one owned partition in rotation (consuming nothing)."""
        waiting = [p for p in sorted(self.consumers) if p in self._tails]
        if not waiting:
            return
        self._rotation = (self._rotation + 1) % len(waiting)
        p = waiting[self._rotation]
        wait_ms = block_ms if len(self.consumers) == 1 else min(block_ms, ROTATING_WAIT_MS)
        self.consumers[p].streams.wait(self._tails[p], max(wait_ms, 1))

    def _guard_fence(self, p: int, step: Callable[[], object]) -> bool:
        """Run a step of partition ``p``; a refused read or commit drops the partition."""
        try:
            step()
        except FencedError as exc:
            self._lost(p, exc)
            return False
        return True

    def _quiet(self) -> bool:
        """Idle for ``idle_timeout_ms``: may an ``until_idle`` run end? When every target
        partition is owned, and no entry other consumers left pending is waiting (work too)."""
        return set(self._target) <= set(self.consumers) and self._claim_safely() == 0

    # -- ownership ---------------------------------------------------------------------

    def _maintain_ownership(self) -> None:
        """Renew owned leases, release partitions no longer ours, acquire the new ones."""
        for p, c in list(self.consumers.items()):
            if not self.assignment.renew(c.streams.fence):
                self._lost(p, None)
        target = self._target = self.assignment.target()
        for p in sorted(self.consumers):
            if p not in target:
                self._release(p)
        for p in target:
            if p not in self.consumers and not self.rt.stop.is_set():
                self._acquire(p)
        self._update_gauges()

    def _acquire(self, p: int) -> None:
        fence = self.assignment.acquire(p)
        if fence is None:
            return  # held by another worker (or our previous life): retried shortly
        self.consumers[p] = self._consumer(p, fence)
        self._start(p)

    def _release(self, p: int) -> None:
        """Hand a partition over: commit it, then free its lease (if still ours)."""
        c = self.consumers[p]
        if not self._guard_fence(p, c.checkpoint):
            return
        if self.assignment.release(c.streams.fence):
            del self.consumers[p]
            self._tails.pop(p, None)

    def _lost(self, p: int, exc: FencedError | None) -> None:
        """The lease is gone: drop the partition unwritten (the new owner replays it)."""
        c = self.consumers.pop(p, None)
        self._tails.pop(p, None)
        if c is None:
            return
        self.stats.fenced += exc is not None
        self.metrics.lease_losses.inc()
        log.warning("partition %d lost (%s): dropped without committing", p,
                    exc or "lease not renewed")  # fmt: skip
        self._update_gauges()

    def _shutdown(self) -> None:
        """Commit everything; release the partitions and leave the group's members."""
        for p in sorted(self.consumers):
            self._release(p)
        self._guarded(self.assignment.leave)
        self._report_health(final=True)

    # -- housekeeping and failures -----------------------------------------------------

    def _housekeeping(self) -> None:
        # Due commits first: a partition owner resuming after a pause past its lease tries its
        # commit (in one go), which the fence refuses, before it notices the lost lease.
        # One slice of commit encoding per round, shared by the owned partitions.
        deadline = time.perf_counter() + self.settings.commit_slice_ms / 1000
        for p, c in list(self.consumers.items()):
            self._guard_fence(p, partial(c.housekeeping, deadline))
        now = time.monotonic()
        if now >= self._next["own"]:
            tick = self.settings.lease_ttl_ms / 3000
            try:
                self._maintain_ownership()
            except CONNECTION_ERRORS as exc:
                self.rt.note_error(exc)
            missing = set(self._target) - set(self.consumers)
            self._next["own"] = time.monotonic() + (min(tick, ACQUIRE_RETRY_S) if missing else tick)
        if now >= self._next["gauges"]:
            self._next["gauges"] = now + GAUGE_INTERVAL_S
            self._update_gauges()
        if now >= self._next["health"]:
            self._next["health"] = now + HEALTH_INTERVAL_S
            self._guarded(self._report_health)
        if now >= self._next["info"]:
            self._next["info"] = now + GROUP_INFO_INTERVAL_S
            self._guarded(self._report_group)
        if now >= self._next["claim"]:
            self._next["claim"] = now + CLAIM_INTERVAL_S
            self._claim_safely()
        if now >= self._next["peers"] and self.spec.features.peers:
            self._next["peers"] = now + peering.PEER_SHARE_INTERVAL_S
            self._guarded(self._share_peers)
        if now >= self._next["primary"] and self.settings.sentinels:
            self._next["primary"] = now + PRIMARY_CHECK_INTERVAL_S
            self._guarded(self._check_primary)

    def _share_peers(self) -> None:
        """Publish the owned partitions' peer summaries and merge the others' (peering)."""
        s = self.settings
        pipelines = {
            peering.field_of(None if s.partitions is None else p, s.consumer): c.pipeline
            for p, c in self.consumers.items()
        }
        peering.exchange(self.client, s.group, self.rt.signer, pipelines)

    def _check_primary(self) -> None:
        """Through Sentinel: the pool drops its idle connections if the primary changed."""
        pool = self.client.connection_pool  # type: ignore[union-attr]
        if isinstance(pool, SentinelConnectionPool):
            pool.get_master_address()  # type: ignore[no-untyped-call]

    def _claim_safely(self) -> int:
        """Claim what dead consumers left pending (a partition's consumer has nothing to)."""
        total = 0
        for c in list(self.consumers.values()):
            try:
                total += c.claim()
            except CONNECTION_ERRORS as exc:
                self.rt.note_error(exc)
        return total

    def _update_gauges(self) -> None:
        m = self.metrics
        m.partitions_owned.set(len(self.owned))
        m.producers.set(self.producers)
        pipelines = [c.pipeline for c in self.consumers.values()]
        m.evicted.set(sum(p.store.evicted for p in pipelines))
        m.set_exhaustion(
            sum(p.admission.refused for p in pipelines),
            sum(p.admission.admitted for p in pipelines),
            sum(p.budget.capped_total for p in pipelines),
        )

    def _report_group(self) -> None:
        # Per configured stream: summed over the owned partitions' streams.
        totals: dict[str, tuple[int | None, int]] = {}
        for c in self.consumers.values():
            bases = dict(zip(c.streams.streams, self.settings.inputs, strict=True))
            for stream, (lag, pending) in c.streams.group_info().items():
                base = bases[stream]
                old_lag, old_pending = totals.get(base, (0, 0))
                new_lag = None if lag is None or old_lag is None else old_lag + lag
                totals[base] = (new_lag, old_pending + pending)
        for stream, (lag, pending) in totals.items():
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
                "producers": self.producers,
                "partitions": self.owned,
            }
        )
        ttl_ms = max(10_000, 5 * self.settings.block_ms)
        self.client.set(self._health_key, summary, px=ttl_ms)

    def _guarded(self, step: Callable[[], object]) -> None:
        """Run an optional step; a connection error is counted and left to the main loop."""
        try:
            step()
        except CONNECTION_ERRORS as exc:
            self.rt.note_error(exc)

    def _recover_connection(self, exc: Exception) -> None:
        """After a failed read: back off, then pick up entries whose reply may have been lost."""
        self.rt.note_error(exc)
        time.sleep(0.1)
        for p, c in list(self.consumers.items()):
            self._guard_fence(p, partial(self._resync, c))

    def _resync(self, c: Consumer) -> None:
        """A consumer's resync; a group that a failover lost (its creation had not reached
        the promoted replica) is created again after the entries the state learned."""
        try:
            c.resync()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group missing, recreating: %s", exc)
            self.rt.with_retries(partial(c.streams.ensure_groups, c.processed_upto))
            c.resync()

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


def _check_scores_stream(s: Settings) -> None:
    """The scores go to a stream of their own, never one the worker reads (exit code 2)."""
    if s.scores_stream is None:
        return
    if s.scores_stream in s.streams:
        msg = f"--scores-stream {s.scores_stream}: an input stream (it would score its scores)"
        raise ConfigError(msg)
    if s.scores_stream in (s.alerts_stream, s.dead_letter_stream, s.feedback_stream):
        msg = f"--scores-stream {s.scores_stream}: the alert or dead-letter stream"
        raise ConfigError(msg)


def _check_feedback_stream(s: Settings) -> None:
    """The feedback is an input of its own: not an event stream, nor one the worker writes."""
    fb = s.feedback_stream
    if fb is not None and fb in (*s.streams, s.alerts_stream, s.dead_letter_stream):
        msg = f"--feedback-stream {fb}: an input, alert or dead-letter stream"
        raise ConfigError(msg)


def _check_partitioning(s: Settings) -> None:
    """Refuse partition settings that cannot work (exit code 2 from the CLI)."""
    if s.partitions is None:
        if s.worker_count is not None or s.worker_index is not None or s.assign is not None:
            msg = "--assign, --worker-index and --worker-count need --partitions"
            raise ConfigError(msg)
        if s.cluster:
            partitions.check_name("alerts stream", s.alerts_stream)
            partitions.check_name("dead-letter stream", s.dead_letter_stream)
            if len(s.inputs) > 1:
                msg = "on Redis Cluster, several input streams need --partitions (one slot each)"
                raise ConfigError(msg)
            partitions.check_name("stream", s.streams[0])  # the checkpoint's hash tag
        return
    partitions.check_partitions(s.partitions)
    for kind, names in (
        ("stream", s.streams),
        ("group", (s.group,)),
        ("alerts stream", (s.alerts_stream,)),
        ("dead-letter stream", (s.dead_letter_stream,)),
        ("feedback stream", (s.feedback_stream,) if s.feedback_stream else ()),
    ):
        for name in names:
            partitions.check_name(kind, name)
    if s.assignment not in ("static", "dynamic"):
        msg = f"--assign must be static or dynamic, not {s.assign!r}"
        raise ConfigError(msg)
    if s.assignment == "static":
        if s.worker_count is None:
            msg = "static assignment needs --worker-count (and --worker-index)"
            raise ConfigError(msg)
        partitions.assigned_partitions(s.partitions, index=s.worker_index or 0,
                                       count=s.worker_count)  # fmt: skip
    if s.lease_ttl_ms < 300:
        msg = f"--lease-ttl-ms must be at least 300, not {s.lease_ttl_ms}"
        raise ConfigError(msg)
