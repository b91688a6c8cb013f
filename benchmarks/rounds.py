"""Instructions per read round: what a round costs the worker beyond its events.

python -m benchmarks.rounds                          # this tree
python -m benchmarks.rounds --against /tmp/snap      # and a benchmarks.snapshot --compile

A live stream read as it arrives gives the worker rounds of a few events: each pays one
``XREADGROUP``, its parsing, the batch's bookkeeping, metrics and housekeeping whatever its
size, so the worker's cost per event is higher live than draining a backlog (which the
latency benchmark's capacity measures). Here a :class:`~detector.runtime.worker.Worker` (the
CLI's defaults, warm from a baseline of the throughput workload's history) reads the same
``--events`` live events twice, ``--batch-size`` 1 and 500 at a time, each run in its own
process under ``valgrind --tool=callgrind`` (the embedded redis-server is not traced); the
difference of the two runs' instructions over the difference of their rounds is the cost of a
round. Commits come by count only (``--events`` under ``checkpoint_every``: the final one);
what the worker does every so many seconds (health, gauges) still follows the run's wall
time, a small share. The baseline is this tree's: ``--against`` trees must read its
checkpoint format. Instructions, not time: the load of a shared machine does not move them
(see :mod:`benchmarks.instructions`). Needs ``valgrind``; ~2-5 minutes per run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import orjson

from benchmarks.workloads import append, baseline_for, shop_workload, worker_settings

_TOTAL = re.compile(r"I\s+refs:\s+([\d,]+)")
_ROUNDS = re.compile(r"^events (\d+) rounds (\d+)$", re.MULTILINE)


def worker_role(baseline: Path, events: Path, batch_size: int) -> None:
    """Run a worker over ``events`` read ``batch_size`` at a time; print events and rounds."""
    import redis

    from detector.gateway.embedded import EmbeddedRedis
    from detector.runtime.worker import Worker

    live = orjson.loads(events.read_bytes())
    with EmbeddedRedis() as server:
        append(redis.Redis.from_url(server.url), "rounds", live)
        s = worker_settings(server.url, "rounds", "g", "c", "stats", baseline, 300)
        # Commits by count only (none before the final one): a commit due by time would
        # come with the run's duration, which callgrind and the load stretch.
        s = dataclasses.replace(s, batch_size=batch_size, checkpoint_interval_ms=10**9)
        stats = Worker(s).run()
    print(f"events {stats.events} rounds {stats.batches}")


def counted(tree: Path, baseline: Path, events: Path, batch_size: int) -> tuple[int, int, int]:
    """(instructions, events, rounds) of one run of ``tree`` under callgrind."""
    with tempfile.TemporaryDirectory(prefix="detector-rounds-") as d:
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
        done = subprocess.run(
            [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/out",
                sys.executable, "-m", "benchmarks.rounds", "--role", "worker",
                "--baseline", str(baseline), "--events-file", str(events),
                "--batch-size", str(batch_size),
            ],
            cwd=tree, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
    total = _TOTAL.search(done.stderr)
    outcome = _ROUNDS.search(done.stdout)
    if total is None or outcome is None:
        msg = f"no count from {tree}:\n{done.stdout[-1000:]}\n{done.stderr[-2000:]}"
        raise RuntimeError(msg)
    return int(total.group(1).replace(",", "")), int(outcome.group(1)), int(outcome.group(2))


@click.command()
@click.option("--role", type=click.Choice(["main", "worker"]), default="main", hidden=True)
@click.option("--baseline", type=click.Path(path_type=Path), hidden=True)
@click.option("--events-file", type=click.Path(path_type=Path), hidden=True)
@click.option("--batch-size", default=1, hidden=True)
@click.option("--events", "n_events", default=1000, show_default=True)
@click.option("--producers", default=1000, show_default=True)
@click.option("--history-per-producer", default=300, show_default=True)
@click.option("--quick", is_flag=True, help="200 events of 100 producers.")
@click.option(
    "--against",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Other trees (benchmarks.snapshot --compile), measured the same way.",
)
def main(
    role: str,
    baseline: Path | None,
    events_file: Path | None,
    batch_size: int,
    n_events: int,
    producers: int,
    history_per_producer: int,
    quick: bool,
    against: tuple[Path, ...],
) -> None:
    """Instructions per read round of this tree (and of ``--against`` trees)."""
    if role == "worker":
        assert baseline and events_file  # the main role passes them
        worker_role(baseline, events_file, batch_size)
        return
    if quick:
        n_events, producers = min(n_events, 200), min(producers, 100)
    workload = shop_workload(max(n_events, 10_000), producers, history_per_producer)
    with tempfile.TemporaryDirectory(prefix="detector-rounds-") as d:
        tmp = Path(d)
        path, _ = baseline_for(workload, "stats", tmp)
        events = tmp / "events.json"
        events.write_bytes(orjson.dumps(workload.live[:n_events]))
        here = Path(__file__).resolve().parent.parent
        for tree in (here, *against):
            one, n, rounds_one = counted(tree, path, events, 1)
            many, n_many, rounds_many = counted(tree, path, events, 500)
            per_round = (one - many) / (rounds_one - rounds_many)
            click.echo(
                f"{tree}: {n:,} events; {rounds_one:,} rounds {one:,} instructions, "
                f"{rounds_many:,} rounds {many:,} (events {n_many:,}); "
                f"per round: {per_round:,.0f}"
            )


if __name__ == "__main__":
    main()
