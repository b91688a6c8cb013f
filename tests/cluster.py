"""A local Redis Cluster for tests: N masters, no replicas, each a redis-server child process.

Slots are assigned evenly with CLUSTER ADDSLOTSRANGE and the nodes joined with CLUSTER MEET
(what ``redis-cli --cluster create`` does, without depending on redis-cli). Nodes keep their
files (AOF, ``nodes.conf``) in their own directory, so a node killed with SIGKILL restarts on
the same port with its identity, slots and data, and the cluster heals.

Usage::

    from tests.cluster import LocalCluster, cluster_url, redis_cluster  # noqa: F401

    def test_x(redis_cluster: LocalCluster, cluster_url: str) -> None:
        client = redis_cluster.client()  # or RedisCluster.from_url(cluster_url)
        client.xadd("events:{0}", {"k": "v"})
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from detector.gateway.embedded import EmbeddedRedis, free_port

SLOTS = 16384


def distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def cluster_args(node_timeout_ms: int, *, bus_port: int) -> list[str]:
    return [
        "--cluster-enabled", "yes",
        "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", str(node_timeout_ms),
        "--cluster-port", str(bus_port),
    ]  # fmt: skip


class LocalCluster:
    """``masters`` redis-server processes forming one cluster on loopback.

    Args:
        masters: number of master nodes (slots split evenly in node order).
        node_timeout_ms: ``cluster-node-timeout``; small so a killed node is noticed, and
            its failure forgiven after a restart, within seconds.
        appendfsync: AOF policy; ``always`` so a SIGKILLed node loses no acknowledged write
            and restart tests are deterministic.
    """

    def __init__(
        self, masters: int = 3, *, node_timeout_ms: int = 1000, appendfsync: str = "always"
    ) -> None:
        if masters < 1:
            msg = f"a cluster needs at least one master, not {masters}"
            raise ValueError(msg)
        self.root = Path(tempfile.mkdtemp(prefix="detector-cluster-"))
        # Two ports per node: clients, and the cluster bus (by default port + 10000, which
        # fails for ephemeral ports above 55535).
        ports = distinct_free_ports(2 * masters)
        self.bus_ports = ports[1::2]
        self.nodes = [
            EmbeddedRedis(
                ports[2 * i],
                appendonly=True,
                appendfsync=appendfsync,
                directory=self.root / f"node-{i}",
                extra_args=cluster_args(node_timeout_ms, bus_port=ports[2 * i + 1]),
            )
            for i in range(masters)
        ]

    # -- addresses ---------------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        """One ``redis://`` URL per node; any of them is a valid startup node."""
        return [f"redis://127.0.0.1:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        """The startup node URL to hand to a cluster client (``RedisCluster.from_url``)."""
        return self.urls[0]

    def startup_nodes(self) -> list[ClusterNode]:
        return [ClusterNode("127.0.0.1", port) for port in self.ports]  # type: ignore[no-untyped-call]

    def client(self, **kwargs: Any) -> RedisCluster:
        """A cluster client knowing every node (so it connects while one is down)."""
        return RedisCluster(startup_nodes=self.startup_nodes(), **kwargs)

    def node_client(self, index: int) -> redis.Redis:
        """A plain connection to one node (CLUSTER INFO, FLUSHALL, DEBUG ...)."""
        return redis.Redis(port=self.ports[index], socket_connect_timeout=1)

    def slot_range(self, index: int) -> tuple[int, int]:
        """The first and last slot that node ``index`` serves."""
        n = len(self.nodes)
        return index * SLOTS // n, (index + 1) * SLOTS // n - 1

    def node_of(self, key: str) -> int:
        """Index of the node serving ``key`` (by its slot)."""
        slot = key_slot(key.encode())
        return next(i for i in range(len(self.nodes)) if slot <= self.slot_range(i)[1])

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> str:
        """Start every node, assign slots, join them and wait for ``cluster_state:ok``."""
        try:
            for node in self.nodes:
                node.start()
            for i in range(len(self.nodes)):
                with self.node_client(i) as c:
                    # Distinct epochs, as redis-cli sets them, so no epoch collision to resolve.
                    c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                    c.execute_command("CLUSTER", "ADDSLOTSRANGE", *self.slot_range(i))
            with self.node_client(0) as c:
                for port, bus in zip(self.ports[1:], self.bus_ports[1:], strict=True):
                    c.execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)
            self.wait_ok(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Block until every live node reports ``cluster_state:ok`` and knows every node."""
        deadline = time.monotonic() + timeout_s
        while not self.is_ok():
            if time.monotonic() > deadline:
                msg = f"cluster not ok after {timeout_s} s: {self.states()}"
                raise TimeoutError(msg)
            time.sleep(0.05)

    def states(self) -> list[str]:
        """Each node's ``cluster_state`` (``down`` for a node not running or not answering)."""
        out = []
        for i, node in enumerate(self.nodes):
            if node.process is None:
                out.append("down")
                continue
            try:
                with self.node_client(i) as c:
                    info = c.cluster("INFO")
            except redis.RedisError:
                out.append("down")
                continue
            state = info["cluster_state"]
            known = int(info["cluster_known_nodes"])
            out.append(state if known == len(self.nodes) else f"{state} (knows {known})")
        return out

    def is_ok(self) -> bool:
        return all(state == "ok" for state in self.states())

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``; its directory stays for :meth:`restart`."""
        self.nodes[index].kill()

    def restart(self, index: int, *, wait: bool = True, timeout_s: float = 30.0) -> None:
        """Start node ``index`` again on its port and files; by default wait until healed."""
        self.nodes[index].start()
        if wait:
            self.wait_ok(timeout_s)

    def flushall(self) -> None:
        """Empty every node (between tests sharing the cluster)."""
        for i in range(len(self.nodes)):
            with self.node_client(i) as c:
                c.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[LocalCluster]:
    """A 3-master cluster shared by the tests of one module (see :func:`cluster_url`)."""
    with LocalCluster(3) as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> str:
    """The module's cluster, every node up (restarted if a test killed one) and empty."""
    for i, node in enumerate(redis_cluster.nodes):
        if node.process is None:
            redis_cluster.restart(i, wait=False)
    redis_cluster.wait_ok()
    redis_cluster.flushall()
    return redis_cluster.url
