"""Notifier: every alert posted to a webhook, at least once (``detector notify``).

The notifier reads the alert stream through a consumer group of its own
(:class:`~detector.gateway.alert_reader.GroupAlertReader`) and posts each alert as one JSON
object: the alert's fields (``reasons`` parsed) and a Slack-compatible ``text``. An alert is
acknowledged only once the webhook answered 2xx, or once it is in the notifier's dead-letter
stream: every alert is delivered at least once, and once unless the notifier stops between
the answer and the ack (receivers drop repeats by ``alert_id``).

- Connection errors, timeouts, 5xx, 429, 408 and 425 are retried, the same alert again, with
  capped exponential backoff (0.5 s doubling up to ``max_backoff_s``), or after the
  ``Retry-After`` the server asks for (0.5 s at least, :data:`MAX_RETRY_AFTER_S` at most).
  Alerts wait behind it: they are posted in order.
- Any other answer (4xx, and 3xx: redirects are not followed, a POST must not turn into a GET)
  is permanent: the alert goes to the dead-letter stream with the status and the start of the
  response, and is acknowledged in the same transaction. So does an entry that is no alert.
- Alerts trimmed from the stream before delivery are counted and logged by the reader.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis
from prometheus_client import CollectorRegistry

from detector import __version__
from detector.console import alert_json, chat_text
from detector.gateway.alert_reader import AlertEntry, GroupAlertReader
from detector.gateway.streams import CONNECTION_ERRORS, DeadLetter, retry
from detector.runtime.metrics import NotifierMetrics

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_RETRY_AFTER_S = 900.0  # a Retry-After beyond this is taken as this
RESPONSE_BYTES = 1000  # of a refusal's response kept in its dead letter
RETRIED = frozenset({408, 425, 429})  # 4xx that mean "later", not "never"


@dataclass(frozen=True, slots=True)
class Answer:
    """What one webhook request came to.

    Attributes:
        status: the HTTP status (None: no answer: connection error or timeout).
        body: the start of the response (or the error, without an answer).
        retry_after_s: the wait a 429 or 503 asked for (``Retry-After``), if any.
    """

    status: int | None
    body: str
    retry_after_s: float | None = None

    @property
    def result(self) -> str:
        """One of :data:`~detector.runtime.metrics.NOTIFY_RESULTS`."""
        if self.status is None:
            return "error"
        if 200 <= self.status < 300:
            return "ok"
        if self.status >= 500:
            return "server_error"
        return "throttled" if self.status in RETRIED else "rejected"


def retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), capped.

    >>> retry_after("7", 0.0), retry_after("Thu, 01 Jan 1970 00:01:00 GMT", 30.0)
    (7.0, 30.0)
    >>> retry_after("soon", 0.0) is None, retry_after("86400", 0.0)
    (True, 900.0)
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now_s
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx comes back as it is: urllib would resend a POST as a GET, without the alert."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Webhook:
    """One webhook endpoint, posted to with the standard library.

    Args:
        url: ``http://`` or ``https://`` URL (a secret: never logged, only its host).
        timeout_s: limit of each socket operation (connect, send, each read).
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.host = urlsplit(url).hostname or "?"
        self._opener = urllib.request.build_opener(_NoRedirect())

    def __repr__(self) -> str:
        return f"Webhook(host={self.host!r}, timeout_s={self.timeout_s})"

    def post(self, body: bytes) -> Answer:
        request = urllib.request.Request(  # noqa: S310 - the URL is checked: http(s) only
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"detector/{__version__}"},
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return Answer(response.status, _start(response.read(RESPONSE_BYTES)))
        except urllib.error.HTTPError as exc:  # an answer other than 2xx
            with exc:
                text = _start(exc.read(RESPONSE_BYTES))
            wait = retry_after(exc.headers.get("Retry-After"), time.time())
            return Answer(exc.code, text, wait if exc.code in (429, 503) else None)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return Answer(None, f"{type(reason).__name__}: {reason}")


def _start(raw: bytes) -> str:
    return raw[:RESPONSE_BYTES].decode(errors="replace")


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    """Where the notifier reads, how it retries, where refused alerts go.

    Attributes:
        stream: the alert stream.
        group, consumer: the notifier's consumer group on it and its name there (stable
            across restarts: its unacknowledged alerts come back to it).
        dead_letter_stream: alerts the webhook refused for good, with status and response.
        dead_letter_maxlen: approximate cap of that stream.
        start: where a new group starts: ``"0"`` (every alert in the stream) or ``"$"``.
        block_ms: how long one read waits for new alerts.
        claim_idle_ms: take over alerts other consumers of the group left pending this long.
        max_backoff_s: the longest wait between two attempts at one alert.
    """

    stream: str
    group: str
    consumer: str
    dead_letter_stream: str
    dead_letter_maxlen: int = 1_000_000
    start: str = "0"
    block_ms: int = 1000
    claim_idle_ms: int = 60_000
    max_backoff_s: float = 60.0


@dataclass
class NotifyStats:
    delivered: int = 0
    dead_lettered: int = 0
    attempts: int = 0
    trimmed: int = 0


@dataclass
class Notifier:
    """Posts the alerts of ``config.stream`` to ``webhook`` until stopped (or idle)."""

    config: NotifierConfig
    client: redis.Redis
    webhook: Webhook
    metrics: NotifierMetrics = field(default_factory=lambda: NotifierMetrics(CollectorRegistry()))
    stop: threading.Event = field(default_factory=threading.Event)
    stats: NotifyStats = field(default_factory=NotifyStats)

    def __post_init__(self) -> None:
        cfg = self.config
        self.reader = GroupAlertReader(
            self.client, cfg.stream, group=cfg.group, consumer=cfg.consumer, start=cfg.start,
            claim_idle_ms=cfg.claim_idle_ms, block_ms=cfg.block_ms, stop=self.stop,
        )  # fmt: skip

    def run(self, *, until_idle: bool = False, idle_timeout_ms: int = 2000) -> NotifyStats:
        """Deliver alerts until :attr:`stop` is set, or (``until_idle``) until none came for
        ``idle_timeout_ms``. An alert being retried when the stop comes stays pending."""
        block = min(self.config.block_ms, idle_timeout_ms) if until_idle else self.config.block_ms
        idle_since = time.monotonic()
        while not self.stop.is_set():
            try:
                batch = self.reader.batch(block)
            except CONNECTION_ERRORS:
                if self.stop.is_set():
                    break
                raise
            self._count_reader()
            for entry in batch:
                if not self.deliver(entry):
                    break
            if batch:
                idle_since = time.monotonic()
            elif until_idle and (time.monotonic() - idle_since) * 1000 >= idle_timeout_ms:
                break
        return self.stats

    def deliver(self, entry: AlertEntry) -> bool:
        """Post one alert until the webhook takes or refuses it; False if stopped first."""
        try:
            alert = entry.alert()
        except ValueError as exc:
            return self._dead_letter(entry, "not_an_alert", str(exc), None)
        body = orjson.dumps({**alert_json(entry.fields), "text": chat_text(entry.fields)})
        backoff = floor = min(FIRST_BACKOFF_S, self.config.max_backoff_s)
        host, failing_since = self.webhook.host, None
        while not self.stop.is_set():
            answer = self._post(body)
            if answer.result == "ok":
                if failing_since is not None:
                    log.info("webhook %s took alert %s after %.1f s of failures", host,
                             alert.alert_id, time.monotonic() - failing_since)  # fmt: skip
                return self._acknowledge(entry)
            if answer.result == "rejected":
                log.warning("webhook %s refused alert %s for good: HTTP %s", host,
                            alert.alert_id, answer.status)  # fmt: skip
                return self._dead_letter(entry, "webhook_refused", answer.body, answer.status)
            if failing_since is None:
                failing_since = time.monotonic()
                log.warning("webhook %s failed (%s), retrying alert %s", host,
                            answer.status or answer.body, alert.alert_id)  # fmt: skip
            asked = answer.retry_after_s  # honoured, but never a retry at once ("0")
            self.stop.wait(backoff if asked is None else max(asked, floor))
            backoff = min(backoff * 2, self.config.max_backoff_s)
        return False

    def _post(self, body: bytes) -> Answer:
        started = time.monotonic()
        answer = self.webhook.post(body)
        self.stats.attempts += 1
        self.metrics.request_seconds.observe(time.monotonic() - started)
        self.metrics.requests.labels(answer.result).inc()
        return answer

    def _acknowledge(self, entry: AlertEntry) -> bool:
        try:
            self.reader.ack(entry)
        except CONNECTION_ERRORS:  # stopped while Redis is away: it stays pending
            return False
        self.stats.delivered += 1
        self.metrics.delivered.inc()
        return True

    def _dead_letter(self, entry: AlertEntry, reason: str, detail: str, status: int | None) -> bool:
        """The entry into the dead-letter stream and acknowledged, in one transaction."""
        cfg = self.config
        raw = {k.encode(): v.encode() for k, v in entry.fields.items()}
        letter: dict[Any, Any] = DeadLetter(
            cfg.stream, entry.entry_id, raw, reason, detail
        ).to_fields(int(time.time() * 1000))
        letter["status"] = "" if status is None else str(status)

        def write() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(cfg.dead_letter_stream, letter, maxlen=cfg.dead_letter_maxlen,
                      approximate=True)  # fmt: skip
            pipe.xack(cfg.stream, cfg.group, entry.entry_id)
            pipe.execute()

        def failed(exc: Exception) -> None:
            log.warning("redis unavailable, retrying the dead letter: %s", exc)

        if not retry(write, self.stop, failed):
            return False
        self.stats.dead_lettered += 1
        self.metrics.dead_lettered.inc()
        return True

    def _count_reader(self) -> None:
        new = self.reader.trimmed - self.stats.trimmed
        if new:
            self.stats.trimmed += new
            self.metrics.trimmed.inc(new)
        if self.reader.undelivered is not None:
            self.metrics.undelivered.set(self.reader.undelivered)
