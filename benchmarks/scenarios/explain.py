"""``python -m benchmarks.scenarios.explain``: why one producer's incidents were (not) caught.

A producer's scores depend only on its own events (its state, calibration and decision are
per producer; the other producers move the watermark, which only drives silence, expiry and
the stream's pauses), so replaying its events alone gives the scores of the full run, ~14x
faster, except after a pause of the whole stream (a ``stream_pause``: the full run skips
it, one producer alone may see only a gap of its own) and a silence's cooldown. For
each incident on the producer: the best calibrated score inside ``[start, end + grace]``,
its rarity ``-log10(1 - score)`` next to the producer's threshold then, the raw score and the
top feature surprises, and whether an alert matched; then the top of the producer's
calibration histogram, which shows what it learned from earlier incidents.
"""

from __future__ import annotations

import math

import click

from benchmarks.scenarios.matching import GRACE_MS
from detector.core.errors import InvalidEventError
from detector.core.events import Decoder, Event
from detector.core.features import Evidence
from detector.core.features.judgements import Judgements
from detector.core.pipeline import Pipeline
from detector.core.scoring import load_spec
from detector.shop.simulator import INCIDENT_KINDS, Incident, iter_events

TOP_BINS = 8


def _rarity(score: float) -> float:
    return -math.log10(max(1.0 - score, 1e-15))


@click.command()
@click.option("--model", default="stats", show_default=True, help="spec name or path")
@click.option("--seed", default=7, show_default=True)
@click.option("--hours", default=24.0, show_default=True)
@click.option("--producer", required=True, help="e.g. cart-2")
def main(model: str, seed: int, hours: float, producer: str) -> None:
    """Replay one producer of a scenarios run and explain its incidents."""
    incidents, entries = iter_events(
        seed=seed, duration_s=hours * 3600, kinds=INCIDENT_KINDS, warmup_s=3600
    )
    mine = [i for i in incidents if i.producer == producer]
    pipeline = Pipeline(load_spec(model))
    noted: list[Evidence] = []
    judge, explain = pipeline.store.judge, pipeline.store.explain

    def note(slot: int, event: Event, out: Judgements, i: int) -> None:
        judge(slot, event, out, i)
        # Every event's reasons, to show the incidents' best.
        noted.append(Evidence(out.surprises(i), out.history[i], explain(slot, event)))

    pipeline.store.judge = note  # type: ignore[method-assign]
    best: dict[Incident, tuple[float, float, Evidence]] = {}
    alerted: set[Incident] = set()
    decoder = Decoder()
    for n, fields in enumerate(f for f in entries if f["producer"] == producer):
        raw = {k.encode(): v.encode() for k, v in fields.items()}
        try:
            event = decoder.decode("shop", f"{n}-0", raw)
        except InvalidEventError:
            continue
        noted.clear()
        (v,) = pipeline.process([event])
        t = event.event_time_ms
        for inc in mine:
            if not inc.start_ms <= t <= inc.end_ms + GRACE_MS[inc.kind] or v.score is None:
                continue
            slot = pipeline.view(producer).slot
            if inc not in best or v.score > best[inc][0]:
                best[inc] = (v.score, pipeline.threshold_for(slot), noted[0])
            if v.alert is not None:
                alerted.add(inc)
    for inc in mine:
        if inc.kind == "silence":  # revealed by the other producers' events: not alone
            click.echo(f"silence (judged only in the full run): {inc.detail}")
            continue
        click.echo(f"{inc.kind} ({'caught' if inc in alerted else 'MISSED'}): {inc.detail}")
        if inc not in best:
            click.echo("  no scored event in its window")
            continue
        score, threshold, ev = best[inc]
        why = ", ".join(f"{r.feature}({r.field}) {r.surprise:.3g}" for r in ev.reasons[:3])
        click.echo(
            f"  best rarity {_rarity(score):.2f} vs threshold {_rarity(threshold):.2f}; "
            f"raw {pipeline.model.score(Judgements.of(ev.surprise, ev.history), 0):.3g}; "
            f"surprises: {why}"
        )
    tc = pipeline.view(producer).calibration
    if tc is not None:
        top = [(b, int(c)) for b, c in enumerate(tc.counts) if c][-TOP_BINS:]
        width = pipeline.calibrator.width
        bins = ", ".join(f">={b * width:g}: {c}" for b, c in top)
        click.echo(f"calibration: {tc.n} scores; highest bins {bins}")


if __name__ == "__main__":
    main()
