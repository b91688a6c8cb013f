"""Leases and fencing: a paused owner's stale commit is refused (real redis-server).

The subprocess test pauses a ``detector run`` worker with SIGSTOP past its lease, lets a second
worker take over, resumes the first: its commit is refused, and the oracles hold (nothing
learned twice, no duplicate alert, the same alerts as a single-worker run).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import redis

from detector.gateway import partitions
from detector.gateway.ownership import Fence, FencedError, Leases
from detector.gateway.streams import FencedStreams
from tests import partitioned as h
from tests.test_cli import clean_env


def test_lease_is_exclusive_and_a_stale_token_cannot_commit_or_read(r: redis.Redis) -> None:
    client = redis.Redis.from_url(_url(r))
    a = Leases(client, "g", "a", ttl_ms=300)
    b = Leases(client, "g", "b", ttl_ms=300)
    fence_a = a.acquire(0)
    assert fence_a is not None and fence_a.epoch == 1
    assert b.acquire(0) is None  # held
    assert a.renew(fence_a)
    time.sleep(0.4)  # expired: b takes over with a larger epoch
    fence_b = b.acquire(0)
    assert fence_b is not None and fence_b.epoch == 2
    assert not a.renew(fence_a) and not a.release(fence_a)
    stream = partitions.partition_stream("ev", 0)
    client.xadd(stream, {"producer": "x"}, id="1-1")
    stale = _streams(client, stream, fence_a)
    stale.ensure_groups()
    try:
        stale.read({stream: ">"}, 10, None)
        raise AssertionError("a stale read went through")
    except FencedError:
        pass
    try:
        stale.commit(partitions.checkpoint_key("g", 0), {"meta": b"x"}, [], {stream: ["1-1"]})
        raise AssertionError("a stale commit went through")
    except FencedError:
        pass
    assert not client.exists(partitions.checkpoint_key("g", 0))
    owner = _streams(client, stream, fence_b)
    assert [e[1] for e in owner.read({stream: ">"}, 10, None)] == ["1-1"]
    owner.commit(partitions.checkpoint_key("g", 0), {"meta": b"y"}, [], {stream: ["1-1"]})
    assert client.xpending(stream, "g")["pending"] == 0
    assert b.release(fence_b) and b.holder(0) is None


def _url(r: redis.Redis) -> str:
    kw = r.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"


def _streams(client: redis.Redis, stream: str, fence: Fence) -> FencedStreams:
    return FencedStreams(client, streams=(stream,), group="g", consumer="p0", alerts_stream="al",
                         dead_letter_stream="dl", maxlen=1000, fence=fence)  # fmt: skip


def test_worker_paused_past_its_lease_has_its_commit_refused(
    redis_url: str, tmp_path: Path
) -> None:
    p_count = 2
    client = redis.Redis.from_url(redis_url)
    events = h.workload(producers=80, per_producer=60)
    h.append(client, events, p_count)
    ref = h.reference(client, redis_url, events, p_count)
    client.flushall()
    appender = threading.Thread(target=h.append, args=(client, events, p_count, 500.0))
    # Commits only every 2 s: when paused, the worker holds entries it has not committed.
    extra = ("--lease-ttl-ms", "3000", "--checkpoint-every", "100000",
             "--checkpoint-interval-ms", "2000")  # fmt: skip
    logs = {n: h.log_path(tmp_path, n).open("w") for n in ("a", "b")}
    a = subprocess.Popen(h.run_cmd(redis_url, "a", p_count, *extra), env=clean_env(),
                         stdout=subprocess.DEVNULL, stderr=logs["a"])  # fmt: skip
    leases = Leases(client, h.GROUP, "probe", 1000)
    holders = lambda: {leases.holder(p) for p in range(p_count)}  # noqa: E731
    h.wait_for(lambda: all(x and x.startswith("a:") for x in holders()), 30, "a to own all")
    # Appending only now (~10 s at 500/s), so that a, however slow to start on a loaded
    # machine, holds processed entries it has not committed yet when it is paused.
    appender.start()
    time.sleep(2.5)  # a processes (and commits some)
    a.send_signal(signal.SIGSTOP)
    b = subprocess.Popen(h.run_cmd(redis_url, "b", p_count, *extra), env=clean_env(),
                         stdout=subprocess.DEVNULL, stderr=logs["b"])  # fmt: skip
    try:
        h.wait_for(lambda: all(x and x.startswith("b:") for x in holders()), 30, "b to take over")
        time.sleep(1.0)  # b replays a's uncommitted entries and goes on
        a.send_signal(signal.SIGCONT)
        appender.join()
        h.wait_for(lambda: _drained(client, p_count), 60, "the rest to be processed")
        time.sleep(0.5)
    finally:
        a.send_signal(signal.SIGCONT)
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
        for proc in (a, b):
            assert proc.wait(30) == 0
        appender.join()
        for f in logs.values():
            f.close()
    log_a = h.log_path(tmp_path, "a").read_text()
    assert "commit refused, the lease is lost" in log_a, log_a[-3000:]
    h.check(ref, h.outcome(client, p_count), len(events))


def _drained(client: redis.Redis, p_count: int) -> bool:
    time.sleep(0.2)  # cheap checks, not too often: the workers need the CPU
    for p in range(p_count):
        (g,) = client.xinfo_groups(partitions.partition_stream(h.BASE, p))
        if int(g["pending"]) or int(g.get("lag") or 0):
            return False
    return True
