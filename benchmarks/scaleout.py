"""Scale-out: events/s of 1 and 2 partitioned worker processes over the same partitions.

python -m benchmarks.scaleout            # 200k events, 1k producers, P = 8, 3 rounds, router
python -m benchmarks.scaleout --quick    # 20k events, 1 round (smoke run)

One embedded redis-server (no persistence) holds the partition streams ``bench:{0..P-1}``,
filled once by :class:`detector.producer.Producer` with the throughput benchmark's shop
events (:mod:`benchmarks.workloads`). Each run drains every partition through its own
consumer group with ``detector run --partitions P --assign static --worker-count W
--until-idle`` (W = 1 or 2 subprocesses started together, warm from the same baseline), so
every run sees the same entries. Each round runs W = 1 and W = 2, alternating which goes
first, then (``--unpartitioned``) one unpartitioned worker on a stream ``bench`` holding the
same events, the reference of benchmarks/README.md §1. With ``--router``, ``detector route
--until-idle`` re-keys the live events from one unpartitioned stream into fresh partition
streams, timed the same way.

Events/s run from the first read to the last ack, as in :mod:`benchmarks.throughput`: this
process polls ``XINFO GROUPS`` of every partition every 10 ms. At the same polls it samples
the CPU time of Redis (``INFO cpu``: ``used_cpu_user`` + ``used_cpu_sys``) and of each worker
(``/proc/<pid>/stat``), so the CPU spent per event in the workers and in Redis, over the
same window, is measured; the projection for more cores and Cluster shards rests on them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import redis

from benchmarks.throughput import (
    STREAM,
    _worker_stats,
    detector_command,
    exit_on_sigterm,
    run_args,
    versions,
)
from benchmarks.workloads import BENCH_KEY, Fields, append, baseline_for, chunks, delete_matching
from benchmarks.workloads import shop_workload as make_workload
from detector.gateway import partitions
from detector.gateway.embedded import EmbeddedRedis
from detector.producer import Producer
from detector.router import DEFAULT_ROUTER_GROUP

POLL_S = 0.01
ROUTER_SOURCE = "bench-source"
ROUTER_BASE = "routed"
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")
_ROUTED = re.compile(r"routed (\d+) entries")


@dataclass(slots=True)
class Run:
    """One drain of every partition (or one router pass over the source)."""

    name: str  # "1 worker", "2 workers", "router"
    round: int
    events: int
    seconds: float
    worker_cpu_s: float  # summed over the worker (or router) processes, same window
    redis_cpu_s: float
    alerts: int = 0
    per_worker: list[int] = field(default_factory=list)
    start_skew_s: float = 0.0
    # Entries/s once every partition was being read (all workers past their start).
    steady_rate: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def us_per_event(self, cpu_s: float) -> float:
        return cpu_s / self.events * 1e6 if self.events else 0.0


class Watcher:
    """Polls one group on several streams: first read, last ack, and CPU times at both.

    The CPU counters are taken at the poll before the first read was seen and at the poll
    that saw the last ack, so the CPU window holds the timed window (by at most one poll).
    """

    def __init__(self, url: str, group: str, streams: list[str], total: int) -> None:
        self.client = redis.Redis.from_url(url)
        self.group = group.encode()
        self.streams = streams
        self.total = total
        self.pids: list[int] = []
        self._last_cpu: dict[int, float] = {}  # a process reaped by now keeps its last value
        self.first_read: float | None = None
        self.all_reading: float | None = None
        self.read_when_all_reading = 0
        self.last_ack: float | None = None
        self.cpu_start: tuple[float, float] | None = None  # (processes, redis)
        self.cpu_end: tuple[float, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait_s: float = 2.0) -> None:
        self._thread.join(timeout=wait_s)
        self._stop.set()
        self._thread.join()
        self.client.close()

    def _state(self) -> tuple[dict[str, int], int]:
        """Entries read per stream, and pending in all (nothing before the groups exist)."""
        pipe = self.client.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xinfo_groups(stream)
        read: dict[str, int] = {}
        pending = 0
        for stream, groups in zip(self.streams, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(groups, Exception):
                continue
            for g in groups:
                if g["name"] == self.group:
                    read[stream] = int(g.get("entries-read") or 0)
                    pending += int(g["pending"])
        return read, pending

    def _cpu(self) -> tuple[float, float]:
        info = self.client.info("cpu")
        redis_s = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        for pid in self.pids:
            with contextlib.suppress(OSError):
                # Fields 14 and 15 (utime, stime), counted after the ")" ending the name.
                stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                self._last_cpu[pid] = (int(stat[11]) + int(stat[12])) * _TICK_S
        return sum(self._last_cpu.values()), redis_s

    def _run(self) -> None:
        previous: tuple[float, tuple[float, float]] | None = None
        while not self._stop.is_set():
            now = time.perf_counter()
            cpu = self._cpu()
            by_stream, pending = self._state()
            read = sum(by_stream.values())
            # Between the previous poll (state not yet reached) and this one.
            midpoint = now if previous is None else (previous[0] + now) / 2
            if self.first_read is None and (read > 0 or pending > 0):
                self.first_read = midpoint
                self.cpu_start = cpu if previous is None else previous[1]
            if self.all_reading is None and sum(1 for n in by_stream.values() if n) == len(
                self.streams
            ):
                self.all_reading = midpoint
                self.read_when_all_reading = read
            if self.first_read is not None and read >= self.total and pending == 0:
                self.last_ack = midpoint
                self.cpu_end = self._cpu()
                return
            previous = (now, cpu)
            time.sleep(POLL_S)

    @property
    def steady_rate(self) -> float:
        if self.all_reading is None or self.last_ack is None or self.last_ack <= self.all_reading:
            return 0.0
        return (self.total - self.read_when_all_reading) / (self.last_ack - self.all_reading)

    @property
    def start_skew_s(self) -> float:
        """From the first entry read to every stream having been read from: the workers
        start together, but each loads its partitions' baselines before it reads."""
        if self.first_read is None or self.all_reading is None:
            return 0.0
        return self.all_reading - self.first_read


def drain(
    url: str, group: str, workers: int, p_count: int, model: str, baseline: Path, total: int
) -> Run:
    """``workers`` partitioned ``detector run --until-idle`` processes, started together;
    ``workers`` 0: one unpartitioned worker on the stream ``bench`` (the same events)."""
    env = {**os.environ, "DETECTOR_CHECKPOINT_KEY": BENCH_KEY}
    streams = partitions.partition_streams(STREAM, p_count) if workers else [STREAM]
    watcher = Watcher(url, group, streams, total)
    watcher.start()
    procs = []
    for i in range(max(workers, 1)):
        args = [*detector_command(), "--log-format", "json", *run_args(url, group, model, baseline)]
        if workers:  # this worker's own options: click keeps the last --consumer
            args += ["--consumer", f"w{i}", "--partitions", str(p_count), "--assign", "static",
                     "--worker-index", str(i), "--worker-count", str(workers)]  # fmt: skip
        procs.append(
            subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        )
    watcher.pids = [p.pid for p in procs]
    try:
        stderrs = _wait_all(procs)
    finally:
        watcher.stop()
    per_worker = [int(_worker_stats(e).get("events", 0)) for e in stderrs]
    name = f"{workers} worker{'s' if workers > 1 else ''}" if workers else "unpartitioned"
    return _run_from(watcher, name, per_worker)


def route(url: str, p_count: int, total: int) -> Run:
    """``detector route --until-idle`` of the source stream into ``routed:{p}``."""
    group = DEFAULT_ROUTER_GROUP
    watcher = Watcher(url, group, [ROUTER_SOURCE], total)
    watcher.start()
    args = [*detector_command(), "--log-format", "json", "route", "--redis-url", url,
            "--source", ROUTER_SOURCE, "--stream", ROUTER_BASE, "--partitions", str(p_count),
            "--until-idle", "--idle-timeout-ms", "200"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watcher.pids = [proc.pid]
    try:
        (stderr,) = _wait_all([proc])
    finally:
        watcher.stop()
    routed = _ROUTED.search(stderr)
    return _run_from(watcher, "router", [int(routed.group(1)) if routed else 0])


def _wait_all(procs: list[subprocess.Popen[bytes]]) -> list[str]:
    """Wait for every process (killing the rest if interrupted); their stderr.

    Raises:
        RuntimeError: a process failed.
    """
    out = []
    try:
        for p in procs:
            _, err = p.communicate()
            out.append(err.decode())
            if p.returncode != 0:
                msg = f"pid {p.pid} exited {p.returncode}:\n{out[-1][-3000:]}"
                raise RuntimeError(msg)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def _run_from(watcher: Watcher, name: str, per_worker: list[int]) -> Run:
    if watcher.first_read is None or watcher.last_ack is None:
        msg = f"{name}: the processes exited before every entry was read and acked"
        raise RuntimeError(msg)
    assert watcher.cpu_start is not None and watcher.cpu_end is not None  # set with the times
    return Run(
        name=name,
        round=0,
        events=sum(per_worker),
        seconds=watcher.last_ack - watcher.first_read,
        worker_cpu_s=watcher.cpu_end[0] - watcher.cpu_start[0],
        redis_cpu_s=watcher.cpu_end[1] - watcher.cpu_start[1],
        per_worker=per_worker,
        start_skew_s=watcher.start_skew_s,
        steady_rate=watcher.steady_rate,
    )


def fill(client: redis.Redis, events: list[Fields], p_count: int) -> int:
    """Append the events to their producers' partitions, as producers would."""
    producer = Producer(client, STREAM, p_count)
    for batch in chunks(events, 1000):
        producer.send_many((e["producer"], e) for e in batch)
    return sum(int(client.xlen(s)) for s in partitions.partition_streams(STREAM, p_count))


def cleanup(client: redis.Redis, group: str, p_count: int) -> None:
    """Forget a run: its groups, outputs, checkpoints, leases, guards."""
    for stream in [STREAM, *partitions.partition_streams(STREAM, p_count)]:
        with contextlib.suppress(redis.ResponseError):
            client.xgroup_destroy(stream, group)
    client.delete(f"{group}:alerts", f"{group}:dead")
    for pattern in (f"detector:*:{group}:*", f"{{{group}:alerts}}:guard:*",
                    f"{{{group}:dead}}:guard:*"):  # fmt: skip
        delete_matching(client, pattern)


def summarise(runs: list[Run]) -> list[str]:
    lines = [
        f"{'run':<13} {'median ev/s':>12} {'min':>9} {'max':>9} {'rounds':>6} "
        f"{'worker us/ev':>12} {'redis us/ev':>11} {'alerts':>6}"
    ]
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.name, []).append(r)
    for name, rs in by.items():
        rates = [r.rate for r in rs]
        worker_us = statistics.median(r.us_per_event(r.worker_cpu_s) for r in rs)
        redis_us = statistics.median(r.us_per_event(r.redis_cpu_s) for r in rs)
        lines.append(
            f"{name:<13} {statistics.median(rates):>12,.0f} {min(rates):>9,.0f} "
            f"{max(rates):>9,.0f} {len(rs):>6} {worker_us:>12.1f} {redis_us:>11.1f} "
            f"{rs[0].alerts:>6}"
        )
    for a, b in (("2 workers", "1 worker"), ("1 worker", "unpartitioned")):
        ratios = [
            x.rate / y.rate
            for x in by.get(a, [])
            for y in by.get(b, [])
            if x.round == y.round and y.rate > 0
        ]
        if ratios:
            lines.append(
                f"{a} / {b} (paired by round): {statistics.median(ratios):.2f} "
                f"[{min(ratios):.2f}, {max(ratios):.2f}]"
            )
    lines += projection(by.get("1 worker", []) + by.get("2 workers", []))
    return lines


def projection(runs: list[Run]) -> list[str]:
    """Upper bounds from the CPU measured per event, ``w`` in the workers and ``r`` in Redis.

    A worker is one process (one core at most) and a Redis shard executes commands on one
    main thread (one core at most). With at least N workers (and P >= N partitions) on N
    cores beside S shards: events/s <= min(S / r, N / (w + r)), the second term being the
    whole machine's CPU. Real runs stay below both: polling, scheduling, other load.
    """
    if not runs:
        return []
    worker_us = statistics.median(r.us_per_event(r.worker_cpu_s) for r in runs)
    redis_us = statistics.median(r.us_per_event(r.redis_cpu_s) for r in runs)
    if worker_us <= 0 or redis_us <= 0:
        return []
    lines = [
        f"CPU per event (median of the runs): worker {worker_us:.1f} us, redis {redis_us:.1f} "
        f"us (redis {redis_us / (worker_us + redis_us):.0%} of the CPU); one worker core "
        f"{1e6 / worker_us:,.0f} ev/s, one Redis shard <= {1e6 / redis_us:,.0f} ev/s",
        "projection, N cores and S Redis shards, min(S / redis, N / (worker + redis)):",
    ]
    for n_cores, shards in ((2, 1), (4, 1), (8, 1), (16, 1), (16, 2), (32, 4)):
        bound = min(shards * 1e6 / redis_us, n_cores * 1e6 / (worker_us + redis_us))
        lines.append(f"  N={n_cores:>2} S={shards}: <= {bound:>9,.0f} ev/s")
    return lines


@click.command()
@click.option("--events", default=200_000, show_default=True, help="Live events to drain.")
@click.option("--producers", default=1000, show_default=True)
@click.option("--history-per-producer", default=500, show_default=True,
              help="Average history events per producer (the baseline).")  # fmt: skip
@click.option("--partitions", "p_count", default=8, show_default=True)
@click.option("--rounds", default=3, show_default=True)
@click.option("--model", default="stats", show_default=True)
@click.option("--router/--no-router", default=True, show_default=True,
              help="Also time `detector route` over the same events.")  # fmt: skip
@click.option("--unpartitioned/--no-unpartitioned", default=True, show_default=True,
              help="Also drain the events with one unpartitioned worker, each round.")  # fmt: skip
@click.option("--no-cache", is_flag=True, help="Retrain the baseline even if cached.")
@click.option("--quick", is_flag=True, help="20k events, 150 history/producer, one round.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path))
def main(
    events: int,
    producers: int,
    history_per_producer: int,
    p_count: int,
    rounds: int,
    model: str,
    router: bool,
    unpartitioned: bool,
    no_cache: bool,
    quick: bool,
    json_out: Path | None,
) -> None:
    """Drain P partitions with 1 and with 2 worker processes; report the scaling."""
    exit_on_sigterm()
    if quick:
        events, history_per_producer, rounds = min(events, 20_000), 150, 1
    info = versions()
    click.echo(" ".join(f"{k}={v}" for k, v in info.items()))
    workload = make_workload(events, producers, history_per_producer)
    click.echo(f"workload: {workload.describe()}; partitions {p_count}")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="detector-scale-") as tmp, EmbeddedRedis() as server:
        baseline, trained_s = baseline_for(workload, model, Path(tmp), use_cache=not no_cache)
        how = f"trained in {trained_s:.0f}s" if trained_s else "cached"
        click.echo(f"baseline {model}: {how}")
        client = redis.Redis.from_url(server.url)
        t = time.perf_counter()
        total = fill(client, workload.live, p_count)
        click.echo(f"appended {total:,} entries to {p_count} partitions in "
                   f"{time.perf_counter() - t:.1f}s")  # fmt: skip
        if unpartitioned:
            append(client, STREAM, workload.live)
        for rnd in range(rounds):
            order = [*((1, 2) if rnd % 2 == 0 else (2, 1)), *((0,) if unpartitioned else ())]
            for workers in order:
                group = f"g-{workers}-{rnd}"
                run = drain(server.url, group, workers, p_count, model, baseline, total)
                run.round = rnd
                run.alerts = int(client.xlen(f"{group}:alerts"))
                cleanup(client, group, p_count)
                if run.events != total:
                    msg = f"{run.name} processed {run.events} of {total} entries"
                    raise RuntimeError(msg)
                click.echo(_line(run))
                runs.append(run)
        if router:
            append(client, ROUTER_SOURCE, workload.live)
            run = route(server.url, p_count, total)
            routed = partitions.partition_streams(ROUTER_BASE, p_count)
            if sum(int(client.xlen(s)) for s in routed) != total or run.events != total:
                msg = f"the router routed {run.events} of {total} entries"
                raise RuntimeError(msg)
            click.echo(_line(run))
            runs.append(run)
        client.close()
    click.echo("")
    click.echo("\n".join(summarise([r for r in runs if r.name != "router"])))
    if json_out is not None:
        json_out.write_text(
            json.dumps(
                {
                    "versions": info,
                    "workload": workload.describe(),
                    "partitions": p_count,
                    "runs": [asdict(r) | {"rate": r.rate} for r in runs],
                },
                indent=1,
            )
        )


def _line(run: Run) -> str:
    worker_us, redis_us = run.us_per_event(run.worker_cpu_s), run.us_per_event(run.redis_cpu_s)
    return (
        f"round {run.round} {run.name:<13} {run.rate:>9,.0f} events/s ({run.events:,} in "
        f"{run.seconds:.2f}s, {run.alerts} alerts; CPU per event: worker {worker_us:.1f} us, "
        f"redis {redis_us:.1f} us; per process {run.per_worker}; start skew "
        f"{run.start_skew_s:.2f}s, {run.steady_rate:,.0f} events/s after it)"
    )


if __name__ == "__main__":
    main()
