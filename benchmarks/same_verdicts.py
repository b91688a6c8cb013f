"""A digest of what a run writes on a scenario stream, to show that a change leaves the results
identical.

python -m benchmarks.same_verdicts                       # stats, seed 7, 3 h, every kind
cd /tmp/old && PYTHONPATH=$PWD python -m benchmarks.same_verdicts   # the same on a snapshot
python -m benchmarks.same_verdicts --checkpoint-every 20000   # must print the same digest

The shop stream of :func:`detector.shop.simulator.iter_events` (every incident kind) is decoded
and scored by :meth:`Pipeline.process` in batches of ``--batch``, as ``benchmarks.scenarios``
does. The ``verdicts`` digest covers the wire fields only: for each event in order, its
calibrated score rounded to 9 digits (or None), flagged and held; then every alert the worker
would append for it (the event's own, then its side alerts) as :meth:`Alert.to_fields` writes
it, with the score and threshold rounded to 9 digits and without ``emitted_at`` (the wall
clock). Reasons are part of an alert's fields. Two trees agree when the digests do.

It reads only the public surface (the decoder, ``Pipeline(spec).process``, the verdict's wire
fields, ``load_spec``; with ``--checkpoint-every``, ``snapshot``/``restore`` and the checkpoint
encoding), so it runs unchanged on a tree whose feature core is rebuilt.

``--checkpoint-every N`` takes a full snapshot every N entries, encodes and signs it as a
commit does, decodes it and continues in a fresh ``Pipeline`` restored from it: the digest
must equal the run's without checkpoints (a checkpoint resumes bit-identically).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools

import click

from benchmarks.snapshot import detector_source
from detector.core.alerts import Alert
from detector.core.checkpoint import Signer, decode_fields, encode_fields
from detector.core.errors import InvalidEventError
from detector.core.events import Decoder
from detector.core.pipeline import Pipeline
from detector.core.scoring import ModelSpec, load_spec
from detector.shop.simulator import INCIDENT_KINDS, iter_events

DIGITS = 9
_SIGNER = Signer(b"same-verdicts-checkpoint-key-0123")  # a fixed key: this benchmark only


def wire_fields(alert: Alert) -> list[tuple[str, str | bytes]]:
    """An alert's stream entry as the worker writes it, scores rounded, no ``emitted_at``."""
    fields = alert.to_fields(0)
    del fields["emitted_at"]
    for key in ("score", "threshold"):
        fields[key] = repr(round(float(fields[key]), DIGITS))
    return sorted(fields.items())


def round_trip(pipeline: Pipeline, spec: ModelSpec) -> Pipeline:
    """A fresh pipeline restored from ``pipeline``'s full checkpoint, encoded and decoded."""
    fields = encode_fields(_SIGNER, pipeline.snapshot(offsets={}, full=True))
    resumed = Pipeline(spec)
    resumed.restore(decode_fields(_SIGNER, {k.encode(): v for k, v in fields.items()}))
    return resumed


@click.command()
@click.option("--model", default="stats", show_default=True, help="A shipped spec or a file.")
@click.option("--seed", default=7, show_default=True)
@click.option("--hours", default=3.0, show_default=True, help="At least 2.5 (every kind fits).")
@click.option("--batch", default=500, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--checkpoint-every",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Resume from an encoded full checkpoint every N entries (0: never).",
)
def main(model: str, seed: int, hours: float, batch: int, checkpoint_every: int) -> None:
    """Print the digest of one scenario run."""
    _, entries = iter_events(seed=seed, duration_s=hours * 3600, kinds=INCIDENT_KINDS)
    spec = load_spec(model)
    pipeline = Pipeline(spec)
    decoder = Decoder()
    digest = hashlib.sha256()
    n = alerts = checkpoints = 0
    it = iter(entries)
    while True:
        size = batch
        if checkpoint_every:  # a batch ends at the next checkpoint
            size = min(size, checkpoint_every - n % checkpoint_every)
        chunk = list(itertools.islice(it, size))
        if not chunk:
            break
        events = []
        for fields in chunk:
            raw = {k.encode(): v.encode() for k, v in fields.items()}
            with contextlib.suppress(InvalidEventError):  # a dead letter in the worker
                events.append(decoder.decode("shop", f"{n}-0", raw))
            n += 1
        for v in pipeline.process(events):
            score = None if v.score is None else round(v.score, DIGITS)
            written = [wire_fields(a) for a in (v.alert, *v.side_alerts) if a is not None]
            alerts += len(written)
            digest.update(repr((score, v.flagged, v.held, written)).encode())
        if checkpoint_every and n % checkpoint_every == 0:
            pipeline = round_trip(pipeline, spec)
            checkpoints += 1
    click.echo(
        f"detector={detector_source()} model={model} seed={seed} hours={hours:g} batch={batch}"
        + (f" checkpoints={checkpoints}" if checkpoint_every else "")
    )
    click.echo(f"events {n} alerts {alerts} verdicts {digest.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
