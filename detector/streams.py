"""Streams: every Redis command the worker sends.

Delivery is at-least-once through one consumer group. A batch is committed by one MULTI/EXEC
that appends its alerts (each alert id at most once, guarded by SET NX in a script) and its
dead-letter entries, then XACKs the batch: an entry is never acked before its alert exists.
The crash-safe checkpoint (state + offset in the same transaction) plugs into :meth:`commit`.

redis-py retries are off: a silently retried ``XREADGROUP >`` can skip entries whose reply
was lost (docs/design.md). The worker resynchronises from its own pending entries instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from detector.alerts import Alert
from detector.settings import ALERT_GUARD_KEY, ALERT_GUARD_TTL_S

# Raw entry as read: (stream, entry id, fields).
Entry = tuple[str, str, dict[bytes, bytes]]

# Appends each alert whose guard key is new. KEYS[1]: alert stream, KEYS[2..]: guard keys.
# ARGV: ttl, maxlen, then per alert: number of field/value items, the items.
_ALERT_SCRIPT = """
local ttl, maxlen, i, written = ARGV[1], ARGV[2], 3, 0
for k = 2, #KEYS do
  local n = tonumber(ARGV[i])
  if redis.call('SET', KEYS[k], '1', 'NX', 'EX', ttl) then
    local args = {'XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*'}
    for j = i + 1, i + n do args[#args + 1] = ARGV[j] end
    redis.call(unpack(args))
    written = written + 1
  end
  i = i + n + 1
end
return written
"""
DEAD_LETTER_COPY_BYTES = 256 * 1024  # cap on the original fields copied into a dead letter
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def connect(url: str, *, block_ms: int) -> redis.Redis:
    """A client for the worker: bytes replies, RESP2, no hidden retries.

    ``socket_timeout`` exceeds the blocking read time, else redis-py aborts a healthy BLOCK.
    """
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        protocol=2,
        socket_timeout=max(10.0, 2 * block_ms / 1000),
        socket_connect_timeout=5.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


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
        for k, v in self.fields.items():
            budget -= len(k) + len(v)
            if budget < 0:
                out["truncated"] = "1"
                break
            out[b"field." + k] = v
        return out


@dataclass(slots=True)
class Batch:
    """What one commit writes and acknowledges."""

    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    acks: dict[str, list[str]] = field(default_factory=dict)

    def ack(self, stream: str, entry_id: str) -> None:
        self.acks.setdefault(stream, []).append(entry_id)

    def __len__(self) -> int:
        return sum(len(ids) for ids in self.acks.values())


class Streams:
    """The worker's view of Redis: its group, its input, its alert and dead-letter streams."""

    def __init__(
        self,
        client: redis.Redis,
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
        self._alert_script = client.register_script(_ALERT_SCRIPT)

    def ensure_groups(self, start_id: str = "0") -> None:
        """Create the group on every input stream (from the start by default) if missing."""
        for stream in self.streams:
            try:
                self.r.xgroup_create(stream, self.group, id=start_id, mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

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

    def commit(self, batch: Batch) -> None:
        """Write the batch's alerts and dead letters, then ack its entries, atomically."""
        if not len(batch) and not batch.alerts and not batch.dead_letters:
            return
        now_ms = int(time.time() * 1000)
        pipe = self.r.pipeline(transaction=True)
        if batch.alerts:
            keys: list[str] = [self.alerts_stream]
            args: list[str | bytes | int] = [ALERT_GUARD_TTL_S, self.maxlen]
            for alert in batch.alerts:
                keys.append(ALERT_GUARD_KEY.format(alert_id=alert.alert_id))
                items = [x for kv in alert.to_fields(now_ms).items() for x in kv]
                args.append(len(items))
                args.extend(items)
            self._alert_script(keys=keys, args=args, client=pipe)
        for letter in batch.dead_letters:
            pipe.xadd(
                self.dead_letter_stream,
                letter.to_fields(now_ms),  # type: ignore[arg-type]
                maxlen=self.maxlen,
                approximate=True,
            )
        for stream, ids in batch.acks.items():
            pipe.xack(stream, self.group, *ids)
        pipe.execute()

    def group_info(self) -> dict[str, tuple[int | None, int]]:
        """Per input stream: (lag, pending) of the group; lag is None when Redis cannot tell."""
        out: dict[str, tuple[int | None, int]] = {}
        for stream in self.streams:
            for g in self.r.xinfo_groups(stream):
                if _text(g["name"]) == self.group:
                    lag = g.get("lag")
                    out[stream] = (None if lag is None else int(lag), int(g["pending"]))
        return out

    def set_health(self, key: str, summary: bytes, ttl_ms: int) -> None:
        self.r.set(key, summary, px=ttl_ms)


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
