"""Latency from append to alert, to processed and to ack, at fixed fractions of capacity.

python -m benchmarks.latency             # capacity, then 25%, 50%, 75% of it, 15 s each
python -m benchmarks.latency --quick     # short levels (smoke run)

Three processes share the machine, as they would in production on one host: an embedded
redis-server, a **worker** (:class:`detector.runtime.worker.Worker` with the CLI's defaults, warm
from a baseline of the workload's history, in its own process) and a **producer** (its own
process) that appends the workload's live events at a fixed rate, with ``ts`` (event time)
kept from the workload, so the detector sees the throughput benchmark's events (the same
history and producers, 300k live events instead of 200k) arriving in real time. One event
in ``--probe-every`` is a *probe*: the same event with every numeric field multiplied by
10^4, on a producer not probed in the last 5 minutes of event time (the alert cooldown), so
that there are alerts to time.

Capacity: the same worker drains a backlog of the first ``--capacity-events`` live events
(events/s from the end of its first batch to the end of its last), measured first, in this
run. Each level then starts a fresh stream and group; the producer waits for the worker's
health key (the worker is in its read loop) and appends for ``warmup + duration + tail``
seconds; only entries appended in the ``duration`` window count (the tail keeps the load on,
so that they are acked by a regular commit rather than by the final one of an idle worker).

What is measured, per entry, from its entry id's time (Redis's clock at XADD):

- ``alert``: to the alert's own entry id on the alerts stream (Redis's clock again; 1 ms
  resolution). Every alert counts, probes and natural ones.
- ``processed``: to the end of the worker's batch that scored it (its alerts are appended by
  then), from the ``on_verdicts`` hook, which runs after the batch (and after a commit, when
  the batch triggers one); the hook only stores ``time.time()`` and the batch's entry ids.
- ``ack``: to the end of the checkpoint commit that acknowledged it (the worker's commit
  write is wrapped to note the time and the ids it acks). Acks wait for a commit by design:
  every 5000 entries or 5 s.

``--commit-slices 0,5`` runs every level once per ``commit_slice_ms`` (0: each commit encoded
and written in one go, the worker reading nothing meanwhile; 5, the default: encoded in 5 ms
slices between reads), in the same run against the same capacity.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import orjson
import redis

from benchmarks.throughput import exit_on_sigterm, versions
from benchmarks.workloads import (
    Fields,
    append,
    baseline_for,
    probe,
    shop_workload,
    worker_settings,
)
from detector.gateway.embedded import EmbeddedRedis

STREAM = "lat"
COOLDOWN_MS = 300_000


# -- roles: the worker and the producer run in their own processes -------------------------


def worker_role(
    url: str, stream: str, group: str, model: str, baseline: Path, out: Path,
    idle_timeout_ms: int, commit_slice_ms: float, read_linger_ms: float | None = None,
    as_before: bool = False,
) -> None:  # fmt: skip
    """Run a Worker (CLI defaults) until idle; write batch and commit times to ``out``."""
    from detector.runtime import consumer as consumer_module
    from detector.runtime.worker import Worker

    settings = worker_settings(url, stream, group, "lat", model, baseline, idle_timeout_ms)
    settings = dataclasses.replace(settings, commit_slice_ms=commit_slice_ms)
    if read_linger_ms is not None:
        settings = dataclasses.replace(settings, read_linger_ms=read_linger_ms)
    batches: list[tuple[float, list[str]]] = []
    commits: list[tuple[float, list[str]]] = []
    phases: dict[str, list[tuple[float, float, float]]] = {}

    def on_verdicts(verdicts: list[Any]) -> None:
        batches.append((time.time(), [v.event.entry_id for v in verdicts]))

    worker = Worker(settings, on_verdicts=on_verdicts)
    if as_before:  # each commit waited for, a batch's alerts written after all of it (§42)
        streams = worker.consumers[0].streams
        streams.send_commit = streams.commit  # type: ignore[method-assign]
        consumer_module.ALERT_PART_EVENTS = 1 << 30
    consumer = worker.consumers[0].checkpointer
    write = consumer._write_frozen

    durations: list[float] = []

    def timed_write() -> None:  # what is left to encode, then the transaction
        ids = [i for ids in consumer.frozen_acks.values() for i in ids]
        started, cpu = time.perf_counter(), time.thread_time()
        write()
        if ids:
            commits.append((time.time(), ids))
            durations.append(time.perf_counter() - started)
            calls = phases.setdefault("commit write", [])
            calls.append((time.time(), durations[-1], time.thread_time() - cpu))

    consumer._write_frozen = timed_write  # type: ignore[method-assign]
    collections: list[tuple[float, int, float]] = []  # (end time, generation, seconds)
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        elif info["generation"] >= 1:
            collections.append(
                (time.time(), info["generation"], time.perf_counter() - gc_started[0])
            )

    gc.callbacks.append(on_gc)
    phases.update(_trace_phases(worker))
    cpu = time.process_time()
    stats = worker.run()
    cpu = time.process_time() - cpu
    out.write_bytes(
        orjson.dumps(
            {
                "batches": batches,
                "commits": commits,
                "commit_s": durations,
                "gc": collections,
                "phases": phases,
                "cpu_s": cpu,
                "events": stats.events,
                "alerts": stats.alerts,
                "checkpoints": stats.checkpoints,
            }
        )
    )


def _trace_phases(worker: Any) -> dict[str, list[tuple[float, float, float]]]:
    """Wrap the worker's steps that can hold up its reads, so that a run tells where its
    latency tail comes from: per step, (end time, seconds, CPU seconds) of each call (a
    step's wall time minus its CPU time: waiting for Redis, or for the CPU on a loaded
    machine)."""
    phases: dict[str, list[tuple[float, float, float]]] = {}

    def timed(owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)
        calls = phases.setdefault(label, [])

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                end = time.time()
                calls.append((end, time.perf_counter() - started, time.thread_time() - cpu))

        setattr(owner, name, wrapper)

    for name in (
        "_share_peers", "_report_group", "_report_health", "_claim_safely",
        "_update_gauges", "_maintain_ownership", "_housekeeping",
    ):  # fmt: skip
        timed(worker, name, name.lstrip("_"))
    consumer = worker.consumers[0]
    timed(consumer, "handle", "handle")
    timed(consumer.streams, "read_new", "read")
    timed(consumer.streams, "emit", "emit")
    timed(consumer.checkpointer, "freeze", "freeze")
    timed(consumer.checkpointer, "step", "encode slice")
    return phases


def producer_role(
    url: str, stream: str, events_path: Path, rate: float, count: int, wait_key: str
) -> None:
    """Append ``count`` events at ``rate``/s, once ``wait_key`` exists (the worker is up)."""
    events: list[Fields] = orjson.loads(events_path.read_bytes())[:count]
    r = redis.Redis.from_url(url)
    deadline = time.monotonic() + 120
    while not r.exists(wait_key):
        if time.monotonic() > deadline:
            sys.exit("the worker did not come up")
        time.sleep(0.01)
    started = time.perf_counter()
    i = 0
    n = len(events)
    while i < n:
        due = min(n, int((time.perf_counter() - started) * rate) + 1, i + 500)
        if due <= i:
            time.sleep(0.0005)
            continue
        pipe = r.pipeline(transaction=False)
        for fields in events[i:due]:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pipe.execute()
        i = due
    elapsed = time.perf_counter() - started
    print(json.dumps({"appended": n, "seconds": elapsed}))


# -- orchestration -------------------------------------------------------------------------


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.latency", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen[bytes], what: str, timeout: float) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        msg = f"{what} timed out:\n{err.decode()[-2000:]}"
        raise RuntimeError(msg) from None
    finally:
        if proc.poll() is None:  # interrupted: do not leave it behind
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        msg = f"{what} failed (exit {proc.returncode}):\n{err.decode()[-3000:]}"
        raise RuntimeError(msg)
    return out.decode()


def with_probes(events: list[Fields], every: int) -> tuple[list[Fields], int]:
    """Replace one event in ``every`` by a probe, on a producer out of its alert cooldown."""
    out = list(events)
    last: dict[str, int] = {}
    probes = 0
    i = every
    while i < len(out):
        for j in range(i, min(i + every, len(out))):
            p, ts = out[j]["producer"], int(out[j]["ts"])
            if ts - last.get(p, -(10**15)) > COOLDOWN_MS:
                out[j] = probe(out[j])
                last[p] = ts
                probes += 1
                break
        i += every
    return out, probes


def _id_ms(entry_id: str | bytes) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    s = sorted(values)
    return {
        "n": len(s),
        "p50": s[len(s) // 2],
        "p99": s[min(len(s) - 1, int(len(s) * 0.99))],
        "max": s[-1],
    }


def run_level(
    url: str,
    group: str,
    model: str,
    baseline: Path,
    events_path: Path,
    rate: float | None,
    count: int,
    warmup_s: float,
    tmp: Path,
    idle_ms: int = 3000,
    duration_s: float = float("inf"),
    commit_slice_ms: float = 5.0,
    read_linger_ms: float | None = None,
    as_before: bool = False,
) -> dict[str, Any]:
    """One worker (+ one producer at ``rate``; None: drain a prefilled backlog)."""
    client = redis.Redis.from_url(url)
    client.delete(STREAM)
    out = tmp / f"{group}.json"
    health = f"detector:health:{group}:lat"
    producer = None
    if rate is None:
        events = orjson.loads(events_path.read_bytes())[:count]
        append(client, STREAM, events)
    worker = _spawn(
        [
            "--role",
            "worker",
            "--url",
            url,
            "--group",
            group,
            "--model",
            model,
            "--baseline",
            str(baseline),
            "--out",
            str(out),
            "--idle-timeout-ms",
            str(idle_ms),
            "--commit-slice-ms",
            str(commit_slice_ms),
            *(() if read_linger_ms is None else ("--read-linger-ms", str(read_linger_ms))),
            *(("--as-before",) if as_before else ()),
        ]
    )
    if rate is not None:
        producer = _spawn(
            [
                "--role",
                "producer",
                "--url",
                url,
                "--events",
                str(events_path),
                "--rate",
                str(rate),
                "--count",
                str(count),
                "--wait-key",
                health,
            ]
        )
    try:
        produced = json.loads(_finish(producer, "producer", 600)) if producer else None
        _finish(worker, "worker", 600)
    finally:
        for proc in (producer, worker):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    data = orjson.loads(out.read_bytes())
    first_ms = min(
        (_id_ms(e[0]) for e in client.xrange(STREAM, count=1)), default=0
    )  # the first append
    since_ms = first_ms + warmup_s * 1000
    until_ms = since_ms + duration_s * 1000

    def measured(entry_id: str | bytes) -> bool:
        return since_ms <= _id_ms(entry_id) < until_ms

    def measured_t(t: float) -> bool:
        return since_ms <= t * 1000 < until_ms

    processed = [t * 1000 - _id_ms(i) for t, ids in data["batches"] for i in ids if measured(i)]
    acked = [t * 1000 - _id_ms(i) for t, ids in data["commits"] for i in ids if measured(i)]
    alert_spans = [
        (_id_ms(f[b"source_id"]), _id_ms(aid))
        for aid, f in client.xrange(f"{group}:alerts")  # type: ignore[union-attr]
        if measured(f[b"source_id"])
    ]
    alerts = [end - start for start, end in alert_spans]
    commit_ms = [d * 1000 for d in data["commit_s"][1:]]  # the first: a baseline's full write
    # The worker's pauses besides commits: cyclic GC collections of generations 1 and 2.
    gc_ms = {
        gen: _percentiles([s * 1000 for t, g, s in data["gc"] if g == gen and measured_t(t)])
        for gen in (1, 2)
    }
    result: dict[str, Any] = {
        "commit_ms": _percentiles(commit_ms),
        "gc_ms": gc_ms,
        # Per commit: seconds since the first append, entries acked, oldest entry's age (ms).
        "commits": [
            (round(t - first_ms / 1000, 3), len(ids), round(t * 1000 - _id_ms(ids[0])))
            for t, ids in data["commits"]
        ],
        "events": data["events"],
        "alerts_total": data["alerts"],
        # The worker's CPU per event over its whole run (start, warm-up, tail and idle end too).
        "cpu_us_per_event": data["cpu_s"] * 1e6 / max(data["events"], 1),
        "checkpoints": data["checkpoints"],
        "alert": _percentiles(alerts),
        "processed": _percentiles(processed),
        "ack": _percentiles(acked),
        "phases": _phase_summary(data["phases"], measured_t, alert_spans),
    }
    if produced:
        result["append_rate"] = produced["appended"] / produced["seconds"]
    if rate is None:
        batches = data["batches"]
        n = sum(len(ids) for _, ids in batches[1:])
        result["capacity"] = n / (batches[-1][0] - batches[0][0]) if len(batches) > 1 else 0.0
    for key in list(client.scan_iter(match=f"*{group}*")):
        client.delete(key)
    for key in list(client.scan_iter(match="{*}:guard:*", count=1000)):
        client.delete(key)
    client.delete(STREAM)
    client.close()
    return result


def _phase_summary(
    phases: dict[str, list[tuple[float, float, float]]],
    measured_t: Any,
    alert_spans: list[tuple[int, int]],
) -> dict[str, Any]:
    """Per traced step in the measured window: its calls' percentiles (ms) and total; and
    for the slowest 1% of alerts, the steps of 5 ms or more that ran between the event's
    append and its alert (what held it up), counted by step."""
    out: dict[str, Any] = {}
    for name, calls in phases.items():
        inside = [s * 1000 for t, s, _ in calls if measured_t(t)]
        cpu = [c * 1000 for t, _, c in calls if measured_t(t)]
        out[name] = _percentiles(inside) | {
            "total_ms": round(sum(inside), 1),
            "cpu_p99": _percentiles(cpu).get("p99", 0.0),
            "cpu_total_ms": round(sum(cpu), 1),
        }
    slowest_first = sorted(alert_spans, key=lambda span: span[0] - span[1])
    slow = slowest_first[: max(len(alert_spans) // 100, 1)]
    blame: dict[str, list[float]] = {}
    for start, end in slow:
        for name, calls in phases.items():
            for t, s, _ in calls:
                ms = s * 1000
                if ms >= 5 and start <= t * 1000 and t * 1000 - ms <= end:
                    blame.setdefault(name, []).append(round(ms, 1))
    out["slowest alerts"] = {
        "latencies_ms": [end - start for start, end in slow],
        "steps_5ms_or_more_within": blame,
    }
    return out


def _fmt(p: dict[str, float]) -> str:
    if not p.get("n"):
        return f"{'-':>28}"
    return f"{p['p50']:>7.1f} {p['p99']:>7.1f} {p['max']:>7.0f} {p['n']:>6}"


def _echo_details(r: dict[str, Any]) -> None:
    """A level's commit writes, traced steps, slowest alerts and GC, under its row."""
    c = r["commit_ms"]
    if c.get("n"):
        click.echo(
            f"{'':>30} commit writes (after the first): {c['n']}, p50 "
            f"{c['p50']:.0f} ms, max {c['max']:.0f} ms (encoding left + transaction)"
        )
    for name, ph in r["phases"].items():
        if name != "slowest alerts" and ph.get("n"):
            click.echo(
                f"{'':>30} {name}: {ph['n']}x p50 {ph['p50']:.2f} p99 "
                f"{ph['p99']:.1f} max {ph['max']:.1f} ms, total {ph['total_ms']:.0f} ms "
                f"(CPU: p99 {ph['cpu_p99']:.1f}, total {ph['cpu_total_ms']:.0f} ms)"
            )
    slowest = r["phases"]["slowest alerts"]
    click.echo(
        f"{'':>30} slowest alerts {slowest['latencies_ms']} ms; steps >= 5 ms "
        f"between their append and alert: {slowest['steps_5ms_or_more_within']}"
    )
    gcs = [f"gen{g} {p['n']}x max {p['max']:.0f} ms"
           for g, p in r["gc_ms"].items() if p.get("n")]  # fmt: skip
    click.echo(
        f"{'':>30} GC collections in the window: {', '.join(gcs) or 'none'}; "
        f"worker CPU {r['cpu_us_per_event']:.0f} µs/event (whole run)"
    )


@click.command()
@click.option(
    "--role", type=click.Choice(["main", "worker", "producer"]), default="main", hidden=True
)
@click.option("--url", hidden=True)
@click.option("--group", hidden=True)
@click.option("--baseline", type=click.Path(path_type=Path), hidden=True)
@click.option("--out", type=click.Path(path_type=Path), hidden=True)
@click.option(
    "--idle-timeout-ms",
    default=3000,
    show_default=True,
    help="The worker stops after this long without new entries.",
)
@click.option("--events", "events_path", type=click.Path(path_type=Path), hidden=True)
@click.option("--rate", type=float, hidden=True)
@click.option("--count", type=int, hidden=True)
@click.option("--wait-key", hidden=True)
@click.option("--model", default="stats", show_default=True)
@click.option(
    "--levels",
    default="0.25,0.5,0.75",
    show_default=True,
    help="Fractions of the measured capacity.",
)
@click.option(
    "--duration",
    "duration_s",
    default=15.0,
    show_default=True,
    help="Measured seconds per level (after the warm-up).",
)
@click.option(
    "--warmup",
    "warmup_s",
    default=3.0,
    show_default=True,
    help="Seconds of appends before the measured window.",
)
@click.option(
    "--tail",
    "tail_s",
    default=6.0,
    show_default=True,
    help="Seconds of appends after it, so that its entries are acked by a regular commit "
    "(every 5000 entries or 5 s), not by the final one.",
)
@click.option("--capacity-events", default=100_000, show_default=True)
@click.option("--probe-every", default=200, show_default=True)
@click.option(
    "--events-total",
    "live_events",
    default=300_000,
    show_default=True,
    help="Live events of the workload (the throughput benchmark's, longer).",
)
@click.option(
    "--commit-slices",
    default="5",
    show_default=True,
    help="commit_slice_ms values: every level runs once per value (0: commits in one go).",
)
@click.option("--commit-slice-ms", type=float, default=5.0, hidden=True)
@click.option(
    "--read-lingers",
    default="",
    help="read_linger_ms values: every level runs once per value, after the commit slices "
    "(empty: the CLI's default only).",
)
@click.option("--read-linger-ms", type=float, default=None, hidden=True)
@click.option(
    "--compare-before",
    is_flag=True,
    help="Every level runs a second time as the worker ran before benchmarks README §42: "
    "each commit waited for before reading on, a batch's alerts written after all of it.",
)
@click.option("--as-before", is_flag=True, hidden=True)
@click.option("--producers", default=1000, show_default=True)
@click.option("--history-per-producer", default=500, show_default=True)
@click.option("--quick", is_flag=True, help="Small workload, 3 s levels.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path))
def main(
    role: str,
    url: str | None,
    group: str | None,
    baseline: Path | None,
    out: Path | None,
    idle_timeout_ms: int,
    events_path: Path | None,
    rate: float | None,
    count: int | None,
    wait_key: str | None,
    model: str,
    levels: str,
    duration_s: float,
    warmup_s: float,
    tail_s: float,
    capacity_events: int,
    probe_every: int,
    live_events: int,
    commit_slices: str,
    commit_slice_ms: float,
    read_lingers: str,
    read_linger_ms: float | None,
    compare_before: bool,
    as_before: bool,
    producers: int,
    history_per_producer: int,
    quick: bool,
    json_out: Path | None,
) -> None:
    """Append-to-alert, -processed and -ack latency at fractions of the measured capacity."""
    if role == "worker":
        assert url and group and baseline and out
        worker_role(
            url, STREAM, group, model, baseline, out, idle_timeout_ms, commit_slice_ms,
            read_linger_ms, as_before,
        )  # fmt: skip
        return
    if role == "producer":
        assert url and events_path and rate and count and wait_key
        producer_role(url, STREAM, events_path, rate, count, wait_key)
        return
    exit_on_sigterm()
    if quick:
        live_events, history_per_producer = min(live_events, 30_000), 150
        duration_s, warmup_s, tail_s = 3.0, 1.0, 2.0
        capacity_events = min(capacity_events, 15_000)
    info = versions()
    click.echo(" ".join(f"{k}={v}" for k, v in info.items()))
    workload = shop_workload(live_events, producers, history_per_producer)
    live, probes = with_probes(workload.live, probe_every)
    click.echo(f"workload: {workload.describe()}; {probes} probes")
    results: dict[str, Any] = {"versions": info, "workload": workload.describe(), "levels": {}}
    with tempfile.TemporaryDirectory(prefix="detector-lat-") as d, EmbeddedRedis() as server:
        tmp = Path(d)
        path, trained = baseline_for(workload, model, tmp)
        click.echo(f"baseline {model}: " + (f"trained in {trained:.0f}s" if trained else "cached"))
        events_path = tmp / "events.json"
        events_path.write_bytes(orjson.dumps(live))
        del workload, live
        cap = run_level(
            server.url,
            "cap",
            model,
            path,
            events_path,
            None,
            capacity_events,
            0.0,
            tmp,
            idle_timeout_ms,
        )
        capacity = cap["capacity"]
        results["capacity"] = cap
        click.echo(f"capacity ({model}, {cap['events']:,}-event backlog): {capacity:,.0f} events/s")
        slices = [float(x) for x in commit_slices.split(",")]
        lingers: list[float | None] = [float(x) for x in read_lingers.split(",") if x] or [None]
        waits = (False, True) if compare_before else (False,)
        variants = [(sl, lg, w) for w in waits for lg in lingers for sl in slices]
        click.echo(
            f"{'level':>6} {'slice':>5} {'rate/s':>8} {'append':>8} | "
            f"{'alert: p50 p99 max ms n':>28} | {'processed: p50 p99 max ms n':>28} | "
            f"{'ack: p50 p99 max ms n':>28}"
        )
        for i, level in enumerate(float(x) for x in levels.split(",")):
            rate = capacity * level
            want = int(rate * (warmup_s + duration_s + tail_s))
            count = min(want, live_events)
            if count < want:
                click.echo(f"  (level {level}: only {count} events, {count / rate:.1f}s)")
            for j, (slice_ms, linger_ms, before) in enumerate(variants):
                r = run_level(
                    server.url, f"lvl{i}s{j}", model, path, events_path, rate, count, warmup_s,
                    tmp, idle_timeout_ms, duration_s, slice_ms, linger_ms, before,
                )  # fmt: skip
                key = str(level)
                if len(slices) > 1:
                    key += f"@{slice_ms:g}ms"
                if linger_ms is not None:
                    key += f" linger {linger_ms:g}ms"
                if before:
                    key += " as before"
                if key in results["levels"]:  # a level listed twice: each run kept
                    key += f" #{i + 1}"
                results["levels"][key] = r | {
                    "commit_slice_ms": slice_ms, "read_linger_ms": linger_ms, "as_before": before,
                }  # fmt: skip
                linger = "" if linger_ms is None else f" linger {linger_ms:g} ms"
                linger += (
                    " (as before: commits waited for, alerts after the batch)" if before else ""
                )
                click.echo(
                    f"{level:>6.0%} {slice_ms:>5g} {rate:>8,.0f} "
                    f"{r.get('append_rate', 0):>8,.0f} | "
                    f"{_fmt(r['alert'])} | {_fmt(r['processed'])} | {_fmt(r['ack'])}{linger}"
                )
                _echo_details(r)
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
