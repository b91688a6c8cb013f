"""Baselines: learn from history, save the state, start workers warm.

``detector train`` replays history (a file, or a range of a stream read with XRANGE, no
consumer group involved) through the same pipeline as ``run``, as fast as the machine goes,
and saves the state as a signed baseline file (a checkpoint without offsets) named
``<baselines dir>/<name>.baseline``. ``run --baseline NAME`` starts from it when the consumer
has no checkpoint yet; ``score --baseline NAME`` backtests from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import redis

from detector.checkpoint import Signer, load_file, save_file
from detector.errors import ConfigError, InvalidEventError
from detector.events import Decoder, Event, parse_time_ms
from detector.pipeline import Pipeline

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


def learn(
    pipeline: Pipeline,
    decoder: Decoder,
    stream: str,
    entries: Iterable[tuple[str, dict[bytes, bytes]]],
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Replay entries into the pipeline; returns (events learned, entries rejected)."""
    learned = rejected = 0
    batch: list[Event] = []
    for entry_id, fields in entries:
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
    return learned, rejected


def save(pipeline: Pipeline, path: Path, signer: Signer) -> None:
    save_file(path, signer, pipeline.snapshot({}, full=True))


def load_into(pipeline: Pipeline, path: Path, signer: Signer) -> None:
    pipeline.restore(load_file(path, signer), baseline=True)
