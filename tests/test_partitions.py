"""Partitioned workers: static and dynamic ownership give the single-worker result.

Workers run as threads of this process against a real redis-server (signals are not needed
here: test_ownership.py pauses subprocess workers). Every test compares with one worker that
owns all the partitions of the same events (group "ref").
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from detector.acl import AclConfig, worker_rules
from detector.core.errors import ConfigError
from detector.gateway import partitions
from detector.runtime.worker import Worker
from tests import partitioned as h

P = 8


class OwnershipLog(logging.Handler):
    """Acquire/release/loss records of every worker thread, in order."""

    PATTERN = re.compile(r"partition (\d+) (acquired|releasing|lost)")

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int, str]] = []  # Handler.handle holds self.lock

    def emit(self, record: logging.LogRecord) -> None:
        m = self.PATTERN.match(record.getMessage())
        if m:
            self.events.append((record.threadName or "", int(m[1]), m[2]))

    def check_exclusive(self) -> int:
        """No partition acquired while another worker holds it; returns the handoffs."""
        owner: dict[int, str] = {}
        handoffs = 0
        for worker, p, what in self.events:
            if what == "acquired":
                assert p not in owner, (
                    f"partition {p} acquired by {worker} while {owner[p]} owns it"
                )
                owner[p] = worker
                handoffs += 1
            else:
                assert owner.pop(p) == worker
        return handoffs


@pytest.fixture
def ownership_log() -> Iterator[OwnershipLog]:
    handler = OwnershipLog()
    logger = logging.getLogger("detector.runtime.worker")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def _start(worker: Worker, name: str) -> threading.Thread:
    t = threading.Thread(target=worker.run, name=name, daemon=True)
    t.start()
    return t


def test_static_two_workers_equal_one(redis_url: str, r: redis.Redis) -> None:
    client = redis.Redis.from_url(redis_url)
    events = h.workload()
    h.append(client, events, P)
    ref = h.reference(client, redis_url, events, P)
    workers = [
        Worker(h.settings(redis_url, f"w{i}", P, worker_index=i, worker_count=2, until_idle=True))
        for i in range(2)
    ]
    threads = [_start(w, f"w{i}") for i, w in enumerate(workers)]
    for t in threads:
        t.join(60)
    assert [w.stats.events for w in workers] == [
        sum(1 for e in events if partitions.partition_of(e["producer"], P) % 2 == i)
        for i in range(2)
    ]
    h.check(ref, h.outcome(client, P), len(events))


def test_dynamic_two_four_two_during_load(redis_url: str, ownership_log: OwnershipLog) -> None:
    events = h.workload(producers=150, per_producer=60)
    run = _two_four_two(redis_url, ownership_log, events, rate=900.0, hold_s=1.5, timeout_s=20)
    assert all(e >= 1 for e in run.got.epochs.values())


@dataclass
class Rebalanced:
    workers: list[Worker]
    ref: h.Outcome
    got: h.Outcome
    handoffs: int


def _two_four_two(
    redis_url: str,
    ownership_log: OwnershipLog,
    events: list[dict[str, str]],
    *,
    rate: float,
    hold_s: float,
    timeout_s: float,
) -> Rebalanced:
    """2 workers, then 4, then 2 (two leave gracefully) while ``events`` arrive at ``rate``;
    checks the oracles against a single-worker reference of the same events."""
    client = redis.Redis.from_url(redis_url)
    h.append(client, events, P)  # the reference reads them all first ...
    ref = h.reference(client, redis_url, events, P)
    client.flushall()  # ... then the same events arrive while workers come and go
    appender = threading.Thread(target=h.append, args=(client, events, P, rate))
    appender.start()
    workers = [Worker(h.settings(redis_url, f"w{i}", P)) for i in range(4)]
    threads = [_start(w, f"w{i}") for i, w in enumerate(workers[:2])]
    h.wait_for(lambda: sum(len(w.owned) for w in workers[:2]) == P, timeout_s, "2 own all")
    time.sleep(hold_s)
    threads += [_start(w, f"w{i}") for i, w in enumerate(workers[2:], start=2)]
    h.wait_for(lambda: all(len(w.owned) == 2 for w in workers), timeout_s, "4 own 2 each")
    time.sleep(hold_s)
    for w in workers[:2]:  # two leave gracefully: commit, release, leave the members
        w.stop()
    for t in threads[:2]:
        t.join(3 * timeout_s)
    h.wait_for(lambda: all(len(w.owned) == 4 for w in workers[2:]), timeout_s, "2 own 4 each")
    appender.join()
    h.wait_for(lambda: h.outcome(client, P).pending + h.outcome(client, P).undelivered == 0,
               10 * timeout_s, "the rest to be processed")  # fmt: skip
    for w in workers[2:]:
        w.stop()
    for t in threads[2:]:
        t.join(3 * timeout_s)
    handoffs = ownership_log.check_exclusive()
    got = h.outcome(client, P)
    assert all(w.stats.events > 0 for w in workers)  # each of the 4 took part
    assert sum(w.stats.fenced for w in workers) == 0  # nobody lost a lease: clean handoffs
    assert handoffs > P  # partitions moved (2 -> 4 -> 2), each handed over exclusively
    h.check(ref, got, len(events))
    return Rebalanced(workers, ref, got, handoffs)


def test_partitioned_settings_are_checked(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="must not contain"):
        Worker(h.settings(redis_url, "w", P, streams=("ev{x}",)))
    with pytest.raises(ConfigError, match="not in"):
        Worker(h.settings(redis_url, "w", P, worker_index=2, worker_count=2))
    with pytest.raises(ConfigError, match="need --partitions"):
        Worker(h.settings(redis_url, "w", P, partitions=None, worker_count=2))


def test_partitioned_acl_grants_partition_keys_only() -> None:
    rules = " ".join(worker_rules(AclConfig(partitioned=True), "#x"))
    assert "%RW~events:{*}" in rules and "%RW~detector:lease:detector:{*}" in rules
    assert "+xadd %W~detector:alerts" in rules and "+xautoclaim" not in rules
    assert "+multi" not in rules  # every commit is a fenced script
    with pytest.raises(ConfigError):
        AclConfig(partitioned=True, streams=("a{b}",))


def figures(ref: h.Outcome, got: h.Outcome, total: int) -> str:
    """The long forms' report: what the oracles of h.check measure, as numbers."""
    learned = sum(got.learned.values())
    twice = sum(1 for p, n in got.learned.items() if n > ref.learned.get(p, 0))
    dups = sum(c - 1 for c in Counter(got.alerts).values() if c > 1)
    return (
        f"events {total}, learned {learned} (lost {total - learned}), producers learned "
        f"twice {twice}, duplicate alerts {dups}, alerts {len(set(got.alerts))} "
        f"(reference {len(ref.alerts)}, same set {set(got.alerts) == set(ref.alerts)}), "
        f"pending {got.pending}, undelivered {got.undelivered}"
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dynamic_two_four_two_long(redis_url: str, ownership_log: OwnershipLog) -> None:
    """The 2 -> 4 -> 2 rebalance of test_dynamic_two_four_two_during_load at ~50k events
    from 500 producers, each phase held longer; prints the figures."""
    started_at = time.monotonic()
    events = h.workload(producers=500, per_producer=100, seed=21)
    run = _two_four_two(redis_url, ownership_log, events, rate=1500.0, hold_s=8, timeout_s=30)
    workers = run.workers
    print(
        f"\nrebalance 2->4->2: {figures(run.ref, run.got, len(events))}, partition handoffs "
        f"{run.handoffs}, rebalances {sum(_rebalances(w) for w in workers):.0f}, "
        f"fenced {sum(w.stats.fenced for w in workers)}, events per worker "
        f"{[w.stats.events for w in workers]}, wall {time.monotonic() - started_at:.0f}s"
    )


def _rebalances(worker: Worker) -> float:
    return worker.metrics.registry.get_sample_value("detector_rebalances_total") or 0.0
