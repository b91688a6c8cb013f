"""Shared fixtures: a real redis-server per test session, flushed between tests.

The server is started by the tests themselves (redis-server from PATH, or the one the
``embedded`` extra ships) on a free loopback port; no Redis means the tests fail, never skip.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from detector.core.settings import Settings
from detector.gateway.embedded import EmbeddedRedis, free_port
from detector.gateway.streams import connect
from detector.runtime.worker import Worker

_names = itertools.count()
TEST_KEY = b"test-checkpoint-key-0123456789abcdef"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    server.start()  # raises if no redis-server can be found: a failure, not a skip
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def stream_name() -> str:
    return f"test:events:{next(_names)}"


@pytest.fixture
def settings_factory(redis_url: str, stream_name: str) -> Callable[..., Settings]:
    def make(**changes: Any) -> Settings:
        base = Settings(
            redis_url=redis_url,
            streams=(stream_name,),
            consumer="c1",
            until_idle=True,
            idle_timeout_ms=300,
            block_ms=100,
            checkpoint_secret=TEST_KEY,
        )
        return replace(base, **changes)

    return make


@pytest.fixture
def worker_factory(settings_factory: Callable[..., Settings]) -> Iterator[Callable[..., Worker]]:
    clients: list[redis.Redis] = []

    def make(settings: Settings | None = None, **kwargs: Any) -> Worker:
        s = settings or settings_factory()
        client = connect(s.redis_url or "", block_ms=s.block_ms)
        clients.append(client)
        return Worker(s, client, **kwargs)

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def persistent_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A server that keeps its streams through a kill and a restart on the same port."""
    server = EmbeddedRedis(
        free_port(), appendonly=True, appendfsync="always", directory=tmp_path / "redis"
    )
    server.start()
    yield server
    server.stop()
