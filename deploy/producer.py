"""Demo traffic for docker-compose: a simulated shop, replayed into a Redis stream forever.

Each round generates ``HOURS`` of event time of :mod:`detector.shop.simulator` traffic, with
injected incidents (listed on stderr), and appends it to ``STREAM`` at ``RATE`` entries per wall
second. Rounds follow each other in event time, starting after the last entry already in the stream,
so a restarted producer never sends a producer's events back in time. A round's seed is ``SEED``
plus its start time in ms: no round (nor its event ids) repeats.

Environment (all optional):
    REDIS_URL  redis:// URL (default ``redis://localhost:6379/0``).
    STREAM     stream to append to (default ``events``, the detector's default input).
    RATE       entries per second; 0 appends as fast as Redis takes them (default 200).
    SEED       base seed (default 7).
    HOURS      event time per round (default 6).
    MAXLEN     approximate cap on the stream's length, 0 for none (default 1,000,000): with
               ``noeviction`` an endless demo must not fill Redis.

SIGTERM or SIGINT stops it after the current chunk, with exit code 0.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import redis

from detector.shop.simulator import DEMO_KINDS, Incident, iter_events

CHUNK = 500  # entries per pipeline round trip at full speed
TIME_FIELD = "ts"  # where detector.shop.simulator puts the event time (epoch ms)


@dataclass(frozen=True, slots=True)
class Config:
    """The producer's settings, read from the environment by :meth:`from_env`."""

    redis_url: str = "redis://localhost:6379/0"
    stream: str = "events"
    rate: float = 200.0
    seed: int = 7
    hours: float = 6.0
    maxlen: int = 1_000_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Config:
        """Settings from ``env``; a bad value raises SystemExit with a message (exit code 1)."""
        d = cls()
        try:
            cfg = cls(
                redis_url=env.get("REDIS_URL", d.redis_url),
                stream=env.get("STREAM", d.stream),
                rate=float(env.get("RATE", d.rate)),
                seed=int(env.get("SEED", d.seed)),
                hours=float(env.get("HOURS", d.hours)),
                maxlen=int(env.get("MAXLEN", d.maxlen)),
            )
        except ValueError as exc:
            msg = f"producer: bad environment: {exc}"
            raise SystemExit(msg) from None
        if cfg.rate < 0 or cfg.hours <= 0 or cfg.maxlen < 0 or not cfg.stream:
            msg = f"producer: need RATE >= 0, HOURS > 0, MAXLEN >= 0 and a STREAM: {cfg}"
            raise SystemExit(msg)
        return cfg


def _chunks(events: Iterable[dict[str, str]], size: int) -> Iterator[list[dict[str, str]]]:
    it = iter(events)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def replay(
    client: Any,
    stream: str,
    events: Iterable[dict[str, str]],
    *,
    rate: float,
    maxlen: int,
    stop: threading.Event,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Append ``events`` to ``stream`` at ``rate`` entries/s (0: unpaced) until ``stop``.

    Returns:
        the number of entries appended.
    """
    size = CHUNK if rate <= 0 else max(1, min(CHUNK, int(rate / 10)))  # ~10 round trips/s
    started = clock()
    sent = 0
    for chunk in _chunks(events, size):
        if stop.is_set():
            break
        pipe = client.pipeline(transaction=False)
        for fields in chunk:
            pipe.xadd(stream, fields, maxlen=maxlen or None, approximate=True)
        pipe.execute()
        sent += len(chunk)
        if rate > 0:
            ahead_s = started + sent / rate - clock()
            if ahead_s > 0:
                stop.wait(ahead_s)
    return sent


def resume_ms(client: Any, stream: str, now_ms: int) -> int:
    """Where the next round starts: now, or just after the stream's last event if later."""
    last: list[tuple[str, dict[str, str]]] = client.xrevrange(stream, count=1)
    if last:
        ts = last[0][1].get(TIME_FIELD, "")
        if ts.isdigit():
            return max(now_ms, int(ts) + 1)
    return now_ms


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _say(text: str) -> None:
    print(f"producer: {text}", file=sys.stderr, flush=True)


def _announce(seed: int, start_ms: int, end_ms: int, incidents: list[Incident]) -> None:
    _say(f"round seed={seed}: event time {_when(start_ms)} to {_when(end_ms)} UTC")
    for inc in incidents:
        _say(f"  incident {inc.kind} on {inc.producer} at {_when(inc.start_ms)}: {inc.detail}")


def main() -> int:
    cfg = Config.from_env()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    client = redis.Redis.from_url(cfg.redis_url, decode_responses=True)
    duration_ms = int(cfg.hours * 3_600_000)
    try:
        start_ms = resume_ms(client, cfg.stream, int(time.time() * 1000))
        _say(f"appending to {cfg.stream!r} at {cfg.rate:g} entries/s (0: unpaced)")
        while not stop.is_set():
            seed = cfg.seed + start_ms
            incidents, events = iter_events(
                seed=seed, start_ms=start_ms, duration_s=cfg.hours * 3600, kinds=DEMO_KINDS
            )
            _announce(seed, start_ms, start_ms + duration_ms, incidents)
            sent = replay(client, cfg.stream, events, rate=cfg.rate, maxlen=cfg.maxlen, stop=stop)
            _say(f"round seed={seed}: appended {sent} entries")
            start_ms += duration_ms
    except ValueError as exc:  # from detector.shop.simulator: HOURS too short for the incidents
        _say(f"bad settings: {exc}")
        return 2
    except redis.RedisError as exc:
        _say(f"redis error: {exc}")
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
