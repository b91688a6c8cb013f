"""The Redis Cluster harness: partition streams spread over the masters; a node survives SIGKILL."""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from detector.gateway.partitions import partition_stream
from tests.cluster import LocalCluster, cluster_url, redis_cluster  # noqa: F401

STREAMS = [partition_stream("events", p) for p in range(8)]


def keys_by_node(cluster: LocalCluster) -> list[set[str]]:
    out = []
    for i in range(len(cluster.nodes)):
        with cluster.node_client(i) as node:
            out.append({k.decode() for k in node.keys("*")})
    return out


def test_partition_streams_spread_over_the_masters(
    redis_cluster: LocalCluster,  # noqa: F811
    cluster_url: str,  # noqa: F811
) -> None:
    assert redis_cluster.states() == ["ok"] * 3
    client = RedisCluster.from_url(cluster_url, decode_responses=True)
    try:
        for p, stream in enumerate(STREAMS):
            client.xadd(stream, {"p": str(p)})
            assert (
                client.get_node_from_key(stream).port
                == redis_cluster.ports[redis_cluster.node_of(stream)]
            )
        for p, stream in enumerate(STREAMS):
            assert [fields for _, fields in client.xrange(stream)] == [{"p": str(p)}]
    finally:
        client.close()
    expected = [{s for s in STREAMS if redis_cluster.node_of(s) == i} for i in range(3)]
    assert keys_by_node(redis_cluster) == expected
    assert all(expected), "8 hash tags should land on every one of the 3 masters"


def test_a_killed_node_restarts_with_its_slots_and_data(
    redis_cluster: LocalCluster,  # noqa: F811
    cluster_url: str,  # noqa: F811
) -> None:
    victim = redis_cluster.node_of(STREAMS[0])
    client = redis_cluster.client(decode_responses=True)
    try:
        client.xadd(STREAMS[0], {"n": "1"})
        redis_cluster.kill(victim)
        assert redis_cluster.states()[victim] == "down"
        try:
            client.xadd(STREAMS[0], {"n": "lost"})
        except redis.RedisError:
            pass  # expected: the slot's only master is gone
        else:
            raise AssertionError("a write to a killed master's slot succeeded")
        redis_cluster.restart(victim)
        assert redis_cluster.states() == ["ok"] * 3
        client.xadd(STREAMS[0], {"n": "2"})
        assert [f["n"] for _, f in client.xrange(STREAMS[0])] == ["1", "2"]
    finally:
        client.close()


def test_the_fixture_heals_and_empties_the_cluster(
    redis_cluster: LocalCluster,  # noqa: F811
    cluster_url: str,  # noqa: F811
) -> None:
    # Runs after the kill test in file order; the fixture restarted nothing it did not need to.
    assert redis_cluster.states() == ["ok"] * 3
    assert keys_by_node(redis_cluster) == [set(), set(), set()]
