"""The producer helper: each event lands in its producer's partition, in order, decodable."""

from __future__ import annotations

from collections import defaultdict

import pytest
import redis
from redis.cluster import RedisCluster

from detector.core.events import Decoder
from detector.gateway.partitions import partition_of, partition_stream
from detector.producer import Producer
from tests.cluster import LocalCluster, cluster_url, redis_cluster  # noqa: F401
from tests.helpers import order_events

P = 8


def events_by_producer(events: list[dict[str, str]]) -> list[tuple[str, dict[str, str]]]:
    return [(e["producer"], e) for e in events]


def test_send_appends_to_the_producers_partition_in_the_decoders_layout(
    r: redis.Redis,
) -> None:
    producer = Producer(r, "events", P)
    entry_id = producer.send("orders-1", {"ts": 1_700_000_000_000, "data": {"amount": 9.5}})
    stream = partition_stream("events", partition_of("orders-1", P))
    [(got_id, fields)] = r.xrange(stream)
    assert got_id == entry_id
    raw = {k.encode(): v.encode() for k, v in fields.items()}
    event = Decoder().decode(stream, entry_id, raw)
    assert (event.producer, event.event_time_ms, event.numbers) == (
        "orders-1",
        1_700_000_000_000,
        {"amount": 9.5},
    )


def test_send_many_keeps_each_producers_order(r: redis.Redis) -> None:
    events = order_events(producers=12, per_producer=30, seed=3)
    ids = Producer(r, "events", P).send_many(events_by_producer(events))
    assert len(ids) == len(events)
    seen: dict[str, list[str]] = defaultdict(list)
    used = set()
    for p in range(P):
        for _, fields in r.xrange(partition_stream("events", p)):
            assert partition_of(fields["producer"], P) == p
            seen[fields["producer"]].append(fields["data"])
            used.add(p)
    for name in {e["producer"] for e in events}:
        assert seen[name] == [e["data"] for e in events if e["producer"] == name]
    assert len(used) > 1, "12 producers should spread over several of 8 partitions"


def test_refuses_an_event_naming_another_producer_or_none(r: redis.Redis) -> None:
    producer = Producer(r, "events", P)
    with pytest.raises(ValueError, match="not 'b'"):
        producer.send("b", {"producer": "a"})
    with pytest.raises(ValueError, match="empty"):
        producer.send("", {"ts": "1"})
    assert producer.send("a", {"producer": "a"})  # the same name twice is fine
    assert sum(r.xlen(partition_stream("events", p)) for p in range(P)) == 1


def test_send_many_on_a_cluster(cluster_url: str) -> None:  # noqa: F811
    client = RedisCluster.from_url(cluster_url, decode_responses=True)
    try:
        events = order_events(producers=8, per_producer=20, seed=5)
        Producer(client, "events", P).send_many(events_by_producer(events))
        total = 0
        for p in range(P):
            entries = client.xrange(partition_stream("events", p))
            assert all(partition_of(f["producer"], P) == p for _, f in entries)
            total += len(entries)
        assert total == len(events)
    finally:
        client.close()
