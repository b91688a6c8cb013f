"""What durable writes cost: the same backlog drained with and without ``--min-replicas-acked``.

python -m benchmarks.durability                 # 50k events, 3 rounds
python -m benchmarks.durability --quick         # 5k events, 1 round (smoke run)

A primary and one replica (two embedded redis-server processes on loopback, the replica
``--replicaof`` the primary) hold the throughput benchmark's shop workload (its live events,
appended once per run to a fresh stream, and replicated before the worker starts). Each round
drains it twice with an in-process :class:`~detector.runtime.worker.Worker` started from the
workload's baseline, once asynchronous and once with ``min_replicas_acked=1``, in alternating
order (paired: same data, same minutes). Reported per mode: events/s (from the first read to
the last commit), and from the worker's metrics the WAITs (count, mean ms: each is the
round trip of the write it follows too), the mean batch time and the mean commit time; then
the durable/asynchronous ratio of events/s per round, median and range. Before the rounds,
what one WAIT adds to a small write: ``--probes`` round trips of ``XADD`` alone and of ``XADD``
plus ``WAIT 1`` in one pipeline, alternated; p50 and p99 of each.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import click
import redis
from prometheus_client import CollectorRegistry

from benchmarks.throughput import exit_on_sigterm, versions
from benchmarks.workloads import append, baseline_for, shop_workload, worker_settings
from detector.core.errors import ConfigError
from detector.gateway.embedded import EmbeddedRedis
from detector.runtime.metrics import Metrics
from detector.runtime.worker import Worker

MODES = ("asynchronous", "durable")
SYNC = ["--repl-diskless-sync-delay", "0"]


@dataclass(frozen=True, slots=True)
class Drain:
    mode: str
    round: int
    events: int
    events_per_s: float
    waits: int
    wait_ms: float
    batch_ms: float
    commit_ms: float


def _mean_ms(registry: CollectorRegistry, name: str) -> tuple[int, float]:
    count = registry.get_sample_value(f"{name}_count") or 0.0
    total = registry.get_sample_value(f"{name}_sum") or 0.0
    return int(count), (1000 * total / count if count else 0.0)


def _replicated(client: redis.Redis, replicas: int = 1, timeout_s: float = 30) -> None:
    """Until ``replicas`` replicas hold everything written so far (WAIT after a write)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        pipe.set("bench:sync", "1")
        pipe.execute_command("WAIT", replicas, 1000)
        if pipe.execute()[-1] >= replicas:
            return
    msg = "the replica did not catch up"
    raise ConfigError(msg)


def wait_cost(client: redis.Redis, probes: int) -> list[str]:
    """p50/p99 round trip of a small XADD, alone and followed by WAIT 1 (same pipeline)."""
    alone: list[float] = []
    waited: list[float] = []
    for i in range(probes):
        pipe = client.pipeline(transaction=False)
        pipe.xadd("bench:probe", {"i": str(i)}, maxlen=1000)
        if i % 2:
            pipe.execute_command("WAIT", 1, 1000)
        started = time.perf_counter()
        pipe.execute()
        (waited if i % 2 else alone).append(1000 * (time.perf_counter() - started))
    out = []
    for name, xs in (("XADD", alone), ("XADD + WAIT 1", waited)):
        xs.sort()
        p50, p99 = xs[len(xs) // 2], xs[int(len(xs) * 0.99)]
        out.append(f"{name:>13}: p50 {p50:.3f} ms, p99 {p99:.3f} ms ({len(xs)} round trips)")
    client.delete("bench:probe")
    return out


def drain(url: str, stream: str, mode: str, rnd: int, baseline: Path, model: str) -> Drain:
    settings = worker_settings(url, stream, f"g-{mode}-{rnd}", "c1", model, baseline, 1000)
    if mode == "durable":
        settings = replace(settings, min_replicas_acked=1)
    registry = CollectorRegistry()
    worker = Worker(settings, metrics=Metrics(registry, settings.streams, model))
    stats = worker.run()
    waits, wait_ms = _mean_ms(registry, "detector_replication_wait_seconds")
    _, batch_ms = _mean_ms(registry, "detector_batch_seconds")
    _, commit_ms = _mean_ms(registry, "detector_checkpoint_seconds")
    return Drain(mode, rnd, stats.events, stats.events_per_s, waits, wait_ms, batch_ms, commit_ms)


@click.command()
@click.option("--events", default=50_000, show_default=True, help="Live events drained.")
@click.option("--producers", default=200, show_default=True)
@click.option("--history-per-producer", default=150, show_default=True)
@click.option("--rounds", default=3, show_default=True, help="Paired rounds (both modes each).")
@click.option("--model", default="stats", show_default=True)
@click.option("--probes", default=4000, show_default=True, help="Round trips of the WAIT probe.")
@click.option("--quick", is_flag=True, help="5k events, 1 round.")
def main(
    events: int,
    producers: int,
    history_per_producer: int,
    rounds: int,
    model: str,
    probes: int,
    quick: bool,
) -> None:
    """Drain a backlog with and without durable writes (WAIT 1), against a primary+replica."""
    exit_on_sigterm()
    if quick:
        events, rounds = min(events, 5000), 1
    click.echo(" ".join(f"{k}={v}" for k, v in versions().items()))
    workload = shop_workload(events, producers, history_per_producer)
    click.echo(f"workload: {workload.describe()}")
    results: list[Drain] = []
    with (
        tempfile.TemporaryDirectory(prefix="detector-durability-") as tmp,
        EmbeddedRedis(extra_args=SYNC) as primary,
    ):
        baseline, _ = baseline_for(workload, model, Path(tmp))
        replica = EmbeddedRedis(extra_args=[*SYNC, "--replicaof", "127.0.0.1", str(primary.port)])
        replica.start()
        try:
            client = redis.Redis.from_url(primary.url)
            _replicated(client)
            for line in wait_cost(client, probes):
                click.echo(line)
            for rnd in range(rounds):
                order = MODES if rnd % 2 == 0 else MODES[::-1]
                for mode in order:
                    stream = f"bench:{rnd}:{mode}"
                    append(client, stream, workload.live)
                    _replicated(client)
                    d = drain(primary.url, stream, mode, rnd, baseline, model)
                    results.append(d)
                    click.echo(
                        f"round {rnd} {mode:>12}: {d.events:,} events, {d.events_per_s:,.0f} "
                        f"events/s; {d.waits} WAITs, mean {d.wait_ms:.2f} ms; batch "
                        f"{d.batch_ms:.2f} ms; commit {d.commit_ms:.1f} ms"
                    )
                    client.delete(stream)
        finally:
            replica.stop()
    click.echo("")
    for line in summary(results):
        click.echo(line)


def summary(results: list[Drain]) -> list[str]:
    """Median and range per mode, and the paired durable/asynchronous ratio."""
    lines = []
    for mode in MODES:
        rates = [d.events_per_s for d in results if d.mode == mode]
        batch = [d.batch_ms for d in results if d.mode == mode]
        waits = [d.wait_ms for d in results if d.mode == mode]
        lines.append(
            f"{mode:>12}: events/s median {statistics.median(rates):,.0f} (range "
            f"{min(rates):,.0f}-{max(rates):,.0f}); batch mean {statistics.median(batch):.2f} ms"
            + (f"; WAIT mean {statistics.median(waits):.2f} ms" if mode == "durable" else "")
        )
    ratios = [
        d.events_per_s / a.events_per_s
        for d in results
        if d.mode == "durable"
        for a in results
        if a.mode == "asynchronous" and a.round == d.round
    ]
    lines.append(
        f"durable / asynchronous events/s: median {statistics.median(ratios):.3f} (range "
        f"{min(ratios):.3f}-{max(ratios):.3f}) over {len(ratios)} paired rounds"
    )
    return lines


if __name__ == "__main__":
    main()
