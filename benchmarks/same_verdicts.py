"""Digests of every verdict and every event's evidence on a scenario stream, to show that an
optimisation leaves the results identical.

python -m benchmarks.same_verdicts                       # stats, seed 7, 3 h, every kind
cd /tmp/old && PYTHONPATH=$PWD python -m benchmarks.same_verdicts   # the same on a snapshot

The shop stream of :func:`detector.shop.simulator.iter_events` (every incident kind) is decoded and
scored by :meth:`Pipeline.process` in batches of 500, as ``benchmarks.scenarios`` does. The
``verdicts`` digest covers each verdict's score, flags, alert (with its reasons' text) and
riders; ``evidence`` (with ``--reasons``) also covers every event's surprises and all its
reasons, formatted as each event is scored. Two trees agree when the digests do.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools

import click

from benchmarks.snapshot import detector_source
from detector.core.errors import InvalidEventError
from detector.core.events import Decoder, Event
from detector.core.features import Evidence, ProducerState
from detector.core.pipeline import Pipeline
from detector.core.scoring import load_spec
from detector.shop.simulator import INCIDENT_KINDS, iter_events


@click.command()
@click.option("--model", default="stats", show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--hours", default=3.0, show_default=True, help="At least 2 (every kind fits).")
@click.option("--reasons", is_flag=True, help="Also digest every event's evidence and reasons.")
def main(model: str, seed: int, hours: float, reasons: bool) -> None:
    """Print the digests of one scenario run."""
    _, entries = iter_events(seed=seed, duration_s=hours * 3600, kinds=INCIDENT_KINDS)
    pipeline = Pipeline(load_spec(model))
    of_evidence, of_verdicts = hashlib.sha256(), hashlib.sha256()
    if reasons:
        judge = pipeline.store.evidence

        def noted(st: ProducerState, event: Event) -> Evidence:
            ev = judge(st, event)
            why = [(r.feature, r.field, r.observed, r.expected, r.surprise) for r in ev.reasons]
            of_evidence.update(repr((sorted(ev.surprise.items()), ev.history, why)).encode())
            return ev

        pipeline.store.evidence = noted  # type: ignore[method-assign]
    decoder = Decoder()
    n = alerts = 0
    it = iter(entries)
    while batch := list(itertools.islice(it, 500)):
        events = []
        for fields in batch:
            raw = {k.encode(): v.encode() for k, v in fields.items()}
            with contextlib.suppress(InvalidEventError):  # a dead letter in the worker
                events.append(decoder.decode("shop", f"{n}-0", raw))
            n += 1
        for v in pipeline.process(events):
            alerts += v.alert is not None
            seen = (v.event.entry_id, v.score, v.flagged, v.held, v.error, v.alert, v.side_alerts)
            of_verdicts.update(repr(seen).encode())
    click.echo(f"detector={detector_source()} model={model} seed={seed} hours={hours:g}")
    digest = f" evidence {of_evidence.hexdigest()[:16]}" if reasons else ""
    click.echo(f"events {n} alerts {alerts} verdicts {of_verdicts.hexdigest()[:16]}{digest}")


if __name__ == "__main__":
    main()
