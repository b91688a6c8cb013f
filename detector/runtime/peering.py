"""Peer summaries shared across partitions through Redis (see :mod:`detector.core.features.peers`).

Each partition's pipeline summarises its own producers' kinds. Every ``PEER_SHARE_INTERVAL_S``
of wall-clock time a worker writes each owned partition's summary to one hash per group,
``detector:peers:<group>`` (field: the partition, ``p<k>``, or the consumer's name when
unpartitioned; signed with the checkpoint key, so a forged summary is ignored), reads the
hash back and gives each pipeline the merge of every *other* field. Decisions read their own
summary live and the others' as of the last exchange: results depend on the number of
partitions only through that delay (at most one interval, plus the time a summary waits in
its worker for the next exchange). With one partition there is no other field: ``detector
run`` decides as ``detector score`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import redis
from redis.cluster import RedisCluster

from detector.core.checkpoint import Signer
from detector.core.errors import CheckpointError
from detector.core.pipeline import Pipeline
from detector.core.settings import PEERS_KEY

PEER_SHARE_INTERVAL_S = 10.0
log = logging.getLogger(__name__)


def field_of(partition: int | None, consumer: str) -> str:
    """A pipeline's field in the group's hash."""
    return consumer if partition is None else f"p{partition}"


def exchange(
    client: redis.Redis | RedisCluster,
    group: str,
    signer: Signer,
    pipelines: Mapping[str, Pipeline],
) -> int:
    """Publish each pipeline's own summary under its field, then merge the other fields into
    each; returns the fields read. Pipelines without peer groups take no part."""
    sharing = {f: p for f, p in pipelines.items() if p.store.cfg.peers}
    if not sharing:
        return 0
    key = PEERS_KEY.format(group=group)
    mapping = {f: signer.sign(key + "\0" + f, p.store.peers.share()) for f, p in sharing.items()}
    client.hset(key, mapping=mapping)  # type: ignore[arg-type]
    raw: dict[bytes | str, bytes] = client.hgetall(key)  # type: ignore[assignment]
    summaries: dict[str, bytes] = {}
    for name, signed in raw.items():
        field = name.decode() if isinstance(name, bytes) else name
        try:
            summaries[field] = signer.verify(key + "\0" + field, signed)
        except CheckpointError:
            log.warning("peer summary %r in %s has a bad signature: ignored", field, key)
    for field, pipeline in sharing.items():
        try:
            pipeline.store.peers.merge(v for f, v in summaries.items() if f != field)
        except ValueError as exc:  # another version's layout: wait for its next write
            log.warning("peer summaries in %s not merged: %s", key, exc)
    return len(summaries)
