"""Harness for partitioned-worker tests: workload, paced appends, reference run, oracles.

Oracles (as in tests/test_crash.py, summed over the partitions): every entry delivered and
acked, every producer's learned-event count equal to a single-worker reference run, no alert
id twice, and the same alert set as the reference.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

from detector.core.checkpoint import Signer, decode_fields
from detector.core.features import FeatureStore
from detector.core.settings import Settings
from detector.gateway import partitions
from detector.gateway.streams import CONNECTION_ERRORS, by_node, execute_pinned, pinned_pipeline
from detector.runtime.worker import Worker
from tests.conftest import TEST_KEY
from tests.test_crash import QUICK, _workload

BASE = "events"
GROUP = "detector"
ALERTS = "detector:alerts"
Client = redis.Redis | RedisCluster


def workload(producers: int = 120, per_producer: int = 60, seed: int = 3) -> list[dict[str, str]]:
    """Seeded order events with outliers (alerts to compare), sorted by event time."""
    return _workload(producers=producers, per_producer=per_producer, seed=seed)


def append(
    client: Client,
    events: list[dict[str, str]],
    p_count: int,
    rate: float | None = None,
    *,
    replicas: int = 0,
) -> None:
    """XADD each event to its producer's partition with explicit ids (``k+1``-1, increasing
    in every partition), so every run sees the same entry ids, hence the same alert ids.

    With ``replicas``, a batch counts as sent once that many replicas of each node written
    hold it (``WAIT`` on the node's connection, :func:`pinned_pipeline`), riding out
    failovers: a batch not confirmed is sent again (an id the stream has is refused), so
    a failover cannot take back what the producer moved on from."""
    started = time.monotonic()
    i = 0
    while i < len(events):
        j = min(len(events), i + 200)
        if rate is not None:
            j = min(j, max(i + 1, int((time.monotonic() - started) * rate) + 1))
        batch = [(partitions.partition_stream(BASE, partitions.partition_of(events[k]["producer"],
                  p_count)), k) for k in range(i, j)]  # fmt: skip
        if replicas and not _sent_durably(client, events, batch, replicas):
            time.sleep(0.1)
            continue
        if not replicas:
            pipe = client.pipeline(transaction=False)
            for stream, k in batch:
                pipe.xadd(stream, events[k], id=f"{k + 1}-1")  # type: ignore[arg-type]
            for reply in pipe.execute(raise_on_error=False):
                if isinstance(reply, Exception) and "equal or smaller" not in str(reply):
                    raise reply
        i = j
        if rate is not None:
            time.sleep(max(0.0, i / rate - (time.monotonic() - started)))


def _sent_durably(
    client: Client, events: list[dict[str, str]], batch: list[tuple[str, int]], replicas: int
) -> bool:
    """One batch, node by node, each confirmed by WAIT; False to send it again."""
    try:
        groups = by_node(client, batch, lambda item: item[0])
    except CONNECTION_ERRORS:  # a slot no node serves, mid-failover
        return False
    for group in groups:
        pipe = pinned_pipeline(client, group[0][0])
        for stream, k in group:
            pipe.xadd(stream, events[k], id=f"{k + 1}-1")  # type: ignore[arg-type]
        pipe.execute_command("WAIT", replicas, 1000)
        try:
            *replies, acked = execute_pinned(client, pipe, raise_on_error=False)
        except CONNECTION_ERRORS:
            return False
        for reply in replies:
            if isinstance(reply, CONNECTION_ERRORS):
                return False
            if isinstance(reply, Exception) and "equal or smaller" not in str(reply):
                raise reply
        if isinstance(acked, Exception) or int(acked) < replicas:
            return False
    return True


@dataclass
class Outcome:
    alerts: list[str]
    learned: dict[str, int]
    pending: int
    undelivered: int
    epochs: dict[int, int]


def outcome(client: Client, p_count: int, group: str = GROUP, alerts: str = ALERTS) -> Outcome:
    """What the partitions' checkpoints and groups say after a run."""
    ids = [f[b"alert_id"].decode() for _, f in client.xrange(alerts)]  # type: ignore[union-attr]
    learned: dict[str, int] = {}
    pending = undelivered = 0
    epochs: dict[int, int] = {}
    signer = Signer(TEST_KEY)
    for p in range(p_count):
        fields = client.hgetall(partitions.checkpoint_key(group, p))
        if fields:
            snap = decode_fields(signer, fields)  # type: ignore[arg-type]
            for producer, n in FeatureStore.events_learned(snap.base, snap.producers).items():
                learned[producer] = learned.get(producer, 0) + n
            epochs[p] = int(snap.meta.get("epoch", 0))
        stream = partitions.partition_stream(BASE, p)
        for g in client.xinfo_groups(stream):  # type: ignore[union-attr]
            if g["name"] in (group, group.encode()):
                pending += int(g["pending"])
                undelivered += int(g.get("lag") or 0)
    return Outcome(ids, learned, pending, undelivered, epochs)


def check(reference: Outcome, got: Outcome, total: int) -> None:
    assert got.pending == 0 and got.undelivered == 0
    assert sum(got.learned.values()) == total
    differ = {p: n for p, n in got.learned.items() if n != reference.learned.get(p)}
    assert not differ, f"producers learned differently (twice or skipped): {differ}"
    dups = [a for a, c in Counter(got.alerts).items() if c > 1]
    assert not dups, f"duplicate alerts: {dups}"
    assert set(got.alerts) == set(reference.alerts)
    assert len(reference.alerts) >= 5  # there were alerts to compare


def settings(url: str, consumer: str, p_count: int, **changes: Any) -> Settings:
    base = Settings(
        redis_url=url, streams=(BASE,), consumer=consumer, model=QUICK, partitions=p_count,
        block_ms=100, idle_timeout_ms=400, checkpoint_secret=TEST_KEY, checkpoint_every=300,
        checkpoint_interval_ms=300, batch_size=200, lease_ttl_ms=3000,
    )  # fmt: skip
    return replace(base, **changes)


def reference(client: Client, url: str, events: list[dict[str, str]], p_count: int) -> Outcome:
    """One worker owning every partition, in group "ref" with its own alert stream."""
    s = settings(url, "ref", p_count, group="ref", alerts_stream="ref:alerts",
                 dead_letter_stream="ref:dead", until_idle=True, worker_count=1,
                 worker_index=0)  # fmt: skip
    Worker(s).run()
    out = outcome(client, p_count, group="ref", alerts="ref:alerts")
    assert sum(out.learned.values()) == len(events)
    return out


def run_cmd(url: str, consumer: str, p_count: int, *extra: str) -> list[str]:
    """``detector run`` for a partitioned subprocess worker."""
    return [
        sys.executable, "-m", "detector.cli", "run", "--redis-url", url, "--consumer", consumer,
        "--model", os.environ.get("HARNESS_MODEL", QUICK), "--partitions", str(p_count),
        "--block-ms", "100", "--batch-size", "200", *extra,
    ]  # fmt: skip


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def log_path(tmp: Path, name: str) -> Path:
    return tmp / f"{name}.log"
