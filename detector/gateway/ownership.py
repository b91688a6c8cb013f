"""Ownership: which worker owns a partition, proven by a lease and a fencing token.

A lease is ``lease:{p} = <worker>:<epoch>`` with a TTL, taken only when free, the epoch from
``INCR epoch:{p}``, so every owner of a partition has a larger epoch than the one before
(redis-notes §3.4). Reads and commits of a partition run in scripts that first compare the
lease with the owner's token (:class:`Fence`): a worker paused past its lease (GC, SIGSTOP,
a slow disk) can neither read another entry of the partition nor commit its state once it
wakes, so the new owner's pending list and checkpoint stay its own.

Membership (dynamic assignment): each worker heartbeats ``ZADD members <now-ms> <worker>``;
members silent longer than the lease TTL are dead, and every worker computes the same target
assignment from the live members (:func:`detector.gateway.partitions.rendezvous`). Heartbeats use
the workers' clocks: their skew must stay well below the lease TTL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from detector.core.errors import DetectorError
from detector.gateway import partitions

if TYPE_CHECKING:
    from redis.commands.core import Script

    from detector.gateway.streams import Client

# KEYS: lease, epoch. ARGV: worker, ttl ms. Returns the new epoch, or nil if the lease is held.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. epoch, 'PX', ARGV[2])
return epoch
"""
# KEYS: lease. ARGV: token, ttl ms. 1 if still ours (and extended), else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS: lease. ARGV: token. Deletes the lease only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


class FencedError(DetectorError):
    """A read or commit refused because the partition's lease is no longer this owner's.

    Nothing was written: the owner drops the partition, whose uncommitted entries stay
    pending for the new owner (who replays them from the last checkpoint).
    """


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease a partition's reads and commits must still hold: key and token.

    A lease can be lost, so its owner writes what it must in one go: a time-due commit (a
    lost lease refuses it before anything is applied) and the replay of a partition just
    acquired (another handoff would re-deliver it). A lease that guards no partition
    (:meth:`Leases.take`, the router's) has partition -1 and epoch 0.
    """

    refuses: ClassVar[bool] = True
    partition: int
    lease_key: str
    token: str

    @property
    def epoch(self) -> int:
        return int(self.token.rpartition(":")[2])

    def stamp(self) -> dict[str, int]:
        """What a commit records of its writer: epochs only grow."""
        return {"partition": self.partition, "epoch": self.epoch}


@dataclass(frozen=True, slots=True)
class NoFence:
    """The fence of an unpartitioned worker's one partition: it never refuses (nobody else
    can own it), so its commits are encoded in slices like any other."""

    refuses: ClassVar[bool] = False

    def stamp(self) -> dict[str, int]:
        return {}


NO_FENCE = NoFence()


class Leases:
    """Acquire, renew and release the leases of one group's partitions.

    Args:
        client: Redis client (standalone or cluster: each script touches one partition's slot).
        group: consumer group (part of the key names).
        worker: this worker's id, unique among the group's workers.
        ttl_ms: lease lifetime; the owner renews it every third of it.
    """

    def __init__(self, client: Client, group: str, worker: str, ttl_ms: int) -> None:
        self.r = client
        self.group = group
        self.worker = worker
        self.ttl_ms = ttl_ms
        self._acquire: Script = client.register_script(_ACQUIRE)
        self._renew: Script = client.register_script(_RENEW)
        self._release: Script = client.register_script(_RELEASE)

    def acquire(self, p: int) -> Fence | None:
        """Take partition ``p`` if its lease is free: its fence, or None if held."""
        lease = partitions.lease_key(self.group, p)
        epoch = self._acquire(
            keys=[lease, partitions.epoch_key(self.group, p)], args=[self.worker, self.ttl_ms]
        )
        if epoch is None:
            return None
        return Fence(p, lease, f"{self.worker}:{int(epoch)}")

    def take(self, lease_key: str) -> Fence | None:
        """Take a lease that guards no partition (the router's, on its source) if it is free:
        no epoch, as nothing is fenced by it. Renewed and released like a partition's."""
        token = f"{self.worker}:0"
        if not self.r.set(lease_key, token, nx=True, px=self.ttl_ms):
            return None
        return Fence(-1, lease_key, token)

    def renew(self, fence: Fence) -> bool:
        """Extend the lease; False if it expired or another worker holds it now."""
        return bool(self._renew(keys=[fence.lease_key], args=[fence.token, self.ttl_ms]))

    def release(self, fence: Fence) -> bool:
        """Free the lease (after the final commit) if it is still ours."""
        return bool(self._release(keys=[fence.lease_key], args=[fence.token]))

    def holder(self, p: int) -> str | None:
        value = self.r.get(partitions.lease_key(self.group, p))
        return None if value is None else value.decode()  # type: ignore[union-attr]


class Membership:
    """The live workers of a group, from heartbeats in a sorted set."""

    def __init__(self, client: Client, group: str, worker: str, ttl_ms: int) -> None:
        self.r = client
        self.key = partitions.MEMBERS.format(group=group)
        self.worker = worker
        self.ttl_ms = ttl_ms

    def heartbeat(self) -> list[str]:
        """Record this worker as alive; returns the live members (this one included)."""
        now_ms = int(time.time() * 1000)
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(self.key, {self.worker: now_ms})
        # The dead are forgotten only well after they stopped counting, for the logs' sake.
        pipe.zremrangebyscore(self.key, "-inf", now_ms - 10 * self.ttl_ms)
        pipe.zrangebyscore(self.key, now_ms - self.ttl_ms, "+inf")
        live = pipe.execute()[-1]
        return sorted({m.decode() for m in live} | {self.worker})

    def leave(self) -> None:
        self.r.zrem(self.key, self.worker)
