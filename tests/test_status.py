"""Long runs are not silent: a periodic status line, and a log line when Redis comes back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import redis

from detector.core.settings import Settings
from detector.gateway.embedded import EmbeddedRedis
from detector.gateway.streams import connect
from detector.runtime.worker import Worker
from tests.helpers import append, order_events


def _status_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [rec for rec in caplog.records if rec.name == "detector.runtime.status"]


def test_status_line_reports_the_run(
    r: redis.Redis, stream_name: str, settings_factory: Callable[..., Settings],
    worker_factory: Callable[..., Worker], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    events = order_events(producers=3, per_producer=200)
    append(r, stream_name, events)
    r.xadd(stream_name, {"producer": "svc-9", "ts": "not a time"})  # one dead letter
    # Idle longer than the worker's XINFO period (5 s), so the last lines show the lag at 0.
    settings = settings_factory(status_interval_s=0.2, idle_timeout_ms=6000)
    caplog.set_level(logging.INFO, logger="detector.runtime.status")
    stats = worker_factory(settings).run()

    records = _status_records(caplog)
    assert len(records) >= 10, "a line every 0.2 s over a run of 6 s and more"
    last: Any = records[-1]
    total = len(events) + 1
    assert last.status["events"] == stats.events == total
    assert last.status["dead_letters"] == 1
    assert last.status["producers"] == 3
    assert last.status["alerts"] == stats.alerts
    assert last.status["lag"] == 0
    assert last.getMessage().startswith(f"status: {total:,} events (")
    assert "1 dead letters, 3 producers" in last.getMessage()
    assert max(rec.status["events_per_s"] for rec in records) > 0  # type: ignore[attr-defined]


def test_status_interval_0_turns_it_off(
    r: redis.Redis, stream_name: str, settings_factory: Callable[..., Settings],
    worker_factory: Callable[..., Worker], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    append(r, stream_name, order_events(producers=1, per_producer=10))
    caplog.set_level(logging.INFO, logger="detector.runtime.status")
    worker_factory(settings_factory(status_interval_s=0, idle_timeout_ms=600)).run()
    assert _status_records(caplog) == []


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_reconnect_after_a_redis_restart_is_logged(
    persistent_server: EmbeddedRedis, settings_factory: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    url = persistent_server.url
    settings = replace(settings_factory(), redis_url=url, until_idle=False, status_interval_s=0)
    events = order_events(producers=2, per_producer=100)
    r = redis.Redis.from_url(url)
    append(r, settings.streams[0], events[:100])
    r.close()
    caplog.set_level(logging.INFO, logger="detector")
    client = connect(url, block_ms=settings.block_ms)
    worker = Worker(settings, client)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: worker.stats.events >= 100, 30, "the first events")
        persistent_server.kill()
        time.sleep(1.0)
        persistent_server.start()
        r = redis.Redis.from_url(url)
        append(r, settings.streams[0], events[100:])
        r.close()
        _wait_for(lambda: worker.stats.events >= len(events), 60, "the events after the restart")
    finally:
        worker.stop()
        thread.join(timeout=30)
        client.close()
    assert worker.stats.events == len(events)
    back = [rec for rec in caplog.records if "reconnected after" in rec.getMessage()]
    assert [rec.name for rec in back] == ["detector.runtime.worker"], caplog.text
    assert float(back[0].getMessage().split()[2]) >= 0.9  # the outage lasted the 1 s down
