"""Failover harness: the primary is killed -9 (or demoted) while a worker runs through Sentinel.

A primary, a replica and three Sentinels (:mod:`tests.failover`); a seeded stream is appended at
a steady rate by a producer that waits for its replica (WAIT 1), so the input survives every
failover; a ``detector run --sentinel …`` process consumes it while the primary is SIGKILLed
(the replica is promoted, the old primary rejoins as a replica) or demoted by ``SENTINEL
FAILOVER`` (it answers READONLY). The run is compared with a fault-free reference, with the
oracles of the kill -9 harness (tests/test_crash.py):

- with durable writes (``--min-replicas-acked 1``): 0 entries lost, 0 learned twice,
  0 duplicate alerts, the reference's alert set, nothing pending at the end;
- without: the losses and repeats are measured and printed (``-s``), not asserted: they are
  what docs/operations.md reports.

The short forms run by default; ``-m slow`` runs the long ones (≥ 5 failovers each).
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis

from detector.acl import AclConfig, acl_lines
from detector.runtime.worker import Worker
from tests import partitioned
from tests.failover import MASTER, Deployment, deployment  # noqa: F401
from tests.helpers import append
from tests.test_cli import clean_env
from tests.test_crash import (
    Outcome,
    _append_paced,
    _check,
    _outcome,
    _reference,
    _run_cmd,
    _workload,
)
from tests.test_security import (
    ALERTS,
    CONSUMER,
    GROUP,
    PASSWORDS,
    STREAM,
    USERS,
    apply_acl,
    worker_settings,
    workload,
)


@dataclass
class Failovers:
    """A run under failovers (here, or on a cluster: tests/test_cluster_failover.py): its
    outcome, the seconds from each fault to a promotion, and the worker's log."""

    outcome: Outcome | partitioned.Outcome
    promoted_s: list[float]
    log: str


def _run(
    d: Deployment,
    events: list[dict[str, str]],
    tmp: Path,
    *,
    faults: list[str],
    durable: bool,
    seed: int,
    rate: float,
) -> Failovers:
    """``events`` at ``rate`` while ``faults`` ("kill" or "switch") hit the primary."""
    rng = random.Random(seed)
    appender = threading.Thread(
        target=_append_paced, args=(d.client, events, rate), kwargs={"replicas": 1}
    )
    appender.start()
    extra = ["--min-replicas-acked", "1", "--min-replicas-timeout-ms", "500"] if durable else []
    log_path = tmp / "worker.log"
    promoted: list[float] = []
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            # Idle 5 s ends the run: a failover pauses the input for a few seconds.
            _run_cmd("", "w1", idle_ms=5000, where=[*d.sentinel_args(), *extra]),
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            for fault in faults:
                time.sleep(rng.uniform(1.0, 2.0))
                assert proc.poll() is None, "the worker finished before the faults: slow the input"
                promoted.append(d.kill_primary() if fault == "kill" else d.switch())
            appender.join()
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            appender.join()
    text = log_path.read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return Failovers(_outcome(d.url(), "w1"), promoted, text)


def _measure(reference: Outcome, faulty: Outcome, total: int) -> dict[str, int]:
    """What a run without durable writes lost or repeated, against the reference."""
    return {**repeats(reference, faulty, total), "pending at the end": faulty.pending,
            "dead letters": sum(faulty.dead_letters.values())}  # fmt: skip


def repeats(
    reference: Outcome | partitioned.Outcome, faulty: Outcome | partitioned.Outcome, total: int
) -> dict[str, int]:
    """The entries and alerts a run lost or repeated, against the reference."""
    learned = sum(faulty.learned.values())
    per_producer = [n - reference.learned.get(p, 0) for p, n in faulty.learned.items()]
    counts = Counter(faulty.alerts)
    return {
        "entries": total,
        "not learned": total - learned if learned < total else 0,
        "learned twice": sum(n for n in per_producer if n > 0),
        "learned too few": -sum(n for n in per_producer if n < 0),
        "duplicate alerts": sum(c - 1 for c in counts.values() if c > 1),
        "alerts missing": len(set(reference.alerts) - set(counts)),
        "alerts extra": len(set(counts) - set(reference.alerts)),
    }


def report(what: str, run: Failovers, figures: dict[str, int] | None) -> None:
    promoted = sorted(run.promoted_s)
    print(
        f"\n{what}: {len(promoted)} failovers, promotion after {promoted[0]:.1f}-"
        f"{promoted[-1]:.1f}s; worker redis errors logged: {run.log.count('redis error')}; "
        f"WAIT timeouts logged: {run.log.count('replicas acknowledged within')}"
        + (f"; {figures}" if figures else "; 0 lost, 0 learned twice, 0 duplicate alerts")
    )


def test_durable_worker_survives_failovers(deployment: Deployment, tmp_path: Path) -> None:  # noqa: F811
    """Short form: one primary killed -9 and one demoted while the worker runs durable."""
    events = _workload(producers=100, per_producer=100, seed=19)
    reference = _reference(events, tmp_path)
    run = _run(deployment, events, tmp_path, faults=["kill", "switch"], durable=True, seed=19,
               rate=700)  # fmt: skip
    _check(reference, run.outcome, len(events))
    report("durable, short", run, None)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("durable", [True, False], ids=["durable", "asynchronous"])
def test_failover_long(deployment: Deployment, tmp_path: Path, durable: bool) -> None:  # noqa: F811
    """Long form: 6 kills -9 and 2 demotions of the primary over 60k events."""
    events = _workload(producers=250, per_producer=240, seed=5)
    reference = _reference(events, tmp_path)
    faults = ["kill"] * 6 + ["switch"] * 2
    random.Random(7).shuffle(faults)
    run = _run(deployment, events, tmp_path, faults=faults, durable=durable, seed=7, rate=600)
    assert deployment.failovers == len(faults)
    if durable:
        _check(reference, run.outcome, len(events))
        report("durable, long", run, None)
    else:
        report("asynchronous, long", run, _measure(reference, run.outcome, len(events)))


def test_worker_and_sentinels_under_the_acl_users_of_detector_acl(
    deployment: Deployment,  # noqa: F811
) -> None:
    """`detector acl --min-replicas-acked 1 --sentinel-users`: the durable worker runs as its
    user, looks the primary up as the look-up user on the Sentinels, and the Sentinels fail
    over as their user on the data nodes; no node or Sentinel refuses anything."""
    passwords = {**PASSWORDS, "sentinel": "s-Pa55-4e1a", "sentinel_reader": "l-Pa55-8c2b"}
    cfg = AclConfig(streams=(STREAM,), group=GROUP, consumer=CONSUMER, durable=True,
                    sentinel=True)  # fmt: skip
    lines = [line for line in acl_lines(cfg, passwords) if line.startswith("ACL SETUSER")]
    on_sentinels = [line for line in lines if f" {cfg.sentinel_reader_user} " in line]
    on_nodes = [line for line in lines if line not in on_sentinels]
    for port in deployment.nodes:  # ACL SETUSER does not replicate; ACL SAVE: the aclfile
        node = redis.Redis(port=port)
        apply_acl(node, on_nodes)
        node.execute_command("ACL", "SAVE")
    for port in deployment.sentinel_ports:
        s = redis.Redis(port=port)
        apply_acl(s, on_sentinels)
        s.execute_command("SENTINEL", "SET", MASTER, "auth-user", cfg.sentinel_user,
                          "auth-pass", passwords["sentinel"])  # fmt: skip
    url = f"redis://{USERS['worker']}@primary/0"  # through Sentinel: the host is not used
    settings = replace(
        worker_settings(url, redis_password=PASSWORDS["worker"], min_replicas_acked=1),
        sentinels=tuple(f"127.0.0.1:{p}" for p in deployment.sentinel_ports),
        sentinel_master=MASTER,
        sentinel_user=cfg.sentinel_reader_user,
        sentinel_password=passwords["sentinel_reader"],
    )
    admin = deployment.client(decode_responses=True)
    events = workload()
    # The input waits for its replica (as the harness's producer does): a later failover,
    # however it comes, must not lose entries the worker never had a chance to read.
    append(admin, STREAM, events[: len(events) // 2])
    assert admin.wait(1, 10_000) == 1
    first = Worker(settings).run()
    deployment.kill_primary()  # the Sentinels reconfigure the nodes as their user
    admin = deployment.client(decode_responses=True)
    append(admin, STREAM, events[len(events) // 2 :])
    assert admin.wait(1, 10_000) == 1
    second = Worker(settings).run()
    assert first.events + second.events == len(events), deployment.sentinel_log(40)
    assert int(admin.xpending(STREAM, GROUP)["pending"]) == 0
    assert admin.xlen(ALERTS) == first.alerts + second.alerts > 0
    for port in deployment.nodes:
        assert redis.Redis(port=port).acl_log() == [], f"node {port} refused commands"
    for port in deployment.sentinel_ports:
        assert redis.Redis(port=port).execute_command("ACL", "LOG") == []
