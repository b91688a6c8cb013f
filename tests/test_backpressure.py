"""Slow consumer: offered three times what it can process, the worker falls behind gracefully.

A `detector run` process (a subprocess, so its RSS is its own) first drains a backlog, which
measures its capacity for this payload; then a producer offers three times that rate. Sampled
twice a second from Redis (``XINFO GROUPS``), the worker's metrics endpoint and ``/proc``:

- lag grows, at more than the capacity per second (about twice it is expected), and the
  worker's ``detector_consumer_lag`` reports it;
- the group's pending list stays within twice (``checkpoint_every`` + one batch)
  (ack-on-checkpoint, commits encoded between reads: docs/design.md), and is empty after a
  graceful stop;
- the worker's RSS stays flat: late samples within a generous bound of early ones.

CI runs 12 s of overload; ``-m slow`` runs 120 s and prints the figures.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from detector.core.scoring import load_spec
from detector.gateway.embedded import EmbeddedRedis, free_port
from detector.runtime.worker import GROUP_INFO_INTERVAL_S
from tests.helpers import START_MS
from tests.test_cli import clean_env
from tests.test_crash import QUICK

STREAM = "events"
GROUP = "detector"
PRODUCERS = 200
BATCH_SIZE = 200
CHECKPOINT_EVERY = 1000
PENDING_BOUND = 2 * (CHECKPOINT_EVERY + BATCH_SIZE)  # docs/design.md: "A commit does not stop"
SAMPLE_S = 0.5
OVERLOAD = 3.0
# RSS may wobble with the allocator, not trend: late samples within 25 % of early ones.
RSS_GROWTH_BOUND = 1.25


# Appends ARGV[2] normal orders, from event number ARGV[1] on, generated inside Redis: a
# Python producer pipelining XADDs (~50k/s here) cannot offer three times the capacity of a
# worker that processes 40k/s. Seeded and deterministic: event i is always the same.
_APPEND = """
local first, n, seed = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local producers, start_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local currencies = {'EUR', 'USD', 'GBP'}
for i = first, first + n - 1 do
  local h = (i * 2654435761 + seed * 40503) % 4294967296  -- Knuth's multiplicative hash
  local data = string.format('{"amount":%.2f,"currency":"%s","order_id":"o%d"}',
    10 + (h % 4000) / 100, currencies[math.floor(h / 4000) % 3 + 1], i)
  redis.call('XADD', KEYS[1], '*', 'producer', 'svc-' .. (i % producers),
    'ts', string.format('%d', start_ms + 10 * i + h % 10), 'type', 'order.created',
    'data', data)
end
"""


class Producer:
    """Appends ``rate`` events/s in 50 ms chunks until stopped; counts what it appended."""

    def __init__(self, r: redis.Redis, seed: int) -> None:
        self.seed = seed
        self.added = 0
        self._script = r.register_script(_APPEND)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def fill(self, n: int) -> None:
        while n > 0:
            self._append(min(1000, n))
            n -= 1000

    def offer(self, rate: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(rate,))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _append(self, n: int) -> None:
        self._script(keys=[STREAM], args=[self.added, n, self.seed, PRODUCERS, START_MS])
        self.added += n

    def _run(self, rate: float) -> None:
        started, base = time.monotonic(), self.added
        while not self._stop.wait(0.05):
            due = int((time.monotonic() - started) * rate) - (self.added - base)
            while due > 0:  # chunks of 1000: one script call must not stall Redis for long
                self._append(min(1000, due))
                due -= 1000


@dataclass
class Sample:
    t: float
    lag: int
    pending: int
    read: int  # the group's entries-read
    rss_kb: int
    redis_bytes: int  # used_memory: the backlog waits in Redis
    reported_lag: float | None  # the worker's detector_consumer_lag


@dataclass
class Figures:
    capacity: float  # events/s, measured on the backlog
    offered: float  # events/s, achieved by the producer
    samples: list[Sample] = field(default_factory=list)
    final_pending: int = -1


def _group(r: redis.Redis) -> tuple[int, int, int]:
    for g in r.xinfo_groups(STREAM):
        if g["name"] == GROUP.encode():
            return int(g["lag"] or 0), int(g["pending"]), int(g["entries-read"] or 0)
    return 0, 0, 0  # not created yet


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    msg = f"no VmRSS for {pid}"
    raise AssertionError(msg)


def _reported_lag(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None  # not serving yet
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "detector_consumer_lag" and s.labels.get("stream") == STREAM:
                return float(s.value)
    return None


def _sample(r: redis.Redis, pid: int, port: int) -> Sample:
    lag, pending, read = _group(r)
    used = int(r.info("memory")["used_memory"])
    return Sample(time.monotonic(), lag, pending, read, _rss_kb(pid), used, _reported_lag(port))


def _spawn(url: str, metrics_port: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "detector.cli", "run", "--redis-url", url, "--consumer", "w1",
        "--model", QUICK, "--block-ms", "200", "--batch-size", str(BATCH_SIZE),
        "--checkpoint-every", str(CHECKPOINT_EVERY), "--checkpoint-interval-ms", "1000",
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    return subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _capacity(r: redis.Redis, backlog: int, skip: int, window_s: float) -> float:
    """Entries/s the group reads from a backlog (the worker's processing rate), once the
    first ``skip`` entries (start-up, the producers' warm-up) are behind it."""
    _wait(lambda: _group(r)[2] >= skip, "the worker to get past its warm-up")
    t0, read0 = time.monotonic(), _group(r)[2]
    t1, read1 = t0, read0
    while t1 - t0 < window_s and read1 < backlog - 2 * BATCH_SIZE:
        time.sleep(SAMPLE_S / 2)
        t1, read1 = time.monotonic(), _group(r)[2]
    assert t1 > t0 and read1 > read0, "the worker read nothing"
    return (read1 - read0) / (t1 - t0)


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _overload(tmp: Path, overload_s: float, seed: int) -> Figures:
    with EmbeddedRedis(directory=tmp / "redis") as server:
        r = redis.Redis.from_url(server.url, socket_timeout=10)
        producer = Producer(r, seed)
        backlog = 20_000  # drained at the start: it measures the capacity
        producer.fill(backlog)
        port = free_port()
        proc = _spawn(server.url, port)
        try:
            # Past every producer's warm-up (the cheaper first events of each).
            warmup = load_spec(QUICK).decision.warmup_events
            capacity = _capacity(r, backlog, skip=2 * warmup * PRODUCERS, window_s=3.0)
            _wait(lambda: _group(r)[0] == 0, "the backlog to drain")
            figures = Figures(capacity, 0.0)
            started, added0 = time.monotonic(), producer.added
            producer.offer(OVERLOAD * capacity)
            while time.monotonic() - started < overload_s:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                figures.samples.append(_sample(r, proc.pid, port))
                time.sleep(SAMPLE_S)
            producer.stop()
            figures.offered = (producer.added - added0) / (time.monotonic() - started)
            proc.send_signal(signal.SIGTERM)  # finish the batch, commit, exit 0
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()[-2000:]
            figures.final_pending = _group(r)[1]
            return figures
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
            r.close()


def _slope(samples: list[Sample]) -> float:
    """Least-squares lag growth in entries/s."""
    t0 = samples[0].t
    return statistics.linear_regression([s.t - t0 for s in samples], [s.lag for s in samples])[0]


def _check(f: Figures) -> None:
    s = f.samples
    assert f.offered >= (OVERLOAD - 0.5) * f.capacity, "the producer could not overload"
    # Lag grows by offered - processed: about 2 x capacity per second; more than 1 x at least.
    assert _slope(s) > f.capacity
    # Reported: the metric is refreshed every GROUP_INFO_INTERVAL_S, so its last value lies
    # among the lags of that interval (plus sampling slack: a chunk of input, one batch).
    last = s[-1]
    window = [x.lag for x in s if last.t - x.t <= GROUP_INFO_INTERVAL_S + 2 * SAMPLE_S]
    slack = f.offered * 0.05 + BATCH_SIZE
    assert last.reported_lag is not None
    assert min(window) - slack <= last.reported_lag <= max(window) + slack
    assert last.reported_lag > max(x.reported_lag or 0 for x in s[: len(s) // 4])
    # Ack-on-checkpoint bounds the pending list, however far behind the worker is.
    assert max(x.pending for x in s) <= PENDING_BOUND
    assert f.final_pending == 0
    # Memory flat: what the worker holds does not depend on how much waits in Redis.
    third = len(s) // 3
    early = max(x.rss_kb for x in s[:third])
    late = max(x.rss_kb for x in s[-third:])
    assert late <= early * RSS_GROWTH_BOUND, f"RSS grew from {early} kB to {late} kB"


def _report(f: Figures, seconds: float) -> str:
    s = f.samples
    third = len(s) // 3
    return (
        f"capacity {f.capacity:,.0f}/s, offered {f.offered:,.0f}/s for {seconds:.0f}s; "
        f"lag {s[0].lag:,} -> {s[-1].lag:,} (+{_slope(s):,.0f}/s, reported "
        f"{s[-1].reported_lag:,.0f}); pending max {max(x.pending for x in s)} "
        f"(bound {PENDING_BOUND}), after stop {f.final_pending}; worker RSS "
        f"early max {max(x.rss_kb for x in s[:third]) / 1024:.1f} MB, late max "
        f"{max(x.rss_kb for x in s[-third:]) / 1024:.1f} MB; Redis used_memory "
        f"{s[0].redis_bytes / 2**20:.0f} -> {s[-1].redis_bytes / 2**20:.0f} MB"
    )


def test_slow_consumer_short(tmp_path: Path) -> None:
    figures = _overload(tmp_path, overload_s=12, seed=1)
    print("\nslow consumer:", _report(figures, 12))
    _check(figures)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_slow_consumer_long(tmp_path: Path) -> None:
    figures = _overload(tmp_path, overload_s=120, seed=2)
    print("\nslow consumer:", _report(figures, 120))
    _check(figures)
