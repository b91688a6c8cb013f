"""Router: re-key an unpartitioned input stream into the partition streams.

Producers that write to one stream (``events``) get their entries copied, fields unchanged, to
``events:{p}`` with ``p = partition_of(producer, P)`` (:mod:`detector.gateway.partitions`), where
partitioned workers read them. The router is stateless apart from Redis:

* It reads the source through its own consumer group (``detector-router``) and XACKs an entry
  only after its append succeeded, so a crash replays the unacknowledged entries
  (at-least-once), starting with every entry pending in the group.
* Appends are idempotent: one script per partition appends an entry only if its source id is
  above the partition's high-water mark for that source stream (a hash field in
  ``detector:routed:{base}:{p}``, same slot as the partition stream) and moves the mark in
  the same script. Replayed entries are at or below the mark and are skipped. Partition
  entries get fresh ids, so several source streams, and producers writing to the partitions
  directly (:mod:`detector.producer`), can feed the same partitions.
* Order per producer is the source order: one router per source stream reads it in order and
  appends each partition's entries in order. A second router on the same source would split
  the entries between them and could make the mark skip entries, so a lease
  (``detector:router:lease:{group}:{source}``) lets only one route at a time; the others wait.
* Entries without a valid producer go to the dead-letter stream (the worker's format, reason
  ``missing_producer`` / ``empty_producer`` / ``invalid_producer``), at most once each.

Only the route script is the router's own; the rest is the worker's: the lease
(:class:`~detector.gateway.ownership.Leases`), the group, reads and once-only dead-letter appends
(:class:`~detector.gateway.streams.Streams`), the retry policy
(:func:`~detector.gateway.streams.retry`) and the producer and size checks
(:class:`~detector.core.events.Decoder`). Every script touches one slot, so the router runs
unchanged on Redis Cluster.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from detector.core.errors import DetectorError, InvalidEventError
from detector.core.events import Decoder
from detector.core.settings import DEFAULT_DEAD_LETTER_STREAM, DEFAULT_STREAM, EventFormat
from detector.gateway.ownership import Fence, Leases
from detector.gateway.partitions import check_name, check_partitions, partition_of, partition_stream
from detector.gateway.streams import (
    CONNECTION_ERRORS,
    Client,
    DeadLetter,
    Outage,
    Output,
    Streams,
    retry,
)

log = logging.getLogger(__name__)

DEFAULT_ROUTER_GROUP = "detector-router"
# High-water marks of one partition: field = source stream, value = last routed source id.
ROUTED = "detector:routed:{base}:{{{p}}}"
LEASE = "detector:router:lease:{group}:{source}"
# Dead-letter reasons (the worker's codes where they mean the same thing).
MISSING_PRODUCER = "missing_producer"
EMPTY_PRODUCER = "empty_producer"
INVALID_PRODUCER = "invalid_producer"
TOO_MANY_FIELDS = "too_many_fields"
ENTRY_TOO_LARGE = "entry_too_large"

# KEYS: partition stream, its marks hash. ARGV: source stream, maxlen (0: none), then per
# entry: source id, number of field/value items, the items. Returns entries appended.
_ROUTE = """
local function newer(a, b)  -- a > b for ids "ms-seq" (integers too long for Lua numbers)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if #ams ~= #bms then return #ams > #bms end
  if ams ~= bms then return ams > bms end
  if #aseq ~= #bseq then return #aseq > #bseq end
  return aseq > bseq
end
local mark = redis.call('HGET', KEYS[2], ARGV[1]) or '0-0'
local maxlen, i, written = tonumber(ARGV[2]), 3, 0
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  if newer(id, mark) then
    local args = {'XADD', KEYS[1]}
    if maxlen > 0 then
      args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = maxlen
    end
    args[#args + 1] = '*'
    for j = i + 2, i + 1 + n do args[#args + 1] = ARGV[j] end
    redis.call(unpack(args))
    mark = id
    -- Per entry, not once at the end: scripts do not roll back, so a failed XADD later in
    -- the batch must leave the mark on the last entry really appended.
    redis.call('HSET', KEYS[2], ARGV[1], mark)
    written = written + 1
  end
  i = i + n + 2
end
return written
"""


class LeaseLostError(DetectorError):
    """Another router holds the source's lease: this one must stop routing."""


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """What to route where. Units are in the names.

    Attributes:
        source: the unpartitioned input stream.
        base: base name of the partition streams (``base:{p}``).
        partitions: P, the same as the workers'.
        group, consumer: the router's consumer group on ``source`` and its name in it.
        dead_letter_stream: where entries without a valid producer go.
        event_format: ``producer_field`` and ``max_name_len`` decide what a valid producer is.
        batch_size, block_ms: entries per read, and how long a read waits for new ones.
        maxlen: approximate cap of each partition stream (0: none).
        lease_ttl_ms: the single-router lease; renewed every read, so above ``block_ms``.
    """

    source: str = DEFAULT_STREAM
    base: str = DEFAULT_STREAM
    partitions: int = 1
    group: str = DEFAULT_ROUTER_GROUP
    consumer: str = "router"
    dead_letter_stream: str = DEFAULT_DEAD_LETTER_STREAM
    event_format: EventFormat = field(default_factory=EventFormat)
    batch_size: int = 500
    block_ms: int = 1000
    maxlen: int = 0
    lease_ttl_ms: int = 10_000

    def check(self) -> None:
        check_partitions(self.partitions)
        check_name("stream", self.base)
        if self.source in {partition_stream(self.base, p) for p in range(self.partitions)}:
            msg = f"source {self.source!r} is one of the partition streams it would feed"
            raise DetectorError(msg)
        if self.lease_ttl_ms < 3 * self.block_ms:
            msg = f"lease TTL {self.lease_ttl_ms} ms must be at least 3 x block {self.block_ms}"
            raise DetectorError(msg)


@dataclass(slots=True)
class RouterStats:
    read: int = 0
    routed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    trimmed: int = 0


class Router:
    """Routes ``config.source`` into ``config.base:{p}``; see the module docstring."""

    def __init__(self, config: RouterConfig, client: Client) -> None:
        config.check()
        self.config = config
        self.r = client
        self.stats = RouterStats()
        self.outage = Outage(log)  # logs "reconnected after N s" once reads work again
        self.lease_key = LEASE.format(group=config.group, source=config.source)
        self.leases = Leases(client, config.group, uuid.uuid4().hex, config.lease_ttl_ms)
        self.fence: Fence | None = None  # the source's lease, while this router holds it
        self.streams = Streams(
            client,
            streams=(config.source,),
            group=config.group,
            consumer=config.consumer,
            alerts_stream="",  # the router writes no alerts
            dead_letter_stream=config.dead_letter_stream,
            maxlen=0,  # no cap on the dead letters: the workers' appends trim them
        )
        self.decoder = Decoder(config.event_format)
        self._producer = config.event_format.producer_field.encode()
        self._route = client.register_script(_ROUTE)

    # -- the loop --------------------------------------------------------------------------

    def run(
        self,
        *,
        until_idle: bool = False,
        idle_timeout_ms: int = 2000,
        stop: threading.Event | None = None,
    ) -> RouterStats:
        """Route until ``stop`` is set (or, with ``until_idle``, nothing new arrives for
        ``idle_timeout_ms``). Connection errors are retried (the worker's policy); the
        pending entries are replayed after each, as a lost XREADGROUP reply leaves entries
        pending that were never seen.

        Raises:
            LeaseLostError: another router took the lease (this one stalled past its TTL).
        """
        stop = stop or threading.Event()

        def session() -> None:
            self.acquire(stop)
            if stop.is_set():
                return
            self.streams.ensure_groups()  # from the start: a new router routes what is there
            self._replay_pending(stop)
            self._follow(stop, until_idle=until_idle, idle_timeout_ms=idle_timeout_ms)

        def failed(exc: Exception) -> None:
            self.outage.failed()
            log.warning("redis unavailable, retrying: %s", exc)

        retry(session, stop, failed)
        self.release()
        return self.stats

    def _follow(self, stop: threading.Event, *, until_idle: bool, idle_timeout_ms: int) -> None:
        cfg = self.config
        idle_since = time.monotonic()
        while not stop.is_set():
            self.renew_lease()
            block = min(cfg.block_ms, idle_timeout_ms) if until_idle else cfg.block_ms
            entries = self.streams.read({cfg.source: ">"}, cfg.batch_size, block)
            self.outage.ok()
            if entries:
                self.route([(entry_id, fields) for _, entry_id, fields in entries])
                idle_since = time.monotonic()
            elif until_idle and (time.monotonic() - idle_since) * 1000 >= idle_timeout_ms:
                return

    def _replay_pending(self, stop: threading.Event) -> None:
        """Take over every entry pending in the group (a previous router's, or ours before a
        lost reply) and route them first, in id order, so nothing newer moves a mark past
        them. XAUTOCLAIM walks the pending list in id order."""
        cfg = self.config
        cursor = "0-0"
        while not stop.is_set():
            self.renew_lease()
            cursor, entries, deleted = self.streams.claim(cfg.source, 0, cursor, cfg.batch_size)
            if entries:
                self.route([(entry_id, fields) for _, entry_id, fields in entries])
            if deleted:  # deleted while pending: Redis dropped them from the pending list
                self._note_trimmed(deleted)
            if cursor == "0-0":
                return

    # -- one batch -------------------------------------------------------------------------

    def route(self, entries: Sequence[tuple[str, dict[bytes, bytes] | None]]) -> None:
        """Append each entry to its partition (or dead-letter it), then XACK them all."""
        cfg = self.config
        by_partition: dict[int, list[tuple[str, dict[bytes, bytes]]]] = defaultdict(list)
        letters: list[DeadLetter] = []
        trimmed: list[str] = []
        for entry_id, fields in entries:
            if not fields:  # deleted from the stream while pending (an entry has a field)
                trimmed.append(entry_id)
                continue
            try:
                producer = self.producer_of(fields)
            except InvalidEventError as exc:
                letters.append(DeadLetter(cfg.source, entry_id, fields, exc.reason, exc.detail))
                continue
            by_partition[partition_of(producer, cfg.partitions)].append((entry_id, fields))
        for p, batch in by_partition.items():
            args: list[Any] = [cfg.source, cfg.maxlen]
            for entry_id, fields in batch:
                args += [entry_id, 2 * len(fields), *(x for kv in fields.items() for x in kv)]
            keys = [partition_stream(cfg.base, p), ROUTED.format(base=cfg.base, p=p)]
            written = int(self._route(keys=keys, args=args))
            self.stats.routed += written
            self.stats.duplicates += len(batch) - written
        if letters:
            self.stats.dead_lettered += self.streams.emit(Output(dead_letters=letters))
        for letter in letters:
            log.info("dead-lettered %s %s: %s", letter.stream, letter.entry_id, letter.reason)
        self.stats.read += len(entries)
        self._ack([e for e, f in entries if f])
        if trimmed:
            self._note_trimmed(len(trimmed))
            self._ack(trimmed)

    def producer_of(self, fields: dict[bytes, bytes]) -> str:
        """The entry's producer id, checked by the worker's decoder, and the decoder's caps
        on the entry (the worker would reject it anyway, and a script's XADD takes at most
        ~8000 arguments).

        Raises:
            InvalidEventError: no producer field, an empty one, not a valid name, or an entry
                over the format's caps.
        """
        raw = fields.get(self._producer)
        if raw is None:
            field_name = self.config.event_format.producer_field
            raise InvalidEventError(MISSING_PRODUCER, f"no {field_name!r} field")
        try:
            producer = self.decoder.check_producer(raw)
        except InvalidEventError as exc:
            if exc.reason == EMPTY_PRODUCER:
                raise
            raise InvalidEventError(INVALID_PRODUCER, str(exc)) from None  # not UTF-8, too long
        self.decoder.check_shape(fields)
        return producer

    def _ack(self, ids: list[str]) -> None:
        if ids:
            self.r.xack(self.config.source, self.config.group, *ids)

    def _note_trimmed(self, n: int) -> None:
        self.stats.trimmed += n
        log.warning("%d entries of %s were trimmed before routing", n, self.config.source)

    # -- lease -----------------------------------------------------------------------------

    def acquire(self, stop: threading.Event) -> None:
        """Wait until this router holds the source's lease (or ``stop`` is set)."""
        while not stop.is_set():
            if self.fence is not None and self.leases.renew(self.fence):
                return  # still ours (a retry after a connection error)
            self.fence = self.leases.take(self.lease_key)
            if self.fence is not None:
                log.info("router lease %s acquired", self.lease_key)
                return
            log.info("another router holds %s; waiting", self.lease_key)
            stop.wait(self.config.lease_ttl_ms / 3000)

    def renew_lease(self) -> None:
        if self.fence is None or not self.leases.renew(self.fence):
            msg = f"router lease {self.lease_key} lost: another router routes {self.config.source}"
            raise LeaseLostError(msg)

    def release(self) -> None:
        """Free the lease if it is still ours: the check and the DEL in one script, so a
        lease another router took meanwhile stays its own."""
        if self.fence is None:
            return
        with contextlib.suppress(*CONNECTION_ERRORS):  # else it expires on its own
            self.leases.release(self.fence)
        self.fence = None
