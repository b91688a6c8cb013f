"""Detection quality on the simulated shop, pipeline only (no Redis): how the model spec
separates the injected incidents from normal traffic, at several thresholds.

    python -m benchmarks.shop_quality --model stats --seeds 7,8,9
    python -m benchmarks.shop_quality --model stats --kinds silence --silence 20

For each incident: the highest calibrated score inside it (caught at threshold t if >= t).
False alerts: events outside every incident scoring >= t, after a per-producer cooldown of
the spec's ``cooldown_ms`` (what the worker would emit). Same code path as ``detector run``.

Silence alerts (``Verdict.silence``, when the spec or ``--silence K`` turns them on) do not
depend on the threshold: one on the silent producer's incident catches it (score 1.0) at every
threshold; one elsewhere is a false alert at every threshold.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Sequence

import click

from detector.events import Decoder
from detector.pipeline import Pipeline
from detector.scoring import ModelSpec, load_spec
from detector.shop import DEMO_KINDS, INCIDENT_KINDS, generate, incident_for

THRESHOLDS = (0.999, 0.9999, 0.99999)


@click.command()
@click.option("--model", default="stats", show_default=True)
@click.option("--seeds", default="7,8,9", show_default=True)
@click.option("--hours", default=6.0, show_default=True)
@click.option(
    "--kinds", default=",".join(DEMO_KINDS), show_default=True,
    help="incident kinds to inject, comma-separated (or 'all')",
)  # fmt: skip
@click.option(
    "--silence", "silence_after", type=float, default=None,
    help="override the spec's decision.silence_after (0 = off)",
)  # fmt: skip
def main(model: str, seeds: str, hours: float, kinds: str, silence_after: float | None) -> None:
    spec = load_spec(model)
    if silence_after is not None:
        decision = dataclasses.replace(spec.decision, silence_after=silence_after)
        spec = dataclasses.replace(spec, decision=decision)
    wanted = INCIDENT_KINDS if kinds == "all" else tuple(k for k in kinds.split(",") if k)
    unknown = sorted(set(wanted) - set(INCIDENT_KINDS))
    if unknown:
        msg = f"unknown kinds {unknown}"
        raise click.BadParameter(msg, param_hint="--kinds")
    tally = _Tally()
    for seed in (int(s) for s in seeds.split(",")):
        _one_seed(spec, seed, hours, wanted, tally)
    caught, counted, false = tally.caught, tally.counted, tally.false
    total = sum(counted.values())
    producer_hours = tally.producer_hours
    click.echo(f"\nmodel {model}, {total} incidents, {producer_hours:.0f} producer-hours")
    if spec.decision.silence_after > 0:
        delays = sorted(tally.silence_delays_s)
        click.echo(
            f"silence alerts (silence_after {spec.decision.silence_after:g}): "
            f"{tally.silence_alerts}, {tally.silence_false} outside a silence incident (counted "
            f"false at every threshold); delay after the silence began (s): {delays}"
        )
    click.echo("threshold  caught  false  false/producer/day  " + "  ".join(sorted(counted)))
    for t in THRESHOLDS:
        n = sum(caught[(t, k)] for k in counted)
        per_day = false[t] / producer_hours * 24
        cells = "  ".join(f"{caught[(t, k)]}/{counted[k]}" for k in sorted(counted))
        click.echo(f"{t:<9}  {n:>3}/{total:<3} {false[t]:>5}  {per_day:>17.2f}  {cells}")


@dataclasses.dataclass
class _Tally:
    caught: collections.Counter[tuple[float, str]] = dataclasses.field(
        default_factory=collections.Counter
    )
    counted: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    false: collections.Counter[float] = dataclasses.field(default_factory=collections.Counter)
    silence_alerts: int = 0
    silence_false: int = 0
    silence_delays_s: list[float] = dataclasses.field(default_factory=list)
    producer_hours: float = 0.0


def _one_seed(
    spec: ModelSpec, seed: int, hours: float, kinds: Sequence[str], tally: _Tally
) -> None:
    shop = generate(seed=seed, duration_s=hours * 3600, kinds=kinds)
    decoder = Decoder()
    events = [
        decoder.decode("shop", f"{i}-0", {k.encode(): v.encode() for k, v in f.items()})
        for i, f in enumerate(shop.events)
    ]
    pipeline = Pipeline(spec)
    started = time.perf_counter()
    verdicts = pipeline.process(events)
    rate = len(events) / (time.perf_counter() - started)
    tally.producer_hours += len({e.producer for e in events}) * hours
    best: dict[object, float] = {}
    last_alert: dict[tuple[float, str], int] = {}
    for v in verdicts:
        for a in v.silence:
            tally.silence_alerts += 1
            incident = incident_for(a.producer, a.event_time, shop.incidents)
            if incident is not None:
                best[incident] = 1.0
                tally.silence_delays_s.append((a.event_time - incident.start_ms) / 1000)
            else:
                tally.silence_false += 1
                for t in THRESHOLDS:
                    tally.false[t] += 1
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
                tally.false[t] += 1
    for incident in shop.incidents:
        tally.counted[incident.kind] += 1
        score = best.get(incident, 0.0)
        click.echo(f"seed {seed} {incident.kind:22} {incident.producer:12} 1-{1 - score:.1e}")
        for t in THRESHOLDS:
            tally.caught[(t, incident.kind)] += score >= t
    click.echo(f"seed {seed}: {len(events):,} events, pipeline {rate:,.0f} events/s")


if __name__ == "__main__":
    main()
