"""Producer side of partitioned input: append an event to the partition of its producer.

The worker keeps per-producer state, so all events of one producer must reach one partition
stream (:mod:`detector.gateway.partitions`). A producer that cannot compute the partition itself
writes to one unpartitioned stream and lets ``detector route`` re-key it instead.

>>> from unittest.mock import MagicMock
>>> p = Producer(MagicMock(), "events", partitions=8)
>>> p.stream_of("orders-1")
'events:{6}'
>>> p.fields("orders-1", {"ts": 1700000000000, "data": {"amount": 9.5}})
{'ts': '1700000000000', 'data': '{"amount":9.5}', 'producer': 'orders-1'}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

import orjson

from detector.core.settings import DEFAULT_STREAM, EventFormat
from detector.gateway.partitions import check_name, check_partitions, partition_of, partition_stream
from detector.gateway.streams import Client, _text

# A field value as a producer hands it over: text and numbers as they are, bytes verbatim,
# and a mapping (the JSON payload field) as JSON.
FieldValue: TypeAlias = "str | bytes | int | float | Mapping[str, Any]"
_FORMAT = EventFormat()


class Producer:
    """Appends events to ``base_stream:{p}`` with ``p = partition_of(producer, partitions)``.

    Args:
        client: a ``redis.Redis`` or ``RedisCluster`` client.
        base_stream: the partitioned stream's base name (the worker's ``--stream``).
        partitions: P, the same as the workers' ``--partitions``.
        producer_field: the field naming the producer (the worker's ``--producer-field``).
        maxlen: cap each partition stream at about this many entries (None: no cap). A cap
            drops the oldest entries even when no worker has read them yet.
    """

    def __init__(
        self,
        client: Client,
        base_stream: str = DEFAULT_STREAM,
        partitions: int = 1,
        *,
        producer_field: str = _FORMAT.producer_field,
        maxlen: int | None = None,
    ) -> None:
        check_partitions(partitions)
        check_name("stream", base_stream)
        self.client = client
        self.base_stream = base_stream
        self.partitions = partitions
        self.producer_field = producer_field
        self.maxlen = maxlen

    def stream_of(self, producer: str) -> str:
        return partition_stream(self.base_stream, partition_of(producer, self.partitions))

    def fields(self, producer: str, event: Mapping[str, FieldValue]) -> dict[str, str | bytes]:
        """The entry's fields: the event's, encoded, plus the producer field.

        Raises:
            ValueError: the event names a different producer, or the producer is empty.
        """
        if not producer:
            msg = "empty producer id"
            raise ValueError(msg)
        out: dict[str, str | bytes] = {k: _encode(v) for k, v in event.items()}
        named = out.setdefault(self.producer_field, producer)
        if named not in (producer, producer.encode()):
            msg = f"event's {self.producer_field!r} is {named!r}, not {producer!r}"
            raise ValueError(msg)
        return out

    def send(self, producer: str, event: Mapping[str, FieldValue]) -> str:
        """XADD one event to its partition; returns the entry id."""
        entry_id = self.client.xadd(
            self.stream_of(producer),
            self.fields(producer, event),  # type: ignore[arg-type]
            maxlen=self.maxlen,
            approximate=True,
        )
        return _text(entry_id)

    def send_many(self, events: Iterable[tuple[str, Mapping[str, FieldValue]]]) -> list[str]:
        """XADD many (producer, event) pairs in one pipeline; each producer's in the given
        order. Returns the entry ids."""
        pipe = self.client.pipeline(transaction=False)
        for producer, event in events:
            pipe.xadd(
                self.stream_of(producer),
                self.fields(producer, event),  # type: ignore[arg-type]
                maxlen=self.maxlen,
                approximate=True,
            )
        return [_text(i) for i in pipe.execute()]


def _encode(value: FieldValue) -> str | bytes:
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, Mapping):
        return orjson.dumps(value).decode()
    return str(value)
