"""Redis Cluster (3 masters): the same worker code drains partitioned streams, and a kill -9
of the worker keeps the oracles (no event lost, none learned twice, no duplicate alert)."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time

import pytest
import redis

from detector.acl import AclConfig, worker_rules
from detector.core.settings import HEALTH_KEY
from detector.gateway import partitions
from detector.gateway.embedded import EmbeddedRedis
from tests import partitioned as h
from tests.cluster import LocalCluster, cluster_url, redis_cluster  # noqa: F401
from tests.test_cli import clean_env, cli
from tests.test_partitions import figures

P = 4


def test_worker_runs_unchanged_on_cluster_through_kill_minus_9(
    redis_cluster: LocalCluster,  # noqa: F811
    cluster_url: str,  # noqa: F811
) -> None:
    events = h.workload(producers=100, per_producer=50, seed=9)
    # The partitions really spread over the masters (one slot each, hash tag {p}).
    nodes = {redis_cluster.node_of(partitions.partition_stream(h.BASE, p)) for p in range(P)}
    assert len(nodes) > 1
    _kill_run(redis_cluster, cluster_url, events, rate=700.0, kills=2, seed=5,
              pause_s=(2.5, 4.0), drain_s=90)  # fmt: skip


def _kill_run(
    cluster: LocalCluster,
    url: str,
    events: list[dict[str, str]],
    *,
    rate: float,
    kills: int,
    seed: int,
    pause_s: tuple[float, float],
    drain_s: float,
) -> tuple[h.Outcome, h.Outcome]:
    """Events arrive at ``rate`` on the cluster while the worker is SIGKILLed ``kills``
    times and restarted; checks the oracles against one worker on a standalone Redis."""
    with EmbeddedRedis() as single:  # the reference: one worker, one standalone Redis
        ref_client = redis.Redis.from_url(single.url)
        h.append(ref_client, events, P)
        ref = h.reference(ref_client, single.url, events, P)
        ref_client.close()
    client = cluster.client()
    appender = threading.Thread(target=h.append, args=(client, events, P, rate))
    appender.start()
    cmd = h.run_cmd(url, "w1", P, "--cluster", "--lease-ttl-ms", "2000",
                    "--checkpoint-every", "300", "--checkpoint-interval-ms", "300")  # fmt: skip
    rng = random.Random(seed)
    health = HEALTH_KEY.format(group=h.GROUP, consumer="w1")
    proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(*pause_s))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            client.delete(health)  # the dead worker's key would live on for 10 s
            proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)  # fmt: skip
            # Up again (checkpoints loaded, leases retaken after the dead one's expired).
            h.wait_for(lambda: client.exists(health), 60, "the restarted worker")
        appender.join()
        h.wait_for(lambda: _drained(client), drain_s, "the worker to drain the partitions")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        appender.join()
    got = h.outcome(client, P)
    h.check(ref, got, len(events))
    client.close()
    return ref, got


def _drained(client: object) -> bool:
    time.sleep(0.3)
    for p in range(P):
        (g,) = client.xinfo_groups(partitions.partition_stream(h.BASE, p))  # type: ignore[attr-defined]
        if int(g["pending"]) or int(g.get("lag") or 0):
            return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_cluster_kill_minus_9_long(
    redis_cluster: LocalCluster,  # noqa: F811
    cluster_url: str,  # noqa: F811
) -> None:
    """The kill -9 run above with 4x the events and 8 kills at random points; prints the
    figures."""
    started_at = time.monotonic()
    events = h.workload(producers=300, per_producer=80, seed=19)
    ref, got = _kill_run(redis_cluster, cluster_url, events, rate=500.0, kills=8, seed=23,
                         pause_s=(1.0, 4.0), drain_s=180)  # fmt: skip
    print(f"\ncluster kill -9: {figures(ref, got, len(events))}, kills 8, "
          f"epochs {got.epochs}, wall {time.monotonic() - started_at:.0f}s")  # fmt: skip


def test_unpartitioned_worker_commits_on_cluster(
    redis_cluster: LocalCluster,  # noqa: F811
    cluster_url: str,  # noqa: F811
) -> None:
    """One input stream without --partitions: the commit (checkpoint + acks, one transaction)
    stays in the stream's slot, wherever the stream hashes."""
    stream = "orders"
    events = h.workload(producers=20, per_producer=30, seed=3)
    client = redis_cluster.client()
    for fields in events:
        client.xadd(stream, fields)  # type: ignore[arg-type]
    out = cli("run", "--redis-url", cluster_url, "--cluster", "--stream", stream,
              "--model", h.QUICK, "--until-idle", "--block-ms", "100", timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    groups = client.xinfo_groups(stream)
    assert [(g["entries-read"], g["pending"]) for g in groups] == [(len(events), 0)]
    keys = [k.decode() for k in client.scan_iter(match="*checkpoint*", count=1000)]
    assert len(keys) == 1 and keys[0].endswith("{orders}"), keys
    assert redis_cluster.node_of(keys[0]) == redis_cluster.node_of(stream)
    client.close()


def test_acl_of_an_unpartitioned_cluster_worker_covers_its_checkpoint_key() -> None:
    """`detector acl --cluster` for a named consumer grants the key the worker writes (the
    checkpoint with the stream's hash tag; the plain key would be refused)."""
    cfg = AclConfig(streams=("orders",), group="detector", consumer="w1", cluster=True)
    rules = " ".join(worker_rules(cfg, "#x")).replace("(", " ").replace(")", " ").split()
    keys = {rule.split("~", 1)[1] for rule in rules if "~detector:checkpoint" in rule}
    assert keys == {"detector:checkpoint:detector:w1{orders}"}
