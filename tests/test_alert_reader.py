"""The alert reader: every alert once, in order, through a Redis restart (``alerts --follow``);
through a consumer group at least once, counting what was trimmed unread; ``read_alerts``."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from detector import read_alerts
from detector.core.alerts import Alert, alert_id
from detector.core.features import Reason
from detector.gateway.alert_reader import AlertReader, GroupAlertReader
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


# -- the Python API and the group reader --------------------------------------------------


def test_read_alerts_yields_typed_alerts_and_skips_what_is_not_one(
    r: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    _add(r, 0, 1)
    r.xadd(STREAM, {"garbage": "1"})
    _add(r, 2)
    assert list(read_alerts(redis_url)) == [_alert(n) for n in range(3)]
    assert "is not an alert, skipped" in caplog.text
    assert list(read_alerts(redis_url, start="$")) == []  # only alerts from now on
    first = r.xrange(STREAM, count=1)[0][0]
    assert [a.producer for a in read_alerts(redis_url, start=first)] == ["svc-1", "svc-2"]
    assert list(read_alerts(redis_url, stream="other")) == []
    with pytest.raises(ValueError, match="needs a group"):
        next(read_alerts(redis_url, consumer="c"))


def test_a_group_acknowledges_an_alert_when_the_next_is_asked_for(
    r: redis.Redis, redis_url: str
) -> None:
    _add(r, *range(5))
    alerts = read_alerts(redis_url, group="pager", consumer="c1")
    assert [next(alerts).producer for _ in range(3)] == ["svc-0", "svc-1", "svc-2"]
    # The first two were acknowledged when the next was asked for; the third is being
    # handled (the batch read the other two as well).
    assert r.xpending(STREAM, "pager")["pending"] == 3
    alerts.close()  # a loop left with break or an exception: the third is not acknowledged
    assert r.xpending(STREAM, "pager")["pending"] == 3
    again = list(read_alerts(redis_url, group="pager", consumer="c1"))
    assert [a.producer for a in again] == ["svc-2", "svc-3", "svc-4"]
    assert r.xpending(STREAM, "pager")["pending"] == 0  # the end of a loop acknowledges all
    _add(r, 5)
    assert [a.producer for a in read_alerts(redis_url, group="pager")] == ["svc-5"]
    # Another group reads every alert from the oldest; one started at "$" only new ones.
    assert len(list(read_alerts(redis_url, group="audit"))) == 6
    assert list(read_alerts(redis_url, group="late", start="$")) == []


def test_a_group_counts_alerts_trimmed_before_it_read_them_across_restarts(
    r: redis.Redis,
) -> None:
    def reader() -> GroupAlertReader:
        return GroupAlertReader(r, STREAM, group="n", consumer="c", count=2)

    def drain(reader: GroupAlertReader) -> list[str]:
        got = []
        for entry in reader.read():
            reader.ack(entry)
            got.append(entry.fields["producer"])
        return got

    _add(r, *range(5))
    first = reader()
    assert [e.fields["producer"] for e in first.batch(None)] == ["svc-0", "svc-1"]
    first.stop.set()  # the batch is not acknowledged: read again at the next start
    first = reader()
    assert drain(first) == [f"svc-{n}" for n in range(5)]
    assert first.trimmed == 0 and first.undelivered == 0
    _add(r, *range(5, 15))
    r.xtrim(STREAM, maxlen=4, approximate=False)  # 5..10 trimmed before the group read them
    got = first.batch(None)
    assert [e.fields["producer"] for e in got] == ["svc-11", "svc-12"]
    assert first.trimmed == 6 and first.undelivered == 2
    for entry in got:
        first.ack(entry)
    # A second gap after a restart is counted exactly too: the group's counter skipped the
    # first one.
    _add(r, *range(15, 20))
    r.xtrim(STREAM, maxlen=1, approximate=False)  # 13..18 trimmed unread
    second = reader()
    assert drain(second) == ["svc-19"]
    assert second.trimmed == 6
    # Entries trimmed while pending are counted and acknowledged, never returned.
    _add(r, 20, 21)
    assert len(second.batch(None)) == 2  # read, not acknowledged
    r.xtrim(STREAM, maxlen=0, approximate=False)
    third = reader()
    assert list(third.read()) == []
    assert third.trimmed == 2 and r.xpending(STREAM, "n")["pending"] == 0


def test_a_group_another_tool_created_counts_a_gap_only_when_there_is_one(
    r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    _add(r, 0, 1)
    r.xgroup_create(STREAM, "made", id="0")  # no ENTRIESREAD: Redis knows no read counter
    made = GroupAlertReader(r, STREAM, group="made", consumer="c")
    assert len(made.batch(None)) == 2 and made.trimmed == 0
    assert "trimmed" not in caplog.text  # nothing was ever trimmed: no gap
    _add(r, 2, 3)
    r.xtrim(STREAM, maxlen=1, approximate=False)
    r.xgroup_create(STREAM, "late", id="0")
    late = GroupAlertReader(r, STREAM, group="late", consumer="c")
    assert [e.fields["producer"] for e in late.batch(None)] == ["svc-3"]
    assert late.trimmed == 0 and "how many is unknown" in caplog.text


def test_a_group_claims_what_a_gone_consumer_left_and_rereads_its_own_after_an_error(
    r: redis.Redis,
) -> None:
    _add(r, *range(4))
    gone = GroupAlertReader(r, STREAM, group="n", consumer="gone", count=3)
    assert len(gone.batch(None)) == 3  # never acknowledged
    other = GroupAlertReader(r, STREAM, group="n", consumer="other", claim_idle_ms=0)
    got = [e.fields["producer"] for e in other.read()]
    assert got == ["svc-0", "svc-1", "svc-2", "svc-3"]
    assert r.xpending_range(STREAM, "n", "-", "+", 10)[0]["consumer"] == "other"
    # A connection error (a reply possibly lost) makes the reader read its pending again.
    fresh = GroupAlertReader(r, STREAM, group="m", consumer="c", count=2)
    assert len(fresh.batch(None)) == 2
    fresh._pending_after = None
    fresh.client = redis.Redis(port=1, socket_connect_timeout=0.2)  # refused
    fresh.stop.set()
    with pytest.raises(redis.ConnectionError):
        fresh.batch(None)
    fresh.client, fresh.stop = r, threading.Event()
    assert [e.fields["producer"] for e in fresh.read()] == ["svc-0", "svc-1", "svc-2", "svc-3"]


def test_read_alerts_follows_through_a_redis_restart(persistent_server: EmbeddedRedis) -> None:
    url = persistent_server.url
    client = redis.Redis.from_url(url)
    _add(client, 0)
    stop = threading.Event()
    got: queue.Queue[Alert] = queue.Queue()

    def follow() -> None:
        for alert in read_alerts(url, follow=True, group="pager", block_ms=200, stop=stop):
            got.put(alert)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        assert got.get(timeout=10) == _alert(0)
        persistent_server.kill()
        time.sleep(1.0)
        persistent_server.start()
        client = redis.Redis.from_url(url)
        _add(client, 1, 2)
        assert [got.get(timeout=30) for _ in range(2)] == [_alert(1), _alert(2)]
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()
    assert client.xpending(STREAM, "pager")["pending"] <= 1  # the last one, being handled
    client.close()


def test_reading_alerts_imports_neither_river_nor_numpy() -> None:
    code = (
        "import sys\n"
        "from detector import read_alerts\n"
        "print(sorted(m for m in ('river', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_the_readme_example_runs_as_written(r: redis.Redis, redis_url: str) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    _add(r, 0, 1)
    paged: list[tuple[str, str, str]] = []

    class Stop(Exception):
        pass

    def page(producer: str, why: str, dedupe_key: str) -> None:
        paged.append((producer, why, dedupe_key))
        if len(paged) == 2:
            raise Stop  # the handling of the second alert fails: it stays unacknowledged

    printed: list[tuple[object, ...]] = []
    names = {"page": page, "print": lambda *a: printed.append(a)}
    with pytest.raises(Stop):
        exec(code.replace("redis://localhost:6379/0", redis_url), names)  # noqa: S102
    assert [p[0] for p in printed] == [1_767_225_600_000, 1_767_225_600_001]
    assert [p[2] for p in paged] == [_alert(0).alert_id, _alert(1).alert_id]
    assert r.xpending(STREAM, "pager")["pending"] == 1  # the first acknowledged, not the second
