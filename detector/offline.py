"""Offline scoring: events from a JSONL or CSV file through the same pipeline as ``run``
(``detector score``; ``detector plot`` scores through :func:`scored` too).

Each input record becomes the bytes a Redis entry would hold (strings as they are, other JSON values
as compact JSON, so ``{"qty": 3}`` is the field ``qty=3``), then goes through the same
:class:`~detector.core.events.Decoder` and :class:`~detector.core.pipeline.Pipeline`. The optional
key ``_id`` holds an entry id (e.g. from an export of a stream); otherwise ids are synthesised as
``0-<line>``, so event time should come from the ``ts`` field.

Analyst feedback (``--feedback FILE.jsonl``: one feedback entry's fields per line, as
:mod:`detector.core.feedback` defines them, with the ``_id`` it had in the feedback stream) is
applied between the events by entry id, as the worker applies it: the same events and feedback
give the same verdicts offline and on Redis.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from detector.baselines import load_into
from detector.core.checkpoint import Signer
from detector.core.errors import ConfigError, InvalidEventError
from detector.core.events import Decoder, Event
from detector.core.feedback import Feedback, id_key, merge_order
from detector.core.pipeline import Pipeline, Verdict
from detector.core.scoring import load_spec
from detector.core.settings import DEFAULT_MODEL, DEFAULT_STREAM, EventFormat

HEADER = ("producer", "event_time", "score", "alert")
CHUNK = 500
ID_KEY = "_id"


BACKTEST_THRESHOLDS = (0.99, 0.999, 0.9995, 0.9999, 0.99995, 0.99999, 0.999999)


@dataclass(slots=True)
class ScoreCounts:
    """Totals of one offline scoring run.

    Attributes:
        by_threshold: alerts each threshold would have produced (with the spec's cooldown),
            from this run's scores; learning is protected at the run's own threshold, so
            other thresholds are an estimate.
    """

    events: int = 0
    alerts: int = 0
    warmup: int = 0
    invalid: int = 0
    by_threshold: dict[float, int] = field(default_factory=dict)


class _Backtest:
    """Counts would-be alerts per threshold, per-producer cooldown included."""

    def __init__(self, cooldown_ms: int) -> None:
        self.cooldown_ms = cooldown_ms
        self.next_ok: dict[tuple[float, str], int] = {}
        self.counts = dict.fromkeys(BACKTEST_THRESHOLDS, 0)

    def add(self, producer: str, event_time_ms: int, score: float) -> None:
        for t in BACKTEST_THRESHOLDS:
            if score < t:
                break  # thresholds ascend
            key = (t, producer)
            if event_time_ms >= self.next_ok.get(key, -(2**62)):
                self.next_ok[key] = event_time_ms + self.cooldown_ms
                self.counts[t] += 1


def to_entry(record: dict[str, Any]) -> dict[bytes, bytes]:
    """Field bytes as Redis would store them for this record.

    >>> to_entry({"producer": "a", "qty": 3, "data": {"x": "12e4"}})
    {b'producer': b'a', b'qty': b'3', b'data': b'{"x":"12e4"}'}
    """
    out = {}
    for key, value in record.items():
        out[str(key).encode()] = value.encode() if isinstance(value, str) else orjson.dumps(value)
    return out


def read_records(path: Path) -> Iterator[tuple[str | None, dict[bytes, bytes] | str]]:
    """(entry id or None, entry fields) per record; a string instead of fields is a parse error."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                fields = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
                entry_id = fields.pop(ID_KEY, None)
                yield entry_id, {k.encode(): str(v).encode() for k, v in fields.items()}
        return
    with path.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield None, f"invalid_json: {exc}"
                continue
            if not isinstance(record, dict):
                yield None, "invalid_json: line is not an object"
                continue
            entry_id = record.pop(ID_KEY, None)
            yield (str(entry_id) if entry_id is not None else None), to_entry(record)


@dataclass(frozen=True, slots=True)
class Scoring:
    """How a file is scored: the options ``detector score`` and ``detector plot`` share.

    Attributes:
        baseline: start from this baseline (verified with ``signer``): a backtest.
    """

    model: str = DEFAULT_MODEL
    threshold: float | None = None
    stream: str = DEFAULT_STREAM
    event_format: EventFormat | None = None
    max_producers: int = 100_000
    idle_ttl_ms: int = 24 * 3600 * 1000
    baseline: Path | None = None
    signer: Signer | None = None
    feedback: Path | None = None

    def pipeline(self) -> Pipeline:
        """A fresh pipeline for the model, from the baseline if there is one."""
        pipeline = Pipeline(
            load_spec(self.model),
            threshold=self.threshold,
            max_producers=self.max_producers,
            idle_ttl_ms=self.idle_ttl_ms,
        )
        if self.baseline is not None and self.signer is not None:
            load_into(pipeline, self.baseline, self.signer)
        return pipeline


def scored(
    input_path: Path,
    scoring: Scoring,
    pipeline: Pipeline,
    before: Callable[[Event], None] | None = None,
) -> Iterator[tuple[Event | None, Verdict | None]]:
    """Every record of ``input_path`` in order, with its verdict: ``(None, None)`` for a
    record that is not a valid event.

    ``before(event)`` (optional) is called right before each event is scored, while
    ``pipeline`` holds the state of everything before it (events are then scored one by
    one: the same verdicts, as the pipeline scores event by event anyway).
    """
    decoder = Decoder(scoring.event_format)
    feedback = deque(read_feedback(scoring.feedback) if scoring.feedback is not None else ())
    chunk = 1 if before is not None else CHUNK
    # Records wait in `slots` so invalid ones keep their place between scored ones.
    slots: list[Event | None] = []
    for n, (entry_id, fields) in enumerate(read_records(input_path)):
        event: Event | None = None
        if not isinstance(fields, str):
            with suppress(InvalidEventError):
                event = decoder.decode(scoring.stream, entry_id or f"0-{n}", fields)
        slots.append(event)
        if len(slots) >= chunk:
            yield from _scored(pipeline, slots, before, feedback)
            slots = []
    yield from _scored(pipeline, slots, before, feedback)


def read_feedback(path: Path) -> list[tuple[str, Feedback]]:
    """(entry id, feedback) per line of a JSONL file, ids ascending.

    Raises:
        ConfigError: a line is not valid feedback or has no ``_id``.
    """
    out = []
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                if not isinstance(record, dict) or ID_KEY not in record:
                    msg = f"not an object with the {ID_KEY} it had in the feedback stream"
                    raise ValueError(msg)
                entry_id = str(record.pop(ID_KEY))
                id_key(entry_id)
                out.append((entry_id, Feedback.from_fields(record)))
            except (orjson.JSONDecodeError, InvalidEventError, ValueError) as exc:
                msg = f"{path}:{n}: not valid feedback: {exc}"
                raise ConfigError(msg) from None
    return sorted(out, key=lambda f: id_key(f[0]))


def _scored(
    pipeline: Pipeline,
    slots: list[Event | None],
    before: Callable[[Event], None] | None,
    feedback: deque[tuple[str, Feedback]],
) -> Iterator[tuple[Event | None, Verdict | None]]:
    events = [e for e in slots if e is not None]
    if before is not None:
        for e in events:  # one at most (see scored)
            before(e)
    due: list[tuple[str, Feedback]] = []
    if events:  # the feedback up to the last event's id: the rest may come before later ones
        last = id_key(events[-1].entry_id)
        while feedback and id_key(feedback[0][0]) <= last:
            due.append(feedback.popleft())
    at = merge_order([e.entry_id for e in events], [i for i, _ in due])
    verdicts = iter(pipeline.process(events, [(k, fb) for k, (_, fb) in zip(at, due, strict=True)]))
    for slot in slots:
        yield slot, None if slot is None else next(verdicts)


def score_file(input_path: Path, output_path: Path, scoring: Scoring) -> ScoreCounts:
    """Score every record of ``input_path`` into ``output_path`` (CSV, input order)."""
    pipeline = scoring.pipeline()
    counts = ScoreCounts()
    backtest = _Backtest(pipeline.decision.cooldown_ms)
    with output_path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(HEADER)
        for e, v in scored(input_path, scoring, pipeline):
            counts.events += 1
            if e is None or v is None:
                counts.invalid += 1
                writer.writerow(("", "", "", 0))
                continue
            if v.error is not None:
                counts.invalid += 1
            if v.score is None:
                counts.warmup += v.error is None
                writer.writerow((e.producer, e.event_time_ms, "", 0))
                continue
            counts.alerts += v.alert is not None
            backtest.add(e.producer, e.event_time_ms, v.score)
            writer.writerow((e.producer, e.event_time_ms, repr(v.score), int(v.alert is not None)))
    counts.by_threshold = backtest.counts
    return counts
