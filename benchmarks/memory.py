"""Memory: bytes per tracked producer, worker peak RSS, RSS over a run, checkpoint size/time.

python -m benchmarks.memory             # 1k and 10k producers, a worker run, a 60 s soak
python -m benchmarks.memory --parts producers --counts 1000,10000,100000
python -m benchmarks.memory --quick     # 1k producers, 150 events each, a short worker run
python -m benchmarks.memory --soak-s 600   # RSS over a 10-minute run

1. **Per producer.** For each of ``--counts``, a fresh process feeds a worker's
   :class:`~detector.core.pipeline.Pipeline` (``track_changes``, as the worker's) the shop's
   events from that many producers (``instances_for``: the throughput workload's shop at 1000,
   scaled), ``--history-per-producer`` events each on average (the throughput workload's
   history at 500), in event-time order and in batches of 500. The events come from another
   process through a pipe, so the simulator's memory is not counted. Bytes per producer = RSS
   growth over the empty pipeline (after a warm-up on a throwaway one, a collection and
   ``malloc_trim``) / producers tracked. With ``--replay-apart`` (default) each count runs
   again with the spec's ``replay_horizon_s`` set to 0 (a copy of the spec file): the difference
   is the replay-id window's share. ``--traced`` runs each count once more under tracemalloc
   (~5x slower): the Python heap's growth per producer, which tells the state's bytes from the
   allocator's in the RSS figure. The checkpoint bytes per producer by history (25-500 events)
   come from the first count.
2. **Checkpoint.** In the same processes: the full snapshot (``Pipeline.snapshot(full=True)``,
   every producer, as after a baseline start) encoded and signed (``encode_fields``), its
   bytes per producer (fields other than ``meta`` and ``model``, names included), then
   written to a real redis-server as one MULTI/EXEC (HSET). A restarted worker: another fresh
   process reads it back, decodes it (``decode_fields``) and restores it into a new
   pipeline: its RSS growth per producer (states built at once, without a live run's
   fragmentation) and the seconds. Then the next events until min(5000, N/2) producers have
   changed, and their incremental snapshot encoded. Only the public surface (``Pipeline``,
   ``snapshot``/``restore``, ``encode_fields``/``decode_fields``, spec files) is used, so the
   figures compare across rewrites of the core.
3. **Worker peak RSS.** ``detector run --until-idle`` (the CLI, warm from a baseline) on the
   throughput workload: VmHWM of the process.
4. **Soak.** ``detector run`` (CLI, warm) for ``--soak-s`` seconds under a producer appending
   new shop events at ``--soak-rate``/s (MAXLEN ~ 200k on the input stream): the worker's RSS
   every 5 s; drift = RSS growth over the second half of the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import orjson
import redis

from benchmarks.workloads import (
    BENCH_KEY,
    RATE_SCALE,
    START_MS,
    append,
    as_entry,
    baseline_for,
    instances_for,
    rate_per_s,
    shop_workload,
)
from detector.gateway.embedded import EmbeddedRedis
from detector.shop.simulator import iter_events

SOAK_STREAM = "soak"


def rss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# -- 1 + 2. per producer: N producers fed their events in a fresh process -----------------

MARKS = (25, 50, 100, 200)  # history (events per producer) of the checkpoint-size table
_CHUNK = 500  # a worker's batch


def emit_role(producers: int, history: int, seed: int) -> None:
    """(Fresh process.) The shop's events for ``producers`` producers, one JSON line each, in
    event-time order: ``history`` per producer on average, then more until the reader stops.

    A process of its own, so that the simulator's memory is not counted in the feeder's RSS.
    """
    instances = instances_for(producers)
    n = sum(instances.values())
    # The shop's rate grows with its instances: a pilot of the 1k shop sets the duration.
    pilot = instances_for(1000)
    rate = rate_per_s(seed, pilot) * n / sum(pilot.values())
    total = history * n + 3 * n + 10_000  # the history, then events for the incremental commit
    _, events = iter_events(
        seed=seed,
        start_ms=START_MS,
        duration_s=total / rate * 1.3 + 600,
        kinds=(),
        warmup_s=0,
        instances=instances,
        rate_scale=RATE_SCALE,
    )
    out = sys.stdout.buffer
    for fields in itertools.islice(events, total):
        out.write(orjson.dumps(fields) + b"\n")
    out.flush()


def _trim() -> None:
    """Collect, and hand freed heap pages back to the OS (glibc), before reading RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _attributes(obj: object) -> Iterator[tuple[str, object]]:
    """An object's attributes: its ``__dict__``, slots and (compiled) public attributes."""
    seen: set[str] = set()
    for klass in type(obj).__mro__:
        for name, d in vars(klass).items():
            if name.startswith("__") or name in seen:
                continue
            if type(d).__name__ in ("member_descriptor", "getset_descriptor"):
                seen.add(name)
                with contextlib.suppress(AttributeError):
                    yield name, getattr(obj, name)
    for name, value in getattr(obj, "__dict__", {}).items():
        if name not in seen:
            yield name, value


def state_sizes(root: object) -> dict[str, int]:
    """Bytes reachable from ``root`` by the owning attribute (``Class.attr`` of the nearest
    object of a detector class): ``sys.getsizeof`` of every object reached once (an array's
    or a numpy array's buffer included; a compiled class's typed memoryview as its array)."""
    sizes: dict[str, int] = {}
    seen: set[int] = set()
    stack: list[tuple[object, str]] = [(root, type(root).__name__)]
    while stack:
        obj, label = stack.pop()
        if type(obj).__name__ == "_memoryviewslice":
            obj = obj.base  # type: ignore[attr-defined]
        if id(obj) in seen or isinstance(obj, (type, type(sys), type(_trim))):
            continue
        seen.add(id(obj))
        sizes[label] = sizes.get(label, 0) + sys.getsizeof(obj)
        if type(obj).__module__.startswith("detector"):
            name = type(obj).__name__
            stack += [(v, f"{name}.{a}") for a, v in _attributes(obj)]
        elif isinstance(obj, dict):
            stack += [(x, label) for kv in obj.items() for x in kv]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack += [(x, label) for x in obj]
    return sizes


def feed_role(
    model: str, producers: int, history: int, marks: bool, traced: bool, url: str, out: Path
) -> None:
    """(Fresh process.) A worker's pipeline learns ``history`` events per producer from the
    shop's ``producers`` producers; RSS growth per producer, then its full checkpoint and an
    incremental commit. Public surface only: ``Pipeline``, ``snapshot``, ``encode_fields``.
    """
    from detector.core.checkpoint import Signer, encode_fields
    from detector.core.events import Decoder
    from detector.core.pipeline import Pipeline
    from detector.core.scoring import load_spec

    spec = load_spec(model)
    n_producers = sum(instances_for(producers).values())
    history_n = history * n_producers
    emitter = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.memory", "--role", "emit",
         "--producers", str(producers), "--history-per-producer", str(history)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert emitter.stdout is not None
    lines = iter(emitter.stdout)
    decoder = Decoder()
    fed = 0

    def decoded(raw: list[bytes]) -> list[Any]:
        nonlocal fed
        events = []
        for line in raw:
            fed += 1
            events.append(decoder.decode("mem", f"{fed}-0", as_entry(orjson.loads(line))))
        return events

    signer = Signer(BENCH_KEY.encode())
    result: dict[str, Any] = {"producers_fed": n_producers, "history": history, "model": model}
    try:
        # Warm the code paths (lazy imports, caches) on a throwaway pipeline first: RSS growth
        # is then the state's.
        first = list(itertools.islice(lines, _CHUNK))
        Pipeline(spec).process(decoded(first))
        fed = 0
        pipeline = Pipeline(spec, max_producers=max(100_000, 2 * n_producers), track_changes=True)
        empty = state_sizes(pipeline) if traced else {}
        _trim()
        if traced:
            tracemalloc.start()
        rss0, traced0 = rss_kb(), tracemalloc.get_traced_memory()[0]
        pending: Iterator[bytes] = itertools.chain(first, lines)
        wanted = {m * n_producers: m for m in MARKS if marks and m < history}
        by_history: dict[int, float] = {}
        started = time.perf_counter()
        while fed < history_n:
            size = min(_CHUNK, history_n - fed, *(m - fed for m in wanted if m > fed))
            chunk = list(itertools.islice(pending, size))
            if not chunk:
                msg = f"the shop produced {fed:,} events, fewer than {history_n:,}"
                raise RuntimeError(msg)
            pipeline.process(decoded(chunk))
            if fed in wanted:  # (its blobs are freed before RSS is read)
                fields = encode_fields(signer, pipeline.snapshot({}, full=True))
                by_history[wanted[fed]] = _per_producer(fields, n_producers)
                del fields
        result["feed_us_per_event"] = (time.perf_counter() - started) / history_n * 1e6
        _trim()
        result["rss_bytes_per_producer"] = (rss_kb() - rss0) * 1024 / n_producers
        if traced:
            grown = tracemalloc.get_traced_memory()[0] - traced0
            result["traced_bytes_per_producer"] = grown / n_producers
            tracemalloc.stop()
            fed_sizes = state_sizes(pipeline)
            result["breakdown"] = {
                k: round((v - empty.get(k, 0)) / n_producers, 1)
                for k, v in sorted(fed_sizes.items(), key=lambda kv: -kv[1])
                if v - empty.get(k, 0) >= n_producers  # 1 byte per producer or more
            }

        # Full checkpoint (every producer: the first commit after a baseline start).
        started = time.perf_counter()
        snap = pipeline.snapshot({}, full=True)
        fields = encode_fields(signer, snap)
        encode_s = time.perf_counter() - started
        tracked = int(snap.meta.get("producers", n_producers))
        del snap
        if tracked != n_producers:
            msg = f"{tracked} producers tracked of {n_producers} fed"
            raise RuntimeError(msg)
        by_history[history] = _per_producer(fields, n_producers)
        result["checkpoint_bytes_by_history"] = by_history
        result["checkpoint_bytes_per_producer"] = by_history[history]
        result["shared_bytes"] = sum(len(fields.get(k, b"")) for k in _SHARED)
        r = redis.Redis.from_url(url)
        started = time.perf_counter()
        with r.pipeline(transaction=True) as tx:  # one transaction, as a commit writes it
            tx.delete(CHECKPOINT_KEY)
            tx.hset(CHECKPOINT_KEY, mapping=fields)  # type: ignore[arg-type]
            tx.execute()
        result["full_checkpoint"] = {
            "bytes": sum(len(k) + len(v) for k, v in fields.items()),
            "encode_s": round(encode_s, 3),
            "write_s": round(time.perf_counter() - started, 3),
            "redis_bytes": int(r.memory_usage(CHECKPOINT_KEY) or 0),
        }
        del fields
        restored = out.with_suffix(".restored.json")
        subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", "--role", "restore", "--url", url,
             "--producers", str(producers), "--model", model, "--out", str(restored)],
            check=True,
        )  # fmt: skip
        result["restored"] = json.loads(restored.read_text())
        r.delete(CHECKPOINT_KEY)
        r.close()

        # Incremental: the next events until min(5000, N/2) producers have changed.
        pipeline.committed()
        k = min(5000, n_producers // 2)
        changed: set[str] = set()
        while len(changed) < k:
            events: list[Any] = []
            while len(events) < _CHUNK and len(changed) < k:
                line = next(pending, None)
                if line is None:
                    msg = f"the shop's events changed {len(changed)} producers, fewer than {k}"
                    raise RuntimeError(msg)
                events += decoded([line])
                changed.add(events[-1].producer)
            pipeline.process(events)
        started = time.perf_counter()
        fields = encode_fields(signer, pipeline.snapshot({}, full=False))
        result["incremental_checkpoint"] = {
            "producers": len(changed),
            "bytes": sum(len(k) + len(v) for k, v in fields.items()),
            "encode_s": round(time.perf_counter() - started, 3),
        }
    finally:
        emitter.kill()
        emitter.wait()
    out.write_text(json.dumps(result))


_SHARED = ("meta", "model")  # a checkpoint's fields that are not per producer
CHECKPOINT_KEY = "detector:checkpoint:mem"


def restore_role(model: str, producers: int, url: str, out: Path) -> None:
    """(Fresh process.) A restarted worker: the full checkpoint read back from Redis, decoded
    and restored into a new pipeline; RSS growth per producer, and the seconds it took."""
    from detector.core.checkpoint import Signer, decode_fields
    from detector.core.pipeline import Pipeline
    from detector.core.scoring import load_spec

    n_producers = sum(instances_for(producers).values())
    spec = load_spec(model)
    pipeline = Pipeline(spec, max_producers=max(100_000, 2 * n_producers), track_changes=True)
    r = redis.Redis.from_url(url)
    _trim()
    rss0 = rss_kb()
    started = time.perf_counter()
    fields: dict[bytes, bytes] = r.hgetall(CHECKPOINT_KEY)  # type: ignore[assignment]
    snap = decode_fields(Signer(BENCH_KEY.encode()), fields)
    del fields
    tracked = int(snap.meta.get("producers", n_producers))
    pipeline.restore(snap)
    seconds = time.perf_counter() - started
    del snap
    r.close()
    _trim()
    rss = (rss_kb() - rss0) * 1024 / tracked
    out.write_text(json.dumps({"rss_bytes_per_producer": rss, "seconds": round(seconds, 3)}))


def _per_producer(fields: dict[str, bytes], producers: int) -> float:
    """Checkpoint bytes per producer: every field but the shared ones, names included."""
    own = sum(len(k) + len(v) for k, v in fields.items() if k not in _SHARED)
    return own / producers


def spec_text(model: str) -> str:
    """A spec's TOML: a shipped one by name, or a file."""
    if "/" in model or model.endswith(".toml"):
        return Path(model).read_text()
    from importlib.resources import files

    return files("detector.models").joinpath(f"{model}.toml").read_text()


def without_replay_window(model: str, tmp: Path) -> Path | None:
    """A copy of the spec with ``replay_horizon_s = 0``; None if it has no replay window."""
    text = spec_text(model)
    pattern = re.compile(r"^(replay_horizon_s\s*=\s*)([\d.]+)", re.MULTILINE)
    found = pattern.search(text)
    if found is None or float(found.group(2)) == 0:
        return None
    path = tmp / f"{Path(model).stem}-no-replay.toml"
    path.write_text(pattern.sub(r"\g<1>0", text, count=1))
    return path


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
    "--role",
    type=click.Choice(["main", "feed", "restore", "emit", "soak-producer"]),
    default="main",
    hidden=True,
)
@click.option("--url", hidden=True)
@click.option("--out", type=click.Path(path_type=Path), hidden=True)
@click.option("--marks", is_flag=True, hidden=True)
@click.option(
    "--traced",
    is_flag=True,
    help="Also run each count under tracemalloc: the Python heap's growth per producer.",
)
@click.option("--model", default="stats", show_default=True, help="A shipped spec or a file.")
@click.option(
    "--counts",
    default="1000,10000",
    show_default=True,
    help="Producers to measure (100000: 50M events at 500 each, ~2 h per spec in 2026-12).",
)
@click.option(
    "--replay-apart/--no-replay-apart",
    default=True,
    show_default=True,
    help="Also run each count with replay_horizon_s = 0: the replay window's share.",
)
@click.option(
    "--producers", default=1000, show_default=True, help="Producers of the worker run and the soak."
)
@click.option("--soak-s", default=60.0, show_default=True)
@click.option("--soak-rate", default=5000.0, show_default=True)
@click.option("--worker-events", default=200_000, show_default=True)
@click.option(
    "--history-per-producer",
    "history",
    default=500,
    show_default=True,
    help="Events per producer (on average) learned before measuring.",
)
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
    out: Path | None,
    marks: bool,
    traced: bool,
    model: str,
    counts: str,
    replay_apart: bool,
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
    if role == "feed":
        assert url and out
        feed_role(model, producers, history, marks, traced, url, out)
        return
    if role == "restore":
        assert url and out
        restore_role(model, producers, url, out)
        return
    if role == "emit":
        emit_role(producers, history, seed=7)
        return
    if role == "soak-producer":
        assert url
        soak_producer_role(url, soak_rate, soak_s, producers)
        return
    from benchmarks.throughput import exit_on_sigterm

    exit_on_sigterm()
    if quick:
        counts, soak_s = "1000", 10.0
        worker_events, history = 20_000, 150
    from benchmarks.throughput import detector_consumer, versions

    info = versions()
    click.echo(" ".join(f"{k}={v}" for k, v in info.items()))
    results: dict[str, Any] = {"versions": info, "model": model}
    wanted = set(parts.split(","))
    with tempfile.TemporaryDirectory(prefix="detector-mem-") as d, EmbeddedRedis() as server:
        tmp = Path(d)
        if "producers" in wanted:
            results |= per_producer(server.url, tmp, model, history, counts, replay_apart, traced)
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
    url: str, tmp: Path, model: str, history: int, counts: str, replay_apart: bool, traced: bool
) -> dict[str, Any]:
    """1 and 2: for each count, a fresh process feeds that many producers (with the spec as
    is, without its replay window, and under tracemalloc)."""
    variants: list[tuple[str, str, bool]] = [(model, model, False)]
    no_replay = without_replay_window(model, tmp) if replay_apart else None
    if no_replay is not None:
        variants.append((f"{model}, replay_horizon_s 0", str(no_replay), False))
        click.echo(
            f"each count runs with {model} as shipped and with replay_horizon_s = 0 (the "
            "difference is the replay window's share)"
        )
    if traced:
        variants.append((f"{model}, tracemalloc", model, True))
    click.echo(
        f"{'producers':>10} {'events':>11} {'spec':<26} {'RSS B/p':>8} {'traced':>7} "
        f"{'restored':>8} {'ckpt B/p':>8} | {'full ckpt MB':>12} {'encode s':>8} "
        f"{'write s':>7} {'restore s':>9} | "
        f"{'commit of':>9} {'MB':>6} {'s':>6} | {'us/event':>8}"
    )
    stores: list[dict[str, Any]] = []
    shares: list[dict[str, Any]] = []
    for i, count in enumerate(int(c) for c in counts.split(",")):
        runs = []
        for j, (label, spec, under_tracemalloc) in enumerate(variants):
            o = tmp / f"feed-{count}-{j}.json"
            subprocess.run(
                [sys.executable, "-m", "benchmarks.memory", "--role", "feed", "--url", url,
                 "--producers", str(count), "--history-per-producer", str(history),
                 "--model", spec, "--out", str(o), *(["--marks"] if i == j == 0 else []),
                 *(["--traced"] if under_tracemalloc else [])],
                check=True,
            )  # fmt: skip
            s = json.loads(o.read_text()) | {"spec": label, "count": count}
            runs.append(s)
            n = s["producers_fed"]
            f, inc, back = s["full_checkpoint"], s["incremental_checkpoint"], s["restored"]
            rss = "-" if under_tracemalloc else f"{s['rss_bytes_per_producer']:,.0f}"
            heap = f"{s['traced_bytes_per_producer']:,.0f}" if under_tracemalloc else "-"
            click.echo(
                f"{n:>10,} {n * history:>11,} {label:<26} {rss:>8} {heap:>7} "
                f"{back['rss_bytes_per_producer']:>8,.0f} "
                f"{s['checkpoint_bytes_per_producer']:>8,.0f} | "
                f"{f['bytes'] / 1e6:>12,.1f} {f['encode_s']:>8.2f} {f['write_s']:>7.2f} "
                f"{back['seconds']:>9.2f} | "
                f"{inc['producers']:>9,} {inc['bytes'] / 1e6:>6,.1f} {inc['encode_s']:>6.2f} | "
                f"{s['feed_us_per_event']:>8.0f}"
            )
            if "breakdown" in s:
                click.echo(f"{'':>10} bytes per producer by structure (tracemalloc run):")
                for key, b in itertools.islice(s["breakdown"].items(), 25):
                    click.echo(f"{'':>12} {b:>9,.1f}  {key}")
        stores += runs
        if no_replay is not None:
            share = {
                key: runs[0][key] - runs[1][key]
                for key in ("rss_bytes_per_producer", "checkpoint_bytes_per_producer")
            }
            share["restored_bytes_per_producer"] = (
                runs[0]["restored"]["rss_bytes_per_producer"]
                - runs[1]["restored"]["rss_bytes_per_producer"]
            )
            shares.append({"count": count} | share)
            click.echo(
                f"{'':>10} replay window's share: RSS {share['rss_bytes_per_producer']:,.0f} "
                f"B/p, restored {share['restored_bytes_per_producer']:,.0f} B/p, checkpoint "
                f"{share['checkpoint_bytes_per_producer']:,.0f} B/p"
            )
    first = stores[0]
    click.echo(
        f"checkpoint bytes per producer by history ({first['producers_fed']:,} producers, "
        f"{model}; shared fields, meta and model: {first['shared_bytes'] / 1e3:,.1f} kB):"
    )
    for events, size in first["checkpoint_bytes_by_history"].items():
        click.echo(f"  {int(events):>4} events: {size:>7,.0f} B")
    return {"stores": stores, "replay_window_share": shares}


if __name__ == "__main__":
    main()
