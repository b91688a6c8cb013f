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

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from detector.core.alerts import Alert
from detector.core.errors import ConfigError
from detector.core.settings import ALERT_GUARD_KEY, DEAD_LETTER_GUARD_KEY, GUARD_TTL_S, Settings
from detector.gateway.ownership import NO_FENCE, Fence, FencedError, NoFence

if TYPE_CHECKING:  # only a type here
    from detector.core.events import Event

log = logging.getLogger(__name__)

Client: TypeAlias = "redis.Redis | RedisCluster"
_T = TypeVar("_T")

# Raw entry as read: (stream, entry id, fields).
Entry = tuple[str, str, dict[bytes, bytes]]
# A commit's parts: checkpoint hash fields to write, and entry ids to XACK per stream.
HashFields: TypeAlias = Mapping[str, bytes | memoryview]  # a base's pieces: views
Acks: TypeAlias = Mapping[str, Sequence[str]]

# Appends each entry whose guard key is new. KEYS: (stream, guard key) pairs. ARGV: guard ttl,
# maxlen (0: no cap), touch, then per entry: the number of field/value items, the items.
# Returns entries written. With touch = 1, a call that writes nothing rewrites its first guard
# (same value and TTL): the call then always reaches the replicas, so a WAIT after it covers
# an earlier attempt's writes too (WAIT counts from the caller's last replicated write).
_APPEND_ONCE = """
local ttl, maxlen, i, written = ARGV[1], ARGV[2], 4, 0
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
if written == 0 and ARGV[3] == '1' and #KEYS > 1 then
  redis.call('SET', KEYS[2], '1', 'KEEPTTL')
end
return written
"""
# Appends one entry per scored event (the scores stream, --scores-stream), capped. KEYS: the
# stream. ARGV: maxlen, the field names and the rows of values as JSON arrays (one argument
# for the batch: redis-py packed seven arguments per event about four times slower). Returns
# entries written. No guard: a replay appends again (at least once; docs/design.md, *The
# scores stream*).
_APPEND_SCORES = """
local names, rows = cjson.decode(ARGV[2]), cjson.decode(ARGV[3])
local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*'}
local at = #args
for j, name in ipairs(names) do args[at + 2 * j - 1] = name end
for _, row in ipairs(rows) do
  for j = 1, #names do args[at + 2 * j] = row[j] end
  redis.call(unpack(args))
end
return #rows
"""
SCORE_FIELDS = ("producer", "source_stream", "source_id", "event_time", "score", "flagged", "model")
_SCORE_NAMES = orjson.dumps(SCORE_FIELDS)
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


class NotReplicatedError(redis.RedisError):
    """Fewer replicas than ``--min-replicas-acked`` acknowledged a write within the WAIT
    timeout, or a failover lost a read: transient, the step is retried without going on."""


# Transient: the worker backs off and retries. A cluster node that is down or failing over
# shows up as one of the cluster errors until the topology is whole again (MOVED only from a
# durable write's node pipeline, :func:`pinned_pipeline`, after its slot's replica was
# promoted); a primary demoted by a failover answers READONLY (through Sentinel, redis-py
# turns that into a connection error and asks the Sentinels again; a plain client
# reconnects: see Runtime.note_error).
CONNECTION_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MovedError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.RedisClusterUnreachableError,
    NotReplicatedError,
)
MAX_BACKOFF_S = 5.0
# Arguments per command of a commit's transaction (fields, or ids, per HSET, HDEL, XACK).
COMMAND_ARGS = 32


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
            # A short WAIT has waited already: retry soon, without growing the backoff.
            pause = 0.1 if isinstance(exc, NotReplicatedError) else delay
            if even_when_stopping:
                time.sleep(pause)
            else:
                stop.wait(pause)  # a stop cuts the wait short
            if pause is delay:
                delay = min(delay * 2, MAX_BACKOFF_S)


def pinned_pipeline(client: Client, key: str) -> Any:
    """A plain pipeline (one connection) to the node that serves ``key``: the client's own
    on a single Redis or through Sentinel, the node's on a cluster.

    ``WAIT`` counts the replicas of its connection's node holding that connection's writes,
    so a durable write and its ``WAIT`` ride on one connection to the key's node; a cluster
    pipeline would send the keyless ``WAIT`` to any node. Run it with :func:`execute_pinned`.
    """
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        return client.get_redis_connection(node).pipeline(transaction=False)
    return client.pipeline(transaction=False)


def execute_pinned(client: Client, pipe: Any, *, raise_on_error: bool = True) -> list[Any]:
    """Execute a :func:`pinned_pipeline`. On a cluster, a redirection (MOVED: the slot's
    replica was promoted), a node that fails or a cluster that is down first refresh the
    client's slot map, then go to the caller's retry, which reaches the new primary."""
    try:
        replies: list[Any] = pipe.execute(raise_on_error=raise_on_error)
    except CONNECTION_ERRORS:
        refresh_slots(client)
        raise
    if any(isinstance(r, redis.exceptions.MovedError) for r in replies):
        refresh_slots(client)
    return replies


def by_node(client: Client, items: Sequence[_T], key: Callable[[_T], str]) -> list[list[_T]]:
    """``items`` grouped by the node that serves their ``key``, in order (one group off a
    cluster): one :func:`pinned_pipeline` each."""
    if not isinstance(client, RedisCluster):
        return [list(items)] if items else []
    groups: dict[str, list[_T]] = {}
    for item in items:
        node = client.get_node_from_key(key(item))  # type: ignore[no-untyped-call]
        groups.setdefault(node.name, []).append(item)
    return list(groups.values())


def refresh_slots(client: Client) -> None:
    """A cluster client's slot map read again (CLUSTER SLOTS), for the node pipelines that
    bypass its own redirections. A cluster still failing over may not answer: the next
    attempt refreshes again."""
    if not isinstance(client, RedisCluster):
        return
    try:
        client.nodes_manager.initialize()
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        log.debug("cluster slot map not refreshed: %s", exc)


@dataclass(frozen=True, slots=True)
class Replication:
    """Durable writes (``--min-replicas-acked``): each write the worker goes on from is
    followed, on the same connection, by ``WAIT replicas timeout_ms``.

    ``WAIT`` counts the replicas holding everything the connection wrote up to its last
    replicated write, so it rides in the same pipeline as the write it confirms.

    Attributes:
        replicas: replicas that must acknowledge (N of ``WAIT N``).
        timeout_ms: one WAIT's timeout.
        stop: set while a confirmation is awaited: give up (the entries stay pending).
        observe: called with each WAIT's seconds and whether enough replicas answered.
    """

    replicas: int
    timeout_ms: int
    stop: threading.Event = field(default_factory=threading.Event)
    observe: Callable[[float, bool], object] = lambda seconds, enough: None

    def wait_command(self) -> tuple[str, int, int]:
        return ("WAIT", self.replicas, self.timeout_ms)

    def check(self, acked: object, seconds: float, what: str) -> None:
        """Raise :class:`NotReplicatedError` unless ``acked`` (WAIT's reply) is enough."""
        enough = int(acked) >= self.replicas  # type: ignore[call-overload]
        self.observe(seconds, enough)
        if not enough:
            msg = (
                f"{what}: {acked} of {self.replicas} replicas acknowledged within "
                f"{self.timeout_ms} ms; not going on"
            )
            raise NotReplicatedError(msg)


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


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """Where Sentinel finds the primary: the Sentinels, the primary's name, their credentials.

    Attributes:
        addresses: (host, port) of each Sentinel.
        master: the primary's name in the Sentinels' configuration.
        username, password: the Sentinels' own credentials (None: none), apart from the data
            nodes'.
    """

    addresses: tuple[tuple[str, int], ...]
    master: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(
        cls, sentinels: Sequence[str], master: str | None, user: str | None, password: str | None
    ) -> SentinelTarget | None:
        """From the options: ``HOST:PORT`` of each Sentinel, the primary's name, the
        Sentinels' user and password (None without Sentinels)."""
        if not sentinels:
            if master:
                msg = "--sentinel-master needs --sentinel (the Sentinels' HOST:PORT)"
                raise ConfigError(msg)
            return None
        if not master:
            msg = "--sentinel needs --sentinel-master (the primary's name in Sentinel)"
            raise ConfigError(msg)
        return cls(tuple(parse_address(a) for a in sentinels), master, user, password)

    @classmethod
    def of(cls, settings: Settings) -> SentinelTarget | None:
        """A worker's Sentinels (None without ``--sentinel``)."""
        return cls.parse(settings.sentinels, settings.sentinel_master, settings.sentinel_user,
                         settings.sentinel_password)  # fmt: skip


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port).

    >>> parse_address("10.0.0.5:26379")
    ('10.0.0.5', 26379)
    >>> parse_address("sentinel")
    Traceback (most recent call last):
    ...
    detector.core.errors.ConfigError: 'sentinel' is not HOST:PORT
    """
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        msg = f"{address!r} is not HOST:PORT"
        raise ConfigError(msg)
    return host, int(port)


def open_client(
    url: str,
    options: dict[str, Any],
    *,
    sentinel: SentinelTarget | None = None,
    cluster: bool = False,
) -> Client:
    """The one place a client is made, for every command: ``url``'s server, a Redis Cluster
    (``url`` names one node), or the primary that ``sentinel`` names.

    Through Sentinel, the client asks the Sentinels for the primary whenever it connects, so
    it follows a promoted replica without a restart: a failed command raises a connection
    error (a demoted primary's READONLY too) and the caller's retry reconnects to the new
    primary. ``url`` (may be empty) then gives only the scheme (``rediss://``: TLS), user and
    database of the connections to the primary.
    """
    if cluster:
        if sentinel is not None:
            msg = "--sentinel and --cluster exclude each other (a cluster fails over by itself)"
            raise ConfigError(msg)
        return RedisCluster.from_url(url, **options)
    if sentinel is None:
        return redis.Redis.from_url(url, **options)
    return sentinel_primary(url, sentinel, options)


def sentinel_primary(url: str, sentinel: SentinelTarget, options: dict[str, Any]) -> redis.Redis:
    """A client of the primary the Sentinels name now, asking them again at each connect
    (redis-py's ``Sentinel.master_for``); ``url`` gives scheme, user and database."""
    parts = urlsplit(url or "redis://")
    db = int(parts.path.strip("/") or 0)
    kwargs: dict[str, Any] = {"db": db, "ssl": parts.scheme == "rediss"}
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    kwargs.update(options)
    watchers = Sentinel(
        sentinel.addresses,
        sentinel_kwargs={
            "username": sentinel.username,
            "password": sentinel.password,
            "socket_timeout": 2.0,  # one Sentinel's silence must not stall the lookup long
            "socket_connect_timeout": 1.0,
            "decode_responses": False,
            "protocol": 2,
        },
    )
    primary: redis.Redis = watchers.master_for(sentinel.master, **kwargs)
    return primary


def connect(
    url: str,
    *,
    block_ms: int,
    password: str | None = None,
    tls_ca_cert: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    cluster: bool = False,
    sentinel: SentinelTarget | None = None,
    wait_ms: int = 0,
) -> Client:
    """A client for the worker: bytes replies, RESP2, no hidden retries.

    ``socket_timeout`` exceeds the blocking read time, else redis-py aborts a healthy BLOCK.
    The password and TLS files are checked and passed by :func:`connection_options`. With
    ``cluster``, ``url`` names one node and the client discovers the others; with
    ``sentinel``, the Sentinels name the primary (:func:`open_client`). ``wait_ms``: the
    longest ``WAIT`` sent after a blocking read, which the socket timeout must cover too.
    """
    options = dict(
        decode_responses=False,
        protocol=2,
        socket_timeout=max(10.0, 2 * (block_ms + wait_ms) / 1000),
        socket_connect_timeout=5.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        **connection_options(
            url or "redis://", password=password, tls_ca_cert=tls_ca_cert, tls_cert=tls_cert,
            tls_key=tls_key,
        ),
    )  # fmt: skip
    return open_client(url, options, sentinel=sentinel, cluster=cluster)


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """:func:`connect`'s keyword arguments for a worker's settings (all but the URL)."""
    return {
        "block_ms": settings.block_ms,
        "password": settings.redis_password,
        "tls_ca_cert": settings.tls_ca_cert,
        "tls_cert": settings.tls_cert,
        "tls_key": settings.tls_key,
        "cluster": settings.cluster,
        "sentinel": SentinelTarget.of(settings),
        "wait_ms": settings.min_replicas_timeout_ms if settings.min_replicas_acked else 0,
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
    """What one batch appends downstream: alerts, dead letters and, with a scores stream,
    its scored events as (event, score, flagged) (of the model named ``model``)."""

    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    scores: list[tuple[Event, float | None, bool]] = field(default_factory=list)
    model: str = ""

    def __bool__(self) -> bool:
        return bool(self.alerts or self.dead_letters or self.scores)

    def score_rows(self) -> bytes:
        """The scores as a JSON array of rows of :data:`SCORE_FIELDS` values, all strings
        (the score is empty while the producer warms up)."""
        model = self.model
        return orjson.dumps(
            [
                (
                    event.producer,
                    event.stream,
                    event.entry_id,
                    str(event.event_time_ms),
                    "" if score is None else repr(score),
                    "1" if flagged else "0",
                    model,
                )
                for event, score, flagged in self.scores
            ]
        )


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
        scores_stream: where the scores of an :class:`Output` go (None: nowhere);
            ``scores_maxlen``: its approximate cap.
        replication: durable writes (``--min-replicas-acked``): every read that delivers
            entries, append and commit is confirmed by ``WAIT`` before it returns (None:
            asynchronous replication).
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
        scores_stream: str | None = None,
        scores_maxlen: int = 1_000_000,
        replication: Replication | None = None,
    ) -> None:
        self.r = client
        self.replication = replication
        self.streams = tuple(streams)
        self.group = group
        self.consumer = consumer
        self.alerts_stream = alerts_stream
        self.dead_letter_stream = dead_letter_stream
        self.maxlen = maxlen
        self.scores_stream = scores_stream
        self.scores_maxlen = scores_maxlen
        self._append_once = client.register_script(_APPEND_ONCE)
        self._append_scores = client.register_script(_APPEND_SCORES)
        # The connection reads go through, held from the first read until one fails (a
        # plain client's: a cluster client's reads go through it).
        self._reader: Any = None
        # The commit sent without waiting (send_commit), until written; its connection, and
        # how many of its replies are still to be read.
        self._sent: tuple[str, HashFields, Sequence[str], Acks] | None = None
        self._committer: Any = None
        self._replies = 0
        # The next commit's fields packed so far (pack_commit): HSET commands on the wire,
        # the fields of the one not full yet, and how many fields in all.
        self._packed: list[bytes] = []
        self._unpacked: list[str | bytes | memoryview] = []
        self._packed_fields = self._packed_commands = 0

    def ensure_groups(self, starts: Mapping[str, str] | None = None) -> None:
        """Create the group on every input stream if missing: right after ``starts[stream]``
        (the last entry the consumer's checkpoint or baseline learned), else at the start of
        the stream (all of its history). An existing group keeps its position."""
        for stream in self.streams:
            start_id = (starts or {}).get(stream, "0")
            try:
                if self.replication is None:
                    self.r.xgroup_create(stream, self.group, id=start_id, mkstream=True)
                else:  # durable: a failover must not lose the group (reads would fail)
                    create = partial(_create_group, stream, self.group, start_id)
                    _, acked, seconds = self._waited(stream, create)
                    self._check(acked, seconds, "group creation")
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            else:
                log.info("created group %s on %s after entry %s", self.group, stream, start_id)

    def read(self, cursors: Mapping[str, str], count: int, block_ms: int | None) -> list[Entry]:
        """XREADGROUP: ``>`` for new entries, an id for this consumer's own pending ones."""
        client = self.r
        if self.replication is None and not isinstance(client, RedisCluster):
            return self._read_direct(client.connection_pool, cursors, count, block_ms)
        args = (self.group, self.consumer, dict(cursors))
        if self.replication is None:
            reply = self.r.xreadgroup(*args, count=count, block=block_ms)  # type: ignore[arg-type]
            return _flatten(reply)  # type: ignore[arg-type]
        reply, acked, seconds = self._waited(
            self.streams[0], lambda pipe: pipe.xreadgroup(*args, count=count, block=block_ms)
        )
        entries = _flatten(reply)
        self.confirm_read(entries, acked, seconds)
        return entries

    def _read_direct(
        self, pool: Any, cursors: Mapping[str, str], count: int, block_ms: int | None
    ) -> list[Entry]:
        """XREADGROUP on a held connection, its RESP2 reply read as it comes: a live stream
        is read a few entries at a time, and the client's command path (a connection taken
        from the pool and given back, its retry and observability wrappers, the reply parsed
        into dicts, then flattened here) cost ~96k instructions per read, most of a read's
        ~220k. A failed read gives the connection up: the next takes one from the pool
        afresh (through Sentinel: the primary's)."""
        conn = self._reader
        if conn is None:
            conn = self._reader = pool.get_connection()
        args: list[str | int] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        try:
            conn.send_command(*args, "STREAMS", *cursors, *cursors.values())
            reply = conn.read_response()
        except BaseException:
            self._reader = None
            conn.disconnect()  # a reply half read must not be the next command's
            pool.release(conn)
            raise
        entries: list[Entry] = []
        for stream, items in reply or ():
            name = _text(stream)
            for eid, kv in items:
                # A pending entry that was deleted or trimmed comes back with no fields.
                fields = dict(zip(kv[::2], kv[1::2], strict=True)) if kv else {}
                entries.append((name, _text(eid), fields))
        return entries

    def _waited(self, key: str, queue: Callable[[Any], object]) -> tuple[Any, Any, float]:
        """What ``queue`` puts in a pipeline to ``key``'s node, then WAIT on the same
        connection: (the first command's reply, WAIT's reply, seconds). Requires
        :attr:`replication`."""
        assert self.replication is not None  # noqa: S101 (callers check)
        pipe = pinned_pipeline(self.r, key)
        queue(pipe)
        pipe.execute_command(*self.replication.wait_command())
        started = time.perf_counter()
        replies = execute_pinned(self.r, pipe)
        return replies[0], replies[-1], time.perf_counter() - started

    def _check(self, acked: Any, seconds: float, what: str) -> None:
        """A durable write's WAIT reply: enough replicas, or :class:`NotReplicatedError`
        (after :meth:`recheck_primary`)."""
        assert self.replication is not None  # noqa: S101 (callers check)
        try:
            self.replication.check(acked, seconds, what)
        except NotReplicatedError:
            self.recheck_primary()
            raise

    def recheck_primary(self) -> None:
        """A WAIT came back short: through Sentinel, ask which node is the primary now.

        A primary that Sentinel replaced while it stayed up (a failover without a crash, or
        a partition) keeps serving its clients, without replicas, until Sentinel demotes it
        (8 s or more later): asking ends that early. If it changed, the pool drops its idle
        connections, so the retry connects to the new primary.

        Raises:
            NotReplicatedError: the Sentinels name another primary now.
        """
        pool = getattr(self.r, "connection_pool", None)
        if isinstance(pool, SentinelConnectionPool):
            before = pool.master_address
            if pool.get_master_address() != before:  # type: ignore[no-untyped-call]
                msg = "the Sentinels promoted another primary; reconnecting to it"
                raise NotReplicatedError(msg)

    def confirm_read(self, entries: Sequence[Entry], acked: Any, seconds: float) -> None:
        """Return once the replicas hold the delivery of ``entries`` (a read moves them into
        this consumer's pending list: a failover that lost that would deliver them again,
        and they would be learned twice).

        Past a WAIT timeout, waits again after an ``XCLAIM … JUSTID`` of each stream's last
        entry to this consumer (a replicated write that changes nothing, not even delivery
        counts): WAIT needs a write on its connection, and the claim checks that the
        primary still holds the delivery.

        Raises:
            NotReplicatedError: the delivery was lost (a failover): the entries come again;
                or the worker is stopping.
        """
        rep = self.replication
        if rep is None or not entries:
            return
        last = {stream: entry_id for stream, entry_id, _ in entries}
        while int(acked) < rep.replicas:
            rep.observe(seconds, False)
            log.warning(
                "read of %d entries: %s of %d replicas acknowledged within %d ms; waiting again",
                len(entries), acked, rep.replicas, rep.timeout_ms,
            )  # fmt: skip
            self.recheck_primary()
            if rep.stop.is_set():
                msg = "stopping before the replicas acknowledged a read; its entries stay pending"
                raise NotReplicatedError(msg)

            def probe(pipe: Any) -> None:
                for stream, entry_id in last.items():
                    pipe.xclaim(stream, self.group, self.consumer, 0, [entry_id], justid=True)

            pipe = pinned_pipeline(self.r, next(iter(last)))  # one slot (see the module doc)
            probe(pipe)
            pipe.execute_command(*rep.wait_command())
            started = time.perf_counter()
            *claimed, acked = execute_pinned(self.r, pipe)
            seconds = time.perf_counter() - started
            if not all(claimed):
                msg = "a failover lost the delivery of entries read; they are read again"
                raise NotReplicatedError(msg)
        rep.observe(seconds, True)

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
        args = (stream, self.group, self.consumer, min_idle_ms, start, count)
        acked: Any = None
        if self.replication is None:
            reply = self.r.xautoclaim(*args)
        else:
            reply, acked, seconds = self._waited(stream, lambda pipe: pipe.xautoclaim(*args))
        cursor = _text(reply[0])
        entries = [
            (stream, _text(eid), dict(fields or {})) for eid, fields in reply[1] if eid is not None
        ]
        deleted = len(reply[2]) if len(reply) > 2 else 0
        if acked is not None:
            self.confirm_read(entries, acked, seconds)
        return cursor, entries, deleted

    def emit(self, out: Output) -> int:
        """Append alerts and dead letters, each at most once ever, and the batch's scores (to
        the scores stream, if any; at least once); returns how many alerts and dead letters
        were new.

        One script call per output stream: its guard keys carry its name as hash tag, so each
        call stays in one cluster slot.
        """
        now_ms = int(time.time() * 1000)
        touch = int(self.replication is not None)
        calls: list[tuple[Any, list[str], list[str | bytes | int]]] = []
        if out.alerts:
            keys: list[str] = []
            args: list[str | bytes | int] = [GUARD_TTL_S, self.maxlen, touch]
            for alert in out.alerts:
                guard = ALERT_GUARD_KEY.format(
                    alerts_stream=self.alerts_stream, alert_id=alert.alert_id
                )
                keys += [self.alerts_stream, guard]
                items = [x for kv in alert.to_fields(now_ms).items() for x in kv]
                args += [len(items), *items]
            calls.append((self._append_once, keys, args))
        if out.dead_letters:
            keys, args = [], [GUARD_TTL_S, self.maxlen, touch]
            for letter in out.dead_letters:
                guard = DEAD_LETTER_GUARD_KEY.format(
                    dead_letter_stream=self.dead_letter_stream,
                    stream=letter.stream,
                    entry_id=letter.entry_id,
                )
                keys += [self.dead_letter_stream, guard]
                items = [x for kv in letter.to_fields(now_ms).items() for x in kv]
                args += [len(items), *items]
            calls.append((self._append_once, keys, args))
        if out.scores and self.scores_stream is not None:
            args = [self.scores_maxlen, _SCORE_NAMES, out.score_rows()]
            calls.append((self._append_scores, [self.scores_stream], args))
        if self.replication is None or not calls:
            written = 0
            for script, k, a in calls:
                n = int(script(keys=k, args=a))
                written += n if script is self._append_once else 0  # scores are not counted
            return written
        # Durable: the appends and their WAIT in one pipeline (one connection); on a cluster,
        # one per node holding an output stream.
        total = 0
        for node_calls in by_node(self.r, calls, lambda call: call[1][0]):
            pipe = pinned_pipeline(self.r, node_calls[0][1][0])
            for script, k, a in node_calls:
                script(keys=k, args=a, client=pipe)
            pipe.execute_command(*self.replication.wait_command())
            started = time.perf_counter()
            *replies, acked = execute_pinned(self.r, pipe)
            self._check(acked, time.perf_counter() - started, "append")
            total += sum(
                int(w)
                for (script, _, _), w in zip(node_calls, replies, strict=True)
                if script is self._append_once
            )
        return total

    def commit(self, key: str, fields: HashFields, removed: Sequence[str], acks: Acks) -> None:
        """One transaction: write the checkpoint's changed fields, drop evicted ones, XACK.

        Durable (:attr:`replication`): the ``MULTI … EXEC`` is sent by hand in a plain
        pipeline, followed by its ``WAIT`` (redis-py's transaction pipeline cannot carry a
        command after ``EXEC``, and ``WAIT`` inside ``MULTI`` does not wait).

        Raises:
            NotReplicatedError: (durable) too few replicas acknowledged it in time; it is
                idempotent, and retried (the meta's ``HSET`` always replicates).
        """
        self._sent = None  # written here: one in flight is superseded (the same writes, or older)
        durable = self.replication is not None
        pipe = pinned_pipeline(self.r, key) if durable else self.r.pipeline(transaction=True)
        if durable:
            pipe.execute_command("MULTI")
        for command in self._commit_commands(key, fields, removed, acks):
            pipe.execute_command(*command)
        if self.replication is None:
            pipe.execute()
            return
        pipe.execute_command("EXEC")
        pipe.execute_command(*self.replication.wait_command())
        started = time.perf_counter()
        acked = execute_pinned(self.r, pipe)[-1]
        self._check(acked, time.perf_counter() - started, "commit")

    def _commit_commands(
        self, key: str, fields: HashFields, removed: Sequence[str], acks: Acks
    ) -> list[tuple[Any, ...]]:
        """The commands inside a commit's ``MULTI``: many short ones, not one of thousands of
        arguments: inside MULTI they apply as one, and hiredis packs a long command in time
        that grows faster than its size (one HSET of 1,000 records of 4 KB: 12 ms to pack;
        in commands of 32: 1 ms)."""
        items = [x for kv in fields.items() for x in kv]
        commands: list[tuple[Any, ...]] = [
            ("HSET", key, *items[i : i + 2 * COMMAND_ARGS])
            for i in range(0, len(items), 2 * COMMAND_ARGS)
        ]
        commands += [
            ("HDEL", key, *removed[i : i + COMMAND_ARGS])
            for i in range(0, len(removed), COMMAND_ARGS)
        ]
        for stream, ids in acks.items():
            commands += [
                ("XACK", stream, self.group, *ids[i : i + COMMAND_ARGS])
                for i in range(0, len(ids), COMMAND_ARGS)
            ]
        return commands

    @property
    def _sends(self) -> bool:
        """Whether commits are sent without waiting (:meth:`send_commit`)."""
        return not (
            self.fence.refuses or self.replication is not None or isinstance(self.r, RedisCluster)
        )

    def _commit_connection(self) -> Any:
        if self._committer is None:
            self._committer = self.r.connection_pool.get_connection()  # type: ignore[union-attr]
        return self._committer

    def pack_commit(self, key: str, fields: Iterable[tuple[str, bytes | memoryview]]) -> None:
        """Pack fields of the next commit to ``key`` for the wire as they are encoded (between
        reads), so that :meth:`send_commit` only sends them: packing a commit of 1,000 records
        of 4 KB at once held the reads for 15-20 ms on a loaded 2-vCPU VM. The fields of the
        next :meth:`send_commit` begin with every field packed, in the same order. Views that
        write at once pack nothing."""
        if not self._sends:
            return
        pending = self._unpacked
        for name, value in fields:
            pending += (name, value)
            self._packed_fields += 1
            if len(pending) == 2 * COMMAND_ARGS:
                self._packed += self._commit_connection().pack_command("HSET", key, *pending)
                self._packed_commands += 1
                pending.clear()

    def send_commit(self, key: str, fields: HashFields, removed: Sequence[str], acks: Acks) -> None:
        """:meth:`commit`, without waiting for Redis to apply it: the transaction is sent on a
        held connection and its replies are read by :meth:`commit_written`, which must say it
        is written before the next commit is sent. The worker reads meanwhile: Redis applies
        a commit of ~1,000 records of 4 KB and 5,000 acks in ~10 ms, time the reads no longer
        wait for. A partition owner's (its lease must refuse it before the owner goes on),
        a durable one (a ``WAIT`` follows) and a cluster's (no held connection) are written
        at once, as :meth:`commit` writes them."""
        if not self._sends:
            self.commit(key, fields, removed, acks)
            return
        assert self._sent is None  # noqa: S101 (commit_written said the last one was written)
        conn = self._commit_connection()
        # The fields pack_commit has not packed yet, then the rest of the transaction.
        self.pack_commit(key, itertools.islice(fields.items(), self._packed_fields, None))
        pending, packed, n = self._unpacked, self._packed, self._packed_commands
        self._packed, self._unpacked, self._packed_fields, self._packed_commands = [], [], 0, 0
        commands = [("HSET", key, *pending)] if pending else []
        commands += self._commit_commands(key, {}, removed, acks)
        n += len(commands)
        wire = [*conn.pack_command("MULTI"), *packed, *conn.pack_commands(commands)]
        wire += conn.pack_command("EXEC")
        try:
            conn.send_packed_command(wire)
        except BaseException:
            self._drop_committer()
            raise
        self._sent = (key, fields, removed, acks)
        self._replies = n + 2

    def commit_written(self, block: bool) -> bool:
        """Whether the commit :meth:`send_commit` sent is written: its replies read as far as
        they have come (with ``block``, all of them). One whose connection failed may not be
        written: it is written again here, at once (it is idempotent), so a retry after a
        connection error completes it.

        Raises:
            ConnectionError, ...: the connection failed (retry: the next call writes it).
            ResponseError: Redis refused a command of the transaction.
        """
        sent = self._sent
        if sent is None:
            return True
        conn = self._committer
        if conn is None:  # its connection failed: write it again
            self.commit(*sent)
            return True
        reply: Any = None
        try:
            while self._replies:
                if not block and not conn.can_read(timeout=0):
                    return False
                reply = conn.read_response()  # MULTI's OK, a QUEUED per command, EXEC's
                self._replies -= 1
            failed = next((r for r in reply or () if isinstance(r, Exception)), None)
        except BaseException:
            self._drop_committer()
            raise
        self._sent = None
        if failed is not None:
            raise failed
        return True

    def _drop_committer(self) -> None:
        """The commit connection failed: a reply half read must not be the next one's."""
        conn, self._committer = self._committer, None
        if conn is not None:
            conn.disconnect()
            self.r.connection_pool.release(conn)  # type: ignore[union-attr]  # never a cluster

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
        if self.replication is None:
            return self.parse_fenced(self._fenced_read(keys=kw["keys"], args=kw["args"]))
        reply, acked, seconds = self._waited(
            kw["keys"][0],
            lambda pipe: self._fenced_read(keys=kw["keys"], args=kw["args"], client=pipe),
        )
        entries, tails = self.parse_fenced(reply)
        self.confirm_read(entries, acked, seconds)
        return entries, tails

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
        args: list[str | bytes | memoryview | int] = [self.fence.token, self.group, len(items)]
        args += items
        args += [len(removed), *removed]
        streams = [s for s, ids in acks.items() if ids]
        for stream in streams:
            args += [len(acks[stream]), *acks[stream]]
        keys = [self.fence.lease_key, key, *streams]
        acked: Any = None
        if self.replication is None:
            done = self._fenced_commit(keys=keys, args=args)
        else:
            done, acked, seconds = self._waited(
                keys[0], lambda pipe: self._fenced_commit(keys=keys, args=args, client=pipe)
            )
        if not int(done):
            msg = f"partition {self.fence.partition}: commit refused, the lease is lost"
            raise FencedError(msg)
        if self.replication is not None:
            self._check(acked, seconds, "commit")


def sweep(
    client: Client, owners: Sequence[FencedStreams], count: int
) -> list[tuple[list[Entry], dict[str, str]] | Exception]:
    """New entries of many fenced consumers in one round trip (non-blocking).

    One fenced read per consumer, pipelined; a cluster client splits the pipeline by node,
    each script staying in its partition's slot. Durable, one pipeline per node, each with
    its ``WAIT`` on its connection (on one Redis, a single one). Per consumer: (entries,
    last ids when empty), or the exception its read raised (``FencedError``,
    ``NoScriptError`` ...).
    """
    if not owners:
        return []
    replication = owners[0].replication
    if replication is None:
        pipe = client.pipeline(transaction=False)
        for owner in owners:
            pipe.execute_command("EVALSHA", *_sweep_args(owner, count))
        return _swept(client, owners, pipe.execute(raise_on_error=False), None, 0.0)
    out: dict[int, tuple[list[Entry], dict[str, str]] | Exception] = {}
    # Each owner's keys share a slot: its lease key names the node.
    for group in by_node(client, list(enumerate(owners)), lambda o: o[1].fence.lease_key):
        pipe = pinned_pipeline(client, group[0][1].fence.lease_key)
        for _, owner in group:
            pipe.execute_command("EVALSHA", *_sweep_args(owner, count))
        pipe.execute_command(*replication.wait_command())
        started = time.perf_counter()
        try:
            *replies, acked = execute_pinned(client, pipe, raise_on_error=False)
        except CONNECTION_ERRORS as exc:  # this node only: the others' reads go on
            replies, acked = [exc] * len(group), exc
        seconds = time.perf_counter() - started
        if isinstance(acked, Exception):
            replies = [acked if not isinstance(r, Exception) else r for r in replies]
            acked = None
        swept = _swept(client, [o for _, o in group], replies, acked, seconds)
        out.update(zip((i for i, _ in group), swept, strict=True))
    return [out[i] for i in range(len(owners))]


def _sweep_args(owner: FencedStreams, count: int) -> list[Any]:
    sha, args = owner.sweep_command(count)
    return [sha, *args]  # a cluster pipeline blocks .evalsha(): sent as EVALSHA


def _swept(
    client: Client,
    owners: Sequence[FencedStreams],
    replies: list[Any],
    acked: Any,
    seconds: float,
) -> list[tuple[list[Entry], dict[str, str]] | Exception]:
    """Swept replies, per owner: its read (confirmed by ``acked`` when durable), or its error."""
    out: list[tuple[list[Entry], dict[str, str]] | Exception] = []
    for owner, reply in zip(owners, replies, strict=True):
        if isinstance(reply, redis.exceptions.NoScriptError):
            client.script_load(_FENCED_READ)  # after a Redis restart: the next sweep works
        if isinstance(reply, Exception):
            out.append(reply)
            continue
        try:
            entries, tails = owner.parse_fenced(reply)
            if acked is not None:
                owner.confirm_read(entries, acked, seconds)
            out.append((entries, tails))
        except (FencedError, *CONNECTION_ERRORS) as exc:
            out.append(exc)
    return out


def _create_group(stream: str, group: str, start_id: str, pipe: Any) -> None:
    pipe.xgroup_create(stream, group, id=start_id, mkstream=True)


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
