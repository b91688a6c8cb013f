"""Alert reader: the entries of an alert stream, in order, through Redis restarts.

The one reader of alert streams: ``detector alerts`` (one-shot and ``--follow``), ``detector
notify`` and the Python API :func:`read_alerts` use it (:meth:`AlertEntry.alert` gives the
typed :class:`~detector.core.alerts.Alert`).

:class:`AlertReader` reads with plain ``XRANGE``/``XREAD`` (no consumer group, nothing
acknowledged), remembers the id of the last entry it yielded, and on a connection error backs
off (capped), reconnects and resumes after that id: no entry twice, none skipped unless the
stream was trimmed past it meanwhile.

:class:`GroupAlertReader` overrides :meth:`AlertReader._fetch` to read through a consumer group
(at least once: an entry stays pending until :meth:`GroupAlertReader.ack`), with the same retry
loop. It reads its own pending entries first (after a start or a lost reply), claims those
other consumers left idle, then new ones through one script that also counts the alerts the
stream's cap trimmed before the group read them (see ``_READ_NEW``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from detector.core.alerts import Alert
from detector.core.settings import DEFAULT_ALERTS_STREAM, default_consumer
from detector.gateway.streams import CONNECTION_ERRORS, Outage, retry

__all__ = ["AlertEntry", "AlertReader", "GroupAlertReader", "read_alerts"]

log = logging.getLogger(__name__)
T = TypeVar("T")
CLAIM_INTERVAL_S = 30.0

# The group's next entries, and how many were trimmed before it read them. KEYS: the stream.
# ARGV: group, consumer, count, where a new group starts ("0" or "$"). Returns {trimmed (-1:
# unknown), undelivered (-1: unknown), the group's last delivered id, XREADGROUP's reply}.
# Every entry ever added has a number (XINFO STREAM's entries-added counts them); the group's
# entries-read is the number of the last one it read. When the group's position is older than
# the stream's first entry, the entries between were trimmed unread: their count is the first
# entry's number - 1 - entries-read (unknown if another tool created the group without
# ENTRIESREAD; none if nothing was ever trimmed). Redis (7.0) then counts on from entries-read
# as if nothing were missing, so the script moves the counter over the gap (XGROUP SETID, same
# position), keeping it exact for the next gap, across restarts and consumers. Exact under
# MAXLEN/MINID trimming; XDEL holes are not counted.
_READ_NEW = """
local s, group, consumer, count, start = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function map(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end
local function older(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
if redis.call('EXISTS', s) == 0 then
  redis.call('XGROUP', 'CREATE', s, group, '0', 'MKSTREAM', 'ENTRIESREAD', 0)
end
local info = map(redis.call('XINFO', 'STREAM', s))
local added, before = info['entries-added'], info['entries-added'] - info['length']
local function ours()
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', s)) do
    local one = map(g)
    if one['name'] == group then return one end
  end
end
local mine = ours()
if not mine then
  local read = before
  if start == '$' then read = added end
  redis.call('XGROUP', 'CREATE', s, group, start, 'ENTRIESREAD', read)
  mine = ours()
end
local last, read, trimmed = mine['last-delivered-id'], mine['entries-read'], 0
local first = info['first-entry']
if first and older(last, first[1]) and before > 0 then
  if read then trimmed = before - read else trimmed = -1 end
  if trimmed ~= 0 then
    redis.call('XGROUP', 'SETID', s, group, last, 'ENTRIESREAD', before)
    read = before
  end
end
local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', s, '>')
local got = 0
if reply then
  local entries = reply[1][2]
  got = #entries
  last = entries[got][1]
end
local undelivered = -1
if read then undelivered = added - read - got end
return {trimmed, undelivered, last, reply}
"""


@dataclass(frozen=True, slots=True)
class AlertEntry:
    """One entry of an alert stream: its id and its fields, decoded."""

    entry_id: str
    fields: dict[str, str]

    def alert(self) -> Alert:
        """The typed alert (raises ValueError for an entry that is not one)."""
        return Alert.from_fields(self.fields)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _entries(raw: Any) -> list[AlertEntry]:
    """XRANGE-shaped reply -> entries (whether or not the client decodes replies). An entry
    deleted while pending (no fields) comes back with empty fields."""
    return [
        AlertEntry(_text(eid), {_text(k): _text(v) for k, v in (fields or {}).items()})
        for eid, fields in raw or ()
    ]


@dataclass
class AlertReader:
    """Reads one alert stream from a position, reconnecting on connection errors.

    Args:
        client: a Redis client; its socket timeout must exceed ``block_ms``.
        stream: the alert stream.
        after: read the entries after this id ("0-0": from the start); it moves on with every
            entry read.
        count: entries per read.
        block_ms: how long one following read waits for new entries.
        stop: set it to end a following read (checked between reads and retries).
    """

    client: redis.Redis
    stream: str
    _: KW_ONLY
    after: str = "0-0"
    count: int = 100
    block_ms: int = 5000
    stop: threading.Event = field(default_factory=threading.Event)
    outage: Outage = field(default_factory=lambda: Outage(log), init=False, repr=False)

    def tail(self, count: int) -> list[AlertEntry]:
        """The latest ``count`` entries, oldest first; reading goes on after the newest entry
        of the stream (``tail(0)``: only entries added from now on)."""
        raw = self._retrying(lambda: self.client.xrevrange(self.stream, count=max(count, 1)))
        latest = _entries(raw)
        if latest:
            self.after = latest[0].entry_id
        return list(reversed(latest))[: max(count, 0)]

    def read(self, *, follow: bool = False) -> Iterator[AlertEntry]:
        """The entries after :attr:`after`, in order: up to the end of the stream, or
        (``follow``) on and on, waiting for new ones, until :attr:`stop` is set."""
        while not self.stop.is_set():
            try:
                batch = self.batch(self.block_ms if follow else None)
            except CONNECTION_ERRORS:
                if self.stop.is_set():  # stopped while Redis was away
                    return
                raise
            yield from batch
            if not batch and not follow:
                return

    def batch(self, block_ms: int | None) -> list[AlertEntry]:
        """The next entries (``block_ms`` None: without waiting; else waiting up to that long
        for one), through connection errors (raises the last one if stopped meanwhile)."""
        batch = self._retrying(lambda: self._fetch(block_ms))
        if batch:
            self.after = batch[-1].entry_id  # a returned entry is read
        return batch

    def _fetch(self, block_ms: int | None) -> list[AlertEntry]:
        """The next entries after :attr:`after` (``block_ms`` None: without waiting)."""
        if block_ms is None:
            raw = self.client.xrange(self.stream, f"({self.after}", "+", count=self.count)
            return _entries(raw)
        reply: Any = self.client.xread({self.stream: self.after}, count=self.count, block=block_ms)
        return [e for _, items in reply or () for e in _entries(items)]

    def _retrying(self, step: Callable[[], T]) -> T:
        """Run ``step`` through connection errors with the package's backoff
        (:func:`~detector.gateway.streams.retry`); logs the outage once when it starts and
        once when it ends. Stopped while Redis is away: raises the last connection error."""
        results: list[T] = []
        errors: list[Exception] = []

        def failed(exc: Exception) -> None:
            if self.outage.since is None:
                log.warning("redis connection lost (%s: %s), reconnecting",
                            type(exc).__name__, exc)  # fmt: skip
            self.outage.failed()
            errors.append(exc)

        if not retry(lambda: results.append(step()), self.stop, failed):
            raise errors[-1]
        self.outage.ok()
        return results[0]


@dataclass
class GroupAlertReader(AlertReader):
    """Reads an alert stream through a consumer group: every entry at least once.

    An entry read stays in the consumer's pending list until :meth:`ack`; a reader started
    again under the same consumer name gets its unacknowledged entries first, then new ones.
    After a connection error it reads its pending entries again (a reply lost on the way may
    have moved entries there), so an entry may come twice, never not at all. Entries other
    consumers of the group left pending for ``claim_idle_ms`` are claimed (a consumer that
    is gone for good). Alerts trimmed from the stream before they were delivered, or while
    pending, are counted in :attr:`trimmed` and logged, and never returned.

    Args:
        group, consumer: the consumer group (created if missing) and this reader's name in
            it; keep the name stable across restarts.
        start: where a new group starts: ``"0"``, at the oldest entry of the stream (every
            alert), or ``"$"``, after the newest (alerts from now on).
        claim_idle_ms: claim entries pending this long with other consumers (None: never).
    """

    group: str
    consumer: str
    start: str = "0"
    claim_idle_ms: int | None = 60_000
    trimmed: int = field(default=0, init=False)
    undelivered: int | None = field(default=None, init=False)
    _position: str = field(default="0-0", init=False, repr=False)
    _pending_after: str | None = field(default="0", init=False, repr=False)
    _claim_after: str = field(default="0-0", init=False, repr=False)
    _claim_at: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.start not in ("0", "$"):
            msg = f"a new group starts at '0' or '$', not {self.start!r}"
            raise ValueError(msg)
        self._read_new = self.client.register_script(_READ_NEW)

    def ack(self, entry: AlertEntry) -> None:
        """Acknowledge an entry taken care of (through connection errors)."""
        self._retrying(lambda: self.client.xack(self.stream, self.group, entry.entry_id))

    def _fetch(self, block_ms: int | None) -> list[AlertEntry]:
        try:
            return self._next(block_ms)
        except CONNECTION_ERRORS:
            self._pending_after = "0"  # a lost reply may have left entries pending for us
            raise

    def _next(self, block_ms: int | None) -> list[AlertEntry]:
        while self._pending_after is not None:
            try:
                reply: Any = self.client.xreadgroup(
                    self.group, self.consumer, {self.stream: self._pending_after}, count=self.count
                )
            except redis.ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                reply = None  # no group yet, nothing pending: the script creates it
            entries = [e for _, items in reply or () for e in _entries(items)]
            if not entries:
                self._pending_after = None
                break
            self._pending_after = entries[-1].entry_id
            if live := self._drop_trimmed(entries):
                return live
        due = self.claim_idle_ms is not None and time.monotonic() >= self._claim_at
        if due and (claimed := self._claim(self.claim_idle_ms or 0)):
            return claimed
        batch = self._new()
        if batch or block_ms is None:
            return batch
        # Wait for entries after the group's position without consuming any: every entry
        # the group reads goes through the script, which counts what was trimmed unread.
        self.client.xread({self.stream: self._position}, count=1, block=block_ms)
        return self._new()

    def _new(self) -> list[AlertEntry]:
        trimmed, undelivered, position, reply = self._read_new(
            keys=[self.stream],
            args=[self.group, self.consumer, self.count, self.start],
            client=self.client,
        )
        self._position = _text(position)
        self.undelivered = None if int(undelivered) < 0 else int(undelivered)
        if int(trimmed):
            self._note_trimmed(int(trimmed), "before the group read them")
        # A script's reply is raw: each entry's fields a flat list of names and values.
        return _entries(
            (eid, dict(zip(flat[::2], flat[1::2], strict=True)))
            for _, items in reply or ()
            for eid, flat in items
        )

    def _claim(self, idle_ms: int) -> list[AlertEntry]:
        """Entries of other consumers idle for ``idle_ms``, a page at a time; a whole pass
        every :data:`CLAIM_INTERVAL_S`."""
        while True:
            try:
                cursor, raw, deleted = self.client.xautoclaim(
                    self.stream, self.group, self.consumer, idle_ms, self._claim_after,
                    count=self.count,
                )  # fmt: skip
            except redis.ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                cursor, raw, deleted = "0-0", [], []
            self._claim_after = _text(cursor)
            if deleted:  # Redis dropped them from the pending list
                self._note_trimmed(len(deleted), "while pending")
            if self._claim_after == "0-0":
                self._claim_at = time.monotonic() + CLAIM_INTERVAL_S
            if (entries := self._drop_trimmed(_entries(raw))) or self._claim_after == "0-0":
                return entries

    def _drop_trimmed(self, entries: list[AlertEntry]) -> list[AlertEntry]:
        """The entries that still have their fields; those trimmed while pending are
        counted and acknowledged (there is nothing left to deliver)."""
        gone = [e.entry_id for e in entries if not e.fields]
        if gone:
            self.client.xack(self.stream, self.group, *gone)
            self._note_trimmed(len(gone), "while pending")
        return [e for e in entries if e.fields]

    def _note_trimmed(self, n: int, when: str) -> None:
        if n < 0:
            log.warning("alerts of %s were trimmed %s (group %s; how many is unknown: the"
                        " group has no read counter)", self.stream, when, self.group)  # fmt: skip
            return
        self.trimmed += n
        log.warning("%d alerts of %s were trimmed %s (group %s): never delivered",
                    n, self.stream, when, self.group)  # fmt: skip


def read_alerts(
    redis_url: str,
    *,
    stream: str = DEFAULT_ALERTS_STREAM,
    follow: bool = False,
    group: str | None = None,
    consumer: str | None = None,
    start: str = "0",
    claim_idle_ms: int | None = 60_000,
    block_ms: int = 5000,
    stop: threading.Event | None = None,
    **connection: Any,
) -> Iterator[Alert]:
    """The alerts of an alert stream, typed, in order: one-shot or following.

    Without ``group``, the stream is read as it is (nothing is recorded in Redis): from
    ``start`` (``"0"``: the oldest alert; ``"$"``: only alerts added from now on; or an entry
    id: after it) to the end, or on and on with ``follow``. With ``group``, through that
    consumer group (created at ``start``, ``"0"`` or ``"$"``; an existing group goes on from
    where it was): **at least once**. An alert is acknowledged when you ask for the next one,
    so what you did with it is covered: an alert of a loop left with ``break`` or an exception
    is not acknowledged and comes again at the next read with the same group and consumer.
    Alerts trimmed from the stream before they were read are logged, never yielded.

    Redis restarts and failovers are ridden through: the reader reconnects (backing off up
    to 5 s) and goes on where it was. An entry that is not an alert is logged and skipped.

    Args:
        redis_url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        stream: the alert stream.
        follow: keep waiting for new alerts (until ``stop`` is set, or the loop is left).
        group: a consumer group of your own on the alert stream (not the detector's).
        consumer: this reader's name in ``group``, stable across restarts (default: the
            host name).
        start: see above.
        claim_idle_ms: with a group, take over alerts other consumers left unacknowledged
            this long (None: never).
        block_ms: how long one following read waits before looking at ``stop`` again.
        stop: set it (from another thread) to end a following read.
        **connection: more arguments of ``redis.Redis.from_url`` (``password``,
            ``ssl_ca_certs``, ...).

    Example:
        >>> from detector import read_alerts
        >>> for alert in read_alerts("redis://localhost:6379/0", group="pager",
        ...                          follow=True):  # doctest: +SKIP
        ...     if alert.kind == "anomaly" and alert.score > 0.99999:
        ...         page(alert.producer, alert.why, dedupe_key=alert.alert_id)
    """
    if consumer is not None and group is None:
        msg = "consumer needs a group"
        raise ValueError(msg)
    client = redis.Redis.from_url(
        redis_url,
        **{
            "decode_responses": True,
            "socket_timeout": max(10.0, 2 * block_ms / 1000),
            "socket_connect_timeout": 5.0,
            # No hidden retry: a read retried after its reply was lost would move entries
            # into the pending list unseen; the reader retries and re-reads them itself.
            "retry": Retry(NoBackoff(), 0),
            **connection,
        },
    )
    options: dict[str, Any] = {"block_ms": block_ms, "stop": stop or threading.Event()}
    try:
        if group is None:
            reader = AlertReader(client, stream, **options)
            if start == "$":
                reader.tail(0)
            else:
                reader.after = "0-0" if start == "0" else start
            for entry in reader.read(follow=follow):
                if (alert := _alert(entry)) is not None:
                    yield alert
            return
        grouped = GroupAlertReader(client, stream, group=group,
                                   consumer=consumer or default_consumer(), start=start,
                                   claim_idle_ms=claim_idle_ms, **options)  # fmt: skip
        for entry in grouped.read(follow=follow):
            if (alert := _alert(entry)) is not None:
                yield alert  # the caller takes care of it ...
            grouped.ack(entry)  # ... and asks for the next: acknowledged
    finally:
        client.close()


def _alert(entry: AlertEntry) -> Alert | None:
    try:
        return entry.alert()
    except ValueError as exc:
        log.warning("entry %s is not an alert, skipped: %s", entry.entry_id, exc)
        return None
