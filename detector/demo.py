"""Demo: a simulated shop with injected incidents, replayed live into Redis and watched.

A producer thread appends the shop's events to a stream at ``speed`` event-seconds per
wall-second; the worker runs in the main thread exactly as ``detector run`` does, and each
alert is printed as it is committed, marked with the incident it belongs to (or as false).
Progress (events replayed of the total, processed, alerts) is a live line on a terminal, a
line every few seconds elsewhere.
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
from dataclasses import dataclass, field

import redis
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from detector.console import event_time_text
from detector.core.alerts import Alert
from detector.core.errors import ConfigError
from detector.core.pipeline import Verdicts
from detector.core.settings import CHECKPOINT_KEY, Settings
from detector.runtime.worker import Worker
from detector.shop.simulator import DEMO_KINDS, Incident, generate, incident_for

DEMO_STREAM = "demo:events"
DEMO_CONSUMER = "demo"
APPEND_CHUNK = 1000
PROGRESS_INTERVAL_S = 5.0  # between progress lines when the output is not a terminal


@dataclass(slots=True)
class Scoreboard:
    """Alerts matched against the injected incidents."""

    incidents: list[Incident]
    caught: dict[Incident, Alert] = field(default_factory=dict)
    true_alerts: int = 0
    false_alerts: list[Alert] = field(default_factory=list)

    def record(self, alert: Alert) -> Incident | None:
        incident = incident_for(alert.producer, alert.event_time, self.incidents)
        if incident is None:
            self.false_alerts.append(alert)
        else:
            self.true_alerts += 1
            self.caught.setdefault(incident, alert)
        return incident


class Progress:
    """Events replayed so far of the total, processed and alerts: a live line on a terminal
    (under the alerts printed), else a line every ``PROGRESS_INTERVAL_S`` and a last one."""

    def __init__(self, out: Console, total: int, board: Scoreboard) -> None:
        self.out = out
        self.total = total
        self.board = board
        self.replayed = 0  # written by the producer thread
        self.processed = 0
        self._next = time.monotonic() + PROGRESS_INTERVAL_S
        self._live = Live(console=out, transient=True, auto_refresh=False)
        if out.is_terminal:
            self._live.start()

    def line(self) -> str:
        alerts = self.board.true_alerts + len(self.board.false_alerts)
        return (
            f"replayed {self.replayed:,}/{self.total:,} events, processed {self.processed:,}, "
            f"{alerts} alerts"
        )

    def update(self, processed: int) -> None:
        self.processed = processed
        if self.out.is_terminal:
            self._live.update(Text(self.line()), refresh=True)
        elif time.monotonic() >= self._next:
            self._next = time.monotonic() + PROGRESS_INTERVAL_S
            self.out.print(self.line())

    def close(self, processed: int) -> None:
        """The last line, which stays on the terminal."""
        self.processed = processed
        self._live.stop()
        self.out.print(self.line())


def _produce(client: redis.Redis, events: list[dict[str, str]], speed: float,
             done: threading.Event, progress: Progress) -> None:  # fmt: skip
    """Append events in event-time order, paced to ``speed`` (0: as fast as possible)."""
    start_wall = time.monotonic()
    start_ms = int(events[0]["ts"]) if events else 0
    i = 0
    while i < len(events):
        if speed > 0:
            due_ms = start_ms + (time.monotonic() - start_wall) * speed * 1000
            j = i
            while j < len(events) and j - i < APPEND_CHUNK and int(events[j]["ts"]) <= due_ms:
                j += 1
            if j == i:
                time.sleep(0.01)
                continue
        else:
            j = min(i + APPEND_CHUNK, len(events))
        pipe = client.pipeline(transaction=False)
        for fields in events[i:j]:
            pipe.xadd(DEMO_STREAM, fields)  # type: ignore[arg-type]
        pipe.execute()
        i = j
        progress.replayed = i
    done.set()


def run_demo(
    url: str,
    *,
    model: str,
    threshold: float | None,
    seed: int,
    hours: float,
    speed: float,
    metrics_port: int | None = None,
    console: Console | None = None,
) -> bool:
    """Run the demo against the Redis at ``url``; prints alerts live, then a summary."""
    out = console or Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    try:
        shop = generate(seed=seed, duration_s=hours * 3600, kinds=DEMO_KINDS)
    except ValueError as exc:  # too short a span for the incidents after the warm-up
        msg = f"--hours {hours:g} is too short for the demo's incidents ({exc}); try --hours 2"
        raise ConfigError(msg) from exc
    producers = sorted({e["producer"] for e in shop.events})
    out.print(
        f"[bold]shop simulation[/]: {len(shop.events):,} events from {len(producers)} producers "
        f"over {hours:g} h of event time, {len(shop.incidents)} incidents injected "
        f"({', '.join(sorted({i.kind for i in shop.incidents}))}); replay speed "
        f"{'max' if speed <= 0 else f'{speed:g}x'}"
    )
    client = redis.Redis.from_url(url)
    settings = Settings(
        redis_url=url, streams=(DEMO_STREAM,), consumer=DEMO_CONSUMER, model=model,
        threshold=threshold, metrics_port=metrics_port, until_idle=True, idle_timeout_ms=3000,
        checkpoint_secret=secrets.token_bytes(32),  # the demo's Redis lives as long as the demo
        status_interval_s=0,  # the demo shows its own progress
    )  # fmt: skip
    # A fresh start: a previous demo's stream (and group) and checkpoint go; not through
    # reset_state, which would warn about a --reset-state the user never passed.
    client.delete(DEMO_STREAM, CHECKPOINT_KEY.format(group=settings.group, consumer=DEMO_CONSUMER))
    board = Scoreboard(shop.incidents)
    progress = Progress(out, len(shop.events), board)

    def show(verdicts: Verdicts) -> None:
        for alert in verdicts.emitted():
            incident = board.record(alert)
            mark = f"[green]{incident.kind}[/]" if incident else "[red]false alert[/]"
            out.print(
                f"[bold]ALERT[/] {event_time_text(alert.event_time)} "
                f"[cyan]{alert.producer:<12}[/] score={alert.score:.5f} "
                f"{alert.why}  -> {mark}"
            )
        progress.update(worker.stats.events)

    worker = Worker(settings, on_verdicts=show)
    if metrics_port is not None:
        worker.metrics.serve(metrics_port)
    done = threading.Event()
    producer = threading.Thread(
        target=_produce, args=(client, shop.events, speed, done, progress), daemon=True
    )
    started = time.monotonic()
    producer.start()
    try:
        worker.run(until_idle=True)
        while not done.is_set():  # the worker went idle before the producer finished: go on
            worker.run(until_idle=True)
        producer.join()
    finally:
        progress.close(worker.stats.events)
    _summary(out, board, worker.stats.events, time.monotonic() - started, worker)
    client.close()
    return True


def _summary(out: Console, board: Scoreboard, events: int, elapsed_s: float,
             worker: Worker) -> None:  # fmt: skip
    table = Table(title="incidents", title_justify="left")
    for col in ("kind", "producer", "start", "caught", "delay", "why (first alert)"):
        table.add_column(col)
    for inc in sorted(board.incidents, key=lambda i: i.start_ms):
        alert = board.caught.get(inc)
        delay = f"{(alert.event_time - inc.start_ms) / 1000:.0f}s" if alert else "-"
        table.add_row(
            inc.kind, inc.producer, event_time_text(inc.start_ms),
            "[green]yes[/]" if alert else "[red]no[/]", delay,
            alert.reasons[0].feature if alert and alert.reasons else "",
        )  # fmt: skip
    out.print(table)
    caught = len(board.caught)
    total = len(board.incidents)
    producers = len(worker.pipeline.store)
    out.print(
        f"[bold]summary[/]: incidents injected {total}, caught {caught}, missed {total - caught}; "
        f"alerts {board.true_alerts + len(board.false_alerts)} "
        f"({board.true_alerts} on incidents, {len(board.false_alerts)} false); "
        f"{events:,} events from {producers} producers in {elapsed_s:.1f}s "
        f"({worker.stats.invalid} dead-lettered)"
    )
    for alert in board.false_alerts[:5]:
        out.print(
            f"  false alert: {alert.producer} {event_time_text(alert.event_time)} {alert.why}"
        )
