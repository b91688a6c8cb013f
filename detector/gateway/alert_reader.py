"""Alert reader: the entries of an alert stream, in order, through Redis restarts.

The one reader of alert streams: ``detector alerts`` (one-shot and ``--follow``) uses it, and a
Python API or a notifier is meant to reuse it (:meth:`AlertEntry.alert` gives the typed
:class:`~detector.core.alerts.Alert`). It reads with plain ``XRANGE``/``XREAD`` (no consumer group,
nothing acknowledged), remembers the id of the last entry it yielded, and on a connection error
backs off (capped), reconnects and resumes after that id: no entry twice, none skipped unless
the stream was trimmed past it meanwhile. A consumer-group variant would override
:meth:`AlertReader._fetch` (``XREADGROUP``) and keep the same retry loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypeVar

import redis

from detector.core.alerts import Alert
from detector.gateway.streams import CONNECTION_ERRORS, Outage, retry

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    """XRANGE-shaped reply -> entries (whether or not the client decodes replies)."""
    return [
        AlertEntry(_text(eid), {_text(k): _text(v) for k, v in fields.items()})
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
                batch = self._retrying(lambda: self._fetch(self.block_ms if follow else None))
            except CONNECTION_ERRORS:
                if self.stop.is_set():  # stopped while Redis was away
                    return
                raise
            for entry in batch:
                self.after = entry.entry_id  # before yielding: a yielded entry is read
                yield entry
            if not batch and not follow:
                return

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
