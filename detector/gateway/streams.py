"""Streams: every Redis command the worker sends.

Delivery (docs/design.md): entries are processed and their alerts and dead letters appended
at once, each at most once (a guard key set with NX in the same script as the XADD); entries
are acknowledged only by a checkpoint commit, one MULTI/EXEC that writes the changed state and
its offsets and XACKs every entry since the previous commit. The pending entries list is
therefore the replay log: after a crash, the entries after the checkpoint are still pending.

redis-py retries are off: a silently retried ``XREADGROUP >`` can skip entries whose reply
was lost. The worker resynchronises from its own pending entries instead.

A partition's owner reads and commits through scripts that first check its lease
(:class:`FencedStreams`, holding a :class:`~detector.gateway.ownership.Fence`); every script and
transaction touches one partition's keys or one output stream's keys, so the same code runs
on Redis Cluster (one slot each).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from detector.core.alerts import Alert
from detector.core.errors import ConfigError
from detector.core.settings import ALERT_GUARD_KEY, DEAD_LETTER_GUARD_KEY, GUARD_TTL_S, Settings
from detector.gateway.ownership import NO_FENCE, Fence, FencedError, NoFence

log = logging.getLogger(__name__)

Client: TypeAlias = "redis.Redis | RedisCluster"

# Raw entry as read: (stream, entry id, fields).
Entry = tuple[str, str, dict[bytes, bytes]]
# A commit's parts: checkpoint hash fields to write, and entry ids to XACK per stream.
HashFields: TypeAlias = Mapping[str, bytes]
Acks: TypeAlias = Mapping[str, Sequence[str]]

# Appends each entry whose guard key is new. KEYS: (stream, guard key) pairs. ARGV: guard ttl,
# maxlen (0: no cap), then per entry: the number of field/value items, the items. Returns
# entries written.
_APPEND_ONCE = """
local ttl, maxlen, i, written = ARGV[1], ARGV[2], 3, 0
local cap = {'MAXLEN', '~', maxlen}
if tonumber(maxlen) == 0 then cap = {} end
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[i])
  if redis.call('EXISTS', KEYS[k + 1]) == 0 then
    local args = {'XADD', KEYS[k], unpack(cap)}
    args[#args + 1] = '*'
    for j = i + 1, i + n do args[#args + 1] = ARGV[j] end
    redis.call(unpack(args))
    -- The guard only after the XADD: scripts do not roll back, so a failed XADD must not
    -- leave a guard that would hide the entry from the retry.
    redis.call('SET', KEYS[k + 1], '1', 'EX', ttl)
    written = written + 1
  end
  i = i + n + 1
end
return written
"""
# A partition owner's read. KEYS: lease, then the partition's streams. ARGV: token, group,
# consumer, count, one cursor per stream. {-1}: fenced; {1, reply}: XREADGROUP's reply;
# {0, last id per stream}: nothing new (the ids a non-consuming blocking XREAD waits after).
_FENCED_READ = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local args = {'XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS'}
for k = 2, #KEYS do args[#args + 1] = KEYS[k] end
for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
local reply = redis.call(unpack(args))
if reply then return {1, reply} end
local tails = {0}
for k = 2, #KEYS do
  local last = redis.call('XREVRANGE', KEYS[k], '+', '-', 'COUNT', 1)[1]
  tails[#tails + 1] = last and last[1] or '0-0'
end
return tails
"""
# A partition owner's commit: what Streams.commit's MULTI does, after checking the lease.
# KEYS: lease, checkpoint, then the streams to ack. ARGV: token, group, then counted lists:
# HSET items, HDEL names, and per stream its ids. 0: fenced, nothing written; 1: done.
_FENCED_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local function chunked(cmd, key, extra, first, last)
  while first <= last do
    local args = {cmd, key}
    for _, x in ipairs(extra) do args[#args + 1] = x end
    local upto = math.min(last, first + 999)  -- unpack() takes at most ~8000 values
    for i = first, upto do args[#args + 1] = ARGV[i] end
    redis.call(unpack(args))
    first = upto + 1
  end
end
local i = 3
for k = 2, #KEYS do
  local n = tonumber(ARGV[i])
  if k == 2 then
    chunked('HSET', KEYS[2], {}, i + 1, i + n)
    i = i + n + 1
    n = tonumber(ARGV[i])
    chunked('HDEL', KEYS[2], {}, i + 1, i + n)
  else
    chunked('XACK', KEYS[k], {ARGV[2]}, i + 1, i + n)
  end
  i = i + n + 1
end
return 1
"""
# Caps on the original fields copied into a dead letter: bytes, and fields (a Lua call takes
# at most ~8000 arguments, and a producer controls how many fields it sends).
DEAD_LETTER_COPY_BYTES = 256 * 1024
DEAD_LETTER_COPY_FIELDS = 1000
_FALSE = ("", "0", "F", "FALSE", "N", "NO")
# Transient: the worker backs off and retries. A cluster node that is down or failing over
# shows up as one of the cluster errors until the topology is whole again.
CONNECTION_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
)
MAX_BACKOFF_S = 5.0


def retry(
    step: Callable[[], object],
    stop: threading.Event,
    on_error: Callable[[Exception], object],
    *,
    even_when_stopping: bool = False,
) -> bool:
    """Run ``step`` until it gets through connection errors, backing off from 0.1 s to
    :data:`MAX_BACKOFF_S`; each error goes to ``on_error`` first. Gives up (False) once
    ``stop`` is set, unless ``even_when_stopping``: commits and appends must land."""
    delay = 0.1
    while True:
        try:
            step()
            return True
        except CONNECTION_ERRORS as exc:
            on_error(exc)
            if stop.is_set() and not even_when_stopping:
                return False
            if even_when_stopping:
                time.sleep(delay)
            else:
                stop.wait(delay)  # a stop cuts the wait short
            delay = min(delay * 2, MAX_BACKOFF_S)


class Outage:
    """How long a connection has been failing, to log its end once: "reconnected after N s".

    Call :meth:`failed` on each connection error and :meth:`ok` after each success; only the
    first success after a failure logs (and returns) the outage's length.
    """

    __slots__ = ("log", "since")

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.since: float | None = None

    def failed(self) -> None:
        if self.since is None:
            self.since = time.monotonic()

    def ok(self) -> float | None:
        if self.since is None:
            return None
        seconds = time.monotonic() - self.since
        self.since = None
        self.log.info("reconnected after %.1f s", seconds, extra={"outage_s": round(seconds, 3)})
        return seconds


def connect(
    url: str,
    *,
    block_ms: int,
    password: str | None = None,
    tls_ca_cert: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    cluster: bool = False,
) -> Client:
    """A client for the worker: bytes replies, RESP2, no hidden retries.

    ``socket_timeout`` exceeds the blocking read time, else redis-py aborts a healthy BLOCK.
    The password and TLS files are checked and passed by :func:`connection_options`. With
    ``cluster``, ``url`` names one node and the client discovers the others.
    """
    options = dict(
        decode_responses=False,
        protocol=2,
        socket_timeout=max(10.0, 2 * block_ms / 1000),
        socket_connect_timeout=5.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        **connection_options(
            url, password=password, tls_ca_cert=tls_ca_cert, tls_cert=tls_cert, tls_key=tls_key
        ),
    )
    if cluster:
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """:func:`connect`'s keyword arguments for a worker's settings (all but the URL)."""
    return {
        "block_ms": settings.block_ms,
        "password": settings.redis_password,
        "tls_ca_cert": settings.tls_ca_cert,
        "tls_cert": settings.tls_cert,
        "tls_key": settings.tls_key,
        "cluster": settings.cluster,
    }


def connection_options(
    url: str,
    *,
    password: str | None = None,
    tls_ca_cert: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> dict[str, Any]:
    """redis-py keyword arguments for a password kept out of the URL and for TLS.

    The password goes to the connection (``AUTH``), never into the URL, which may be logged.
    TLS (``rediss://``) always verifies the server's certificate and host name; a URL cannot
    turn that off (redis-py lets URL query arguments override keyword arguments).

    Raises:
        ConfigError: TLS files without ``rediss://``, a key without a certificate, a password
            both in the URL and given apart, or a URL that turns verification off.
    """
    try:
        parts = urlsplit(url)
        url_password = parts.password
    except ValueError:
        msg = "the Redis URL cannot be parsed"  # no URL in the message: it may hold a secret
        raise ConfigError(msg) from None
    query = {k.lower(): v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
    options: dict[str, Any] = {}
    if password is not None:
        if url_password is not None or "password" in query:
            msg = "a password is both in the Redis URL and in DETECTOR_REDIS_PASSWORD(_FILE)"
            raise ConfigError(msg)
        options["password"] = password
    tls_files = {"ssl_ca_certs": tls_ca_cert, "ssl_certfile": tls_cert, "ssl_keyfile": tls_key}
    if parts.scheme != "rediss":
        if any(tls_files.values()):
            msg = "TLS options (--tls-ca-cert, --tls-cert, --tls-key) need a rediss:// URL"
            raise ConfigError(msg)
        return options
    if tls_key is not None and tls_cert is None:
        msg = "--tls-key needs --tls-cert"
        raise ConfigError(msg)
    # redis-py reads "", 0, f, false, n, no (any case) as false.
    check_hostname = query.get("ssl_check_hostname", "true").upper()
    if query.get("ssl_cert_reqs", "required") != "required" or check_hostname in _FALSE:
        msg = "the Redis URL turns TLS certificate verification off; the detector keeps it on"
        raise ConfigError(msg)
    options.update({k: str(v) for k, v in tls_files.items() if v is not None})
    options.update(ssl_cert_reqs="required", ssl_check_hostname=True)
    return options


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected entry and why."""

    stream: str
    entry_id: str
    fields: Mapping[bytes, bytes]
    reason: str
    detail: str

    def to_fields(self, rejected_at_ms: int) -> dict[bytes | str, bytes | str]:
        out: dict[bytes | str, bytes | str] = {
            "source_stream": self.stream,
            "source_id": self.entry_id,
            "reason": self.reason,
            "detail": self.detail[:1000],
            "rejected_at": str(rejected_at_ms),
        }
        budget = DEAD_LETTER_COPY_BYTES
        for n, (k, v) in enumerate(self.fields.items()):
            budget -= len(k) + len(v)
            if budget < 0 or n >= DEAD_LETTER_COPY_FIELDS:
                out["truncated"] = "1"
                break
            out[b"field." + k] = v
        return out


@dataclass(slots=True)
class Output:
    """What one batch appends downstream (alerts and dead letters)."""

    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.alerts or self.dead_letters)


class Streams:
    """A group consumer's view of Redis: its input, its alert and dead-letter streams.

    Its fence never refuses: the consumer is the worker's own (unpartitioned), so it reads
    with a blocking ``XREADGROUP`` and commits in a ``MULTI``. A partition owner's view is a
    :class:`FencedStreams`.

    Args:
        client: Redis client (:func:`connect`).
        streams: the input streams this consumer reads (one partition's, when partitioned).
        group, consumer: the consumer group and this consumer's name in it.
        alerts_stream, dead_letter_stream: where alerts and rejected entries go.
        maxlen: approximate cap on those two streams.
    """

    fence: Fence | NoFence = NO_FENCE

    def __init__(
        self,
        client: Client,
        *,
        streams: Sequence[str],
        group: str,
        consumer: str,
        alerts_stream: str,
        dead_letter_stream: str,
        maxlen: int,
    ) -> None:
        self.r = client
        self.streams = tuple(streams)
        self.group = group
        self.consumer = consumer
        self.alerts_stream = alerts_stream
        self.dead_letter_stream = dead_letter_stream
        self.maxlen = maxlen
        self._append_once = client.register_script(_APPEND_ONCE)

    def ensure_groups(self, starts: Mapping[str, str] | None = None) -> None:
        """Create the group on every input stream if missing: right after ``starts[stream]``
        (the last entry the consumer's checkpoint or baseline learned), else at the start of
        the stream (all of its history). An existing group keeps its position."""
        for stream in self.streams:
            start_id = (starts or {}).get(stream, "0")
            try:
                self.r.xgroup_create(stream, self.group, id=start_id, mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            else:
                log.info("created group %s on %s after entry %s", self.group, stream, start_id)

    def read(self, cursors: Mapping[str, str], count: int, block_ms: int | None) -> list[Entry]:
        """XREADGROUP: ``>`` for new entries, an id for this consumer's own pending ones."""
        reply = self.r.xreadgroup(
            self.group,
            self.consumer,
            dict(cursors),  # type: ignore[arg-type]
            count=count,
            block=block_ms,
        )
        return _flatten(reply)  # type: ignore[arg-type]

    def read_new(self, count: int, block_ms: int | None) -> tuple[list[Entry], dict[str, str]]:
        """New entries, waiting up to ``block_ms`` for some; and the ids to :meth:`wait` after
        when there were none (none here: this read has waited already)."""
        return self.read(dict.fromkeys(self.streams, ">"), count, block_ms), {}

    def sweep_command(self, count: int) -> tuple[str, list[Any]]:
        """The read of new entries as (sha, EVALSHA arguments), for :func:`sweep`."""
        msg = "only partition owners (FencedStreams) sweep; this consumer blocks in read_new"
        raise TypeError(msg)

    def wait(self, tails: Mapping[str, str], block_ms: int) -> None:
        """Block until an entry after ``tails`` arrives (or the time is up), reading nothing
        for the group: a woken owner then reads through its fence."""
        self.r.xread(dict(tails), count=1, block=block_ms)  # type: ignore[arg-type]

    def claim(
        self, stream: str, min_idle_ms: int, start: str, count: int
    ) -> tuple[str, list[Entry], int]:
        """XAUTOCLAIM idle entries of other consumers: (next cursor, entries, deleted)."""
        reply = self.r.xautoclaim(stream, self.group, self.consumer, min_idle_ms, start, count)
        cursor = _text(reply[0])
        entries = [
            (stream, _text(eid), dict(fields or {})) for eid, fields in reply[1] if eid is not None
        ]
        deleted = len(reply[2]) if len(reply) > 2 else 0
        return cursor, entries, deleted

    def emit(self, out: Output) -> int:
        """Append alerts and dead letters, each at most once ever; returns how many were new.

        One script call per output stream: its guard keys carry its name as hash tag, so each
        call stays in one cluster slot.
        """
        now_ms = int(time.time() * 1000)
        written = 0
        if out.alerts:
            keys: list[str] = []
            args: list[str | bytes | int] = [GUARD_TTL_S, self.maxlen]
            for alert in out.alerts:
                guard = ALERT_GUARD_KEY.format(
                    alerts_stream=self.alerts_stream, alert_id=alert.alert_id
                )
                keys += [self.alerts_stream, guard]
                items = [x for kv in alert.to_fields(now_ms).items() for x in kv]
                args += [len(items), *items]
            written += int(self._append_once(keys=keys, args=args))
        if out.dead_letters:
            keys, args = [], [GUARD_TTL_S, self.maxlen]
            for letter in out.dead_letters:
                guard = DEAD_LETTER_GUARD_KEY.format(
                    dead_letter_stream=self.dead_letter_stream,
                    stream=letter.stream,
                    entry_id=letter.entry_id,
                )
                keys += [self.dead_letter_stream, guard]
                items = [x for kv in letter.to_fields(now_ms).items() for x in kv]
                args += [len(items), *items]
            written += int(self._append_once(keys=keys, args=args))
        return written

    def commit(self, key: str, fields: HashFields, removed: Sequence[str], acks: Acks) -> None:
        """One transaction: write the checkpoint's changed fields, drop evicted ones, XACK."""
        pipe = self.r.pipeline(transaction=True)
        if fields:
            pipe.hset(key, mapping=dict(fields))  # type: ignore[arg-type]
        if removed:
            pipe.hdel(key, *removed)
        for stream, ids in acks.items():
            if ids:
                pipe.xack(stream, self.group, *ids)
        pipe.execute()

    def load_checkpoint(self, key: str) -> dict[bytes, bytes]:
        """Every field of a checkpoint hash (HSCAN: no single huge reply)."""
        return dict(self.r.hscan_iter(key, count=1000))

    def delivery_counts(self, stream: str, first: str, last: str, count: int) -> dict[str, int]:
        """Times each of this consumer's pending entries in [first, last] was delivered."""
        rows = self.r.xpending_range(
            stream, self.group, min=first, max=last, count=count, consumername=self.consumer
        )
        return {_text(row["message_id"]): int(row["times_delivered"]) for row in rows}  # type: ignore[arg-type]

    def group_info(self) -> dict[str, tuple[int | None, int]]:
        """Per input stream: (lag, pending) of the group; lag is None when Redis cannot tell."""
        out: dict[str, tuple[int | None, int]] = {}
        for stream in self.streams:
            for g in self.r.xinfo_groups(stream):
                if _text(g["name"]) == self.group:
                    lag = g.get("lag")
                    out[stream] = (None if lag is None else int(lag), int(g["pending"]))
        return out


class FencedStreams(Streams):
    """A partition owner's view: reads and commits run in scripts that first check its lease.

    A script cannot block, so reads never wait (the worker waits with :meth:`wait`); the
    partition's consumer name passes to each owner with the lease, so its pending entries are
    the owner's own and there is nothing to claim.

    Args:
        fence: the partition lease reads and commits must hold.
        others: as for :class:`Streams`.
    """

    fence: Fence

    def __init__(self, client: Client, *, fence: Fence, **others: Any) -> None:
        super().__init__(client, **others)
        self.fence = fence
        self._fenced_read = client.register_script(_FENCED_READ)
        self._fenced_commit = client.register_script(_FENCED_COMMIT)

    def read(self, cursors: Mapping[str, str], count: int, block_ms: int | None) -> list[Entry]:
        """XREADGROUP through the lease check, never blocking.

        Raises:
            FencedError: the lease is no longer this consumer's; nothing was read.
        """
        entries, _ = self.read_new_from(cursors, count)
        return entries

    def read_new(self, count: int, block_ms: int | None) -> tuple[list[Entry], dict[str, str]]:
        """New entries (without waiting), and each stream's last id when there were none.

        Raises:
            FencedError: the lease is no longer this consumer's; nothing was read.
        """
        return self.read_new_from(dict.fromkeys(self.streams, ">"), count)

    def read_new_from(
        self, cursors: Mapping[str, str], count: int
    ) -> tuple[list[Entry], dict[str, str]]:
        kw = self._fenced_read_args(cursors, count)
        return self.parse_fenced(self._fenced_read(keys=kw["keys"], args=kw["args"]))

    def _fenced_read_args(self, cursors: Mapping[str, str], count: int) -> dict[str, list[Any]]:
        streams = list(cursors)
        fence = self.fence
        return {
            "keys": [fence.lease_key, *streams],
            "args": [fence.token, self.group, self.consumer, count, *(cursors[s] for s in streams)],
        }

    def sweep_command(self, count: int) -> tuple[str, list[Any]]:
        """The fenced read of new entries as (sha, EVALSHA arguments), for :func:`sweep`."""
        kw = self._fenced_read_args(dict.fromkeys(self.streams, ">"), count)
        return self._fenced_read.sha, [len(kw["keys"]), *kw["keys"], *kw["args"]]

    def parse_fenced(self, reply: list[Any]) -> tuple[list[Entry], dict[str, str]]:
        """A fenced read's reply: (entries, and when there were none each stream's last id)."""
        status = int(reply[0])
        if status < 0:
            msg = f"partition {self.fence.partition}: lease lost"
            raise FencedError(msg)
        if status == 0:
            return [], {s: _text(t) for s, t in zip(self.streams, reply[1:], strict=False)}
        entries: list[Entry] = []
        for stream, items in reply[1]:
            name = _text(stream)
            for eid, flat in items:
                fields = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}
                entries.append((name, _text(eid), fields))
        return entries, {}

    def claim(
        self, stream: str, min_idle_ms: int, start: str, count: int
    ) -> tuple[str, list[Entry], int]:
        """Nothing: a partition's pending entries are its owner's own (read at acquisition)."""
        return "0-0", [], 0

    def commit(self, key: str, fields: HashFields, removed: Sequence[str], acks: Acks) -> None:
        """The MULTI's commands in a script that first checks the lease.

        Raises:
            FencedError: the lease is no longer ours; nothing was written.
        """
        items = [x for kv in fields.items() for x in kv]
        args: list[str | bytes | int] = [self.fence.token, self.group, len(items), *items]
        args += [len(removed), *removed]
        streams = [s for s, ids in acks.items() if ids]
        for stream in streams:
            args += [len(acks[stream]), *acks[stream]]
        keys = [self.fence.lease_key, key, *streams]
        if not int(self._fenced_commit(keys=keys, args=args)):
            msg = f"partition {self.fence.partition}: commit refused, the lease is lost"
            raise FencedError(msg)


def sweep(
    client: Client, owners: Sequence[FencedStreams], count: int
) -> list[tuple[list[Entry], dict[str, str]] | Exception]:
    """New entries of many fenced consumers in one round trip (non-blocking).

    One fenced read per consumer, pipelined; a cluster client splits the pipeline by node,
    each script staying in its partition's slot. Per consumer: (entries, last ids when
    empty), or the exception its read raised (``FencedError``, ``NoScriptError`` ...).
    """
    if not owners:
        return []
    pipe = client.pipeline(transaction=False)
    for owner in owners:
        sha, args = owner.sweep_command(count)
        pipe.execute_command("EVALSHA", sha, *args)  # a cluster pipeline blocks .evalsha()
    replies = pipe.execute(raise_on_error=False)
    out: list[tuple[list[Entry], dict[str, str]] | Exception] = []
    for owner, reply in zip(owners, replies, strict=True):
        if isinstance(reply, redis.exceptions.NoScriptError):
            client.script_load(_FENCED_READ)  # after a Redis restart: the next sweep works
        if isinstance(reply, Exception):
            out.append(reply)
            continue
        try:
            out.append(owner.parse_fenced(reply))
        except FencedError as exc:
            out.append(exc)
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _flatten(
    reply: Iterable[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]] | None,
) -> list[Entry]:
    entries: list[Entry] = []
    for stream, items in reply or ():
        name = _text(stream)
        for eid, fields in items:
            # A pending entry that was deleted or trimmed comes back with no fields.
            entries.append((name, _text(eid), fields or {}))
    return entries
