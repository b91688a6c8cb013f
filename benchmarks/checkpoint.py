"""Full checkpoint time at 1k, 10k and 100k producers: encode + sign, write, and restore.

python -m benchmarks.checkpoint                        # 1k, 10k, 100k producers
python -m benchmarks.checkpoint --counts 1000 --history 50

A template pipeline (the worker's: ``track_changes``) learns ``--history`` shop events per
producer from ``instances_for(1000)``'s ~1k producers (the memory benchmark's workload). Each
template producer's record (``FeatureStore.record``, the state a checkpoint restores) is then
copied under new names until a fresh pipeline holds N producers (restored from those records:
the only way to 100k producers in minutes rather than hours; the shared replay window is not
part of it). On that pipeline, one round per count:

- **encode**: ``Pipeline.snapshot(full=True)`` and ``encode_fields`` (encode and HMAC-sign
  every field: what a full commit does before writing, in one go); the *digest* (sha256 of
  every field but ``meta``, untimed) is the same on two trees that write the same bytes;
- **write**: the fields to a real redis-server in one MULTI/EXEC (HSET), as a commit;
- **restore**: HGETALL, ``decode_fields`` (verify) and ``Pipeline.restore`` into a new
  pipeline, in this process.

Each is timed on the wall clock and (encode, and decode + restore) in this process's CPU
seconds (``time.process_time``), which a machine shared with other work inflates less.

Only the public surface is used (``Pipeline``, ``snapshot``/``restore``, ``Snapshot``,
``encode_fields``/``decode_fields``), so the figures compare across the checkpoint formats
(run it from a ``benchmarks.snapshot`` of another revision for the "before").
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

import click
import orjson
import redis

from benchmarks.memory import CHECKPOINT_KEY, rss_kb
from benchmarks.snapshot import detector_source
from benchmarks.workloads import BENCH_KEY, START_MS, as_entry, instances_for, rate_per_s
from detector.gateway.embedded import EmbeddedRedis

_CHUNK = 500


def template(model: str, history: int) -> tuple[Any, dict[str, bytes]]:
    """A pipeline fed ~1k shop producers' ``history`` events each, and its producers' records."""
    from benchmarks.workloads import RATE_SCALE
    from detector.core.events import Decoder
    from detector.core.pipeline import Pipeline
    from detector.core.scoring import load_spec
    from detector.shop.simulator import iter_events

    instances = instances_for(1000)
    n = sum(instances.values())
    total = history * n
    _, events = iter_events(
        seed=7, start_ms=START_MS, duration_s=total / rate_per_s(7, instances) * 1.3 + 600,
        kinds=(), warmup_s=0, instances=instances, rate_scale=RATE_SCALE,
    )  # fmt: skip
    pipeline = Pipeline(load_spec(model), track_changes=True)
    decoder = Decoder()
    fed = 0
    while fed < total:
        batch = []
        for fields in itertools.islice(events, min(_CHUNK, total - fed)):
            fed += 1
            batch.append(
                decoder.decode("ck", f"{fed}-0", as_entry(orjson.loads(orjson.dumps(fields))))
            )
        if not batch:
            break
        pipeline.process(batch)
    store = pipeline.store
    return pipeline, {p: store.record(slot) for p, slot in store.producers.items()}


def digest(fields: dict[str, bytes]) -> str:
    """sha256 of every encoded field but ``meta`` (it holds the time): equal on two trees,
    their checkpoints of the same pipeline are byte for byte the same."""
    h = hashlib.sha256()
    for name in sorted(fields):
        if name != "meta":
            h.update(name.encode() + b"\0")
            h.update(fields[name])
    return h.hexdigest()[:16]


def measure(
    model: str, count: int, meta: dict[str, Any], records: dict[str, bytes], url: str
) -> dict[str, Any]:
    from detector.core.checkpoint import Signer, Snapshot, decode_fields, encode_fields
    from detector.core.pipeline import Pipeline
    from detector.core.scoring import load_spec

    spec = load_spec(model)
    signer = Signer(BENCH_KEY.encode())
    names = list(records)
    clones = {
        f"{names[i % len(names)]}#{i // len(names)}": records[names[i % len(names)]]
        for i in range(count)
    }
    pipeline = Pipeline(spec, max_producers=max(100_000, count + 10), track_changes=True)
    pipeline.restore(Snapshot(meta, None, clones))
    del clones
    gc.collect()
    out: dict[str, Any] = {"producers": len(pipeline.store)}

    started, cpu = time.perf_counter(), time.process_time()
    fields = encode_fields(signer, pipeline.snapshot({}, full=True))
    out["encode_s"] = time.perf_counter() - started
    out["encode_cpu_s"] = time.process_time() - cpu
    out["bytes"] = sum(len(k) + len(v) for k, v in fields.items())
    out["fields"] = len(fields)
    out["digest"] = digest(fields)

    # A long socket timeout: on a loaded machine redis-py's default gave up on the 100k write.
    r = redis.Redis.from_url(url, socket_timeout=600)
    started = time.perf_counter()
    with r.pipeline(transaction=True) as tx:
        tx.delete(CHECKPOINT_KEY)
        tx.hset(CHECKPOINT_KEY, mapping=fields)  # type: ignore[arg-type]
        tx.execute()
    out["write_s"] = time.perf_counter() - started
    del fields
    gc.collect()

    fresh = Pipeline(spec, max_producers=max(100_000, count + 10), track_changes=True)
    rss0 = rss_kb()
    started = time.perf_counter()
    raw: dict[bytes, bytes] = r.hgetall(CHECKPOINT_KEY)  # type: ignore[assignment]
    read_s = time.perf_counter() - started
    cpu = time.process_time()
    snap = decode_fields(signer, raw)
    del raw
    fresh.restore(snap)
    out["restore_s"] = time.perf_counter() - started
    out["restore_cpu_s"] = time.process_time() - cpu  # decode and restore, this process
    out["read_s"] = read_s
    del snap
    gc.collect()
    out["restored_rss_bytes_per_producer"] = (rss_kb() - rss0) * 1024 / max(len(fresh.store), 1)
    same = all(
        fresh.store.record(fresh.store.producers[p]) == pipeline.store.record(slot)
        for p, slot in itertools.islice(
            pipeline.store.producers.items(), 0, None, max(count // 500, 1)
        )
    )
    out["restored_equal"] = same and len(fresh.store) == len(pipeline.store)
    r.delete(CHECKPOINT_KEY)
    r.close()
    return out


@click.command()
@click.option("--model", default="stats", show_default=True)
@click.option("--counts", default="1000,10000,100000", show_default=True)
@click.option("--history", default=100, show_default=True, help="Events per template producer.")
@click.option("--rounds", default=1, show_default=True)
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path))
def main(model: str, counts: str, history: int, rounds: int, json_out: Path | None) -> None:
    """Full checkpoint encode, write and restore seconds by producers."""
    from benchmarks.throughput import versions

    click.echo(f"detector: {detector_source()}")
    click.echo(" ".join(f"{k}={v}" for k, v in versions().items()))
    started = time.perf_counter()
    pipeline, records = template(model, history)
    meta = pipeline.snapshot({}, full=True).meta
    per_producer = sum(map(len, records.values())) / len(records)
    click.echo(
        f"template: {len(records):,} producers x {history} events in "
        f"{time.perf_counter() - started:.0f} s; record {per_producer:,.0f} B/producer"
    )
    del pipeline
    results = []
    click.echo(
        f"{'producers':>10} {'round':>5} {'MB':>8} {'fields':>8} {'encode s':>9} {'cpu':>6} "
        f"{'write s':>8} {'restore s':>10} {'cpu':>6} {'same':>5} digest"
    )
    with EmbeddedRedis() as server:
        for count in (int(c) for c in counts.split(",")):
            for k in range(rounds):
                m = measure(model, count, meta, records, server.url) | {"round": k}
                results.append(m)
                click.echo(
                    f"{m['producers']:>10,} {k:>5} {m['bytes'] / 1e6:>8.1f} {m['fields']:>8,} "
                    f"{m['encode_s']:>9.3f} {m['encode_cpu_s']:>6.3f} {m['write_s']:>8.3f} "
                    f"{m['restore_s']:>10.3f} {m['restore_cpu_s']:>6.3f} "
                    f"{m['restored_equal']!s:>5} {m['digest']}"
                )
    if json_out is not None:
        json_out.write_text(
            json.dumps({"model": model, "history": history, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
