"""`detector demo` as a user runs it: progress as it goes, no warning about unpassed options."""

from __future__ import annotations

import re

import redis

from detector.core.settings import CHECKPOINT_KEY, DEFAULT_GROUP
from tests.test_cli import cli

PROGRESS = re.compile(r"replayed ([\d,]+)/([\d,]+) events, processed ([\d,]+), (\d+) alerts")


def test_demo_shows_progress_and_no_reset_state_warning(r: redis.Redis, redis_url: str) -> None:
    # A previous demo's checkpoint, signed with another key: the demo starts afresh anyway.
    r.hset(CHECKPOINT_KEY.format(group=DEFAULT_GROUP, consumer="demo"), "meta", "stale")
    out = cli("demo", "--redis-url", redis_url, "--hours", "2", "--speed", "0", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "reset-state" not in text and "reset_state" not in text
    lines = [tuple(int(g.replace(",", "")) for g in m.groups()) for m in PROGRESS.finditer(text)]
    assert lines, text[-2000:]
    replayed, total, processed, alerts = lines[-1]
    assert replayed == processed == total > 10_000
    summary = re.search(r"alerts (\d+) \(", text)
    assert summary and int(summary.group(1)) == alerts


def test_a_demo_too_short_for_its_incidents_is_a_usage_error(redis_url: str) -> None:
    out = cli("demo", "--redis-url", redis_url, "--hours", "1", "--speed", "0", timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "--hours 1 is too short" in out.stderr and "--hours 2" in out.stderr
