"""Memory: bytes per tracked producer, worker peak RSS, RSS over a run, checkpoint size/time.

python -m benchmarks.memory             # 10k and 100k producers, a worker run, a 60 s soak
python -m benchmarks.memory --quick     # 1k and 5k producers, a short worker run, 10 s soak
python -m benchmarks.memory --soak-s 600   # RSS over a 10-minute run

1. **Per producer.** A :class:`~detector.core.pipeline.Pipeline` learns the shop's events from
   ``--template-producers`` producers (~500 events each, the throughput workload's history
   per producer); their states are then cloned by pickle round trip (what a worker restoring
   its checkpoint holds) under new names into a ``FeatureStore`` until it tracks 10k and 100k
   producers. Each count runs in a fresh process: bytes per producer = growth of the
   tracemalloc total (and, separately, of RSS) over the empty store, divided by the count.
   Cloned and fed states agree (checked at the template size, printed). The growth of a
   producer's state with its history (the id-like fields hold up to 64 values, then
   saturate) is shown for 25-500 events.
2. **Checkpoint.** In the same processes: the full snapshot (every producer, as after a
   baseline start) and an incremental commit of 5000 changed producers with 5000 acks, both
   by the worker's own ``_checkpoint`` against a real redis-server; size and time from the
   worker's metrics ``detector_checkpoint_bytes`` and ``detector_checkpoint_seconds``.
3. **Worker peak RSS.** ``detector run --until-idle`` (the CLI, warm from a baseline) on the
   throughput workload: VmHWM of the process.
4. **Soak.** ``detector run`` (CLI, warm) for ``--soak-s`` seconds under a producer appending
   new shop events at ``--soak-rate``/s (MAXLEN ~ 200k on the input stream): the worker's RSS
   every 5 s; drift = RSS growth over the second half of the run.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import click
import redis

from benchmarks.workloads import (
    BENCH_KEY,
    START_MS,
    append,
    as_entry,
    baseline_for,
    instances_for,
    shop_workload,
)
from detector.gateway.embedded import EmbeddedRedis

SOAK_STREAM = "soak"


def rss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# -- 1. template states --------------------------------------------------------------------


def template_states(
    model: str, producers: int, per_producer: int, checkpoints: tuple[int, ...]
) -> dict[str, Any]:
    """Feed shop events; pickled states when the mean history reaches each checkpoint."""
    from detector.core.events import Decoder
    from detector.core.pipeline import Pipeline
    from detector.core.scoring import load_spec

    w = shop_workload(1000, producers, per_producer, incidents_per_kind=0)
    pipeline = Pipeline(load_spec(model))
    decoder = Decoder()
    n_producers = w.producers
    marks = {c * n_producers: c for c in checkpoints}
    by_history: dict[int, list[bytes]] = {}
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    for i, fields in enumerate(w.history, 1):
        pipeline.process([decoder.decode("s", f"{i}-0", as_entry(fields))])
        if i in marks:  # (the blobs' own memory is not the state's: kept out of the count)
            held = tracemalloc.get_traced_memory()[0]
            states = pipeline.store.producers.values()
            by_history[marks[i]] = [pickle.dumps(st, protocol=5) for st in states]
            before += tracemalloc.get_traced_memory()[0] - held
    per_event_us = (time.perf_counter() - started) / len(w.history) * 1e6
    del w
    gc.collect()
    fed = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {
        "producers": len(pipeline.store),
        "fed_bytes_per_producer": fed / len(pipeline.store),
        "by_history": by_history,
        "model_bytes": len(pickle.dumps(pipeline.model, protocol=5)),
        "per_event_us_traced": per_event_us,
    }


# -- 1 + 2. clone into a store of N producers, measure, checkpoint -------------------------


def clone_role(model: str, n: int, blobs_path: Path, url: str, out: Path) -> None:
    """(Fresh process.) N cloned producers: tracemalloc and RSS growth, then checkpoints."""
    from detector.core.settings import Settings
    from detector.runtime.worker import Worker

    blobs: list[bytes] = pickle.loads(blobs_path.read_bytes())  # noqa: S301 - our own file
    settings = Settings(
        redis_url=url,
        streams=("mem",),
        group="mem",
        consumer="mem",
        model=model,
        checkpoint_secret=BENCH_KEY.encode(),
        max_producers=max(n, 100_000),
    )
    worker = Worker(settings)
    store = worker.pipeline.store
    names = [f"producer-{i:06d}" for i in range(n)]
    result: dict[str, Any] = {"n": n}

    def build() -> None:
        for i, name in enumerate(names):
            st = pickle.loads(blobs[i % len(blobs)])  # noqa: S301 - our own states
            st.seq = i
            store.producers[name] = st

    gc.collect()
    rss0 = rss_kb()
    build()
    gc.collect()
    result["rss_bytes_per_producer"] = (rss_kb() - rss0) * 1024 / n
    store.producers.clear()
    gc.collect()
    tracemalloc.start()
    t0 = tracemalloc.get_traced_memory()[0]
    build()
    gc.collect()
    result["traced_bytes_per_producer"] = (tracemalloc.get_traced_memory()[0] - t0) / n
    tracemalloc.stop()

    # Full checkpoint (every producer: the first commit after a baseline start).
    r = redis.Redis.from_url(url)
    r.delete("detector:checkpoint:mem:mem")
    store.dirty.update(names)
    full = _timed_checkpoint(worker)
    result["full_checkpoint"] = full
    # Incremental: 5000 changed producers and 5000 acks (the default checkpoint_every before
    # 2026-11-27; kept so that the figures compare across sessions).
    k = min(5000, n)
    r.delete("mem")
    append(r, "mem", [{"f": "1"}] * k)
    r.xgroup_create("mem", "mem", id="0")
    entries = r.xreadgroup("mem", "mem", {"mem": ">"}, count=k)
    worker.consumers[0].checkpointer.to_ack = {"mem": [e[0].decode() for e in entries[0][1]]}  # type: ignore[index]
    store.dirty.update(names[:k])
    result["incremental_checkpoint"] = _timed_checkpoint(worker) | {"producers": k, "acks": k}
    result["hash_memory_bytes"] = int(r.memory_usage("detector:checkpoint:mem:mem") or 0)
    r.delete("detector:checkpoint:mem:mem", "mem")
    r.close()
    out.write_text(json.dumps(result))


def _timed_checkpoint(worker: Any) -> dict[str, float]:
    m = worker.metrics
    registry = m.registry
    before = registry.get_sample_value("detector_checkpoint_seconds_sum") or 0.0
    started = time.perf_counter()
    worker._checkpoint()
    wall = time.perf_counter() - started
    seconds = (registry.get_sample_value("detector_checkpoint_seconds_sum") or 0.0) - before
    size = registry.get_sample_value("detector_checkpoint_bytes") or 0.0
    return {"seconds": round(seconds, 3), "wall_s": round(wall, 3), "bytes": int(size)}


# -- 3 + 4. worker RSS ---------------------------------------------------------------------


def soak_producer_role(url: str, rate: float, seconds: float, producers: int) -> None:
    """(Fresh process.) New shop events (seed 8) at ``rate``/s for ``seconds``."""
    from benchmarks.workloads import RATE_SCALE, rate_per_s
    from detector.shop.simulator import iter_events

    instances = instances_for(producers)
    # Enough event time for the run (planning a much longer stream takes minutes).
    duration_s = 1.5 * rate * seconds / rate_per_s(8, instances) + 3600
    _, events = iter_events(
        seed=8,
        start_ms=START_MS,
        duration_s=duration_s,
        kinds=(),
        instances=instances,
        rate_scale=RATE_SCALE,
        warmup_s=0,
    )
    r = redis.Redis.from_url(url)
    started = time.perf_counter()
    i = 0
    while (elapsed := time.perf_counter() - started) < seconds:
        due = min(int(elapsed * rate) + 1, i + 500)
        if due <= i:
            time.sleep(0.001)
            continue
        pipe = r.pipeline(transaction=False)
        for _ in range(due - i):
            pipe.xadd(SOAK_STREAM, next(events), maxlen=200_000, approximate=True)  # type: ignore[arg-type]
        pipe.execute()
        i = due
    print(json.dumps({"appended": i, "seconds": time.perf_counter() - started}))


def soak(
    url: str, baseline: Path, model: str, seconds: float, rate: float, producers: int
) -> dict[str, Any]:
    from benchmarks.throughput import detector_command

    env = {**os.environ, "DETECTOR_CHECKPOINT_KEY": BENCH_KEY}
    worker = subprocess.Popen(
        [
            *detector_command(),
            "run",
            "--redis-url",
            url,
            "--stream",
            SOAK_STREAM,
            "--group",
            "soak",
            "--consumer",
            "soak",
            "--model",
            model,
            "--baseline",
            str(baseline),
            "--alerts-stream",
            "soak:alerts",
            "--dead-letter-stream",
            "soak:dead",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    producer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.memory",
            "--role",
            "soak-producer",
            "--url",
            url,
            "--soak-rate",
            str(rate),
            "--soak-s",
            str(seconds),
            "--producers",
            str(producers),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    samples: list[tuple[float, int]] = []
    r = redis.Redis.from_url(url)
    while not r.exists(SOAK_STREAM) and producer.poll() is None:
        time.sleep(0.1)  # the producer is planning its stream
    started = time.perf_counter()
    lag = []
    every = min(5.0, max(seconds / 10, 0.5))
    while producer.poll() is None:
        time.sleep(every)
        try:
            samples.append((round(time.perf_counter() - started, 1), rss_kb(worker.pid)))
            info = r.xinfo_groups(SOAK_STREAM)
            lag.append(int(info[0].get("lag") or 0) if info else 0)
        except (OSError, redis.RedisError):
            break
    try:
        out, err = producer.communicate()
        worker.send_signal(signal.SIGTERM)
        _, werr = worker.communicate(timeout=60)
    finally:
        for proc in (producer, worker):
            if proc.poll() is None:  # interrupted or stuck: do not leave it behind
                proc.kill()
                proc.wait()
    if producer.returncode != 0 or worker.returncode != 0:
        msg = f"soak failed: producer {err.decode()[-1500:]} worker {werr.decode()[-1500:]}"
        raise RuntimeError(msg)
    produced = json.loads(out.decode())
    r.delete(SOAK_STREAM, "soak:alerts", "soak:dead")
    r.close()
    half = [kb for t, kb in samples if t >= seconds / 2] or [kb for _, kb in samples]
    return {
        "appended": produced["appended"],
        "rate": produced["appended"] / produced["seconds"],
        "samples": samples,
        "max_lag": max(lag, default=0),
        "rss_first_mb": samples[0][1] / 1024 if samples else 0,
        "rss_last_mb": samples[-1][1] / 1024 if samples else 0,
        "rss_max_mb": max(kb for _, kb in samples) / 1024 if samples else 0,
        "second_half_growth_mb": (half[-1] - half[0]) / 1024,
    }


# -- main ----------------------------------------------------------------------------------


@click.command()
@click.option(
    "--role", type=click.Choice(["main", "clone", "soak-producer"]), default="main", hidden=True
)
@click.option("--url", hidden=True)
@click.option("--n", type=int, hidden=True)
@click.option("--blobs", type=click.Path(path_type=Path), hidden=True)
@click.option("--out", type=click.Path(path_type=Path), hidden=True)
@click.option("--model", default="stats", show_default=True)
@click.option(
    "--counts", default="10000,100000", show_default=True, help="Tracked producers to measure."
)
@click.option("--template-producers", default=200, show_default=True)
@click.option(
    "--producers", default=1000, show_default=True, help="Producers of the worker run and the soak."
)
@click.option("--soak-s", default=60.0, show_default=True)
@click.option("--soak-rate", default=5000.0, show_default=True)
@click.option("--worker-events", default=200_000, show_default=True)
@click.option("--history-per-producer", "history", default=500, show_default=True)
@click.option(
    "--parts",
    default="producers,worker,soak",
    show_default=True,
    help="Which measurements: producers (per producer + checkpoints), worker, soak.",
)
@click.option("--quick", is_flag=True)
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path))
def main(
    role: str,
    url: str | None,
    n: int | None,
    blobs: Path | None,
    out: Path | None,
    model: str,
    counts: str,
    template_producers: int,
    producers: int,
    soak_s: float,
    soak_rate: float,
    worker_events: int,
    history: int,
    parts: str,
    quick: bool,
    json_out: Path | None,
) -> None:
    """Bytes per producer, checkpoint size and time, worker peak RSS and RSS drift."""
    if role == "clone":
        assert url and n and blobs and out
        clone_role(model, n, blobs, url, out)
        return
    if role == "soak-producer":
        assert url
        soak_producer_role(url, soak_rate, soak_s, producers)
        return
    from benchmarks.throughput import exit_on_sigterm

    exit_on_sigterm()
    if quick:
        counts, template_producers, soak_s = "1000,5000", 50, 10.0
        worker_events, history = 20_000, 150
    from benchmarks.throughput import detector_consumer, versions

    info = versions()
    click.echo(" ".join(f"{k}={v}" for k, v in info.items()))
    results: dict[str, Any] = {"versions": info, "model": model}
    wanted = set(parts.split(","))
    with tempfile.TemporaryDirectory(prefix="detector-mem-") as d, EmbeddedRedis() as server:
        tmp = Path(d)
        if "producers" in wanted:
            results |= per_producer(server.url, tmp, model, template_producers, history, counts)
        path: Path | None = None
        if "worker" in wanted or "soak" in wanted:
            w = shop_workload(worker_events, producers, history)
            path, _ = baseline_for(w, model, tmp)
            if "worker" in wanted:
                # 3. Peak RSS of a worker run (CLI), on the throughput workload.
                client = redis.Redis.from_url(server.url)
                total = append(client, "bench", w.live)
                del w
                gc.collect()
                run = detector_consumer(server.url, "mem-run", model, path, total, [])
                click.echo(
                    f"worker run ({total:,} events, {producers} producers, warm): peak RSS "
                    f"{run.extra['peak_rss_mb']} MB, {run.rate:,.0f} events/s"
                )
                results["worker_run"] = {"events": total, "rate": run.rate, **run.extra}
                client.delete("bench")
                client.close()
        if "soak" in wanted and path is not None:
            # 4. RSS over a run.
            soaked = soak(server.url, path, model, soak_s, soak_rate, producers)
            results["soak"] = soaked
            click.echo(
                f"soak {soak_s:.0f}s at {soaked['rate']:,.0f} events/s: RSS first "
                f"{soaked['rss_first_mb']:.0f} MB, max {soaked['rss_max_mb']:.0f} MB, last "
                f"{soaked['rss_last_mb']:.0f} MB, second-half growth "
                f"{soaked['second_half_growth_mb']:+.1f} MB (max lag {soaked['max_lag']:,})"
            )
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=1, default=str))


def per_producer(
    url: str, tmp: Path, model: str, template_producers: int, history: int, counts: str
) -> dict[str, Any]:
    """1 and 2: template states, then stores of N cloned producers in fresh processes."""
    results: dict[str, Any] = {}
    marks = (25, 50, 100, 200, history)
    started = time.perf_counter()
    tpl = template_states(model, template_producers, history, marks)
    click.echo(
        f"template: {tpl['producers']} producers fed ~{history} shop events each "
        f"({time.perf_counter() - started:.0f}s); shared model pickled: "
        f"{tpl['model_bytes'] / 1e3:,.1f} kB"
    )
    click.echo("state per producer by history (pickled = checkpoint blob, before signing):")
    for k, states in tpl["by_history"].items():
        mean = sum(len(b) for b in states) / len(states)
        click.echo(f"  {k:>4} events: {mean:>7,.0f} B pickled")
    results["pickled_by_history"] = {
        k: sum(len(b) for b in v) / len(v) for k, v in tpl["by_history"].items()
    }
    blobs_path = tmp / "blobs.pickle"
    blobs_path.write_bytes(pickle.dumps(tpl["by_history"][history]))
    click.echo(
        f"fed (tracemalloc, {tpl['producers']} producers): "
        f"{tpl['fed_bytes_per_producer']:,.0f} B/producer"
    )
    results["fed_bytes_per_producer"] = tpl["fed_bytes_per_producer"]
    results["model_bytes"] = tpl["model_bytes"]
    results["stores"] = []
    click.echo(
        f"{'producers':>10} {'traced B/p':>11} {'RSS B/p':>9} | "
        f"{'full ckpt MB':>12} {'s':>6} | {'5k-producer commit MB':>21} {'s':>6}"
    )
    for count in [tpl["producers"], *(int(c) for c in counts.split(","))]:
        o = tmp / f"store-{count}.json"
        subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", "--role", "clone", "--url", url,
             "--n", str(count), "--blobs", str(blobs_path), "--out", str(o), "--model", model],
            check=True,
        )  # fmt: skip
        s = json.loads(o.read_text())
        results["stores"].append(s)
        f, inc = s["full_checkpoint"], s["incremental_checkpoint"]
        click.echo(
            f"{count:>10,} {s['traced_bytes_per_producer']:>11,.0f} "
            f"{s['rss_bytes_per_producer']:>9,.0f} | {f['bytes'] / 1e6:>12,.1f} "
            f"{f['seconds']:>6.2f} | {inc['bytes'] / 1e6:>21,.1f} {inc['seconds']:>6.2f}"
        )
    return results


if __name__ == "__main__":
    main()
