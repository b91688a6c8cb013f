"""Network faults between the worker and Redis, through :class:`tests.proxy.Proxy`.

A seeded stream (the kill -9 harness's workload) is appended straight to Redis while an
in-process worker reads it through the proxy, which loses, delays or resets replies to the
worker's reads, commits and alert appends, resets every connection, or takes Redis away.
The worker must finish by itself, and the oracles of ``tests/test_crash.py`` hold: nothing
lost or pending, every producer learned exactly as in a fault-free reference run, no duplicate
alerts, the same alerts; its ``detector_redis_errors`` metric counted the faults.

The short forms run in CI; ``-m slow`` runs Redis unavailable for 30 s and a long mix.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from detector.core.settings import DEFAULT_DEAD_LETTER_STREAM as DEAD_LETTER_STREAM
from detector.core.settings import Settings
from detector.gateway.embedded import EmbeddedRedis
from detector.runtime.worker import RunStats, Worker
from tests.conftest import TEST_KEY
from tests.proxy import COMMIT, EMIT, READ, READ_NEW, Action, Mode, Proxy, ProxyStats
from tests.test_crash import QUICK, Outcome, _append_paced, _check, _outcome, _reference, _workload

STREAM = "events"
DELIVERED = STREAM.encode()  # in a read's reply only when it delivered entries

# -- the proxy itself ----------------------------------------------------------------------


def _client(proxy: Proxy, timeout_s: float = 2.0) -> redis.Redis:
    return redis.Redis.from_url(
        proxy.url, socket_timeout=timeout_s, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
    )


@pytest.fixture
def proxy(redis_server: EmbeddedRedis, redis_url: str) -> Iterator[Proxy]:
    with Proxy(redis_server.port) as p:
        yield p


def test_proxy_passes_traffic_through(proxy: Proxy, r: redis.Redis) -> None:
    c = _client(proxy)
    assert c.set("k", "v") and c.get("k") == b"v"
    assert r.get("k") == "v"
    assert proxy.stats.connections == 1
    assert proxy.stats.bytes_to_server > 0 and proxy.stats.bytes_to_client > 0
    c.close()


def test_dropped_reply_times_out_after_the_server_ran_the_command(
    proxy: Proxy, r: redis.Redis
) -> None:
    c = _client(proxy, timeout_s=0.3)
    c.set("n", 0)
    proxy.drop_replies(command=b"INCR")
    with pytest.raises(redis.TimeoutError):
        c.incr("n")
    assert r.get("n") == "1"  # ran, reply lost
    assert c.incr("n") == 2  # a new connection is clean
    assert proxy.stats.replies_dropped == 1 and proxy.armed() == 0
    c.close()


def test_reply_filter_waits_for_a_matching_reply(proxy: Proxy) -> None:
    c = _client(proxy, timeout_s=0.3)
    proxy.drop_replies(command=b"GET", reply=b"wanted")
    assert c.get("k") is None  # its reply does not match: passed through
    c.set("k", "wanted")
    with pytest.raises(redis.TimeoutError):
        c.get("k")
    assert proxy.stats.replies_dropped == 1
    c.close()


def test_delay_below_the_timeout_is_invisible_beyond_it_an_error(
    proxy: Proxy, r: redis.Redis
) -> None:
    c = _client(proxy, timeout_s=0.5)
    proxy.delay_replies(0.2, command=b"INCR")
    assert c.incr("n") == 1
    proxy.delay_replies(1.0, command=b"INCR")
    with pytest.raises(redis.TimeoutError):
        c.incr("n")
    assert r.get("n") == "2"
    assert proxy.stats.replies_delayed == 2
    c.close()


def test_reset_on_reply_and_reset_all(proxy: Proxy, r: redis.Redis) -> None:
    c = _client(proxy)
    proxy.reset_on_reply(command=b"INCR")
    with pytest.raises(redis.ConnectionError):
        c.incr("n")
    assert r.get("n") == "1"
    conn = c.connection_pool.get_connection()  # one connection, no pool reconnect
    conn.send_command("PING")  # type: ignore[no-untyped-call]
    assert conn.read_response() == b"PONG"
    assert proxy.reset_all() == 1
    with pytest.raises(redis.ConnectionError):
        conn.send_command("PING")  # type: ignore[no-untyped-call]
        conn.read_response()
    assert proxy.stats.replies_reset == 1 and proxy.stats.resets == 1
    c.connection_pool.release(conn)
    c.close()


@pytest.mark.parametrize(
    ("mode", "error"), [("refuse", redis.ConnectionError), ("blackhole", redis.TimeoutError)]
)
def test_unavailable_refuses_or_blackholes_then_recovers(
    proxy: Proxy, mode: Mode, error: type[Exception]
) -> None:
    c = _client(proxy, timeout_s=0.3)
    assert c.ping()
    proxy.unavailable(1.0, mode)
    # The reset of the old connection reaches the client only once the proxy's pump thread
    # leaves recv, so a ping on it may fail with either error; a fresh one meets the outage.
    c.connection_pool.disconnect()
    with pytest.raises(error):
        c.ping()
    assert proxy.wait_up(5.0)
    assert c.ping()
    assert proxy.stats.resets == 1
    c.close()


# -- the worker under faults ---------------------------------------------------------------

PRODUCERS, PER_PRODUCER, SEED = 100, 80, 11  # 8,025 events with the outliers, 19 alerts
RATE = 1000  # events/s offered: below the worker's capacity, so faults, not load, stall it


@dataclass
class Run:
    outcome: Outcome
    stats: RunStats
    redis_errors: float  # the worker's detector_redis_errors_total
    proxy: ProxyStats
    seconds: float
    dead_letters: list[str]  # their reasons: the workload has no invalid entries


def _check_run(reference: Outcome, run: Run, total: int) -> None:
    """The kill -9 harness's oracles, and no valid entry dead-lettered."""
    assert run.dead_letters == []
    _check(reference, run.outcome, total)


def _settings(url: str) -> Settings:
    """The settings of the kill -9 harness's `detector run` (tests.test_crash._run_cmd)."""
    return Settings(
        redis_url=url,
        consumer="w1",
        model=os.environ.get("HARNESS_MODEL", QUICK),
        until_idle=True,
        idle_timeout_ms=1500,
        block_ms=200,
        checkpoint_every=500,
        checkpoint_interval_ms=200,
        batch_size=200,
        checkpoint_secret=TEST_KEY,
    )


def _socket_timeout_s(worker: Worker) -> float:
    assert isinstance(worker.client, redis.Redis)
    return float(worker.client.connection_pool.connection_kwargs["socket_timeout"])


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _progress(worker: Worker, events: int) -> Callable[[], bool]:
    return lambda: worker.stats.events >= events


Inject = Callable[[Proxy, Worker], None]


def _faulty(events: list[dict[str, str]], tmp: Path, inject: Inject, rate: float = RATE) -> Run:
    """Append ``events`` straight to Redis while a worker reads them through a proxy that
    ``inject`` (run in this thread) disturbs; the worker must then stop by itself."""
    directory = tmp / "faulty"
    directory.mkdir()
    errors: list[BaseException] = []
    with EmbeddedRedis(directory=directory) as server, Proxy(server.port) as proxy:
        worker = Worker(_settings(proxy.url))

        def consume() -> None:
            try:
                worker.run()
            except BaseException as exc:  # re-raised in the test thread
                errors.append(exc)

        appender = threading.Thread(target=_append_paced, args=(server.url, events, rate))
        consumer = threading.Thread(target=consume)
        started = time.monotonic()
        appender.start()
        consumer.start()
        try:
            inject(proxy, worker)
            appender.join()
            consumer.join(timeout=90)
            assert not consumer.is_alive(), "the worker did not finish by itself"
        finally:
            if consumer.is_alive():
                worker.stop()
                consumer.join(timeout=30)
            appender.join()
            worker.client.close()
        if errors:
            raise errors[0]
        seconds = time.monotonic() - started
        errs = worker.metrics.registry.get_sample_value("detector_redis_errors_total") or 0.0
        r = redis.Redis.from_url(server.url)
        rows: list[tuple[bytes, dict[bytes, bytes]]] = r.xrange(DEAD_LETTER_STREAM)  # type: ignore[assignment]
        letters = [fields[b"reason"].decode() for _, fields in rows]
        r.close()
        outcome = _outcome(server.url, "w1")
        return Run(outcome, worker.stats, errs, proxy.stats, seconds, letters)


@pytest.fixture(scope="module")
def workload() -> list[dict[str, str]]:
    return _workload(producers=PRODUCERS, per_producer=PER_PRODUCER, seed=SEED)


@pytest.fixture(scope="module")
def reference(workload: list[dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    return _reference(workload, tmp_path_factory.mktemp("faults"))


def _after(share: float, total: int, action: Callable[[Proxy, Worker], None]) -> Inject:
    """Once the worker has processed ``share`` of the input: act."""

    def inject(proxy: Proxy, worker: Worker) -> None:
        _wait_for(_progress(worker, int(share * total)), 60, f"{share:.0%} processed")
        action(proxy, worker)

    return inject


def _fired(proxy: Proxy, timeout_s: float = 60) -> None:
    _wait_for(lambda: proxy.armed() == 0, timeout_s, "the armed fault to fire")


# Each case loses one reply, after the server ran the command: a read that delivered new
# entries (they sit in our pending list, unseen), a commit (state written, entries acked),
# an alert append (alerts written, guards set).
LOST_REPLIES = {
    "read-new": (READ_NEW, DELIVERED),
    "commit": (COMMIT, None),
    "emit": (EMIT, b":"),  # an integer reply: the script ran
}


@pytest.mark.parametrize("case", list(LOST_REPLIES))
def test_lost_reply(
    case: str, workload: list[dict[str, str]], reference: Outcome, tmp_path: Path
) -> None:
    def act(proxy: Proxy, worker: Worker) -> None:
        command, reply = LOST_REPLIES[case]
        proxy.drop_replies(command=command, reply=reply)
        _fired(proxy)

    run = _faulty(workload, tmp_path, _after(0.2, len(workload), act))
    _check_run(reference, run, len(workload))
    assert run.proxy.replies_dropped == 1
    assert run.redis_errors >= 1 and run.stats.redis_errors == run.redis_errors


def test_reply_delayed_below_then_beyond_the_socket_timeout(
    workload: list[dict[str, str]], reference: Outcome, tmp_path: Path
) -> None:
    errors_after_short_delay: list[int] = []

    def act(proxy: Proxy, worker: Worker) -> None:
        timeout_s = _socket_timeout_s(worker)
        proxy.delay_replies(timeout_s / 4, command=READ_NEW, reply=DELIVERED)
        _fired(proxy)
        time.sleep(timeout_s / 4 + 0.5)
        errors_after_short_delay.append(worker.stats.redis_errors)
        proxy.delay_replies(timeout_s + 2, command=READ_NEW, reply=DELIVERED)
        _fired(proxy)

    run = _faulty(workload, tmp_path, _after(0.2, len(workload), act))
    _check_run(reference, run, len(workload))
    assert run.proxy.replies_delayed == 2
    assert errors_after_short_delay == [0]  # a slow reply within the timeout is no error
    assert run.redis_errors >= 1


def test_connection_resets(
    workload: list[dict[str, str]], reference: Outcome, tmp_path: Path
) -> None:

    def act(proxy: Proxy, worker: Worker) -> None:
        # Resets instead of the replies to: a read of new entries, then at once the re-read
        # of our pending entries that recovers them, a commit, an alert append.
        proxy.reset_on_reply(command=READ_NEW, reply=DELIVERED)
        _fired(proxy)
        proxy.reset_on_reply(command=READ, reply=DELIVERED)
        _fired(proxy)
        proxy.reset_on_reply(command=COMMIT)
        proxy.reset_on_reply(command=EMIT, reply=b":")
        _fired(proxy)
        rng = random.Random(SEED)  # and every connection at arbitrary moments
        for _ in range(5):
            time.sleep(rng.uniform(0.1, 0.6))
            proxy.reset_all()
        assert worker.stats.events < len(workload), "input ended before the faults did"

    run = _faulty(workload, tmp_path, _after(0.1, len(workload), act))
    _check_run(reference, run, len(workload))
    assert run.proxy.replies_reset == 4
    # Each reset reply is an error; a reset idle connection may be replaced silently.
    assert run.redis_errors >= run.proxy.replies_reset


def test_a_flapping_network_does_not_poison_entries(
    workload: list[dict[str, str]], reference: Outcome, tmp_path: Path
) -> None:
    flaps: list[int] = []

    def act(proxy: Proxy, worker: Worker) -> None:
        # The read of new entries, then every re-read that would recover them, is reset:
        # each delivered the same entries again (XPENDING counts every delivery).
        flaps.append(worker.settings.max_deliveries + 1)
        proxy.reset_on_reply(command=READ, reply=DELIVERED, count=flaps[0])
        _fired(proxy)

    run = _faulty(workload, tmp_path, _after(0.2, len(workload), act))
    assert run.proxy.replies_reset == flaps[0]
    assert "poison" not in run.dead_letters
    _check_run(reference, run, len(workload))


def _outage(seconds: float, mode: Mode, recovery: list[float]) -> Callable[[Proxy, Worker], None]:
    def act(proxy: Proxy, worker: Worker) -> None:
        proxy.unavailable(seconds, mode)
        assert proxy.wait_up(seconds + 5)
        back = time.monotonic()
        done = worker.stats.events
        _wait_for(_progress(worker, done + 1), 60, "progress after the outage")
        recovery.append(time.monotonic() - back)

    return act


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_redis_unavailable_briefly(
    mode: Mode, workload: list[dict[str, str]], reference: Outcome, tmp_path: Path
) -> None:
    recovery: list[float] = []
    run = _faulty(workload, tmp_path, _after(0.2, len(workload), _outage(3.0, mode, recovery)))
    _check_run(reference, run, len(workload))
    assert run.redis_errors >= 1 and len(recovery) == 1


# -- long forms (-m slow) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_workload() -> list[dict[str, str]]:
    return _workload(producers=250, per_producer=240, seed=5)  # 60,062 events


@pytest.fixture(scope="module")
def long_reference(
    long_workload: list[dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Outcome:
    return _reference(long_workload, tmp_path_factory.mktemp("faults-long"))


def _summary(name: str, events: int, reference: Outcome, run: Run, extra: str = "") -> str:
    p = run.proxy
    return (
        f"\n{name}: {events} events in {run.seconds:.0f}s; replies dropped {p.replies_dropped}, "
        f"delayed {p.replies_delayed}, reset {p.replies_reset}, connections reset {p.resets}, "
        f"blackholed {p.blackholed}; worker redis errors {run.redis_errors:.0f}; lost 0, "
        f"learned twice 0, duplicate alerts 0, alerts {len(reference.alerts)} = reference{extra}"
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_redis_unavailable_30s(
    mode: Mode, long_workload: list[dict[str, str]], long_reference: Outcome, tmp_path: Path
) -> None:
    recovery: list[float] = []
    inject = _after(0.2, len(long_workload), _outage(30.0, mode, recovery))
    run = _faulty(long_workload, tmp_path, inject)
    _check_run(long_reference, run, len(long_workload))
    assert run.redis_errors >= 1
    extra = f"; Redis back -> worker progressing: {recovery[0]:.1f}s"
    print(
        _summary(f"redis unavailable 30s ({mode})", len(long_workload), long_reference, run, extra)
    )


def _random_faults(seed: int, count: int, total: int) -> Inject:
    """``count`` faults of every kind, in a seeded order, a second or two apart."""
    rng = random.Random(seed)
    targets = [
        (READ_NEW, DELIVERED),
        (READ, DELIVERED),
        (COMMIT, None),
        (EMIT, b":"),
    ]

    actions: list[Action] = ["drop", "delay", "reset"]
    modes: list[Mode] = ["refuse", "blackhole"]

    def inject(proxy: Proxy, worker: Worker) -> None:
        timeout_s = _socket_timeout_s(worker)
        for _ in range(count):
            time.sleep(rng.uniform(0.5, 2.0))
            kind = rng.randrange(len(actions) + 2)
            if kind == len(actions):
                proxy.reset_all()
            elif kind == len(actions) + 1:
                proxy.unavailable(rng.uniform(1.0, 8.0), rng.choice(modes))
                assert proxy.wait_up(20)
            else:
                command, reply = rng.choice(targets)
                delay_s = timeout_s + 1 if actions[kind] == "delay" else 0.0
                proxy.on_reply(actions[kind], command=command, reply=reply, delay_s=delay_s)
                _fired(proxy, timeout_s=120)  # alerts are rarer: an append may be a while
        assert worker.stats.events < total, "input ended before the faults did"

    return inject


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fault_mix_long(
    long_workload: list[dict[str, str]], long_reference: Outcome, tmp_path: Path
) -> None:
    total = len(long_workload)
    inject = _after(0.05, total, _random_faults(seed=int(os.environ.get("SEED", "7")), count=16,
                                                total=total))  # fmt: skip
    run = _faulty(long_workload, tmp_path, inject, rate=400)  # 150 s of input: faults fit in
    _check_run(long_reference, run, total)
    p = run.proxy
    assert run.redis_errors >= p.replies_dropped + p.replies_delayed + p.replies_reset
    print(_summary("fault mix (16 faults)", total, long_reference, run))
