"""Status: a periodic one-line summary of a running worker, so a long run is never silent.

On a terminal it is a live line (rich) refreshed every second, above which log lines keep
scrolling; elsewhere an INFO log line every ``status_interval_s`` (with the figures as
``extra`` fields for JSON logs). The figures are the worker's own counters
(:class:`~detector.runtime.consumer.RunStats`) and its lag gauge (set from ``XINFO GROUPS`` by the
worker's housekeeping), never counted again here.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.live import Live

    from detector.runtime.worker import Worker

log = logging.getLogger(__name__)
LIVE_REFRESH_S = 1.0


@dataclass(frozen=True, slots=True)
class Status:
    """The figures of one status line."""

    events: int
    alerts: int
    dead_letters: int
    producers: int
    lag: int
    redis_errors: int


def snapshot(worker: Worker) -> Status:
    """The worker's figures now; lag summed over its input streams."""
    s = worker.stats
    registry = worker.metrics.registry
    lag = sum(
        registry.get_sample_value("detector_consumer_lag", {"stream": stream}) or 0.0
        for stream in worker.settings.streams
    )
    return Status(s.events, s.alerts, s.invalid, worker.producers, int(lag), s.redis_errors)


def status_line(now: Status, rate: float) -> str:
    """The line itself.

    >>> status_line(Status(12000, 3, 1, 20, 150, 0), 400.0)
    'status: 12,000 events (400/s), lag 150, 3 alerts, 1 dead letters, 20 producers'
    >>> status_line(Status(5, 0, 0, 1, 0, 2), 0.5)
    'status: 5 events (0.5/s), lag 0, 0 alerts, 0 dead letters, 1 producers, 2 redis errors'
    """
    per_s = f"{rate:,.0f}" if rate >= 10 else f"{rate:.1g}"
    errors = f", {now.redis_errors} redis errors" if now.redis_errors else ""
    return (
        f"status: {now.events:,} events ({per_s}/s), lag {now.lag:,}, {now.alerts:,} alerts, "
        f"{now.dead_letters:,} dead letters, {now.producers:,} producers{errors}"
    )


class StatusReporter:
    """Shows :func:`status_line` every ``interval_s`` (0: never) while the worker runs.

    Args:
        worker: the worker whose figures are shown.
        interval_s: seconds between log lines (0 turns the status off).
        live: a live terminal line instead of log lines (default: stderr is a terminal).
    """

    def __init__(self, worker: Worker, interval_s: float, live: bool | None = None) -> None:
        self.worker = worker
        self.interval_s = interval_s
        self.live = sys.stderr.isatty() if live is None else live
        self._last: tuple[float, int] | None = None  # (time, events) of the previous line
        self._next = 0.0
        self._display: Live | None = None
        self._streams: list[tuple[logging.StreamHandler[Any], Any]] = []

    def tick(self) -> None:
        """Called every round of the worker's loop: cheap unless a line is due."""
        if self.interval_s <= 0:
            return
        now = time.monotonic()
        if self._last is None:  # the run starts: the first line after one interval
            self._last = (now, self.worker.stats.events)
            self._next = now + self._period()
            return
        if now < self._next:
            return
        self._next = now + self._period()
        figures = snapshot(self.worker)
        then, events = self._last
        rate = (figures.events - events) / max(now - then, 1e-9)
        self._last = (now, figures.events)
        line = status_line(figures, rate)
        if self.live:
            self._show_live(line)
        else:
            log.info(line, extra={"status": {**asdict(figures), "events_per_s": round(rate, 1)}})

    def close(self) -> None:
        """The run ends: remove the live line, give the log handlers their stream back."""
        if self._display is not None:
            self._display.stop()
            self._display = None
        for handler, stream in self._streams:
            handler.setStream(stream)
        self._streams.clear()
        self._last = None

    def _period(self) -> float:
        return min(self.interval_s, LIVE_REFRESH_S) if self.live else self.interval_s

    def _show_live(self, line: str) -> None:
        from rich.text import Text

        if self._display is None:
            from rich.console import Console
            from rich.live import Live

            original = sys.stderr
            self._display = Live(
                console=Console(file=original), auto_refresh=False, transient=True,
                redirect_stdout=False, redirect_stderr=True,
            )  # fmt: skip
            self._display.start()
            # Log handlers hold the original stderr: point them at rich's proxy so their
            # lines scroll above the live one instead of writing over it.
            proxy = sys.stderr
            for handler in logging.getLogger().handlers if proxy is not original else ():
                if isinstance(handler, logging.StreamHandler) and handler.stream is original:
                    handler.setStream(proxy)
                    self._streams.append((handler, original))
        self._display.update(Text(line), refresh=True)
