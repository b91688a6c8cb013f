"""Bytes per producer of River specs' models: what a clone per producer (or a shared model)
costs in memory and in the checkpoint.

python -m benchmarks.river_state                      # every shipped River spec, 1000 producers
python -m benchmarks.river_state --model my.toml --producers 5000 --events 1000

A :class:`~detector.core.pipeline.Pipeline` of the spec learns ``--events`` values of
``--producers`` metric streams (one numeric field, the spec's ``target`` or ``value``, every 5
minutes of event time: a daily cycle plus noise, seeded), in event-time order and in batches of
500, as the worker does. Then, of the model's state: per-producer clones are pickled as the
checkpoint writes them (bytes per producer), and unpickled again under tracemalloc (the heap
they take, restored; a live run's fragmentation aside); a shared model likewise, once. Beside
them: the whole producer record (clock, features, decision state and clone: the checkpoint's
``p:<producer>`` entry before signing) per producer, and the events/s of the run.
"""

from __future__ import annotations

import math
import pickle
import random
import time
import tracemalloc
from importlib.resources import files
from typing import Any

import click

from detector.core.estimators import RiverModel
from detector.core.events import Event
from detector.core.pipeline import Pipeline
from detector.core.scoring import load_spec


def metric_events(producers: int, events: int, field: str, seed: int = 7) -> list[Event]:
    """``events`` values per producer, every 5 minutes, interleaved in event-time order."""
    rng = random.Random(seed)
    t0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
    level = [rng.uniform(10.0, 100.0) for _ in range(producers)]
    out = []
    for i in range(events):
        t = t0 + i * 300_000
        day = math.sin(2 * math.pi * (i * 300) / 86_400)
        for p in range(producers):
            value = level[p] * (1.0 + 0.2 * day) + rng.gauss(0.0, 0.05 * level[p])
            out.append(Event("m", f"{t}-{p}", f"m-{p}", t + p, None, {field: value}, {}, 30))
    return out


def measure(model: str, producers: int, events: int) -> dict[str, Any]:
    spec = load_spec(model)
    pipeline = Pipeline(spec, max_producers=producers + 1)
    river = pipeline.model
    assert isinstance(river, RiverModel), f"{model} is not a River spec"
    feed = metric_events(producers, events, river.target or "value")
    started = time.perf_counter()
    for k in range(0, len(feed), 500):
        pipeline.process(feed[k : k + 500])
    seconds = time.perf_counter() - started
    slots = list(pipeline.store.producers.values())
    if river.per_slot is not None:
        states = [river.per_slot.slots[s] for s in slots]
        assert all(s is not None for s in states), "a producer without its clone"
    else:
        states = [river.estimator]
    blobs = [pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL) for s in states]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    restored = [pickle.loads(b) for b in blobs]  # noqa: S301 (our own bytes)
    heap = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del restored
    records = sum(len(pipeline.store.record(s)) for s in slots)
    return {
        "model": spec.name,
        "scope": river.scope,
        "producers": len(slots),
        "events": len(feed),
        "events_per_s": len(feed) / seconds,
        "model_heap_per_producer": heap / len(slots),
        "model_pickle_per_producer": sum(map(len, blobs)) / len(slots),
        "record_per_producer": records / len(slots),
    }


def shipped_river_specs() -> list[str]:
    names = sorted(
        p.name.removesuffix(".toml")
        for p in files("detector.models").iterdir()
        if p.name.endswith(".toml")
    )
    return [n for n in names if load_spec(n).kind == "river"]


@click.command()
@click.option("--model", "models", multiple=True, help="Spec name or file (default: every "
              "shipped River spec); repeatable.")  # fmt: skip
@click.option("--producers", default=1000, show_default=True)
@click.option("--events", default=500, show_default=True, help="Values per producer.")
def main(models: tuple[str, ...], producers: int, events: int) -> None:
    """Bytes per producer of River specs' models (in memory, pickled, whole record)."""
    import river

    click.echo(f"river {river.__version__}; {producers} producers x {events} values")
    click.echo("| spec | scope | model heap / producer | model pickle / producer | "
               "record / producer | events/s |")  # fmt: skip
    click.echo("|---|---|---|---|---|---|")
    for model in models or shipped_river_specs():
        m = measure(model, producers, events)
        click.echo(
            f"| `{m['model']}` | {m['scope']} | {m['model_heap_per_producer']:,.0f} B | "
            f"{m['model_pickle_per_producer']:,.0f} B | {m['record_per_producer']:,.0f} B | "
            f"{m['events_per_s']:,.0f} |"
        )


if __name__ == "__main__":
    main()
