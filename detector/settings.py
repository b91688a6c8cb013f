"""Settings: one frozen object built by the CLI and passed down.

Nothing below the CLI reads the environment; defaults and key names live here.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from detector.errors import ConfigError

DEFAULT_STREAM = "events"
DEFAULT_GROUP = "detector"
DEFAULT_ALERTS_STREAM = "detector:alerts"
DEFAULT_DEAD_LETTER_STREAM = "detector:dead-letter"
DEFAULT_MODEL = "stats"
# Alert ids and rejected entries already written, so a replayed entry never writes a second
# alert or dead letter (EXISTS + XADD + SET in one script). The hash tag is the output
# stream's name, so guard and stream share a Redis Cluster slot (the script's keys must).
ALERT_GUARD_KEY = "{{{alerts_stream}}}:guard:{alert_id}"
DEAD_LETTER_GUARD_KEY = "{{{dead_letter_stream}}}:guard:{stream}:{entry_id}"
GUARD_TTL_S = 7 * 24 * 3600
# The worker's state and offsets (signed blobs, see detector.checkpoint).
CHECKPOINT_KEY = "detector:checkpoint:{group}:{consumer}"
# Refreshed by a live worker; `detector check` reads it.
HEALTH_KEY = "detector:health:{group}:{consumer}"


def mask_url(url: str | None) -> str | None:
    """The URL with any password replaced by ``***``, fit for logs and reprs.

    >>> mask_url("redis://worker:s3cret@redis:6379/0")
    'redis://worker:***@redis:6379/0'
    >>> mask_url("rediss://redis:6380/0?password=s3cret&db=1")
    'rediss://redis:6380/0?password=***&db=1'
    """
    if not url:
        return url
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return "***"  # unparsable: show nothing rather than risk a secret
    out = url
    if has_password:
        userinfo, _, host = parts.netloc.rpartition("@")
        out = out.replace(parts.netloc, f"{userinfo.partition(':')[0]}:***@{host}", 1)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(k.lower() == "password" for k, _ in pairs):
        masked = urlencode(
            [(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*"
        )
        out = out.replace("?" + parts.query, "?" + masked, 1)
    return out


REDIS_URL_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str) -> str:
    """The URL, if redis-py can connect with it: the one check of every command's URL.

    Messages show the URL masked (they may reach logs).

    >>> check_redis_url("redis://localhost:6379/0")
    'redis://localhost:6379/0'
    >>> check_redis_url("db:6379")
    Traceback (most recent call last):
    ...
    detector.errors.ConfigError: 'db:6379' has no scheme: write redis://db:6379 (rediss:// for TLS)
    """
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on "host:abc" or 99999
    except ValueError as exc:
        msg = f"{mask_url(url)} cannot be parsed: {exc}"
        raise ConfigError(msg) from None
    if "://" not in url:
        # "host:6379" parses as scheme "host"; never echo what may be "user:password@host".
        shown = f"{url!r} has" if "@" not in url else "the URL has"
        intent = f"redis://{url}" if "@" not in url else "redis://HOST:PORT"
        msg = f"{shown} no scheme: write {intent} (rediss:// for TLS)"
        raise ConfigError(msg)
    if parts.scheme not in REDIS_URL_SCHEMES:
        msg = (
            f"{mask_url(url)}: scheme {parts.scheme!r} is not one of redis://, rediss:// (TLS), "
            "unix:// (a socket path)"
        )
        raise ConfigError(msg)
    if parts.scheme == "unix" and not parts.path:
        msg = f"{mask_url(url)} names no socket path (unix:///path/to/redis.sock)"
        raise ConfigError(msg)
    if parts.scheme != "unix" and not parts.hostname:
        msg = f"{mask_url(url)} names no host ({parts.scheme}://HOST:PORT)"
        raise ConfigError(msg)
    return url


def default_consumer() -> str:
    """Stable per host, so a restarted worker finds its own pending entries."""
    return socket.gethostname() or "worker"


@dataclass(frozen=True, slots=True)
class EventFormat:
    """Where an entry keeps producer, time, type and payload, and the input caps.

    Attributes:
        producer_field: field naming the producer; missing means the stream name.
        time_field: event time, epoch ms or ISO-8601; missing means the entry id's ms.
        type_field: optional event type.
        payload_field: optional JSON object with the payload (other fields are flat payload).
        max_entry_bytes: total bytes of names and values in one entry.
        max_fields: fields in the entry plus leaves of the JSON payload.
        max_json_depth: nesting depth of the JSON payload.
        max_string_len: characters in one value.
        max_name_len: characters in one field name or producer id.
    """

    producer_field: str = "producer"
    time_field: str = "ts"
    type_field: str = "type"
    payload_field: str = "data"
    max_entry_bytes: int = 64 * 1024
    max_fields: int = 256
    max_json_depth: int = 8
    max_string_len: int = 16 * 1024
    max_name_len: int = 256


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a worker needs. Units are in the names.

    Attributes:
        redis_url: ``redis://`` or ``rediss://`` URL; None starts an embedded redis-server.
            Shown masked (``redis://user:***@host``) by ``repr``.
        redis_password: Redis password, given to the connection apart from the URL so the URL
            can be logged (never logged, never in ``repr``).
        tls_ca_cert: CA bundle that verifies the server's certificate (``rediss://``; None:
            the system's CAs). Verification is always on.
        tls_cert: client certificate (PEM) for servers that authenticate clients.
        tls_key: the client certificate's private key (PEM), if not in ``tls_cert``.
        streams: input streams, read through one consumer group.
        group: consumer group name.
        consumer: consumer name, stable across restarts of the same worker.
        alerts_stream: where alerts are appended.
        dead_letter_stream: where rejected entries are appended, with a reason.
        model: name of a spec in ``models/`` or a path to a spec file.
        threshold: overrides the spec's alert threshold (calibrated score in [0, 1]).
        metrics_port: serve Prometheus metrics on this port (None: off).
        until_idle: drain the streams, then stop once nothing arrives for ``idle_timeout_ms``.
        idle_timeout_ms: quiet period that ends an ``until_idle`` run.
        batch_size: entries per read (COUNT, per stream).
        block_ms: how long one read waits for new entries.
        claim_idle_ms: claim other consumers' entries pending longer than this.
        max_producers: producers tracked at once; least recently seen are evicted beyond it.
        producer_idle_ttl_s: evict a producer silent this long (event time).
        alerts_maxlen: approximate cap on the alert and dead-letter streams.
        checkpoint_every: commit a checkpoint (state + acks) after this many entries ...
        checkpoint_interval_ms: ... or after this long, whichever comes first.
        commit_slice_ms: a due commit's changed producer states are encoded this long at a
            time between reads, so reading never stops for a whole commit (0: all at once).
        checkpoint_key: HMAC key signing checkpoints (never stored in Redis, never logged).
        baseline: a baseline file to start from when there is no checkpoint yet.
        reset_state: delete this consumer's checkpoint first (the state is relearned).
        max_deliveries: a pending entry delivered more often is dead-lettered as poison.
        event_format: field names and input caps.
        partitions: read the P partition streams ``<stream>:{p}`` of every input stream, one
            group consumer and checkpoint per partition (None: the unpartitioned mode).
        assign: ``"static"`` (this worker owns ``p % worker_count == worker_index``) or
            ``"dynamic"`` (leases over the live members of the group); None picks static
            when ``worker_count`` is given, else dynamic.
        worker_index, worker_count: the static assignment.
        lease_ttl_ms: a partition's lease lives this long unless renewed (every third of it);
            an owner silent longer loses the partition and its late commit is refused.
        cluster: connect with a Redis Cluster client (``redis_url`` is one startup node).
        status_interval_s: a status line (events/s, lag, alerts, dead letters, producers)
            this often; a live line on a terminal (0: none).
    """

    redis_url: str | None = None
    streams: tuple[str, ...] = (DEFAULT_STREAM,)
    group: str = DEFAULT_GROUP
    consumer: str = field(default_factory=default_consumer)
    alerts_stream: str = DEFAULT_ALERTS_STREAM
    dead_letter_stream: str = DEFAULT_DEAD_LETTER_STREAM
    model: str = DEFAULT_MODEL
    threshold: float | None = None
    metrics_port: int | None = None
    until_idle: bool = False
    idle_timeout_ms: int = 2000
    batch_size: int = 500
    block_ms: int = 1000
    claim_idle_ms: int = 60_000
    max_producers: int = 100_000
    producer_idle_ttl_s: float = 24 * 3600.0
    alerts_maxlen: int = 1_000_000
    checkpoint_every: int = 5000
    checkpoint_interval_ms: int = 5000
    commit_slice_ms: float = 5.0
    checkpoint_key: bytes | None = field(default=None, repr=False)
    baseline: Path | None = None
    reset_state: bool = False
    max_deliveries: int = 10
    event_format: EventFormat = field(default_factory=EventFormat)
    redis_password: str | None = field(default=None, repr=False)
    tls_ca_cert: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    partitions: int | None = None
    assign: str | None = None
    worker_index: int | None = None
    worker_count: int | None = None
    lease_ttl_ms: int = 15_000
    cluster: bool = False
    status_interval_s: float = 10.0

    @property
    def assignment(self) -> str | None:
        """``"static"``, ``"dynamic"``, or None when unpartitioned."""
        if self.partitions is None:
            return None
        if self.assign is not None:
            return self.assign
        return "static" if self.worker_count is not None else "dynamic"

    def __repr__(self) -> str:
        """Every field but the secrets, and the URL without its password."""
        shown = []
        for f in fields(self):
            if f.repr:
                value = getattr(self, f.name)
                if f.name == "redis_url":
                    value = mask_url(value)
                shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"
