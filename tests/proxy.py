"""A TCP proxy for network fault tests, between a client and a redis-server on loopback.

Pass-through by default. Faults, armed from the test thread:

- :meth:`Proxy.on_reply` (``drop_replies``, ``delay_replies``, ``reset_on_reply``): for the
  next ``count`` commands whose bytes contain ``command`` and whose reply contains ``reply``,
  the server runs the command but the client either never gets the reply (``drop``: that
  connection stays silent from then on, a one-way partition), gets it ``delay_s`` late
  (``delay``), or gets a TCP reset instead (``reset``).
- :meth:`Proxy.reset_all`: RST (``SO_LINGER`` 0) every open connection, both sides.
- :meth:`Proxy.unavailable`: reset everything, then for ``seconds`` either refuse new
  connections (the listener is closed: ``ECONNREFUSED``) or blackhole them (accepted, never
  answered, as behind a dead route).

A dropped reply keeps the connection silent rather than skipping bytes: TCP never loses the
middle of a byte stream, so a client that then read a later reply would see an impossible
fault. One thread per direction per connection: tests open a handful of connections.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

Action = Literal["drop", "delay", "reset"]
Mode = Literal["refuse", "blackhole"]
# Substrings of redis-py's RESP commands, to aim faults (redis-py sends names upper-case).
READ_NEW = b"$1\r\n>\r\n"  # XREADGROUP ... STREAMS s > : new entries
READ = b"XREADGROUP"  # any group read, new or own pending entries
COMMIT = b"EXEC"  # the checkpoint transaction (MULTI ... EXEC)
EMIT = b"EVALSHA"  # the append-once script (alerts, dead letters)
_RECV = 65536


@dataclass(slots=True)
class ProxyStats:
    """What the proxy saw and did; read them after the faults, not as a live view."""

    connections: int = 0
    bytes_to_server: int = 0
    bytes_to_client: int = 0
    replies_dropped: int = 0
    replies_delayed: int = 0
    replies_reset: int = 0
    bytes_dropped: int = 0
    resets: int = 0  # connections reset by reset_all / unavailable
    blackholed: int = 0  # connections accepted while blackholing


@dataclass(slots=True)
class _Fault:
    action: Action
    command: bytes | None
    reply: bytes | None
    remaining: int
    delay_s: float


@dataclass(eq=False, slots=True)
class _Link:
    client: socket.socket
    server: socket.socket | None  # None: blackholed, never forwarded
    armed: _Fault | None = None  # the fault waiting for this connection's next reply
    silent: bool = False  # a reply was dropped: nothing more reaches the client
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class Proxy:
    """Listens on a free loopback port and forwards to ``127.0.0.1:upstream_port``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.stats = ProxyStats()
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._faults: list[_Fault] = []
        self._down_until = 0.0
        self._down_mode: Mode = "refuse"
        self._stop = threading.Event()
        self._up = threading.Event()  # listening and passing traffic
        self._up.set()
        self._listener: socket.socket | None = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Proxy:
        self._acceptor.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(timeout=5)
        for link in self._snapshot():
            self._close(link, abort=False)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- faults --------------------------------------------------------------------------

    def on_reply(
        self,
        action: Action,
        *,
        command: bytes | None = None,
        reply: bytes | None = None,
        count: int = 1,
        delay_s: float = 0.0,
    ) -> None:
        """Arm a fault for the replies to the next ``count`` matching commands."""
        with self._lock:
            self._faults.append(_Fault(action, command, reply, count, delay_s))

    def drop_replies(
        self, *, command: bytes | None = None, reply: bytes | None = None, count: int = 1
    ) -> None:
        self.on_reply("drop", command=command, reply=reply, count=count)

    def delay_replies(
        self, delay_s: float, *, command: bytes | None = None, reply: bytes | None = None
    ) -> None:
        self.on_reply("delay", command=command, reply=reply, delay_s=delay_s)

    def reset_on_reply(
        self, *, command: bytes | None = None, reply: bytes | None = None, count: int = 1
    ) -> None:
        self.on_reply("reset", command=command, reply=reply, count=count)

    def armed(self) -> int:
        """Faults armed and not yet fired."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def reset_all(self) -> int:
        """RST every open connection; returns how many."""
        links = self._snapshot()
        for link in links:
            self._close(link, abort=True)
        with self._lock:
            self.stats.resets += len(links)
        return len(links)

    def unavailable(self, seconds: float, mode: Mode = "refuse") -> None:
        """Reset every connection, then refuse or blackhole new ones for ``seconds``."""
        with self._lock:
            self._down_mode = mode
            self._down_until = time.monotonic() + seconds
            self._up.clear()
        self.reset_all()

    def wait_up(self, timeout_s: float) -> bool:
        """Wait until an :meth:`unavailable` period is over and traffic flows again."""
        return self._up.wait(timeout_s)

    # -- plumbing ------------------------------------------------------------------------

    def _listen(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        s.settimeout(0.05)
        return s

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                down = time.monotonic() < self._down_until
                refusing = down and self._down_mode == "refuse"
            if refusing:
                if self._listener is not None:  # closed listener: the kernel refuses
                    self._listener.close()
                    self._listener = None
                time.sleep(0.02)
                continue
            if self._listener is None:
                self._listener = self._listen(self.port)
            if not down:
                self._up.set()
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:  # the state may have changed while accept() waited
                down = time.monotonic() < self._down_until
                refusing = down and self._down_mode == "refuse"
            if refusing:
                _abort(client)
                continue
            client.settimeout(None)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._open(client, blackhole=down)

    def _open(self, client: socket.socket, blackhole: bool) -> None:
        server = None
        if not blackhole:
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _abort(client)
                return
            server.settimeout(None)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, server)
        with self._lock:
            self._links.add(link)
            self.stats.connections += 1
            self.stats.blackholed += blackhole
        threading.Thread(target=self._pump_up, args=(link,), daemon=True).start()
        if server is not None:
            threading.Thread(target=self._pump_down, args=(link,), daemon=True).start()

    def _pump_up(self, link: _Link) -> None:
        """Client -> server; arms this connection's next reply when a command matches."""
        while True:
            try:
                data = link.client.recv(_RECV)
            except OSError:
                data = b""
            if not data:
                return self._close(link, abort=False)
            if link.server is None:
                continue  # blackholed: swallow requests
            with self._lock:
                self.stats.bytes_to_server += len(data)
                if link.armed is None:
                    link.armed = next(
                        (
                            f
                            for f in self._faults
                            if f.remaining > 0 and (f.command is None or f.command in data)
                        ),
                        None,
                    )
            try:
                link.server.sendall(data)
            except OSError:
                return self._close(link, abort=False)

    def _pump_down(self, link: _Link) -> None:
        """Server -> client, applying the fault armed for this reply if it matches."""
        assert link.server is not None
        while True:
            try:
                data = link.server.recv(_RECV)
            except OSError:
                data = b""
            if not data:
                return self._close(link, abort=False)
            fault = self._fire(link, data)
            if fault is not None and fault.action == "reset":
                return self._close(link, abort=True)
            if link.silent:
                with self._lock:
                    self.stats.bytes_dropped += len(data)
                continue
            if fault is not None and fault.action == "delay" and self._stop.wait(fault.delay_s):
                return None
            with self._lock:
                self.stats.bytes_to_client += len(data)
            try:
                link.client.sendall(data)
            except OSError:
                return self._close(link, abort=False)

    def _fire(self, link: _Link, data: bytes) -> _Fault | None:
        """The fault this reply triggers, if any (counted here)."""
        with self._lock:
            fault, link.armed = link.armed, None
            if fault is None or fault.remaining <= 0:
                return None
            if fault.reply is not None and fault.reply not in data:
                return None  # e.g. a read that delivered nothing: wait for the next one
            fault.remaining -= 1
            if fault.action == "drop":
                link.silent = True
                self.stats.replies_dropped += 1
            elif fault.action == "delay":
                self.stats.replies_delayed += 1
            else:
                self.stats.replies_reset += 1
            return fault

    def _snapshot(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    def _close(self, link: _Link, abort: bool) -> None:
        with link.lock:
            if link.closed:
                return
            link.closed = True
        with self._lock:
            self._links.discard(link)
        for s in (link.client, link.server):
            if s is None:
                continue
            if abort:
                _abort(s)
            else:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)  # wakes the other pump's recv
                s.close()


def _abort(s: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER on, timeout 0), waking any thread blocked in recv."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.shutdown(socket.SHUT_RD)  # sends nothing; only wakes the reader
    except OSError:
        pass
    s.close()
