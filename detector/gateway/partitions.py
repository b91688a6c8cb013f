"""Partitions: which partition a producer's events go to, and the keys of each partition.

A consumer group load-balances entries, which would split one producer's events across
workers and break its state. So events are partitioned the way Kafka does it: P partition
streams, ``partition = crc32(producer) % P`` (stable across processes, unlike ``hash()``),
and one owner per partition at a time. Every key of partition ``p`` carries the hash tag
``{p}``, so one partition's stream, checkpoint and lease share a Redis Cluster slot (its
commit is one transaction) while different partitions spread over the shards.

Changing P remaps producers: plan it as a migration (drain, then start over with new
checkpoints), as with Kafka.

>>> partition_of("orders-1", 8)
6
>>> partition_stream("events", 6)
'events:{6}'
>>> checkpoint_key("detector", 2)
'detector:checkpoint:detector:{2}'
>>> assigned_partitions(8, index=1, count=3)
[1, 4, 7]
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable

from detector.core.errors import ConfigError

MAX_PARTITIONS = 1024
# Per-partition keys; {p} in the name is the literal hash tag, e.g. "events:{3}".
STREAM = "{base}:{{{p}}}"
CHECKPOINT = "detector:checkpoint:{group}:{{{p}}}"
LEASE = "detector:lease:{group}:{{{p}}}"
EPOCH = "detector:epoch:{group}:{{{p}}}"
HEALTH = "detector:health:{group}:{{{p}}}"
# Live workers of a group (sorted set: member = worker id, score = last heartbeat ms).
MEMBERS = "detector:members:{group}"


def partition_of(producer: str, partitions: int) -> int:
    """The partition of a producer id: crc32 of its UTF-8 bytes, modulo the count."""
    return zlib.crc32(producer.encode("utf-8", "surrogatepass")) % partitions


def partition_stream(base: str, p: int) -> str:
    """The stream holding partition ``p`` of the input stream ``base``."""
    return STREAM.format(base=base, p=p)


def partition_streams(base: str, partitions: int) -> list[str]:
    return [partition_stream(base, p) for p in range(partitions)]


def checkpoint_key(group: str, p: int) -> str:
    return CHECKPOINT.format(group=group, p=p)


def lease_key(group: str, p: int) -> str:
    return LEASE.format(group=group, p=p)


def epoch_key(group: str, p: int) -> str:
    return EPOCH.format(group=group, p=p)


def consumer_name(p: int) -> str:
    """The group consumer that reads partition ``p``: its pending list moves with the lease."""
    return f"p{p}"


def assigned_partitions(partitions: int, *, index: int, count: int) -> list[int]:
    """Static assignment: worker ``index`` of ``count`` owns ``{p : p % count == index}``."""
    if not 0 <= index < count:
        msg = f"worker index {index} is not in [0, {count})"
        raise ConfigError(msg)
    return [p for p in range(partitions) if p % count == index]


def rendezvous(partitions: int, members: Iterable[str]) -> dict[str, list[int]]:
    """Dynamic assignment: rendezvous (highest-random-weight) hashing with bounded load.

    Every worker computes the same answer from the same member list; each member gets at most
    ``ceil(P / n)`` partitions (plain HRW is lopsided with few partitions), and a member joining
    or leaving moves few partitions besides its own.
    """
    names = sorted(set(members))
    out: dict[str, list[int]] = {m: [] for m in names}
    if not names:
        return out
    cap = -(-partitions // len(names))
    for p in range(partitions):
        ranked = sorted(names, key=lambda m: (_weight(m, p), m), reverse=True)
        best = next(m for m in ranked if len(out[m]) < cap)
        out[best].append(p)
    return out


def _weight(member: str, p: int) -> int:
    # A real hash: crc32 of near-identical names ("w-1/3", "w-2/3") is too regular.
    digest = hashlib.blake2b(f"{member}/{p}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def check_name(kind: str, name: str) -> None:
    """Names inside partitioned keys must not hold braces: they would move the hash tag."""
    if "{" in name or "}" in name:
        msg = f"{kind} {name!r} must not contain '{{' or '}}' with partitions or on Redis Cluster"
        raise ConfigError(msg)


def check_partitions(partitions: int) -> None:
    if not 1 <= partitions <= MAX_PARTITIONS:
        msg = f"partitions must be in [1, {MAX_PARTITIONS}], not {partitions}"
        raise ConfigError(msg)
