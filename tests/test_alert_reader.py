"""The alert reader: every alert once, in order, through a Redis restart (``alerts --follow``)."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time

import redis

from detector.core.alerts import Alert, alert_id
from detector.core.features import Reason
from detector.gateway.alert_reader import AlertReader
from detector.gateway.embedded import EmbeddedRedis
from tests.test_cli import clean_env

STREAM = "detector:alerts"


def _alert(n: int) -> Alert:
    why = (Reason("value", "amount", f"{n}e6", "20..40", 6.5),)
    return Alert(alert_id("events", f"{n}-0", "default"), f"svc-{n}", "events", f"{n}-0",
                 1_767_225_600_000 + n, 0.999, 0.99, "default", why)  # fmt: skip


def _add(client: redis.Redis, *numbers: int) -> None:
    for n in numbers:
        client.xadd(STREAM, _alert(n).to_fields(0))  # type: ignore[arg-type]


def test_one_shot_reads_every_entry_in_pages_as_typed_alerts(r: redis.Redis) -> None:
    _add(r, *range(7))
    reader = AlertReader(r, STREAM, count=3)
    got = [e.alert() for e in reader.read()]
    assert got == [_alert(n) for n in range(7)]
    _add(r, 7)
    assert [e.alert().producer for e in reader.read()] == ["svc-7"]  # resumes after the last
    tail = AlertReader(r, STREAM)
    assert [e.fields["producer"] for e in tail.tail(2)] == ["svc-6", "svc-7"]
    assert list(tail.read()) == []  # the tail went on after the newest entry


def _lines(stream: object, out: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        out.put(line.rstrip("\n"))


def _take(out: queue.Queue[str], n: int, timeout_s: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        try:
            got.append(out.get(timeout=0.1))
        except queue.Empty:
            continue
    return got


def test_follow_survives_a_redis_restart(persistent_server: EmbeddedRedis) -> None:
    url = persistent_server.url
    client = redis.Redis.from_url(url)
    _add(client, 0, 1, 2)
    client.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector.cli", "alerts", "--redis-url", url, "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )  # fmt: skip
    out: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    try:
        before = _take(out, 3, 30)
        assert [line.split()[1] for line in before] == ["svc-0", "svc-1", "svc-2"]
        persistent_server.kill()
        time.sleep(1.5)  # the reader's blocked XREAD fails; its retries are refused
        persistent_server.start()
        client = redis.Redis.from_url(url)
        _add(client, 3, 4)
        time.sleep(0.5)
        _add(client, 5)
        client.close()
        after = _take(out, 3, 60)
        assert [line.split()[1] for line in after] == ["svc-3", "svc-4", "svc-5"]
        assert _take(out, 1, 1.0) == []  # nothing twice
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "reconnected after" in err, err
