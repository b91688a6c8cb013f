"""Detection quality on the simulated shop, pipeline only (no Redis): how the model spec
separates the injected incidents from normal traffic, at several thresholds.

    python -m benchmarks.shop_quality --model stats --seeds 7,8,9

For each incident: the highest calibrated score inside it (caught at threshold t if >= t).
False alerts: events outside every incident scoring >= t, after a per-producer cooldown of
the spec's ``cooldown_ms`` (what the worker would emit). Same code path as ``detector run``.
"""

from __future__ import annotations

import collections
import time

import click

from detector.events import Decoder
from detector.pipeline import Pipeline
from detector.scoring import load_spec
from detector.shop import DEMO_KINDS, generate, incident_for

THRESHOLDS = (0.999, 0.9999, 0.99999)


@click.command()
@click.option("--model", default="stats", show_default=True)
@click.option("--seeds", default="7,8,9", show_default=True)
@click.option("--hours", default=6.0, show_default=True)
def main(model: str, seeds: str, hours: float) -> None:
    spec = load_spec(model)
    caught: collections.Counter[tuple[float, str]] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    false: collections.Counter[float] = collections.Counter()
    producer_hours = 0.0
    for seed in (int(s) for s in seeds.split(",")):
        shop = generate(seed=seed, duration_s=hours * 3600, kinds=DEMO_KINDS)
        decoder = Decoder()
        events = [
            decoder.decode("shop", f"{i}-0", {k.encode(): v.encode() for k, v in f.items()})
            for i, f in enumerate(shop.events)
        ]
        pipeline = Pipeline(spec)
        started = time.perf_counter()
        verdicts = pipeline.process(events)
        rate = len(events) / (time.perf_counter() - started)
        producer_hours += len({e.producer for e in events}) * hours
        best: dict[object, float] = {}
        last_alert: dict[tuple[float, str], int] = {}
        for v in verdicts:
            if v.score is None:
                continue
            e = v.event
            incident = incident_for(e.producer, e.event_time_ms, shop.incidents)
            if incident is not None:
                best[incident] = max(best.get(incident, 0.0), v.score)
                continue
            for t in THRESHOLDS:
                key = (t, e.producer)
                if v.score >= t and e.event_time_ms >= last_alert.get(key, -(2**62)):
                    last_alert[key] = e.event_time_ms + spec.decision.cooldown_ms
                    false[t] += 1
        for incident in shop.incidents:
            kinds[incident.kind] += 1
            score = best.get(incident, 0.0)
            click.echo(f"seed {seed} {incident.kind:22} {incident.producer:12} 1-{1 - score:.1e}")
            for t in THRESHOLDS:
                caught[(t, incident.kind)] += score >= t
        click.echo(f"seed {seed}: {len(events):,} events, pipeline {rate:,.0f} events/s")
    total = sum(kinds.values())
    click.echo(f"\nmodel {model}, {total} incidents, {producer_hours:.0f} producer-hours")
    click.echo("threshold  caught  false  false/producer/day  " + "  ".join(sorted(kinds)))
    for t in THRESHOLDS:
        n = sum(caught[(t, k)] for k in kinds)
        per_day = false[t] / producer_hours * 24
        cells = "  ".join(f"{caught[(t, k)]}/{kinds[k]}" for k in sorted(kinds))
        click.echo(f"{t:<9}  {n:>3}/{total:<3} {false[t]:>5}  {per_day:>17.2f}  {cells}")


if __name__ == "__main__":
    main()
