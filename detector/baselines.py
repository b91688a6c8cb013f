"""Baselines: learn from history, save the state, start workers warm.

``detector train`` replays history (a file, or a range of a stream read with XRANGE, no
consumer group involved) through the same pipeline as ``run``, as fast as the machine goes,
and saves the state as a signed baseline file named ``<baselines dir>/<name>.baseline``: a
checkpoint whose offsets say where its data ended (the last entry id read from the stream; none
when trained from a file) and whose ``watermark_ms`` is the latest event time it learned.
``run --baseline NAME`` starts from it when the consumer has no checkpoint yet; ``score
--baseline NAME`` backtests from it.

A run started from a baseline does not learn the baseline's data a second time (it would
replay every event id it learned: one ``replayed_id`` alert per producer). On the stream the
baseline read, a new group starts right after the recorded entry id, and entries up to it are
acked unread in any case. On other streams (partition streams, whose ids the router assigned,
or any stream when the baseline came from a file), an event is skipped when its producer is
one the baseline learned and its event time is at or before the baseline's end
(:class:`~detector.core.checkpoint.BaselineEnd`). Baselines written before offsets were
recorded still load: they have no offsets, so only the event-time rule applies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from detector.core.checkpoint import Signer, load_file, save_file
from detector.core.errors import ConfigError, InvalidEventError
from detector.core.events import Decoder, Event, parse_time_ms
from detector.core.pipeline import Pipeline

CHUNK = 1000
_STREAM_ID = re.compile(r"\d+(-\d+)?")


def baseline_path(name: str, directory: Path) -> Path:
    """``name`` as a path if it looks like one, else ``<directory>/<name>.baseline``."""
    if "/" in name or name.endswith(".baseline"):
        return Path(name)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        msg = f"baseline name {name!r}: use letters, digits, '.', '_' or '-'"
        raise ConfigError(msg)
    return directory / f"{name}.baseline"


def stream_bound(value: str | None, default: str) -> str:
    """An XRANGE bound from an entry id or a time (epoch ms or ISO-8601).

    >>> stream_bound("1700000000000-3", "-"), stream_bound("2023-11-14T22:13:20Z", "+")
    ('1700000000000-3', '1700000000000')
    """
    if value is None:
        return default
    if _STREAM_ID.fullmatch(value):
        return value
    try:
        return str(parse_time_ms(value.encode()))
    except InvalidEventError:
        msg = f"not an entry id or a time: {value!r}"
        raise ConfigError(msg) from None


def read_stream(
    client: redis.Redis, stream: str, start: str, end: str
) -> Iterator[tuple[str, dict[bytes, bytes]]]:
    """Entries of ``stream`` in [start, end], in order, CHUNK at a time."""
    cursor = start
    while True:
        chunk: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
            stream, min=cursor, max=end, count=CHUNK
        )
        for entry_id, fields in chunk:
            yield entry_id.decode(), fields
        if len(chunk) < CHUNK:
            return
        cursor = "(" + chunk[-1][0].decode()


@dataclass(frozen=True, slots=True)
class Learned:
    """What :func:`learn` went through: events learned, entries rejected, last entry id."""

    learned: int
    rejected: int
    last_id: str | None


def learn(
    pipeline: Pipeline,
    decoder: Decoder,
    stream: str,
    entries: Iterable[tuple[str, dict[bytes, bytes]]],
    progress: Callable[[int], None] | None = None,
) -> Learned:
    """Replay entries into the pipeline."""
    learned = rejected = 0
    last_id: str | None = None
    batch: list[Event] = []
    for entry_id, fields in entries:
        last_id = entry_id  # rejected ones too: the data read ends there
        try:
            batch.append(decoder.decode(stream, entry_id, fields))
        except InvalidEventError:
            rejected += 1
        if len(batch) >= CHUNK:
            pipeline.process(batch)
            learned += len(batch)
            if progress is not None:
                progress(len(batch))
            batch = []
    pipeline.process(batch)
    learned += len(batch)
    if progress is not None:
        progress(len(batch))
    return Learned(learned, rejected, last_id)


def save(
    pipeline: Pipeline, path: Path, signer: Signer, offsets: dict[str, str] | None = None
) -> None:
    """Save the state; ``offsets``: per stream, the last entry id it learned from.

    Without the shared state (the ids sent, up to 16 MB): a baseline starts it afresh."""
    snap = pipeline.snapshot(offsets or {}, full=True)
    snap.shared = {}
    save_file(path, signer, snap)


def load_into(pipeline: Pipeline, path: Path, signer: Signer) -> None:
    pipeline.restore(load_file(path, signer), baseline=True)


# -- `detector train` ------------------------------------------------------------------------


def file_entries(path: Path) -> Iterator[tuple[str, dict[bytes, bytes]]]:
    """A JSONL or CSV file's entries; a record without an entry id gets ``0-<n>`` (records
    that do not parse are left out)."""
    from detector.offline import read_records  # offline imports this module

    for n, (entry_id, fields) in enumerate(read_records(path)):
        if not isinstance(fields, str):
            yield entry_id or f"0-{n}", fields


def stream_entries(
    client: redis.Redis, stream: str, start: str | None, end: str | None
) -> tuple[Iterator[tuple[str, dict[bytes, bytes]]], int]:
    """The entries of ``stream`` from ``start`` to ``end`` (entry ids or times; None: its
    first and last) and the stream's length (the progress bar's total)."""
    entries = read_stream(client, stream, stream_bound(start, "-"), stream_bound(end, "+"))
    return entries, int(client.xlen(stream))


@dataclass(frozen=True, slots=True)
class Trained:
    """A saved baseline: what it learned, and where its data ended.

    Attributes:
        learned, rejected: events learned, entries rejected.
        producers: producers in the state.
        last_id: the last entry id it read from its stream (None: trained from a file, whose
            ids mean nothing to a stream).
        watermark_ms: the latest event time it learned.
    """

    learned: int
    rejected: int
    producers: int
    last_id: str | None
    watermark_ms: int


def train(
    pipeline: Pipeline,
    decoder: Decoder,
    stream: str,
    entries: Iterable[tuple[str, dict[bytes, bytes]]],
    path: Path,
    signer: Signer,
    *,
    from_stream: bool,
    progress: Callable[[int], None] | None = None,
) -> Trained:
    """Learn ``entries`` (read from ``stream``, or a file counting as it) and save the
    baseline at ``path``."""
    done = learn(pipeline, decoder, stream, entries, progress)
    # Where the data ended, so that `run --baseline` starts after it (file ids mean nothing).
    last_id = done.last_id if from_stream else None
    save(pipeline, path, signer, {stream: last_id} if last_id else {})
    store = pipeline.store
    return Trained(done.learned, done.rejected, len(store), last_id, store.watermark_ms)
