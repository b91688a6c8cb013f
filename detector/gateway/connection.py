"""The Redis connection policy of the commands: which URLs are accepted, where the password
and TLS files come from, the Sentinels, the access check before a worker starts, the embedded
fallback.

The worker's client itself (timeouts, no hidden retries, TLS verification always on) is
:func:`detector.gateway.streams.connect`; this module adds what a command decides around it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import redis

from detector.core.errors import ConfigError
from detector.core.settings import mask_url
from detector.gateway.secrets import redis_password, sentinel_password
from detector.gateway.streams import (
    Client,
    SentinelTarget,
    connect,
    connection_options,
    parse_address,
    sentinel_primary,
)

log = logging.getLogger(__name__)
REDIS_URL_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str) -> str:
    """The URL, if redis-py can connect with it: the one check of every command's URL.

    Messages show the URL masked (they may reach logs).

    >>> check_redis_url("redis://localhost:6379/0")
    'redis://localhost:6379/0'
    >>> check_redis_url("db:6379")
    Traceback (most recent call last):
    ...
    detector.core.errors.ConfigError: 'db:6379' has no scheme: write redis://db:6379 ...
    """
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on "host:abc" or 99999
    except ValueError as exc:
        msg = f"{mask_url(url)} cannot be parsed: {exc}"
        raise ConfigError(msg) from None
    if "://" not in url:
        # "host:6379" parses as scheme "host"; never echo what may be "user:password@host".
        shown = f"{url!r} has" if "@" not in url else "the URL has"
        intent = f"redis://{url}" if "@" not in url else "redis://HOST:PORT"
        msg = f"{shown} no scheme: write {intent} (rediss:// for TLS)"
        raise ConfigError(msg)
    if parts.scheme not in REDIS_URL_SCHEMES:
        msg = (
            f"{mask_url(url)}: scheme {parts.scheme!r} is not one of redis://, rediss:// (TLS), "
            "unix:// (a socket path)"
        )
        raise ConfigError(msg)
    if parts.scheme == "unix" and not parts.path:
        msg = f"{mask_url(url)} names no socket path (unix:///path/to/redis.sock)"
        raise ConfigError(msg)
    if parts.scheme != "unix" and not parts.hostname:
        msg = f"{mask_url(url)} names no host ({parts.scheme}://HOST:PORT)"
        raise ConfigError(msg)
    return url


def check_sentinel_address(address: str) -> str:
    """A Sentinel's ``HOST:PORT``, checked (the one check of every command's ``--sentinel``)."""
    parse_address(address)
    return address


def sentinel_target(
    sentinels: tuple[str, ...], master: str | None, user: str | None
) -> SentinelTarget | None:
    """The Sentinels of a command's options, their password from the environment (None
    without ``--sentinel``)."""
    password = sentinel_password() if sentinels else None
    return SentinelTarget.parse(sentinels, master, user, password)


def command_client(
    url: str | None,
    sentinel: SentinelTarget | None,
    tls: dict[str, Path | None],
    **options: Any,
) -> redis.Redis:
    """A short-lived command's client (``alerts``, ``check``, ``train``): ``url``'s server or
    the primary the Sentinels name, with the password from the environment and TLS files."""
    options.update(client_options(url or "redis://", **tls))
    if sentinel is None:
        return redis.Redis.from_url(url or "", **options)
    return sentinel_primary(url or "", sentinel, options)


def client_options(
    url: str,
    tls_ca_cert: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> dict[str, Any]:
    """redis-py keyword arguments: the password from the environment, and TLS files."""
    return connection_options(
        url,
        password=redis_password(),
        tls_ca_cert=tls_ca_cert,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )


def connect_checked(
    url: str,
    *,
    block_ms: int,
    password: str | None,
    tls_ca_cert: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    cluster: bool = False,
    sentinel: SentinelTarget | None = None,
    wait_ms: int = 0,
) -> Client:
    """A worker's (or router's) client, its credentials and certificates checked once."""
    client = connect(
        url,
        block_ms=block_ms,
        password=password,
        tls_ca_cert=tls_ca_cert,
        tls_cert=tls_cert,
        tls_key=tls_key,
        cluster=cluster,
        sentinel=sentinel,
        wait_ms=wait_ms,
    )
    check_access(client, describe(url, sentinel))
    return client


def describe(url: str | None, sentinel: SentinelTarget | None) -> str:
    """Where a command connects, for logs and messages: the URL masked, or the Sentinels.

    >>> describe(None, SentinelTarget((("s1", 26379), ("s2", 26379)), "main"))
    "primary 'main' of Sentinels s1:26379, s2:26379"
    """
    if sentinel is None:
        return str(mask_url(url))
    where = ", ".join(f"{h}:{p}" for h, p in sentinel.addresses)
    return f"primary {sentinel.master!r} of Sentinels {where}"


def check_access(client: redis.Redis | redis.RedisCluster, where: str) -> None:
    """Fail fast on credentials or certificates the server will never accept (exit 2).

    The worker retries connection errors forever (Redis restarts), and redis-py reports a
    refused password or TLS handshake as connection errors: check once, before it starts. A
    server that is merely down is left to the worker's retries.
    """
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        msg = f"redis {where} refused the credentials: {exc}"
        raise ConfigError(msg) from None
    except redis.ConnectionError as exc:
        if not _caused_by_tls(exc):
            log.warning("redis %s unavailable, retrying: %s", where, exc)
            return
        msg = f"TLS with redis {where} failed: {exc}"
        raise ConfigError(msg) from None
    except redis.ResponseError as exc:  # e.g. a user without +ping: the worker may still run
        log.debug("PING refused: %s", exc)


def _caused_by_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def redis_url_or_embedded(url: str | None) -> Iterator[str]:
    """The given URL, or an embedded redis-server's for the duration of the block."""
    if url:
        yield url
        return
    from detector.gateway.embedded import EmbeddedRedis

    with EmbeddedRedis() as server:
        click.echo(f"embedded redis-server on {server.url}", err=True)
        yield server.url
