"""A local Sentinel deployment for tests: a primary, a replica and three Sentinels on loopback.

Every process is a ``redis-server`` child (a Sentinel is ``redis-server <conf> --sentinel``, its
config file generated into the deployment's temporary directory, which Sentinel rewrites as it
learns the topology). Sentinel timings are small (down after 1 s, failover timeout 3 s; 600 ms
made a freshly promoted primary flap when the Sentinels authenticate) so a killed primary is
replaced within a few seconds. :meth:`Deployment.kill_primary` SIGKILLs the primary, waits for
the Sentinels to promote the replica, and restarts the old primary on its port as a replica of
the new one (so a next failover has a replica to promote); :meth:`Deployment.switch` asks the
Sentinels for a failover while the primary is alive (it is demoted and answers READONLY).

Usage::

    from tests.failover import Deployment, deployment  # noqa: F401

    def test_x(deployment: Deployment) -> None:
        client = deployment.client()  # follows the primary through Sentinel
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from detector.core.errors import ConfigError
from detector.gateway.embedded import EmbeddedRedis, find_redis_server
from detector.gateway.streams import SentinelTarget, sentinel_primary
from tests.cluster import distinct_free_ports

MASTER = "primary"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
# A replica resynchronises at once (no wait for more replicas to share a diskless transfer).
NODE_ARGS = ["--repl-diskless-sync-delay", "0", "--appendonly", "no"]


class Deployment:
    """Two data nodes (one primary, one replica) watched by three Sentinels (quorum 2)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="detector-sentinel-"))
        ports = distinct_free_ports(5)
        self.nodes = {
            port: EmbeddedRedis(port, directory=self.root / f"node-{port}") for port in ports[:2]
        }
        for node in self.nodes.values():
            node.directory.mkdir(parents=True)
            (node.directory / "users.acl").touch()  # ACL SAVE keeps users through restarts
            node.extra_args = self._node_args(node)
        self.sentinel_ports = ports[2:]
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.primary_port = ports[0]
        self.failovers = 0

    @property
    def target(self) -> SentinelTarget:
        return SentinelTarget(tuple(("127.0.0.1", p) for p in self.sentinel_ports), MASTER)

    def sentinel_args(self) -> list[str]:
        """The ``detector`` options that reach the primary through the Sentinels."""
        args = [a for p in self.sentinel_ports for a in ("--sentinel", f"127.0.0.1:{p}")]
        return [*args, "--sentinel-master", MASTER]

    def url(self, port: int | None = None) -> str:
        return f"redis://127.0.0.1:{port or self.primary_port}/0"

    def start(self) -> None:
        primary, replica = self.nodes
        self.nodes[primary].start()
        self._start_replica(replica, primary)
        self._wait_in_sync(primary, replica)
        for port in self.sentinel_ports:
            self.sentinels.append(self._start_sentinel(port, primary))
        self._wait_agree(primary, "discover the deployment")

    @staticmethod
    def _node_args(node: EmbeddedRedis) -> list[str]:
        return [*NODE_ARGS, "--aclfile", str(node.directory / "users.acl")]

    def _start_replica(self, port: int, primary: int) -> None:
        node = self.nodes[port]
        node.extra_args = [*self._node_args(node), "--replicaof", "127.0.0.1", str(primary)]
        node.start()

    def _start_sentinel(self, port: int, primary: int) -> subprocess.Popen[bytes]:
        directory = self.root / f"sentinel-{port}"
        directory.mkdir()
        conf = directory / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"logfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        return subprocess.Popen(
            [find_redis_server(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _sentinel_view(self, port: int) -> tuple[int, int] | None:
        """(primary port, replicas known) as one Sentinel sees it, None if it cannot say."""
        s = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            addr = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
            replicas = s.execute_command("SENTINEL", "REPLICAS", MASTER)
        except redis.RedisError:
            return None
        finally:
            s.close()
        if not addr:
            return None
        up = [r for r in replicas if "s_down" not in str(r) and "disconnected" not in str(r)]
        return int(addr[1]), len(up)

    def _sentinels_agree(self, primary: int, replicas: int) -> bool:
        views = [self._sentinel_view(p) for p in self.sentinel_ports]
        return all(v is not None and v[0] == primary and v[1] >= replicas for v in views)

    def _wait_in_sync(self, primary: int, replica: int, timeout_s: float = 20) -> None:
        """Until the replica is connected and holds everything the primary wrote."""
        p = redis.Redis(port=primary, socket_timeout=2, decode_responses=True)
        r = redis.Redis(port=replica, socket_timeout=2, decode_responses=True)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                try:
                    info = r.info("replication")
                    # WAIT counts from the connection's last write: write first.
                    pipe = p.pipeline(transaction=False)
                    pipe.set("failover:sync", "1")
                    pipe.execute_command("WAIT", 1, 200)
                    if info.get("master_link_status") == "up" and pipe.execute()[-1] >= 1:
                        return
                except redis.RedisError:
                    pass
                time.sleep(0.05)
        finally:
            p.close()
            r.close()
        msg = f"replica {replica} did not sync with {primary}"
        raise ConfigError(msg)

    def client(self, **options: object) -> redis.Redis:
        """A client of the current primary, through the Sentinels (as the worker's)."""
        return sentinel_primary("", self.target, {"socket_timeout": 5, **options})

    def replica_port(self) -> int:
        return next(p for p in self.nodes if p != self.primary_port)

    def _wait_new_primary(self, old: int, timeout_s: float = 30) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            views = [self._sentinel_view(p) for p in self.sentinel_ports]
            ports = {v[0] for v in views if v is not None}
            if len(ports) == 1 and old not in ports:
                new = ports.pop()
                role = redis.Redis(port=new, socket_timeout=1).execute_command("ROLE")
                if role[0] == b"master":
                    return new
            time.sleep(0.05)
        msg = f"no failover from {old} within {timeout_s}s: {self.sentinel_log()}"
        raise ConfigError(msg)

    def kill_primary(self) -> float:
        """SIGKILL the primary; once the Sentinels promoted the replica, restart the old
        primary as a replica of the new one and wait until it is in sync. Returns the
        seconds from the kill to the promotion."""
        old = self.primary_port
        self.nodes[old].kill()
        killed = time.monotonic()
        new = self._wait_new_primary(old)
        promoted = time.monotonic() - killed
        self.primary_port = new
        self._start_replica(old, new)
        self._rejoin(old, new)
        self.failovers += 1
        return promoted

    def switch(self) -> float:
        """A failover with the primary alive (``SENTINEL FAILOVER``): once the Sentinels
        promoted the replica, the old primary is demoted to its replica; clients still
        connected to it get READONLY."""
        old = self.primary_port
        s = redis.Redis(port=self.sentinel_ports[0], socket_timeout=5)
        started = time.monotonic()
        s.execute_command("SENTINEL", "FAILOVER", MASTER)
        s.close()
        new = self._wait_new_primary(old)
        promoted = time.monotonic() - started
        self.primary_port = new
        # What the Sentinels do 8-10 s later, now: the tests would otherwise wait for it
        # (the producer waits for a replica, the new primary has none until then).
        demoted = redis.Redis(port=old, socket_timeout=5)
        demoted.replicaof("127.0.0.1", new)
        demoted.close()
        self._rejoin(old, new)
        self.failovers += 1
        return promoted

    def _rejoin(self, old: int, new: int) -> None:
        self._wait_in_sync(new, old)
        self._wait_agree(new, f"see {old} rejoin")

    def _wait_agree(self, primary: int, what: str, timeout_s: float = 20) -> None:
        """Until every Sentinel names ``primary`` with a live replica."""
        deadline = time.monotonic() + timeout_s
        while not self._sentinels_agree(primary, replicas=1):
            if time.monotonic() > deadline:
                msg = f"the Sentinels did not {what}: {self.sentinel_log()}"
                raise ConfigError(msg)
            time.sleep(0.05)

    def sentinel_log(self, lines: int = 15) -> str:
        out = []
        for port in self.sentinel_ports:
            path = self.root / f"sentinel-{port}" / "sentinel.log"
            if path.exists():
                out += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.terminate()
        for proc in self.sentinels:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for node in self.nodes.values():
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    """A fresh primary, replica and three Sentinels (no redis-server: the test fails)."""
    d = Deployment()
    try:
        d.start()
        yield d
    finally:
        d.stop()
