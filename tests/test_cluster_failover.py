"""Cluster failover harness: the primary holding the worker's keys is killed -9 (or its replica
takes over while it lives) while a partitioned worker runs on a Redis Cluster.

3 masters with a replica each (:class:`tests.cluster.LocalCluster`, ``cluster-node-timeout``
1 s); seeded events are appended at a steady rate to the partition streams by a producer that
waits for each node's replica (WAIT 1), so the input survives every failover; a ``detector run
--cluster --partitions 4`` process consumes them while the primary of a partition stream or of
the alerts stream is SIGKILLed (the cluster promotes its replica, the old primary restarts and
rejoins as a replica) or replaced by ``CLUSTER FAILOVER TAKEOVER`` on its replica. The worker is
never restarted. Oracles against a fault-free reference (tests/partitioned.py, as the kill -9
harnesses):

- with durable writes (``--min-replicas-acked 1``): 0 entries lost, 0 learned twice,
  0 duplicate alerts, the reference's alert set, nothing pending at the end;
- without: the losses and repeats are measured and printed (``-s``), not asserted: they are
  what docs/operations.md reports.

The short form runs by default; ``-m slow`` runs the long ones (≥ 5 failovers each).
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from detector.acl import AclConfig, acl_lines
from detector.core.settings import HEALTH_KEY
from detector.gateway import partitions
from detector.gateway.embedded import EmbeddedRedis
from detector.gateway.streams import CONNECTION_ERRORS, NotReplicatedError, Replication, Streams
from detector.runtime.worker import Worker
from tests import partitioned as h
from tests.cluster import LocalCluster, healed, replicated_cluster  # noqa: F401
from tests.test_cli import clean_env
from tests.test_failover import Failovers, repeats, report
from tests.test_security import apply_acl

P = 4
# The keys whose primaries the faults hit in turn: the partitions' and the alerts'.
TARGETS = [h.ALERTS, *(partitions.partition_stream(h.BASE, p) for p in range(P))]


def _run(
    cluster: LocalCluster,
    events: list[dict[str, str]],
    tmp: Path,
    *,
    faults: list[str],
    durable: bool,
    seed: int,
    rate: float,
) -> Failovers:
    """``events`` at ``rate`` while ``faults`` ("kill" or "takeover") hit the primary of
    one of :data:`TARGETS` each, in turn."""
    rng = random.Random(seed)
    url = healed(cluster)
    client = cluster.client()
    appender = threading.Thread(
        target=h.append, args=(client, events, P, rate), kwargs={"replicas": 1}
    )
    appender.start()
    extra = ["--min-replicas-acked", "1", "--min-replicas-timeout-ms", "500"] if durable else []
    cmd = h.run_cmd(url, "w1", P, "--cluster", "--lease-ttl-ms", "5000", "--checkpoint-every",
                    "300", "--checkpoint-interval-ms", "300", *extra)  # fmt: skip
    log_path = tmp / "worker.log"
    promoted: list[float] = []
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.DEVNULL, stderr=log)
        try:
            # Up first: it connects through one startup node (--redis-url), which a fault may hit.
            health = HEALTH_KEY.format(group=h.GROUP, consumer="w1")
            h.wait_for(lambda: proc.poll() is not None or client.exists(health), 60, "the worker")
            for n, fault in enumerate(faults):
                time.sleep(rng.uniform(1.0, 2.0))
                assert proc.poll() is None, "the worker stopped"
                key = TARGETS[n % len(TARGETS)]
                promoted.append(
                    cluster.kill_primary(key) if fault == "kill" else cluster.takeover(key)
                )
            appender.join()
            h.wait_for(lambda: _drained(client), 120, "the worker to drain the partitions")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            appender.join()
    text = log_path.read_text(errors="replace")
    assert code == 0, text[-3000:]
    got = h.outcome(client, P)
    client.close()
    return Failovers(got, promoted, text)


def _drained(client: redis.RedisCluster) -> bool:
    time.sleep(0.3)
    try:
        for p in range(P):
            stream = partitions.partition_stream(h.BASE, p)
            groups = client.xinfo_groups(stream)
            last = client.xinfo_stream(stream)["last-generated-id"]
            if not groups or int(groups[0]["pending"]) or groups[0]["last-delivered-id"] != last:
                return False
    except CONNECTION_ERRORS:
        return False
    return True


def _reference(events: list[dict[str, str]]) -> h.Outcome:
    """The same events, one worker, one standalone Redis, no fault."""
    with EmbeddedRedis() as single:
        client = redis.Redis.from_url(single.url)
        h.append(client, events, P)
        out = h.reference(client, single.url, events, P)
        client.close()
    return out


def _measure(reference: h.Outcome, got: h.Outcome, total: int) -> dict[str, int]:
    """What a run without durable writes lost or repeated, against the reference."""
    return {**repeats(reference, got, total), "pending at the end": got.pending,
            "undelivered at the end": got.undelivered}  # fmt: skip


def test_durable_writes_wait_on_the_node_of_their_key(
    replicated_cluster: LocalCluster,  # noqa: F811
) -> None:
    """Each durable write's WAIT goes to the primary serving its key, on the write's
    connection: it counts that primary's replica (a dead one makes it fail, and the write is
    not reported done), and a slot moved by a takeover refreshes the slot map for the retry."""
    cluster = replicated_cluster
    healed(cluster)
    stream, key = partitions.partition_stream(h.BASE, 0), partitions.checkpoint_key(h.GROUP, 0)
    observed: list[bool] = []
    # Room for a loaded machine's acknowledgements (the dead replica's WAIT just takes it all).
    replication = Replication(1, 3000, observe=lambda seconds, enough: observed.append(enough))
    client = cluster.client()
    view = Streams(client, streams=[stream], group=h.GROUP, consumer="c", alerts_stream=h.ALERTS,
                   dead_letter_stream="dead", maxlen=0, replication=replication)  # fmt: skip
    for i in cluster.live():
        with cluster.node_client(i) as c:
            c.config_resetstat()
    view.ensure_groups()
    client.xadd(stream, {"producer": "a"}, id="1-1")
    (entry,) = view.read({stream: ">"}, 10, None)
    view.commit(key, {"f": b"1"}, [], {stream: [entry[1]]})
    primary = cluster.node_of(stream)
    waits = [_calls(cluster, i, "wait") for i in cluster.live()]
    assert waits[primary] == 3 and sum(waits) == 3, waits  # group creation, read, commit
    assert observed == [True] * 3

    heir = cluster.replica_of(primary)
    cluster.kill(heir)
    with pytest.raises(NotReplicatedError):
        view.commit(key, {"f": b"2"}, [], {})
    assert observed[-1] is False
    cluster.restart(heir)
    # The worker's retry: the commit goes through once the rejoined replica acknowledges.
    h.wait_for(lambda: _committed(view, key, {"f": b"2"}), 10, "the replica's acknowledgement")
    assert observed[-1] is True

    cluster.takeover(stream)  # the client's slot map still names the old primary
    with pytest.raises(redis.exceptions.MovedError):
        view.commit(key, {"f": b"3"}, [], {})
    view.commit(key, {"f": b"3"}, [], {})
    assert client.hget(key, "f") == b"3"
    assert _calls(cluster, cluster.node_of(stream), "wait") >= 1
    client.close()


def test_durable_cluster_worker_under_the_acl_user_of_detector_acl(
    replicated_cluster: LocalCluster,  # noqa: F811
) -> None:
    """`detector acl --partitioned --cluster --min-replicas-acked 1` on every node: a durable
    cluster worker runs as its user before and after a takeover; no node refuses anything."""
    cluster = replicated_cluster
    healed(cluster)
    password = "w-Pa55-c1u5"  # noqa: S105 (a test user's)
    cfg = AclConfig(streams=(h.BASE,), group=h.GROUP, alerts_stream=h.ALERTS, partitioned=True,
                    durable=True, cluster=True)  # fmt: skip
    lines = [line for line in acl_lines(cfg, {"worker": password}) if " detector-worker " in line]
    for i in cluster.live():  # ACL SETUSER is per node (not replicated)
        with cluster.node_client(i) as c:
            apply_acl(c, lines)
            c.acl_log_reset()
    events = h.workload(producers=30, per_producer=40, seed=4)
    admin = cluster.client()
    url = f"redis://detector-worker@127.0.0.1:{cluster.ports[0]}"
    s = h.settings(url, "w1", P, cluster=True, min_replicas_acked=1, redis_password=password,
                   until_idle=True, worker_count=1, worker_index=0)  # fmt: skip
    h.append(admin, events, P, replicas=1)
    first = Worker(s).run(max_events=len(events) // 2)
    cluster.takeover(partitions.partition_stream(h.BASE, 0))
    second = Worker(s).run()
    assert first.events + second.events == len(events)
    assert h.outcome(admin, P).pending == 0
    refused = {}
    for i in cluster.live():
        with cluster.node_client(i) as c:
            refused[i] = [(e["reason"], e["object"]) for e in c.acl_log()]
    assert not any(refused.values()), refused
    admin.close()


def _committed(view: Streams, key: str, fields: dict[str, bytes]) -> bool:
    try:
        view.commit(key, fields, [], {})
    except NotReplicatedError:
        return False
    return True


def _calls(cluster: LocalCluster, index: int, command: str) -> int:
    with cluster.node_client(index) as c:
        stats = c.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_durable_worker_survives_cluster_failovers(
    replicated_cluster: LocalCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Short form: a primary killed -9 and another replaced by its replica's takeover while
    the worker runs durable, never restarted."""
    events = h.workload(producers=100, per_producer=60, seed=9)
    reference = _reference(events)
    run = _run(replicated_cluster, events, tmp_path, faults=["kill", "takeover"], durable=True,
               seed=9, rate=600)  # fmt: skip
    h.check(reference, run.outcome, len(events))
    report("cluster, durable, short", run, None)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("durable", [True, False], ids=["durable", "asynchronous"])
def test_cluster_failover_long(
    replicated_cluster: LocalCluster,  # noqa: F811
    tmp_path: Path,
    durable: bool,
) -> None:
    """Long form: 5 kills -9 and 2 takeovers over 24k events, the faults rotating over the
    primaries of the partitions and of the alerts stream."""
    events = h.workload(producers=300, per_producer=80, seed=21)
    reference = _reference(events)
    faults = ["kill"] * 5 + ["takeover"] * 2
    random.Random(3).shuffle(faults)
    before = replicated_cluster.failovers
    run = _run(replicated_cluster, events, tmp_path, faults=faults, durable=durable, seed=3,
               rate=400)  # fmt: skip
    assert replicated_cluster.failovers - before == len(faults)
    if durable:
        h.check(reference, run.outcome, len(events))
        report("cluster, durable, long", run, None)
    else:
        report("cluster, asynchronous, long", run,
                _measure(reference, run.outcome, len(events)))  # fmt: skip
