"""Settings: one frozen object built by the CLI and passed down.

Nothing below the CLI reads the environment; defaults, key names and each field's command-line
option (its help, in the field's metadata: detector.options generates the options) live here.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

DEFAULT_STREAM = "events"
DEFAULT_GROUP = "detector"
DEFAULT_ALERTS_STREAM = "detector:alerts"
DEFAULT_DEAD_LETTER_STREAM = "detector:dead-letter"
DEFAULT_FEEDBACK_STREAM = "detector:feedback"
DEFAULT_MODEL = "stats"
# Alert ids and rejected entries already written, so a replayed entry never writes a second
# alert or dead letter (EXISTS + XADD + SET in one script). The hash tag is the output
# stream's name, so guard and stream share a Redis Cluster slot (the script's keys must).
ALERT_GUARD_KEY = "{{{alerts_stream}}}:guard:{alert_id}"
DEAD_LETTER_GUARD_KEY = "{{{dead_letter_stream}}}:guard:{stream}:{entry_id}"
GUARD_TTL_S = 7 * 24 * 3600
# The worker's state and offsets (signed blobs, see detector.core.checkpoint).
CHECKPOINT_KEY = "detector:checkpoint:{group}:{consumer}"
# Unpartitioned on Redis Cluster: a commit writes the checkpoint and acks the one input stream
# in one transaction, so the checkpoint takes the stream's name as hash tag (one slot).
CLUSTER_CHECKPOINT_KEY = CHECKPOINT_KEY + "{{{stream}}}"
# Each partition's peer summary (a field per partition), merged by every worker
# (detector.runtime.peering).
PEERS_KEY = "detector:peers:{group}"
# Refreshed by a live worker; `detector check` reads it.
HEALTH_KEY = "detector:health:{group}:{consumer}"
# `detector notify`: its consumer group on the alert stream, and where the alerts its webhook
# refused for good go (with the HTTP status and response).
NOTIFY_GROUP = "detector-notify"
NOTIFY_DEAD_LETTER_STREAM = "detector:notify:dead-letter"


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


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """How a settings field shows on the command line (detector.options generates the option).

    The field's default is the option's default: written once, in the dataclass.

    Attributes:
        help: the option's help text.
        flag: the option's name without ``--`` (default: the field's, dashed).
        low, high: bounds of a number (inclusive).
        choices: the values a string may take.
        shown_default: what the help shows as default when the default is computed.
    """

    help: str
    flag: str | None = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    shown_default: str | None = None


def option(
    help: str,
    *,
    flag: str | None = None,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] | None = None,
    shown_default: str | None = None,
) -> dict[str, OptionSpec]:
    """Field metadata making the field a command-line option (see :class:`OptionSpec`)."""
    return {"option": OptionSpec(help, flag, low, high, choices, shown_default)}


def user_dir(env: str, fallback: str) -> Path:
    """A per-user directory: ``$env`` (an XDG variable), else ``~/<fallback>``."""
    base = os.environ.get(env)
    return Path(base) if base else Path.home() / fallback


def default_baselines_dir() -> Path:
    return user_dir("XDG_DATA_HOME", ".local/share") / "detector" / "baselines"


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

    producer_field: str = field(
        default="producer",
        metadata=option("Field naming the producer (missing: the stream's name)."),
    )
    time_field: str = field(
        default="ts",
        metadata=option("Event time field, epoch ms or ISO-8601 (missing: the entry id's time)."),
    )
    type_field: str = field(default="type", metadata=option("Optional event type field."))
    payload_field: str = field(
        default="data",
        metadata=option("Field with a JSON object payload (other fields are flat payload)."),
    )
    max_entry_bytes: int = field(
        default=64 * 1024,
        metadata=option("Dead-letter entries larger than this (names and values)."),
    )
    max_fields: int = field(
        default=256, metadata=option("Dead-letter entries with more fields (JSON leaves included).")
    )
    max_json_depth: int = field(default=8, metadata=option("Dead-letter payloads nested deeper."))
    max_string_len: int = field(
        default=16 * 1024, metadata=option("Dead-letter entries with a longer value (characters).")
    )
    max_name_len: int = 256


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a worker needs. Units are in the names.

    Attributes:
        redis_url: ``redis://`` or ``rediss://`` URL; None starts an embedded redis-server.
            Shown masked (``redis://user:***@host``) by ``repr``.
        redis_password: Redis password, given to the connection apart from the URL so the URL
            can be logged (never logged, never in ``repr``).
        sentinels: Sentinel addresses (``HOST:PORT``): the primary is looked up through them
            and followed across failovers; ``redis_url`` (optional then) gives only the scheme,
            user and database.
        sentinel_master: the primary's name in Sentinel.
        sentinel_user: the user the Sentinels are authenticated as (their own ACL, if any).
        sentinel_password: the Sentinels' password (never logged, never in ``repr``).
        min_replicas_acked: durable writes: every read of new entries, alert and dead-letter
            append and checkpoint commit waits (``WAIT``) until this many replicas hold it
            before the worker goes on (0: off, replication stays asynchronous).
        min_replicas_timeout_ms: one ``WAIT``'s timeout; when it passes, the worker logs,
            counts it and tries again, without going on.
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
        read_linger_ms: after a round that read only a few entries (under ``batch_size / 8``),
            wait this long before the next read, so that a live stream is read in fewer,
            larger rounds (0: read again at once).
        claim_idle_ms: claim other consumers' entries pending longer than this.
        max_producers: producers tracked at once; least recently seen are evicted beyond it.
        producer_idle_ttl_s: evict a producer silent this long (event time).
        alerts_maxlen: approximate cap on the alert and dead-letter streams.
        scores_stream: where each scored event's score is appended, with the batch's alerts
            (None: nowhere). At least once: a replay after a crash appends its entries'
            scores again (docs/design.md, *The scores stream*).
        scores_maxlen: approximate cap on the scores stream.
        feedback_stream: analyst feedback (:mod:`detector.core.feedback`) read as one more
            input of the group, partitioned like the events (None: not read).
        checkpoint_every: commit a checkpoint (state + acks) after this many entries ...
        checkpoint_interval_ms: ... or after this long, whichever comes first.
        commit_slice_ms: a due commit's changed producer states are encoded this long at a
            time between reads, so reading never stops for a whole commit (0: all at once).
        checkpoint_secret: HMAC key signing checkpoints (never stored in Redis, never logged).
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

    redis_url: str | None = field(
        default=None,
        metadata=option(
            "redis://, rediss:// (TLS) or unix:// URL. Without it, an embedded redis-server is "
            "started."
        ),
    )
    sentinels: tuple[str, ...] = field(
        default=(),
        metadata=option(
            "Sentinel HOST:PORT (repeat for each): find the primary through Sentinel and follow "
            "it across failovers; --redis-url then gives only the scheme, user and database.",
            flag="sentinel",
        ),
    )
    sentinel_master: str | None = field(
        default=None, metadata=option("The primary's name in Sentinel (with --sentinel).")
    )
    sentinel_user: str | None = field(
        default=None,
        metadata=option("User the Sentinels are authenticated as, if they have ACL users."),
    )
    min_replicas_acked: int = field(
        default=0,
        metadata=option(
            "Durable writes: wait (WAIT) until this many replicas hold every read, alert and "
            "commit before going on (0: off; asynchronous replication).",
            low=0,
        ),
    )
    min_replicas_timeout_ms: int = field(
        default=1000,
        metadata=option(
            "One WAIT's timeout; past it the worker logs, counts and waits again.", low=1
        ),
    )
    streams: tuple[str, ...] = field(
        default=(DEFAULT_STREAM,),
        metadata=option("Input stream (repeat for several).", flag="stream"),
    )
    group: str = field(default=DEFAULT_GROUP, metadata=option("Consumer group the workers share."))
    consumer: str = field(
        default_factory=default_consumer,
        metadata=option("Consumer name; keep it stable across restarts.", shown_default="hostname"),
    )
    alerts_stream: str = field(
        default=DEFAULT_ALERTS_STREAM, metadata=option("Stream the alerts are appended to.")
    )
    dead_letter_stream: str = field(
        default=DEFAULT_DEAD_LETTER_STREAM,
        metadata=option("Where rejected entries go, with a reason."),
    )
    model: str = field(
        default=DEFAULT_MODEL,
        metadata=option("Model spec: a name from `detector models` or a path to a .toml spec."),
    )
    threshold: float | None = field(
        default=None,
        metadata=option(
            "Alert threshold on the calibrated score (default: the model spec's); the spec's "
            "rarity horizon may raise it per producer.",
            low=0.0,
            high=1.0,
        ),
    )
    metrics_port: int | None = field(
        default=None, metadata=option("Serve Prometheus metrics here.")
    )
    until_idle: bool = field(
        default=False,
        metadata=option("Drain the streams, exit 0 once nothing arrives for --idle-timeout-ms."),
    )
    idle_timeout_ms: int = field(
        default=2000, metadata=option("Quiet period that ends an --until-idle run.")
    )
    batch_size: int = field(default=500, metadata=option("Entries per read (per stream)."))
    block_ms: int = field(default=1000, metadata=option("How long one read waits for new entries."))
    read_linger_ms: float = field(
        default=0.0,
        metadata=option(
            "After a round that read only a few entries (under batch_size / 8), wait this long "
            "before the next read: fewer, larger rounds, for at most this much more latency "
            "(0: read again at once).",
            low=0,
        ),
    )
    claim_idle_ms: int = field(
        default=60_000, metadata=option("Claim entries other consumers left pending this long.")
    )
    max_producers: int = field(
        default=100_000, metadata=option("Producers tracked at once (bounds memory).")
    )
    producer_idle_ttl_s: float = field(
        default=24 * 3600.0, metadata=option("Forget a producer silent this long (event time).")
    )
    alerts_maxlen: int = field(
        default=1_000_000,
        metadata=option("Approximate cap on the alert and dead-letter streams (XADD MAXLEN ~)."),
    )
    scores_stream: str | None = field(
        default=None,
        metadata=option(
            "Also append every scored event's score to this stream (producer, source stream and "
            "id, event time, score, flagged, model), for dashboards (default: off)."
        ),
    )
    feedback_stream: str | None = field(
        default=None,
        metadata=option(
            "Read analyst feedback (`detector feedback`) from this stream, partitioned like the "
            "input, as an ordered input in the group (default: off; the usual name is "
            f"{DEFAULT_FEEDBACK_STREAM})."
        ),
    )
    scores_maxlen: int = field(
        default=1_000_000,
        metadata=option("Approximate cap on the scores stream (XADD MAXLEN ~).", low=1),
    )
    checkpoint_every: int = field(
        default=5000, metadata=option("Commit state and acks after this many entries ...")
    )
    checkpoint_interval_ms: int = field(default=5000, metadata=option("... or after this long."))
    commit_slice_ms: float = field(
        default=5.0,
        metadata=option(
            "Encode a due commit this long at a time between reads, so reading never stops for a "
            "whole commit (0: all at once).",
            low=0,
        ),
    )
    max_deliveries: int = field(
        default=10, metadata=option("Dead-letter a pending entry delivered more often (poison).")
    )
    baseline: Path | None = field(
        default=None, metadata=option("Baseline name (from `detector train`) or file path.")
    )
    reset_state: bool = field(
        default=False,
        metadata=option("Delete this consumer's checkpoint first; the state is relearned."),
    )
    partitions: int | None = field(
        default=None,
        metadata=option(
            "Read the partition streams <stream>:{0..P-1}, one owner per partition (default: the "
            "unpartitioned streams).",
            low=1,
            high=1024,
        ),
    )
    assign: str | None = field(
        default=None,
        metadata=option(
            "Partition ownership: static (--worker-index/--worker-count) or dynamic (leases over "
            "the live workers; the default without --worker-count).",
            choices=("static", "dynamic"),
        ),
    )
    worker_index: int | None = field(
        default=None,
        metadata=option("Static assignment: this worker owns p with p % count == index.", low=0),
    )
    worker_count: int | None = field(
        default=None, metadata=option("Static assignment: the number of workers.", low=1)
    )
    lease_ttl_ms: int = field(
        default=15_000,
        metadata=option("An owner silent this long loses its partitions (late commits refused)."),
    )
    cluster: bool = field(
        default=False,
        metadata=option("--redis-url names a Redis Cluster node: use a cluster client."),
    )
    status_interval_s: float = field(
        default=10.0,
        metadata=option(
            "Log a status line (events/s, lag, alerts, dead letters, producers) this often; on a "
            "terminal, a live line (0: off).",
            low=0,
        ),
    )
    event_format: EventFormat = field(default_factory=EventFormat)
    tls_ca_cert: Path | None = field(
        default=None, metadata=option("CA bundle (PEM) that verifies the server.")
    )
    tls_cert: Path | None = field(
        default=None, metadata=option("Client certificate (PEM), if the server asks for one.")
    )
    tls_key: Path | None = field(
        default=None, metadata=option("Private key (PEM) of the client certificate.")
    )
    # Secrets: from the environment only (detector.gateway.secrets), never options.
    checkpoint_secret: bytes | None = field(default=None, repr=False)
    redis_password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def assignment(self) -> str | None:
        """``"static"``, ``"dynamic"``, or None when unpartitioned."""
        if self.partitions is None:
            return None
        if self.assign is not None:
            return self.assign
        return "static" if self.worker_count is not None else "dynamic"

    @property
    def inputs(self) -> tuple[str, ...]:
        """The streams the group reads: the input streams, then the feedback stream if any."""
        fb = self.feedback_stream
        return self.streams if fb is None or fb in self.streams else (*self.streams, fb)

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
