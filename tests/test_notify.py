"""``detector notify``: every alert posted to a real local HTTP server at least once, through
server errors, timeouts, refusals and a notifier killed with SIGKILL; the webhook URL a secret."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from detector.acl import AclConfig, acl_lines
from detector.core.errors import ConfigError
from detector.gateway.embedded import EmbeddedRedis, free_port
from detector.notifier import Notifier, NotifierConfig, Webhook
from detector.runtime.metrics import NotifierMetrics
from detector.runtime.worker import Worker
from tests import test_security as sec
from tests.helpers import append, outlier
from tests.test_alert_reader import STREAM, _add, _alert
from tests.test_cli import clean_env, cli, invoke

DEAD = "detector:notify:dead-letter"
# (status, headers, body, seconds to wait first); status 0: never answer, close after the wait.
Reply = tuple[int, dict[str, str], bytes, float]
OK: Reply = (200, {}, b"ok", 0.0)
PASSWORDS = {**sec.PASSWORDS, "notifier": "n-Pa55-4c5d6e"}


@dataclass
class Hook:
    """A webhook on a local port: records every request and answers as ``answer`` says."""

    answer: Callable[[int, dict[str, Any]], Reply] = lambda n, payload: OK
    requests: list[tuple[float, dict[str, Any], int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hook.lock:
                    status, headers, body, wait = hook.answer(len(hook.requests), payload)
                    hook.requests.append((time.monotonic(), payload, status))
                time.sleep(wait)
                if status == 0:
                    return  # hung up without an answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0-s3cr3t-path"

    def accepted(self) -> list[str]:
        """The alert ids answered 2xx, in order."""
        with self.lock:
            return [p["alert_id"] for _, p, status in self.requests if 200 <= status < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def _notifier(redis_url: str, hook: Hook, **changes: Any) -> Notifier:
    config = NotifierConfig(stream=STREAM, group="notify", consumer="n1", dead_letter_stream=DEAD,
                            block_ms=100, max_backoff_s=0.8)  # fmt: skip
    config = replace(config, **changes)
    return Notifier(config, redis.Redis.from_url(redis_url), Webhook(hook.url, timeout_s=0.5),
                    metrics=NotifierMetrics(CollectorRegistry()))  # fmt: skip


def _ids(*numbers: int) -> list[str]:
    return [_alert(n).alert_id for n in numbers]


def test_notify_posts_each_alert_once_as_json_with_an_escaped_text(
    r: redis.Redis, redis_url: str, hook: Hook, tmp_path: Path
) -> None:
    _add(r, 0, 1, 2)
    r.xadd(STREAM, {**_alert(3).to_fields(0), "producer": "<!channel>"})  # type: ignore[arg-type]
    env = {"DETECTOR_WEBHOOK_URL": hook.url, "DETECTOR_LOG_FORMAT": "json"}
    out = cli("notify", "--redis-url", redis_url, "--until-idle", "--idle-timeout-ms", "300",
              env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert hook.accepted() == _ids(0, 1, 2, 3)
    first = hook.requests[0][1]
    assert first["producer"] == "svc-0" and first["kind"] == "anomaly"
    assert first["reasons"][0]["feature"] == "value"  # parsed, not a string
    assert "svc-0" in first["text"] and "amount" in first["text"]
    assert "&lt;!channel&gt;" in hook.requests[3][1]["text"]  # no mention from a producer id
    assert r.xpending(STREAM, "detector-notify")["pending"] == 0
    assert "delivered 4 alerts in 4 requests" in out.stderr
    assert "s3cr3t" not in out.stderr + out.stdout  # the URL is never shown
    _add(r, 4)  # a second run goes on from the group's position (the URL from a file now)
    secret = tmp_path / "webhook"
    secret.write_text(hook.url + "\n")
    env = {"DETECTOR_WEBHOOK_URL_FILE": str(secret)}
    again = cli("notify", "--redis-url", redis_url, "--until-idle", "--idle-timeout-ms", "300",
                env=env)  # fmt: skip
    assert again.returncode == 0 and hook.accepted() == _ids(0, 1, 2, 3, 4)


def test_server_errors_timeouts_and_throttling_are_retried_until_accepted(
    r: redis.Redis, redis_url: str
) -> None:
    failing: dict[int, Reply] = {
        0: (503, {}, b"down", 0.0),
        1: (502, {}, b"", 0.0),
        2: (0, {}, b"", 1.0),  # no answer within the timeout
        3: (429, {"Retry-After": "1"}, b"wait", 0.0),
        4: (503, {"Retry-After": "0"}, b"", 0.0),
    }
    hook = Hook(lambda n, payload: failing.get(n, OK))
    _add(r, 0, 1, 2)
    notifier = _notifier(redis_url, hook)
    started = time.monotonic()
    stats = notifier.run(until_idle=True, idle_timeout_ms=300)
    hook.close()
    assert hook.accepted() == _ids(0, 1, 2)  # each once, in order, after the failures
    assert [p["alert_id"] for _, p, _ in hook.requests[:6]] == _ids(0) * 6  # the first waited
    times = [t for t, _, _ in hook.requests]
    assert times[4] - times[3] >= 0.95  # Retry-After: 1 honoured
    assert times[5] - times[4] >= 0.45  # Retry-After: 0 is no retry at once
    # Backoff from 0.5 s, doubling, capped (here at 0.8 s).
    assert 0.45 <= times[1] - times[0] < 0.75 and times[2] - times[1] >= 0.75
    sample = notifier.metrics.registry.get_sample_value
    counts = {res: sample("detector_notify_requests_total", {"result": res})
              for res in ("ok", "server_error", "error", "throttled", "rejected")}  # fmt: skip
    assert counts == {"ok": 3, "server_error": 3, "error": 1, "throttled": 1, "rejected": 0}
    assert stats.delivered == sample("detector_notify_delivered_total") == 3
    assert stats.attempts == 8 and time.monotonic() - started < 15
    assert r.xpending(STREAM, "notify")["pending"] == 0


def test_a_permanent_refusal_goes_to_the_dead_letters_and_the_rest_goes_on(
    r: redis.Redis, redis_url: str
) -> None:
    refusal: Reply = (400, {}, b"no such channel " * 200, 0.0)
    hook = Hook(lambda n, payload: refusal if payload["producer"] == "svc-1" else OK)
    _add(r, 0, 1)
    r.xadd(STREAM, {"not": "an alert"})
    _add(r, 2)
    notifier = _notifier(redis_url, hook)
    stats = notifier.run(until_idle=True, idle_timeout_ms=300)
    hook.close()
    assert hook.accepted() == _ids(0, 2) and len(hook.requests) == 3  # a refusal is final
    refused, garbage = (fields for _, fields in r.xrange(DEAD))
    assert refused["status"] == "400" and refused["reason"] == "webhook_refused"
    assert refused["detail"].startswith("no such channel") and len(refused["detail"]) == 1000
    assert refused["field.alert_id"] == _alert(1).alert_id
    assert refused["source_stream"] == STREAM and refused["source_id"] == r.xrange(STREAM)[1][0]
    assert garbage["reason"] == "not_an_alert" and garbage["field.not"] == "an alert"
    assert stats.dead_lettered == 2 and stats.delivered == 2
    sample = notifier.metrics.registry.get_sample_value
    assert sample("detector_notify_dead_lettered_total") == 2
    assert sample("detector_notify_requests_total", {"result": "rejected"}) == 1
    assert r.xpending(STREAM, "notify")["pending"] == 0


def test_alerts_trimmed_before_delivery_are_counted(
    r: redis.Redis, redis_url: str, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    _add(r, 0)
    notifier = _notifier(redis_url, hook)
    notifier.run(until_idle=True, idle_timeout_ms=200)
    _add(r, *range(1, 9))
    r.xtrim(STREAM, maxlen=3, approximate=False)  # 1..5 never delivered
    stats = _notifier(redis_url, hook).run(until_idle=True, idle_timeout_ms=200)
    assert hook.accepted() == _ids(0, 6, 7, 8)
    assert stats.trimmed == 5 and "5 alerts of detector:alerts were trimmed" in caplog.text


def test_a_notifier_killed_and_restarted_delivers_every_alert(
    r: redis.Redis, redis_url: str
) -> None:
    hook = Hook(lambda n, payload: (200, {}, b"ok", 0.05))
    numbers = range(40)
    _add(r, *numbers)
    port = free_port()
    env = {**clean_env(), "DETECTOR_WEBHOOK_URL": hook.url}
    args = [sys.executable, "-m", "detector.cli", "notify", "--redis-url", redis_url]
    proc = subprocess.Popen([*args, "--metrics-port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(hook.accepted()) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert b"detector_notify_delivered_total" in body
    before = len(hook.accepted())
    assert 10 <= before < 40
    out = subprocess.run([*args, "--until-idle", "--idle-timeout-ms", "300"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    hook.close()
    assert out.returncode == 0, out.stderr
    got = hook.accepted()
    assert set(got) == set(_ids(*numbers))  # nothing lost
    assert len(got) - len(set(got)) <= 1  # at most the one in flight at the kill, twice
    assert r.xpending(STREAM, "detector-notify")["pending"] == 0


def test_the_webhook_url_comes_only_from_the_environment(redis_url: str, hook: Hook) -> None:
    base = ("notify", "--redis-url", redis_url, "--until-idle", "--idle-timeout-ms", "100")
    missing = cli(*base)
    assert missing.returncode == 2 and "DETECTOR_WEBHOOK_URL" in missing.stderr
    bad = cli(*base, env={"DETECTOR_WEBHOOK_URL": "ftp://user:pw@host/x"})
    assert bad.returncode == 2 and "pw" not in bad.stderr
    option = invoke(*base, "--webhook-url", hook.url)
    assert option.exit_code == 2 and "No such option" in option.output


def test_the_notifier_runs_fully_under_its_acl_user(tmp_path: Path) -> None:
    """A worker under its user writes alerts; `detector notify` under the notifier's user
    posts them, dead-letters a refusal, counts alerts trimmed unread (the script moves the
    group's counter) and claims: nothing it does is refused, and it can do nothing else."""
    passwords = PASSWORDS
    server = EmbeddedRedis()
    server.start()
    hook = Hook(lambda n, payload: (403, {}, b"gone", 0.0) if n == 1 else OK)
    try:
        cfg = AclConfig(streams=(sec.STREAM,), consumer="c1", notifier=True)
        admin = sec.secure_server(server, acl_lines(cfg, passwords))
        events = sec.workload()
        events.append(outlier("svc-0", int(events[-1]["ts"]) + 3000))
        append(sec.user_client(server, "producer"), sec.STREAM, events)
        Worker(sec.worker_settings(sec.user_url(server, "worker"))).run()
        written = [f["alert_id"] for _, f in admin.xrange("detector:alerts")]
        assert len(written) == 2
        url = f"redis://detector-notifier@127.0.0.1:{server.port}/0"
        env = {"DETECTOR_REDIS_PASSWORD": passwords["notifier"], "DETECTOR_WEBHOOK_URL": hook.url}
        args = ("notify", "--redis-url", url, "--until-idle", "--idle-timeout-ms", "300",
                "--claim-idle-ms", "0")  # fmt: skip
        out = cli(*args, env=env)
        assert out.returncode == 0, out.stderr
        assert hook.accepted() == written[:1] and admin.xlen(DEAD) == 1
        # Alerts trimmed before the notifier read them: the script moves the group's counter.
        for n in range(3):
            admin.xadd("detector:alerts", _alert(n).to_fields(0))  # type: ignore[arg-type]
        admin.xtrim("detector:alerts", maxlen=1, approximate=False)
        out = cli(*args, env=env)
        assert out.returncode == 0 and "2 trimmed before delivery" in out.stderr, out.stderr
        assert hook.accepted() == [written[0], _alert(2).alert_id]
        assert admin.acl_log() == [], "a command of the notifier was refused"

        n = redis.Redis(port=server.port, username="detector-notifier",
                        password=passwords["notifier"], decode_responses=True)  # fmt: skip
        sec.refused(lambda: n.xadd("detector:alerts", {"forged": "alert"}))
        sec.refused(lambda: n.xtrim("detector:alerts", maxlen=0))
        sec.refused(lambda: n.xrange(sec.STREAM))
        sec.refused(lambda: n.xadd(sec.DEAD, {"a": "1"}))
        sec.refused(lambda: n.xrange(DEAD))  # its dead letters are write-only for it
        sec.refused(lambda: n.hgetall("detector:checkpoint:detector:c1"))
        sec.refused(lambda: n.keys("*"))
        n.close()
        assert admin.xlen(DEAD) == 1
        admin.close()
    finally:
        hook.close()
        server.stop()


def test_acl_prints_the_notifier_user_when_asked() -> None:
    password = PASSWORDS["notifier"]
    out = cli("acl", "--notifier", "--notify-dead-letter-stream", "nd", "--alerts-stream", "al",
              env={"DETECTOR_ACL_NOTIFIER_PASSWORD": password})  # fmt: skip
    assert out.returncode == 0, out.stderr
    users = [x for x in out.stdout.splitlines() if x.startswith("ACL SETUSER")]
    assert [x.split()[2] for x in users] == [*sec.USERS.values(), "detector-notifier"]
    notifier = users[-1]
    assert "(+xadd %W~nd)" in notifier and "%RW~al)" in notifier and "%R~al)" in notifier
    assert password not in out.stdout
    assert "#" + hashlib.sha256(password.encode()).hexdigest() in notifier
    plain = cli("acl")
    assert "detector-notifier" not in plain.stdout
    with pytest.raises(ConfigError, match="cannot be the alerts stream"):
        AclConfig(notifier=True, notify_dead_letter_stream="detector:alerts")
