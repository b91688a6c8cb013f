"""Fill a stream with simulated shop events, for ``detector run --until-idle`` timings.

python -m benchmarks.fill --redis-url redis://127.0.0.1:6379/0 --stream bench --events 100000
"""

from __future__ import annotations

import time

import click
import redis

from detector.shop.simulator import DEMO_KINDS, generate


@click.command()
@click.option("--redis-url", required=True)
@click.option("--stream", default="bench", show_default=True)
@click.option("--events", "count", default=100_000, show_default=True)
@click.option("--seed", default=7, show_default=True)
def main(redis_url: str, stream: str, count: int, seed: int) -> None:
    """Replace STREAM with COUNT shop events (with the demo's incidents)."""
    hours = max(6.0 * count / 140_000, 1.0)  # the default shop makes ~140k events in 6 h
    shop = generate(seed=seed, duration_s=hours * 3600, kinds=DEMO_KINDS, warmup_s=hours * 600)
    events = shop.events[:count]
    r = redis.Redis.from_url(redis_url)
    r.delete(stream)
    started = time.perf_counter()
    for i in range(0, len(events), 1000):
        pipe = r.pipeline(transaction=False)
        for fields in events[i : i + 1000]:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pipe.execute()
    producers = len({e["producer"] for e in events})
    click.echo(
        f"{len(events)} events from {producers} producers in {stream} "
        f"({time.perf_counter() - started:.1f}s to append)"
    )


if __name__ == "__main__":
    main()
