"""The replayed-id window's costs, and the bytes a producer holds beside it.

python -m benchmarks.replay_window                     # costs at 1,000,000 ids
python -m benchmarks.replay_window --ids 100000 --memory-producers 1000

1. **Window** (:class:`~detector.core.features.replay.IdWindow` alone, fingerprints of random
   (producer, id) pairs, one per millisecond, no time expiry): filling it to ``--ids`` (the
   growth pauses timed), its bytes, its full checkpoint records encoded at a freeze and then
   signed as a commit signs them (median of 5), a restore from them, ``remember`` at the bound
   (each one forgets the oldest), ``seen``, the fingerprint, and incremental commits after
   1,000 and 10,000 new ids.
2. **Memory** (with ``--memory-producers N``): tracemalloc growth while a ``track_changes``
   stats pipeline learns the shop's events from N producers (``shop_workload``, ~200 each),
   per producer, with and without the window's bytes.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

import click

from benchmarks.snapshot import detector_source
from benchmarks.workloads import shop_workload
from detector.core.checkpoint import SHARED_PREFIX, Signer
from detector.core.events import Decoder
from detector.core.features.replay import IdWindow, ReplayFeature
from detector.core.fingerprints import pair_fingerprint as fingerprint
from detector.core.pipeline import Pipeline
from detector.core.scoring import load_spec

T = TypeVar("T")
NAME = "replayed_id"
_SIGNER = Signer(b"replay-window-benchmark-key-0123")  # a fixed key: this benchmark only


def timed(f: Callable[[], T], rounds: int = 5) -> tuple[float, float, float, T]:
    """Median, min and max seconds of ``rounds`` calls, and the last result."""
    took = []
    for _ in range(rounds):
        started = time.perf_counter()
        out = f()
        took.append(time.perf_counter() - started)
    return statistics.median(took), min(took), max(took), out


def per_call(f: Callable[[int], object], n: int) -> float:
    """Microseconds per call of ``f(i)`` for i < n."""
    started = time.perf_counter()
    for i in range(n):
        f(i)
    return (time.perf_counter() - started) / n * 1e6


def signed(w: IdWindow, full: bool) -> dict[str, bytes]:
    return {
        SHARED_PREFIX + k: _SIGNER.sign(SHARED_PREFIX + k, v)
        for k, v in w.records(NAME, full).items()
    }


def window_costs(ids: int) -> None:
    rng = random.Random(7)
    fps = [fingerprint(f"p{rng.randrange(1000)}", f"id-{i}") for i in range(ids + 120_000)]
    w = IdWindow(horizon_ms=10**12, max_ids=ids)
    pauses = []
    for i in range(ids):
        if len(w) == w.capacity:
            started = time.perf_counter()
            w.remember(fps[i], i)
            pauses.append(f"{w.capacity:,}: {(time.perf_counter() - started) * 1000:.0f} ms")
        else:
            w.remember(fps[i], i)
    click.echo(f"window: {len(w):,} ids, capacity {w.capacity:,}, {w.nbytes:,} B "
          f"({w.nbytes / w.capacity:.0f} B per id of capacity)")  # fmt: skip
    click.echo("growth pauses: " + ", ".join(pauses))
    for what, f in (("full records (at the freeze)", lambda: w.records(NAME, full=True)),
                    ("full records, signed", lambda: signed(w, full=True))):  # fmt: skip
        med, lo, hi, fields = timed(f)
        size = sum(map(len, fields.values()))
        click.echo(f"{what}: {med * 1000:.1f} ms ({lo * 1000:.1f}-{hi * 1000:.1f}), "
              f"{len(fields)} fields, {size:,} B")  # fmt: skip
    records = w.records(NAME, full=True)
    med, lo, hi, _ = timed(lambda: IdWindow.load(records, NAME, 10**12, ids), rounds=3)
    click.echo(f"restore: {med * 1000:.0f} ms ({lo * 1000:.0f}-{hi * 1000:.0f})")
    w.committed()
    steady = per_call(lambda i: w.remember(fps[ids + i], ids + i), 100_000)
    seen = per_call(lambda i: w.seen(fps[i]), 100_000)
    fp = per_call(lambda i: fingerprint(f"p{i % 1000}", f"id-{i}"), 100_000)
    click.echo(f"us: remember at the bound {steady:.2f}, seen {seen:.2f}, fingerprint {fp:.2f}")
    at = ids + 100_000
    for new in (1_000, 10_000):
        w.committed()
        for i in range(at, at + new):
            w.remember(fps[i], i)
        at += new
        med, _, _, fields = timed(lambda: signed(w, full=False))
        click.echo(f"commit after {new:,} new ids: {med * 1000:.2f} ms, {len(fields)} fields, "
              f"{sum(map(len, fields.values())):,} B")  # fmt: skip


def memory(producers: int) -> None:
    w = shop_workload(live_events=0, producers=producers, history_per_producer=200, seed=7,
                      incidents_per_kind=0)  # fmt: skip
    entries = [{k.encode(): v.encode() for k, v in f.items()} for f in w.history]
    decoder, p = Decoder(), Pipeline(load_spec("stats"), track_changes=True)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for start in range(0, len(entries), 500):
        chunk = entries[start : start + 500]
        p.process([decoder.decode("shop", f"{start + i}-0", e) for i, e in enumerate(chunk)])
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    n, feature = len(p.store), p.store.by_name[NAME]
    assert isinstance(feature, ReplayFeature) and feature.window is not None
    window = feature.window
    click.echo(
        f"{len(entries):,} events from {n:,} producers: traced {used / n:,.0f} B per producer; "
        f"window {window.nbytes:,} B ({len(window):,} ids, capacity {window.capacity:,}); "
        f"without it {(used - window.nbytes) / n:,.0f} B per producer"
    )


@click.command()
@click.option("--ids", default=1_000_000, show_default=True, type=click.IntRange(min=1000))
@click.option("--memory-producers", default=0, show_default=True, help="0: skip (part 2).")
def main(ids: int, memory_producers: int) -> None:
    """Print the replayed-id window's costs (and the bytes per producer beside it)."""
    click.echo(f"detector={detector_source()}")
    window_costs(ids)
    if memory_producers:
        memory(memory_producers)


if __name__ == "__main__":
    main()
