"""The command line, run as a user runs it: the installed entry point in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import redis

from detector.settings import HEALTH_KEY
from tests.conftest import TEST_KEY
from tests.helpers import append, order_events, outlier


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env["DETECTOR_CHECKPOINT_KEY"] = TEST_KEY.decode()
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = clean_env()
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "detector.cli", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, check=False,
    )  # fmt: skip


def test_help_shows_every_option_with_its_env_var() -> None:
    out = cli("run", "--help")
    assert out.returncode == 0
    for option, env in [
        ("--redis-url", "DETECTOR_REDIS_URL"), ("--stream", "DETECTOR_STREAM"),
        ("--group", "DETECTOR_GROUP"), ("--consumer", "DETECTOR_CONSUMER"),
        ("--alerts-stream", "DETECTOR_ALERTS_STREAM"),
        ("--dead-letter-stream", "DETECTOR_DEAD_LETTER_STREAM"), ("--model", "DETECTOR_MODEL"),
        ("--config", "DETECTOR_CONFIG"), ("--metrics-port", "DETECTOR_METRICS_PORT"),
        ("--until-idle", "DETECTOR_UNTIL_IDLE"),
    ]:  # fmt: skip
        assert option in out.stdout and env in out.stdout, option
    for command in ("score", "alerts", "check", "demo", "models"):
        assert cli(command, "--help").returncode == 0


def test_config_file_env_and_flags_in_order_of_precedence(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    config = tmp_path / "detector.toml"
    config.write_text('stream = ["from-file"]\nidle_timeout_ms = 200\nblock_ms = 100\n')
    for s in ("from-file", "from-env", "from-flag"):
        append(r, s, order_events(producers=1, per_producer=3))

    base = ["run", "--config", str(config), "--redis-url", redis_url, "--until-idle"]
    assert cli(*base).returncode == 0
    assert cli(*base, env={"DETECTOR_STREAM": "from-env"}).returncode == 0
    out = cli(*base, "--stream", "from-flag", env={"DETECTOR_STREAM": "from-env"})
    assert out.returncode == 0, out.stderr
    # Each run consumed exactly the stream its winning source named.
    for s in ("from-file", "from-env", "from-flag"):
        (group,) = r.xinfo_groups(s)
        assert group["entries-read"] == 3 and group["pending"] == 0, s
    assert "processed 3 events" in out.stderr
    r.close()


def test_bad_settings_exit_2(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("streem = ['typo']\n")
    out = cli("run", "--config", str(config), "--redis-url", redis_url)
    assert out.returncode == 2 and "unknown key 'streem'" in out.stderr
    out = cli("run", "--model", "no-such-model", "--redis-url", redis_url, "--until-idle")
    assert out.returncode == 2 and "unknown model" in out.stderr
    assert cli("run", "--metrics-port", "not-a-number").returncode == 2


def test_check_exit_codes(redis_url: str) -> None:
    assert cli("check", "--redis-url", redis_url).returncode == 1
    r = redis.Redis.from_url(redis_url)
    r.set(HEALTH_KEY.format(group="detector", consumer="w1"), b'{"events": 1}', px=5000)
    assert cli("check", "--redis-url", redis_url).returncode == 0
    assert cli("check", "--redis-url", redis_url, "--consumer", "w2").returncode == 1
    assert cli("check", "--redis-url", "redis://127.0.0.1:1/0").returncode == 1
    r.close()


def test_alerts_command_prints_lines_and_json(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    events = order_events(producers=2, per_producer=400)
    events.append(outlier("svc-1", int(events[-1]["ts"]) + 1000))
    append(r, "events", events)
    assert (
        cli("run", "--redis-url", redis_url, "--until-idle", "--idle-timeout-ms", "200").returncode
        == 0
    )

    text = cli("alerts", "--redis-url", redis_url)
    assert text.returncode == 0
    assert "svc-1" in text.stdout and "value(amount): 1e+06" in text.stdout
    lines = cli("alerts", "--redis-url", redis_url, "--json").stdout.splitlines()
    alert = orjson.loads(lines[-1])
    assert alert["producer"] == "svc-1" and alert["reasons"][0]["feature"] == "value"
    r.close()


def test_score_command_writes_one_row_per_event(tmp_path: Path) -> None:
    events = order_events(producers=2, per_producer=300)
    events.append(outlier("svc-0", int(events[-1]["ts"]) + 1000))
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    dst = tmp_path / "out.csv"
    out = cli("score", "--input", str(src), "--output", str(dst))
    assert out.returncode == 0, out.stderr
    rows = dst.read_text().splitlines()
    assert rows[0] == "producer,event_time,score,alert"
    assert len(rows) == len(events) + 1
    assert rows[-1].startswith("svc-0,") and rows[-1].endswith(",1")
    assert all(0 <= float(row.split(",")[2]) <= 1 for row in rows[1:] if row.split(",")[2])


def test_sigterm_finishes_the_batch_and_exits_0(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    append(r, "events", order_events(producers=2, per_producer=200))
    env = clean_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector.cli", "run", "--redis-url", redis_url,
         "--consumer", "w1", "--block-ms", "200"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    key = HEALTH_KEY.format(group="detector", consumer="w1")
    deadline = time.monotonic() + 30
    while not r.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.exists(key), "worker never reported health"
    while r.xpending("events", "detector")["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "processed 400 events" in err
    assert r.xpending("events", "detector")["pending"] == 0
    assert not r.exists(key)  # a stopped worker is not healthy
    r.close()


def test_run_without_url_uses_an_embedded_redis() -> None:
    out = cli("run", "--until-idle", "--idle-timeout-ms", "200")
    assert out.returncode == 0, out.stderr
    assert "embedded redis-server on redis://127.0.0.1:" in out.stderr
    assert "processed 0 events" in out.stderr
