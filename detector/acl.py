"""ACL: the least-privilege Redis users for one detector configuration (``detector acl``).

Three users (four for partitioned workers, one more for ``detector notify``), each limited to
the commands it sends and the keys it touches:

- the **worker** reads and acks its input streams through its group (never writes entries to
  them), appends to the alert and dead-letter streams (never reads them), sets the guard keys
  that make those appends happen at most once, and owns its checkpoint hash and health key;
  with a scores stream (``--scores-stream``), it also appends to that one (only then);
- a **producer** may only ``XADD`` to the input streams;
- a **reader** (``detector alerts``, ``detector check --consumer``, alert consumers,
  dashboards) reads the alert and dead-letter streams (and the scores stream, if any),
  through groups too, and the workers' health keys;
- partitioned, a **router** (``detector route``) reads and acks the unpartitioned source
  streams through its group, appends to the partition streams and moves its marks, holds its
  lease, and dead-letters entries without a valid producer;
- with ``--notifier``, the **notifier** (``detector notify``) reads and acks the alert stream
  through its group and appends to its own dead-letter stream;
- with ``--feedback-stream``, the worker reads and acks the feedback stream (its partitions)
  like an input, never writing it; with ``--feedback-writer`` too, the **feedback** user
  (``detector feedback``) reads the alert stream (to look the alert up) and appends to the
  feedback stream (its partitions), nothing else: readers of alerts may not write feedback.

With durable writes (``--min-replicas-acked``), the worker also sends ``WAIT`` and ``SCRIPT
EXISTS`` (keyless) and ``XCLAIM … JUSTID`` on its input (the check that a read survived, after a
short WAIT); on a cluster, to the node of the key written. On a cluster (``--cluster``), every
user also reads the command table (``COMMAND``) and the slot map (``CLUSTER SLOTS``). Behind
Sentinel (``--sentinel``), two more lines: the user the Sentinels monitor
and reconfigure the data nodes as (``sentinel auth-user`` in their configuration; the command
list Redis documents for it), and the user the detector's commands look the primary up as, to
create on each Sentinel (``SENTINEL MASTERS``, what redis-py's ``Sentinel.master_for`` asks).

Rules use Redis 7 selectors (``( … )``): a command is allowed when the root rules or one
selector allow both the command and every key it names, so each command is granted only on
the keys it needs, with read (``%R~``) or write (``%W~``) access as its key specs require.
Commands a Lua script runs are checked one by one against the same rules, so the append
script confers nothing beyond them. Passwords never appear: rules carry the SHA-256 of the
password (``#<hex>``), or a placeholder that Redis refuses until it is replaced.

Examples:
    >>> cfg = AclConfig(streams=("orders",), group="detector", consumer="w1")
    >>> print(" ".join(producer_rules(cfg, "#" + "0" * 64)))  # doctest: +ELLIPSIS
    reset on #000... resetchannels -@all +ping +xadd %W~orders
    >>> glob_escape("a*b?[c]")
    'a\\\\*b\\\\?\\\\[c\\\\]'
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping
from dataclasses import dataclass

from detector import router
from detector.core.errors import ConfigError
from detector.core.settings import (
    ALERT_GUARD_KEY,
    CHECKPOINT_KEY,
    CLUSTER_CHECKPOINT_KEY,
    DEAD_LETTER_GUARD_KEY,
    DEFAULT_ALERTS_STREAM,
    DEFAULT_DEAD_LETTER_STREAM,
    DEFAULT_GROUP,
    DEFAULT_STREAM,
    HEALTH_KEY,
    NOTIFY_DEAD_LETTER_STREAM,
    NOTIFY_GROUP,
    PEERS_KEY,
)
from detector.gateway import partitions as parts

REDIS_VERSIONS = ("7.0", "7.2+")
ROLES = (
    "worker", "producer", "reader", "router", "notifier", "feedback", "sentinel",
    "sentinel_reader",
)  # fmt: skip
# Users of the Sentinel deployment: created on the data nodes, and on each Sentinel.
SENTINEL_ROLES = ("sentinel", "sentinel_reader")
# Characters that cannot appear in a name: ACL SETUSER splits selectors on spaces and ends a
# selector at the first argument ending in ")"; quotes would change how redis-cli reads a line.
_FORBIDDEN = set(string.whitespace) | set("()\"'")
_GLOB = set("*?[]\\")


@dataclass(frozen=True, slots=True)
class AclConfig:
    """The configuration the users are for (the same names as ``detector run``).

    Attributes:
        streams: input streams.
        group: consumer group.
        consumer: the worker's consumer name; None allows any consumer of the group (its
            checkpoint and health keys), e.g. one user for several workers.
        alerts_stream: where alerts go.
        dead_letter_stream: where rejected entries go.
        scores_stream: where the workers append every event's score (``--scores-stream``;
            None: no scores stream, and no right on one).
        worker_user, producer_user, reader_user, router_user: ACL user names.
        redis_version: ``"7.0"`` or ``"7.2+"`` (which has ``CLIENT SETINFO``; redis-py sends
            it on connect and ignores a refusal, but each refusal lands in ``ACL LOG``).
        partitioned: rules for ``detector run --partitions`` (any P): the partition streams
            ``<stream>:{p}``, their checkpoints, leases and epochs, the members set; and the
            router user.
        sources: the unpartitioned streams ``detector route --source`` reads (None: the
            input stream names, as in docker-compose.yml: ``events`` into ``events:{p}``).
        router_group: the router's consumer group (``detector route --group``).
        durable: the worker runs with ``--min-replicas-acked`` (``WAIT``, the read check).
        cluster: the commands run with ``--cluster``: every user may read the command table
            and the slot map (``COMMAND``, ``CLUSTER SLOTS``); create the users on every node
            (ACLs are per node).
        sentinel: the commands reach Redis through Sentinel: print the Sentinels' user on the
            data nodes, and the detector's user on the Sentinels.
        sentinel_user, sentinel_reader_user: those two users' names.
        notifier: print the user of ``detector notify`` too.
        notifier_user: its name.
        notify_group: its consumer group on the alert stream (named in the comment: ACL rules
            cannot tell one group of a stream from another).
        notify_dead_letter_stream: where it writes the alerts its webhook refused.
        feedback_stream: the workers read analyst feedback from it (``--feedback-stream``;
            None: no feedback, and no right on it).
        feedback_writer: print the user of ``detector feedback`` too (needs a feedback stream).
        feedback_user: its name.
    """

    streams: tuple[str, ...] = (DEFAULT_STREAM,)
    group: str = DEFAULT_GROUP
    consumer: str | None = None
    alerts_stream: str = DEFAULT_ALERTS_STREAM
    dead_letter_stream: str = DEFAULT_DEAD_LETTER_STREAM
    scores_stream: str | None = None
    worker_user: str = "detector-worker"
    producer_user: str = "detector-producer"
    reader_user: str = "detector-reader"
    router_user: str = "detector-router"
    redis_version: str = "7.0"
    partitioned: bool = False
    sources: tuple[str, ...] | None = None
    router_group: str = router.DEFAULT_ROUTER_GROUP
    durable: bool = False
    cluster: bool = False
    sentinel: bool = False
    sentinel_user: str = "detector-sentinel"
    sentinel_reader_user: str = "detector-lookup"
    notifier: bool = False
    notifier_user: str = "detector-notifier"
    notify_group: str = NOTIFY_GROUP
    notify_dead_letter_stream: str = NOTIFY_DEAD_LETTER_STREAM
    feedback_stream: str | None = None
    feedback_writer: bool = False
    feedback_user: str = "detector-feedback"

    @property
    def inputs(self) -> tuple[str, ...]:
        """What the workers read through their group: the input streams, then the feedback
        stream if any."""
        fb = self.feedback_stream
        return self.streams if fb is None or fb in self.streams else (*self.streams, fb)

    @property
    def roles(self) -> tuple[str, ...]:
        """The users to create: the router only feeds partitioned workers; the notifier only
        on request; the Sentinels' users only behind Sentinel."""
        roles: tuple[str, ...] = ("worker", "producer", "reader")
        roles += ("router",) if self.partitioned else ()
        roles += ("notifier",) if self.notifier else ()
        roles += ("feedback",) if self.feedback_writer else ()
        return roles + SENTINEL_ROLES if self.sentinel else roles

    @property
    def source_streams(self) -> tuple[str, ...]:
        return self.streams if self.sources is None else self.sources

    def user(self, role: str) -> str:
        return str(getattr(self, f"{role}_user"))

    @property
    def output_streams(self) -> dict[str, str]:
        """The streams the workers append to, by what they carry."""
        out = {"alerts": self.alerts_stream, "dead-letter": self.dead_letter_stream}
        if self.scores_stream is not None:
            out["scores"] = self.scores_stream
        return out

    @property
    def outputs(self) -> list[str]:
        """:attr:`output_streams`, glob-escaped (key patterns)."""
        return [glob_escape(name) for name in self.output_streams.values()]

    def __post_init__(self) -> None:
        if not self.streams:
            msg = "at least one input stream is needed"
            raise ConfigError(msg)
        if self.redis_version not in REDIS_VERSIONS:
            msg = f"redis version must be one of {', '.join(REDIS_VERSIONS)}"
            raise ConfigError(msg)
        names = {
            "stream": self.streams,
            "group": (self.group,),
            "consumer": (self.consumer,) if self.consumer is not None else (),
            "alerts stream": (self.alerts_stream,),
            "dead-letter stream": (self.dead_letter_stream,),
            "scores stream": (self.scores_stream,) if self.scores_stream is not None else (),
            "router source": self.source_streams,
            "router group": (self.router_group,),
            "notify group": (self.notify_group,),
            "notify dead-letter stream": (self.notify_dead_letter_stream,),
            "feedback stream": (self.feedback_stream,) if self.feedback_stream else (),
            "user": tuple(self.user(role) for role in ROLES),
        }
        for what, values in names.items():
            for value in values:
                if not value or _FORBIDDEN & set(value) or not value.isprintable():
                    msg = (
                        f"{what} name {value!r} cannot be expressed in ACL rules "
                        "(empty, or contains whitespace, quotes, parentheses or control characters)"
                    )
                    raise ConfigError(msg)
        if not self.source_streams:
            msg = "at least one router source stream is needed"
            raise ConfigError(msg)
        if self.feedback_writer and self.feedback_stream is None:
            msg = "--feedback-writer needs --feedback-stream (the stream it writes)"
            raise ConfigError(msg)
        self._check_outputs()
        if self.partitioned:  # braces would move the hash tags of the partition keys
            for name in (*self.inputs, self.group, self.alerts_stream, self.dead_letter_stream):
                parts.check_name("name", name)
        if len({self.user(role) for role in ROLES}) != len(ROLES):
            msg = (
                "the worker, producer, reader, router, notifier, feedback and Sentinel users must "
                "have "
                "different names"
            )
            raise ConfigError(msg)

    def _check_outputs(self) -> None:
        """No stream written is one read (an input; the alerts, for the notifier); the scores
        go to a stream of their own."""
        inputs = set(self.inputs) | set(self.source_streams)
        if self.scores_stream in (self.alerts_stream, self.dead_letter_stream):
            msg = f"the scores stream {self.scores_stream!r} is the alert or dead-letter stream"
            raise ConfigError(msg)
        written = {**self.output_streams, "notifier's dead-letter": self.notify_dead_letter_stream}
        for what, name in written.items():
            if name in inputs:
                msg = f"the {what} stream {name!r} is also an input stream"
                raise ConfigError(msg)
        if self.notify_dead_letter_stream == self.alerts_stream:
            msg = "the notifier's dead-letter stream cannot be the alerts stream"
            raise ConfigError(msg)


def glob_escape(name: str) -> str:
    """A key pattern matching exactly ``name`` (glob characters escaped)."""
    return "".join("\\" + c if c in _GLOB else c for c in name)


def key_pattern(template: str, **values: str | None) -> str:
    """A key pattern for a key template of :mod:`detector.core.settings`; None fields match any.

    >>> key_pattern(CHECKPOINT_KEY, group="detector", consumer=None)
    'detector:checkpoint:detector:*'
    """
    out = []
    for literal, field_name, _, _ in string.Formatter().parse(template):
        out.append(glob_escape(literal))
        if field_name is not None:
            value = values[field_name]
            out.append("*" if value is None else glob_escape(value))
    return "".join(out)


def password_rule(password: str | None, role: str) -> str:
    """``#<sha256>`` of the password, or a placeholder Redis refuses (not 64 hex digits)."""
    if password is None:
        return f"#{role.upper()}_PASSWORD_SHA256"
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def _common(cfg: AclConfig, password: str) -> list[str]:
    rules = ["reset", "on", password, "resetchannels", "-@all", "+ping"]
    if cfg.redis_version == "7.2+":
        rules.append("+client|setinfo")
    if cfg.cluster:  # a cluster client reads the command table (COMMAND, for the keys of
        # each command) at start, and the slot map at start and after each failover
        rules += ["+command", "+cluster|slots"]
    return rules


def _selector(commands: list[str], keys: list[str]) -> str:
    return "(" + " ".join([*commands, *keys]) + ")"


def worker_rules(cfg: AclConfig, password: str) -> list[str]:
    """The worker: exactly the commands and keys of :mod:`detector.gateway.streams` and the worker.

    - input streams: ``XREADGROUP``, ``XPENDING``, ``XINFO GROUPS`` (read), ``XACK``,
      ``XAUTOCLAIM``, ``XGROUP CREATE … MKSTREAM`` (write); no ``XADD``, ``XDEL``, ``XTRIM``;
    - alert and dead-letter streams, and the scores stream if configured: ``XADD`` only
      (write-only: no reads);
    - the append scripts: ``EVALSHA`` (read and write on every declared key: those streams
      and the guard keys) and ``SCRIPT LOAD`` (after a Redis restart empties the script
      cache); inside them, ``EXISTS`` on a guard, ``XADD``, then ``SET … EX`` on the guard,
      each checked again;
    - guard keys: ``EXISTS``, ``SET``; dead-letter guards only for the input streams;
    - checkpoint hash: ``HSCAN``, ``HSET``, ``HDEL`` in ``MULTI``/``EXEC`` with the ``XACK``,
      and ``DEL`` (``--reset-state``);
    - health key: ``SET … PX``, ``DEL``.

    Partitioned, see :func:`partitioned_worker_rules`.
    """
    if cfg.partitioned:
        return partitioned_worker_rules(cfg, password)
    inputs = [glob_escape(s) for s in cfg.inputs]
    outputs = cfg.outputs
    guards = _guards(cfg, cfg.inputs)
    template = CLUSTER_CHECKPOINT_KEY if cfg.cluster and len(cfg.streams) == 1 else CHECKPOINT_KEY
    checkpoint = key_pattern(template, group=cfg.group, consumer=cfg.consumer,
                             stream=cfg.streams[0] if cfg.streams else None)  # fmt: skip
    health = key_pattern(HEALTH_KEY, group=cfg.group, consumer=cfg.consumer)
    return [
        *_common(cfg, password),
        "+multi",
        "+exec",
        "+script|load",
        *_durable(cfg),
        _selector(
            [
                "+xreadgroup",
                "+xpending",
                "+xinfo|groups",
                "+xack",
                "+xautoclaim",
                "+xgroup|create",
                *_durable_input(cfg),
            ],
            [f"%RW~{k}" for k in inputs],
        ),
        _selector(["+xadd"], [f"%W~{k}" for k in outputs]),
        _selector(["+evalsha"], [f"%RW~{k}" for k in outputs + guards]),
        _selector(["+set"], [f"%W~{k}" for k in [*guards, health]]),
        _selector(["+exists"], [f"%R~{k}" for k in guards]),
        _selector(["+hscan", "+hset", "+hdel"], [f"%RW~{checkpoint}"]),
        _selector(["+del"], [f"%W~{checkpoint}", f"%W~{health}"]),
        _peers(cfg),
    ]


def _peers(cfg: AclConfig) -> str:
    """The group's peer summaries (:mod:`detector.runtime.peering`): ``HSET`` of the worker's
    own fields and ``HGETALL`` of the others'."""
    peers = key_pattern(PEERS_KEY, group=cfg.group)
    return _selector(["+hset", "+hgetall"], [f"%RW~{peers}"])


def _durable(cfg: AclConfig) -> list[str]:
    """``WAIT`` after each durable write (keyless), and ``SCRIPT EXISTS``: redis-py checks a
    pipeline's scripts with it (a durable write's scripts ride in a pipeline with the WAIT)."""
    return ["+wait", "+script|exists"] if cfg.durable else []


def _durable_input(cfg: AclConfig) -> list[str]:
    """``XCLAIM … JUSTID`` of the worker's own entry: after a short WAIT, the replicated write
    that WAIT waits for again, and the check that the read survived a failover."""
    return ["+xclaim"] if cfg.durable else []


def _guards(cfg: AclConfig, inputs: tuple[str, ...]) -> list[str]:
    """Alert guards, and dead-letter guards of entries of the (glob-escaped) input keys."""
    alerts = key_pattern(ALERT_GUARD_KEY, alerts_stream=cfg.alerts_stream, alert_id=None)
    dead = key_pattern(
        DEAD_LETTER_GUARD_KEY, dead_letter_stream=cfg.dead_letter_stream, stream="", entry_id=None
    )
    return [alerts] + [dead.replace("::", f":{s}:", 1) for s in inputs]


def partitioned_worker_rules(cfg: AclConfig, password: str) -> list[str]:
    """A partition-owning worker (``--partitions``, any P, static or dynamic, on a single
    Redis or a cluster): what :func:`worker_rules` grants, on the partition keys, plus

    - partition streams ``<stream>:{*}``: ``XREAD`` (the idle wait, which consumes nothing);
      no ``XAUTOCLAIM`` (a partition's pending list belongs to its consumer ``p<k>``);
    - the fenced read and commit scripts and the lease scripts: ``EVALSHA`` on the lease,
      epoch, checkpoint and partition stream keys; inside them ``GET``, ``EXISTS``, ``SET``,
      ``PEXPIRE``, ``DEL`` on the lease, ``INCR`` on the epoch, ``XREADGROUP``,
      ``XREVRANGE``, ``XACK`` on the streams, ``HSET``, ``HDEL`` on the checkpoint;
    - the members set: ``ZADD``, ``ZRANGEBYSCORE``, ``ZREMRANGEBYSCORE``, ``ZREM``;
    - no ``MULTI``/``EXEC``: every commit is a fenced script.
    """
    group = glob_escape(cfg.group)
    inputs = [parts.STREAM.format(base=glob_escape(s), p="*") for s in cfg.inputs]
    outputs = cfg.outputs
    guards = _guards(cfg, tuple(inputs))
    checkpoint = parts.CHECKPOINT.format(group=group, p="*")
    lease = parts.LEASE.format(group=group, p="*")
    epoch = parts.EPOCH.format(group=group, p="*")
    members = parts.MEMBERS.format(group=group)
    health = key_pattern(HEALTH_KEY, group=cfg.group, consumer=cfg.consumer)
    scripted = [*inputs, checkpoint, lease, epoch]
    return [
        *_common(cfg, password),
        "+script|load",
        *_durable(cfg),
        _selector(
            [
                "+xreadgroup",
                "+xread",
                "+xrevrange",
                "+xpending",
                "+xinfo|groups",
                "+xack",
                "+xgroup|create",
                *_durable_input(cfg),
            ],
            [f"%RW~{k}" for k in inputs],
        ),
        _selector(["+xadd"], [f"%W~{k}" for k in outputs]),
        _selector(["+evalsha"], [f"%RW~{k}" for k in outputs + guards + scripted]),
        _selector(["+set"], [f"%W~{k}" for k in [*guards, health, lease]]),
        _selector(["+exists"], [f"%R~{k}" for k in [*guards, lease]]),
        _selector(["+get", "+pexpire"], [f"%RW~{lease}"]),
        _selector(["+incr"], [f"%RW~{epoch}"]),
        _selector(["+hscan", "+hset", "+hdel"], [f"%RW~{checkpoint}"]),
        _selector(["+del"], [f"%W~{checkpoint}", f"%W~{health}", f"%W~{lease}"]),
        _selector(["+zadd", "+zrangebyscore", "+zremrangebyscore", "+zrem"], [f"%RW~{members}"]),
        _peers(cfg),
    ]


def producer_rules(cfg: AclConfig, password: str) -> list[str]:
    """A producer: ``XADD`` to the input streams, nothing else (it cannot even read them).

    Partitioned: to the partition streams (:class:`detector.producer.Producer`) and to the
    router's source streams (producers that leave the partitioning to the router).
    """
    inputs = [glob_escape(s) for s in cfg.streams]
    if cfg.partitioned:
        inputs = [parts.STREAM.format(base=s, p="*") for s in inputs]
        inputs += [glob_escape(s) for s in cfg.source_streams]
    return [*_common(cfg, password), "+xadd", *(f"%W~{k}" for k in dict.fromkeys(inputs))]


def router_rules(cfg: AclConfig, password: str) -> list[str]:
    """The router (:mod:`detector.router`), for every source and partition base of ``cfg``:

    - source streams: ``XREADGROUP``, ``XAUTOCLAIM`` (its pending entries first), ``XACK``,
      ``XGROUP CREATE … MKSTREAM``; no ``XADD``, ``XDEL``, ``XTRIM``;
    - the route script: ``EVALSHA`` on the partition streams and their marks hashes; inside
      it ``HGET``/``HSET`` on the marks, ``XADD`` (with ``MAXLEN``) on the partitions;
    - dead letters: the dead-letter append script (``EXISTS``, ``XADD``, ``SET … EX`` on its
      guard keys of the source entries), ``XADD`` only on the stream itself;
    - its lease (``detector:router:lease:<group>:<source>``): ``SET NX PX``, and the
      renew and release scripts of :class:`detector.gateway.ownership.Leases` (``GET``, ``PEXPIRE``,
      ``DEL``);
    - ``SCRIPT LOAD`` (after a Redis restart empties the script cache).
    """
    sources = [glob_escape(s) for s in cfg.source_streams]
    group = glob_escape(cfg.router_group)
    dead = glob_escape(cfg.dead_letter_stream)
    bases = [glob_escape(s) for s in cfg.streams]
    out_streams = [parts.STREAM.format(base=b, p="*") for b in bases]
    marks = [router.ROUTED.format(base=b, p="*") for b in bases]
    # Dead-letter guards of the source entries: _guards without the alert guard.
    guards = _guards(cfg, tuple(sources))[1:]
    leases = [router.LEASE.format(group=group, source=s) for s in sources]
    return [
        *_common(cfg, password),
        "+script|load",
        _selector(
            ["+xreadgroup", "+xautoclaim", "+xack", "+xgroup|create"],
            [f"%RW~{k}" for k in sources],
        ),
        _selector(
            ["+evalsha"], [f"%RW~{k}" for k in [*out_streams, *marks, dead, *guards, *leases]]
        ),
        _selector(["+xadd"], [f"%W~{k}" for k in [*out_streams, dead]]),
        _selector(["+hget"], [f"%R~{k}" for k in marks]),
        _selector(["+hset"], [f"%W~{k}" for k in marks]),
        _selector(["+exists"], [f"%R~{k}" for k in guards]),
        _selector(["+set"], [f"%W~{k}" for k in [*guards, *leases]]),
        _selector(["+get", "+pexpire", "+del"], [f"%RW~{k}" for k in leases]),
    ]


def reader_rules(cfg: AclConfig, password: str) -> list[str]:
    """A reader: the alert, dead-letter and scores streams (directly or through its own
    groups), and the workers' health keys (``detector check --consumer``)."""
    outputs = cfg.outputs
    health = key_pattern(HEALTH_KEY, group=cfg.group, consumer=None)
    return [
        *_common(cfg, password),
        _selector(
            ["+xrange", "+xrevrange", "+xread", "+xlen", "+xinfo|stream"],
            [f"%R~{k}" for k in outputs],
        ),
        _selector(
            ["+xreadgroup", "+xack", "+xpending", "+xautoclaim", "+xinfo|groups", "+xgroup|create"],
            [f"%RW~{k}" for k in outputs],
        ),
        _selector(["+get"], [f"%R~{health}"]),
    ]


def notifier_rules(cfg: AclConfig, password: str) -> list[str]:
    """The notifier (``detector notify``): exactly the commands of
    :class:`~detector.gateway.alert_reader.GroupAlertReader` and :mod:`detector.notifier`.

    - the alert stream: its read script (``EVALSHA``; inside it ``EXISTS``, ``XINFO STREAM``,
      ``XINFO GROUPS``, ``XGROUP CREATE``, ``XGROUP SETID``, ``XREADGROUP``), ``XREADGROUP``
      of its pending entries, ``XAUTOCLAIM``, ``XACK``, and ``XREAD`` (the wait, which
      consumes nothing); no ``XADD``, ``XDEL``, ``XTRIM``;
    - its dead-letter stream: ``XADD`` only, in ``MULTI``/``EXEC`` with the ``XACK``;
    - ``SCRIPT LOAD`` (after a Redis restart empties the script cache).

    ACL rules cannot name a consumer group: the user could read, ack or move other groups of
    the alert stream too (as the reader user can).
    """
    alerts = glob_escape(cfg.alerts_stream)
    return [
        *_common(cfg, password),
        "+multi",
        "+exec",
        "+script|load",
        _selector(
            ["+evalsha", "+xreadgroup", "+xautoclaim", "+xack", "+xgroup|create", "+xgroup|setid"],
            [f"%RW~{alerts}"],
        ),
        _selector(["+exists", "+xinfo|stream", "+xinfo|groups", "+xread"], [f"%R~{alerts}"]),
        _selector(["+xadd"], [f"%W~{glob_escape(cfg.notify_dead_letter_stream)}"]),
    ]


def feedback_rules(cfg: AclConfig, password: str) -> list[str]:
    """The feedback writer (``detector feedback``): ``XREVRANGE`` on the alert stream (the
    look-up of the alert), ``XADD`` on the feedback stream (partitioned: its partitions)."""
    assert cfg.feedback_stream is not None  # noqa: S101 (checked in __post_init__)
    target = glob_escape(cfg.feedback_stream)
    if cfg.partitioned:
        target = parts.STREAM.format(base=target, p="*")
    return [
        *_common(cfg, password),
        _selector(["+xrevrange"], [f"%R~{glob_escape(cfg.alerts_stream)}"]),
        _selector(["+xadd"], [f"%W~{target}"]),
    ]


def sentinel_rules(cfg: AclConfig, password: str) -> list[str]:
    """The Sentinels' user on the data nodes (``sentinel auth-user`` / ``auth-pass`` in
    sentinel.conf): the commands Redis documents for monitoring and failover, no keys."""
    commands = [
        "+multi",
        "+slaveof",
        "+replicaof",
        "+exec",
        "+subscribe",
        "+config|rewrite",
        "+role",
        "+publish",
        "+info",
        "+client|setname",
        "+client|kill",
        "+script|kill",
    ]
    return [*_common(cfg, password), "allchannels", *commands]  # fmt: skip


def sentinel_reader_rules(cfg: AclConfig, password: str) -> list[str]:
    """The detector's user on each Sentinel (``--sentinel-user``, the password in
    ``DETECTOR_SENTINEL_PASSWORD``): redis-py looks the primary up with ``SENTINEL MASTERS``."""
    return [*_common(cfg, password), "+sentinel|masters", "+sentinel|get-master-addr-by-name"]


def acl_lines(cfg: AclConfig, passwords: Mapping[str, str | None]) -> list[str]:
    """The ``ACL SETUSER`` commands for ``cfg``, with comments (lines starting with ``#``).

    Args:
        cfg: the configuration.
        passwords: per role (``worker``, ``producer``, ``reader``, ``router``) the password,
            or None for a placeholder that makes Redis refuse the line until it is replaced.
    """
    makers = {
        "worker": worker_rules,
        "producer": producer_rules,
        "reader": reader_rules,
        "router": router_rules,
        "notifier": notifier_rules,
        "feedback": feedback_rules,
        "sentinel": sentinel_rules,
        "sentinel_reader": sentinel_reader_rules,
    }
    rules = {
        role: makers[role](cfg, password_rule(passwords.get(role), role)) for role in cfg.roles
    }
    consumer = cfg.consumer if cfg.consumer is not None else "any consumer (*)"
    out = [
        f"# detector ACL users (Redis {cfg.redis_version}) for input {', '.join(cfg.streams)}; "
        f"group {cfg.group}; consumer {consumer};",
        f"# alerts {cfg.alerts_stream}; dead letters {cfg.dead_letter_stream}"
        + (f"; scores {cfg.scores_stream}" if cfg.scores_stream else "")
        + (f"; feedback {cfg.feedback_stream}." if cfg.feedback_stream else "."),
        "# Each line starts with `reset`, so re-running it replaces the user (ACL SETUSER is",
        "# additive otherwise). Passwords appear only as SHA-256 hashes (#<hex>).",
    ]
    missing = [role for role in cfg.roles if passwords.get(role) is None]
    if missing:
        out.append(
            "# Placeholders (#..._PASSWORD_SHA256) make Redis refuse the line until replaced"
            ' with `#` + the output of: printf %s "$PASSWORD" | sha256sum'
        )
    comments = {
        "worker": "# Worker: read and ack the input"
        + (" and the feedback" if cfg.feedback_stream else "")
        + ", append alerts and dead letters"
        + (" and scores" if cfg.scores_stream else "")
        + ", own its checkpoint and health keys.",
        "producer": "# Producers: XADD to the input streams only"
        + (" (partition streams, and the router's sources)." if cfg.partitioned else "."),
        "reader": "# Readers: alerts, dead letters"
        + (", scores" if cfg.scores_stream else "")
        + ", health keys (detector alerts, detector check --consumer).",
        "router": f"# Router (detector route --group {cfg.router_group}): source"
        f" {', '.join(cfg.source_streams)} into the partitions of {', '.join(cfg.streams)}.",
        "notifier": f"# Notifier (detector notify --group {cfg.notify_group}): read and ack"
        f" {cfg.alerts_stream}, append to {cfg.notify_dead_letter_stream}.",
        "feedback": "# Feedback writers (detector feedback): look alerts up in"
        f" {cfg.alerts_stream}, append to {cfg.feedback_stream}.",
        "sentinel": "# Sentinel's own user on every data node (sentinel auth-user / auth-pass),"
        " to run on the primary and each replica (ACLs do not replicate).",
        "sentinel_reader": "# Run on each Sentinel (they keep their own users): the detector's"
        " look-up of the primary (--sentinel-user, DETECTOR_SENTINEL_PASSWORD).",
    }
    for role in cfg.roles:
        out.append(comments[role])
        out.append(f"ACL SETUSER {cfg.user(role)} " + " ".join(rules[role]))
    if cfg.durable or cfg.sentinel:
        out.append("# ACL SETUSER does not replicate: run the data nodes' lines on the primary"
                   " and on every replica (a promoted replica must know the users).")  # fmt: skip
    out += [
        "# A URL naming a database other than 0 also needs +select (key patterns then apply"
        " in every database).",
        "# `detector check` without --consumer also needs +scan (it lists every key name).",
        "# Then, with an admin user of your own in place, turn off the passwordless default:",
        "# ACL SETUSER default off",
        "# Refused commands are recorded in ACL LOG; persist the users with ACL SAVE"
        " (aclfile) or CONFIG REWRITE.",
    ]
    return out
