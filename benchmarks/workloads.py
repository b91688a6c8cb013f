"""Seeded workloads shared by the throughput, latency, memory and profile benchmarks.

The events are the simulated shop's (:mod:`detector.shop.simulator`: typed JSON payloads of 5-9
leaves, ~200 bytes per entry, diurnal Poisson arrivals, the demo's incident kinds) with many
instances per service, so there are over a thousand producers. A workload is split in event time:

- ``history``: what the producers sent before the benchmark (``detector train`` learns a
  baseline from it, so the measured run starts warm, as a long-running worker is);
- ``live``: the events the benchmark appends to a stream and measures.

Everything is a function of the arguments: the same call gives the same events byte for byte.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import pickle
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from detector import baselines
from detector.core.checkpoint import Signer
from detector.core.events import Decoder
from detector.core.pipeline import Pipeline
from detector.core.scoring import load_spec
from detector.core.settings import Settings
from detector.shop.simulator import DEFAULT_INSTANCES, DEMO_KINDS, Incident, iter_events

Fields = dict[str, str]
BENCH_KEY = "benchmark-checkpoint-key-0123456789abcdef"  # a fixed key: benchmarks only
START_MS = 1_767_258_000_000  # 2026-01-01 09:00 UTC: the shop's busy hours follow
_PILOT_S = 600.0
RATE_SCALE = 0.05  # ~0.2 events/s per producer: the workload spans about an hour of event time


@dataclass(frozen=True, slots=True)
class Workload:
    """Events for one benchmark: ``history`` then ``live``, both in event-time order."""

    history: list[Fields]
    live: list[Fields]
    incidents: list[Incident]
    producers: int
    seed: int

    def describe(self) -> str:
        live_producers = len({e["producer"] for e in self.live})
        size = sum(len(k) + len(v) for e in self.live[:10_000] for k, v in e.items())
        mean = size / max(1, min(len(self.live), 10_000))
        return (
            f"{len(self.live):,} live events from {live_producers:,} producers "
            f"(mean entry {mean:.0f} B, {len(self.incidents)} incidents), after "
            f"{len(self.history):,} history events"
        )


def instances_for(producers: int) -> dict[str, int]:
    """Instances per shop service, in the demo's proportions, adding up to >= ``producers``."""
    total = sum(DEFAULT_INSTANCES.values())
    return {s: max(1, math.ceil(n * producers / total)) for s, n in DEFAULT_INSTANCES.items()}


def rate_per_s(seed: int, instances: Mapping[str, int]) -> float:
    """Events per second of the whole shop at START_MS, from a short pilot."""
    _, events = iter_events(
        seed=seed,
        start_ms=START_MS,
        duration_s=_PILOT_S,
        kinds=(),
        warmup_s=0,
        instances=instances,
        rate_scale=RATE_SCALE,
    )
    return sum(1 for _ in events) / _PILOT_S


def shop_workload(
    live_events: int = 200_000,
    producers: int = 1000,
    history_per_producer: int = 500,
    seed: int = 7,
    incidents_per_kind: int = 2,
) -> Workload:
    """A shop workload: ``history_per_producer`` events per producer on average, then live.

    The slowest service sends at ~40% of the average rate, so its instances get ~0.4x the
    average history: 500 puts nearly every producer past the 200-event warm-up.
    """
    instances = instances_for(producers)
    n_producers = sum(instances.values())
    history_n = history_per_producer * n_producers
    total = history_n + live_events
    rate = rate_per_s(seed, instances)
    duration_s = total / rate * 1.3 + 600
    # Pass 1 without incidents: when do the history and the live part end? Incidents are then
    # spread over the live part only (each producer draws from its own RNG, so the clean
    # producers' events are the same in both passes).
    _, clean = iter_events(
        seed=seed,
        start_ms=START_MS,
        duration_s=duration_s,
        kinds=(),
        warmup_s=0,
        instances=instances,
        rate_scale=RATE_SCALE,
    )
    cut_ms = end_ms = 0
    for i, fields in enumerate(itertools.islice(clean, total)):
        if i == history_n:
            cut_ms = int(fields["ts"])
        end_ms = int(fields["ts"])
    history_s = (cut_ms - START_MS) / 1000
    duration_s = (end_ms - START_MS) / 1000 * 1.01 + 60
    for per_kind in range(max(incidents_per_kind, 0), -1, -1):
        try:  # a short live part may have no room for them: fewer, or none
            incidents, events = iter_events(
                seed=seed,
                start_ms=START_MS,
                duration_s=duration_s,
                kinds=DEMO_KINDS if per_kind else (),
                incidents_per_kind=per_kind,
                warmup_s=history_s + 60,
                instances=instances,
                rate_scale=RATE_SCALE,
            )
            break
        except ValueError:
            if per_kind == 0:
                raise
    taken = list(itertools.islice(events, total))
    if len(taken) < total:
        msg = f"the shop produced {len(taken)} events, fewer than {total}"
        raise RuntimeError(msg)
    return Workload(
        history=taken[:history_n],
        live=taken[history_n:],
        incidents=[i for i in incidents if i.start_ms <= int(taken[-1]["ts"])],
        producers=n_producers,
        seed=seed,
    )


def as_entry(fields: Mapping[str, str]) -> dict[bytes, bytes]:
    """A stream entry as redis-py returns it (bytes names and values)."""
    return {k.encode(): v.encode() for k, v in fields.items()}


def append(client: redis.Redis, stream: str, events: Sequence[Fields], chunk: int = 1000) -> int:
    """Append ``events`` to ``stream`` (pipelined XADD); returns the stream length."""
    for i in range(0, len(events), chunk):
        pipe = client.pipeline(transaction=False)
        for fields in events[i : i + chunk]:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pipe.execute()
    return int(client.xlen(stream))


def delete_matching(client: redis.Redis, pattern: str) -> int:
    """Delete every key matching ``pattern`` (SCAN, then DEL in chunks); returns how many."""
    keys = list(client.scan_iter(match=pattern, count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    return len(keys)


def _source_digest() -> str:
    """Digest of the detector's code and specs: a cached baseline is only reused unchanged."""
    from importlib.metadata import version
    from importlib.resources import files

    import detector

    h = hashlib.sha256()
    # Every module of every subpackage (the core lives in detector/core/), .pxd files too.
    root = Path(detector.__file__).parent
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".pxd")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    for entry in sorted(files("detector.models").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            h.update(entry.name.encode() + b"\0" + entry.read_bytes())
    h.update(version("river").encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "detector-benchmarks"


def baseline_for(
    workload: Workload,
    model: str,
    directory: Path,
    *,
    use_cache: bool = True,
    stream: str = "bench",
) -> tuple[Path, float]:
    """A baseline of ``workload.history`` under ``model`` (what ``detector train`` writes).

    Same code as ``detector train --input``: :func:`detector.baselines.learn` and ``save``.
    Training takes a while on big histories, so the file is cached, keyed by the workload,
    the model and a digest of the detector's source (any code change retrains).

    Returns:
        the baseline's path and the seconds spent training (0 when cached).
    """
    key = hashlib.sha256(
        pickle.dumps(
            (
                len(workload.history),
                workload.history[:3],
                workload.history[-3:],
                model,
                stream,
                workload.seed,
                _source_digest(),
                BENCH_KEY,
            )
        )
    ).hexdigest()[:20]
    name = f"{model}-{key}.baseline"
    cached = cache_dir() / name
    path = directory / name
    if use_cache and cached.exists():
        path.write_bytes(cached.read_bytes())
        return path, 0.0
    started = time.perf_counter()
    pipeline = Pipeline(load_spec(model))
    entries = ((f"{i + 1}-0", as_entry(f)) for i, f in enumerate(workload.history))
    baselines.learn(pipeline, Decoder(), stream, entries)
    baselines.save(pipeline, path, Signer(BENCH_KEY.encode()))
    elapsed = time.perf_counter() - started
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(path.read_bytes())
    return path, elapsed


def worker_settings(
    url: str, stream: str, group: str, consumer: str, model: str, baseline: Path,
    idle_timeout_ms: int,
) -> Settings:  # fmt: skip
    """Settings of an in-process benchmark worker: CLI defaults, its own output streams."""
    return Settings(
        redis_url=url, streams=(stream,), group=group, consumer=consumer,
        alerts_stream=f"{group}:alerts", dead_letter_stream=f"{group}:dead", model=model,
        until_idle=True, idle_timeout_ms=idle_timeout_ms, checkpoint_secret=BENCH_KEY.encode(),
        baseline=baseline,
    )  # fmt: skip


def probe(fields: Fields, factor: float = 1e4) -> Fields:
    """The same event with every numeric payload field multiplied: a value anomaly."""
    import orjson

    data = orjson.loads(fields["data"])
    for k, v in data.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            data[k] = round(v * factor + factor, 2)
    return {**fields, "data": orjson.dumps(data).decode()}


def chunks(items: Iterable[Fields], size: int) -> Iterator[list[Fields]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch
