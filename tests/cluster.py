"""A local Redis Cluster for tests: N masters, optionally a replica each, each node a
redis-server child process.

Slots are assigned evenly with CLUSTER ADDSLOTSRANGE, the nodes joined with CLUSTER MEET and
each replica attached with CLUSTER REPLICATE (what ``redis-cli --cluster create
--cluster-replicas 1`` does, without depending on redis-cli). Nodes keep their files (AOF,
``nodes.conf``) in their own directory, so a node killed with SIGKILL restarts on the same
port with its identity, slots and data, and the cluster heals. With replicas, a killed
primary's replica is promoted by the cluster (:meth:`LocalCluster.kill_primary`), or takes
over while the primary lives (:meth:`LocalCluster.takeover`); the old primary rejoins as its
replica.

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
from collections.abc import Callable, Iterator
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


# With replicas: a replica resynchronises at once (no wait to share a diskless transfer), and
# may be promoted however long its link was down (the harness restarts nodes at will).
REPLICA_ARGS = ["--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0"]


class LocalCluster:
    """``masters`` redis-server processes forming one cluster on loopback, and with
    ``replicas`` one replica per master (nodes ``masters`` to ``2 * masters - 1``, node
    ``masters + i`` replicating node ``i`` at the start).

    Args:
        masters: number of master nodes (slots split evenly in node order).
        replicas: 0, or 1 for a replica per master.
        node_timeout_ms: ``cluster-node-timeout``; small so a killed node is noticed (and its
            replica promoted), and its failure forgiven after a restart, within seconds.
        appendfsync: AOF policy; ``always`` so a SIGKILLed node loses no acknowledged write
            and restart tests are deterministic.
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        replicas: int = 0,
        node_timeout_ms: int = 1000,
        appendfsync: str = "always",
    ) -> None:
        if masters < 1 or replicas not in (0, 1):
            msg = f"a cluster needs at least one master and 0 or 1 replica each, not {masters}"
            raise ValueError(msg)
        self.masters = masters
        self.root = Path(tempfile.mkdtemp(prefix="detector-cluster-"))
        count = masters * (1 + replicas)
        # Two ports per node: clients, and the cluster bus (by default port + 10000, which
        # fails for ephemeral ports above 55535).
        ports = distinct_free_ports(2 * count)
        self.bus_ports = ports[1::2]
        extra = REPLICA_ARGS if replicas else []
        self.nodes = [
            EmbeddedRedis(
                ports[2 * i],
                appendonly=True,
                appendfsync=appendfsync,
                directory=self.root / f"node-{i}",
                extra_args=[*cluster_args(node_timeout_ms, bus_port=ports[2 * i + 1]), *extra],
            )
            for i in range(count)
        ]
        self.failovers = 0

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
        """The first and last slot that master ``index`` serves from the start."""
        n = self.masters
        return index * SLOTS // n, (index + 1) * SLOTS // n - 1

    def node_of(self, key: str) -> int:
        """Index of the primary serving ``key`` now (by its slot, as a live node sees it)."""
        slot = key_slot(key.encode())
        for i in self.live():
            try:
                with self.node_client(i) as c:
                    ranges = c.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            for first, last, primary, *_ in ranges:
                if first <= slot <= last:
                    return self.ports.index(int(primary[1]))
        msg = f"no live node knows who serves slot {slot}"
        raise LookupError(msg)

    def live(self) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if node.process is not None]

    def role(self, index: int) -> tuple[str, int | None, bool]:
        """(``master`` or ``slave``, its primary's port, replication link up) of a node."""
        with self.node_client(index) as c:
            info = c.info("replication")
        if info["role"] == "master":
            return "master", None, True
        return "slave", int(info["master_port"]), info.get("master_link_status") == "up"

    def replica_of(self, index: int) -> int:
        """Index of a replica of node ``index`` (its link up or not)."""
        port = self.ports[index]
        for i in self.live():
            if i != index and self.role(i)[:2] == ("slave", port):
                return i
        msg = f"node {index} has no replica"
        raise LookupError(msg)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> str:
        """Start every node, assign slots, join them and wait for ``cluster_state:ok``."""
        try:
            for node in self.nodes:
                node.start()
            for i in range(self.masters):
                with self.node_client(i) as c:
                    # Distinct epochs, as redis-cli sets them, so no epoch collision to resolve.
                    c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                    c.execute_command("CLUSTER", "ADDSLOTSRANGE", *self.slot_range(i))
            with self.node_client(0) as c:
                for port, bus in zip(self.ports[1:], self.bus_ports[1:], strict=True):
                    c.execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)
            if len(self.nodes) > self.masters:
                self._wait(lambda: all(s != "down" and "knows" not in s for s in self.states()),
                           timeout_s, "the nodes to meet")  # fmt: skip
                for i in range(self.masters, len(self.nodes)):
                    with self.node_client(i - self.masters) as c:
                        primary_id = c.execute_command("CLUSTER", "MYID")
                    with self.node_client(i) as c:
                        c.execute_command("CLUSTER", "REPLICATE", primary_id)
            self.wait_ok(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Block until every node reports ``cluster_state:ok`` and knows every node, and
        every replica's link is up."""
        self._wait(lambda: self.is_ok() and self._replicas_linked(), timeout_s, "cluster ok")

    def _replicas_linked(self) -> bool:
        try:
            return all(self.role(i)[2] for i in self.live())
        except redis.RedisError:
            return False

    def _wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                msg = f"no {what} after {timeout_s} s: {self.states()}"
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

    def kill_primary(self, key: str, timeout_s: float = 30.0) -> float:
        """SIGKILL the primary serving ``key``; once the cluster promoted its replica (every
        live node ``ok``), restart it, and wait until it rejoined as the new primary's replica
        in sync. Returns the seconds from the kill to the promotion."""
        victim = self.node_of(key)
        heir = self.replica_of(victim)
        self.kill(victim)
        killed = time.monotonic()
        self._wait(lambda: self.role(heir)[0] == "master"
                   and all(self.states()[i] == "ok" for i in self.live()),
                   timeout_s, f"promotion of node {heir}")  # fmt: skip
        promoted = time.monotonic() - killed
        self.restart(victim, timeout_s=timeout_s)
        self.failovers += 1
        return promoted

    def takeover(self, key: str, timeout_s: float = 30.0) -> float:
        """``CLUSTER FAILOVER TAKEOVER`` on the replica of ``key``'s primary, which stays up:
        the replica takes the slots at once (no agreement with the primary, which may still
        take writes until it learns it was demoted); wait until the old primary is its
        replica in sync. Returns the seconds to the promotion."""
        victim = self.node_of(key)
        heir = self.replica_of(victim)
        started = time.monotonic()
        with self.node_client(heir) as c:
            c.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        self._wait(lambda: self.role(heir)[0] == "master", timeout_s, "takeover")
        promoted = time.monotonic() - started
        self.wait_ok(timeout_s)
        self.failovers += 1
        return promoted

    def flushall(self) -> None:
        """Empty every primary (between tests sharing the cluster; replicas follow)."""
        for i in self.live():
            if self.role(i)[0] == "master":
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
    return healed(redis_cluster)


@pytest.fixture(scope="module")
def replicated_cluster() -> Iterator[LocalCluster]:
    """3 masters with a replica each, shared by the tests of one module, every node up and
    empty at the start of each test (see :func:`healed`)."""
    with LocalCluster(3, replicas=1) as cluster:
        yield cluster


def healed(cluster: LocalCluster) -> str:
    """Every node of ``cluster`` up (restarted if a test killed one), the cluster ok and
    empty; its startup URL."""
    for i, node in enumerate(cluster.nodes):
        if node.process is None:
            cluster.restart(i, wait=False)
    cluster.wait_ok()
    cluster.flushall()
    return cluster.url
