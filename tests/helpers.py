"""Small deterministic event streams for integration tests."""

from __future__ import annotations

import random

import orjson
import redis

START_MS = 1_767_225_600_000


def order_events(
    producers: int = 3, per_producer: int = 400, seed: int = 1, gap_ms: int = 1000
) -> list[dict[str, str]]:
    """Interleaved normal order events from ``producers`` producers, sorted by ts."""
    rng = random.Random(seed)
    events = []
    for p in range(producers):
        t = START_MS + p * 37
        for i in range(per_producer):
            t += int(rng.expovariate(1 / gap_ms)) + 1
            data = {
                "amount": round(rng.lognormvariate(3.0, 0.3), 2),
                "currency": rng.choice(["EUR", "USD", "GBP"]),
                "order_id": f"o{p}-{i}",
            }
            events.append(
                {
                    "producer": f"svc-{p}",
                    "ts": str(t),
                    "type": "order.created",
                    "data": orjson.dumps(data).decode(),
                }
            )
    events.sort(key=lambda e: int(e["ts"]))
    return events


def outlier(producer: str, ts_ms: int, amount: float = 1e6) -> dict[str, str]:
    data = {"amount": amount, "currency": "EUR", "order_id": "x"}
    return {"producer": producer, "ts": str(ts_ms), "type": "order.created",
            "data": orjson.dumps(data).decode()}  # fmt: skip


def append(client: redis.Redis, stream: str, events: list[dict[str, str]]) -> list[str]:
    """XADD every event (pipelined); returns the entry ids."""
    pipe = client.pipeline(transaction=False)
    for fields in events:
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
    return [i.decode() if isinstance(i, bytes) else i for i in pipe.execute()]
