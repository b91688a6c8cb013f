"""`detector route`: every source entry reaches its producer's partition exactly once, in order.

Oracles read Redis: each source entry carries a unique ``seq`` field, so "exactly once" is
"every seq appears once across the partitions", and order per producer is "each producer's
seqs appear in increasing order in its partition".
"""

from __future__ import annotations

import logging
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from detector.acl import AclConfig, acl_lines
from detector.cli import cli
from detector.gateway import ownership
from detector.gateway.partitions import partition_of, partition_stream
from detector.gateway.streams import connect
from detector.router import (
    EMPTY_PRODUCER,
    ENTRY_TOO_LARGE,
    INVALID_PRODUCER,
    MISSING_PRODUCER,
    TOO_MANY_FIELDS,
    LeaseLostError,
    Router,
    RouterConfig,
    RouterStats,
)
from tests.cluster import LocalCluster, cluster_url, redis_cluster  # noqa: F401
from tests.helpers import append, order_events
from tests.test_cli import clean_env

P = 8
SOURCE = "in"
BASE = "events"
DEAD = "detector:dead-letter"


def workload(producers: int = 20, per_producer: int = 50, seed: int = 1) -> list[dict[str, str]]:
    events = order_events(producers=producers, per_producer=per_producer, seed=seed)
    return [{**e, "seq": str(i)} for i, e in enumerate(events)]


def routed(client: redis.Redis | object) -> dict[int, list[dict[str, str]]]:
    out = {}
    for p in range(P):
        entries = client.xrange(partition_stream(BASE, p))  # type: ignore[attr-defined]
        out[p] = [{_s(k): _s(v) for k, v in f.items()} for _, f in entries]
    return out


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def check_exactly_once_in_order(
    events: list[dict[str, str]], partitions: dict[int, list[dict[str, str]]]
) -> None:
    counts = Counter(f["seq"] for entries in partitions.values() for f in entries)
    assert sorted(counts, key=int) == [e["seq"] for e in events], "lost or foreign entries"
    assert max(counts.values()) == 1, f"doubled: {[s for s, n in counts.items() if n > 1][:5]}"
    for p, entries in partitions.items():
        by_producer: dict[str, list[int]] = defaultdict(list)
        for f in entries:
            assert partition_of(f["producer"], P) == p
            by_producer[f["producer"]].append(int(f["seq"]))
        for name, seqs in by_producer.items():
            assert seqs == sorted(seqs), f"{name}: out of order in partition {p}"
    sent = {e["seq"]: e for e in events}
    for entries in partitions.values():
        for f in entries:
            assert f == sent[f["seq"]], "fields must be copied unchanged"


def make_router(url: str, **changes: object) -> Router:
    config = RouterConfig(source=SOURCE, base=BASE, partitions=P, block_ms=50, lease_ttl_ms=1000)
    for name, value in changes.items():
        object.__setattr__(config, name, value)
    return Router(config, connect(url, block_ms=50))


def pending(r: redis.Redis, group: str = "detector-router") -> int:
    return int(r.xpending(SOURCE, group)["pending"])


def test_routes_every_entry_once_in_order_and_acks(r: redis.Redis, redis_url: str) -> None:
    events = workload()
    append(r, SOURCE, events)
    stats = make_router(redis_url, batch_size=37).run(until_idle=True, idle_timeout_ms=200)
    assert (stats.read, stats.routed, stats.duplicates) == (len(events), len(events), 0)
    check_exactly_once_in_order(events, routed(r))
    assert pending(r) == 0
    assert not r.exists(DEAD)
    assert r.get("detector:router:lease:detector-router:in") is None, "released on exit"


def test_replaying_routed_entries_appends_nothing(r: redis.Redis, redis_url: str) -> None:
    """A crash after the appends and before the XACK: the replay is skipped by the marks."""
    events = workload(producers=5, per_producer=10)
    ids = append(r, SOURCE, events)
    router = make_router(redis_url)
    raw = [
        (i, {k.encode(): v.encode() for k, v in e.items()})
        for i, e in zip(ids, events, strict=True)
    ]
    router.route(raw[:30])
    router.route(raw)  # the first 30 again, then the rest
    assert (router.stats.routed, router.stats.duplicates) == (len(events), 30)
    check_exactly_once_in_order(events, routed(r))


def test_a_second_source_feeds_the_same_partitions(r: redis.Redis, redis_url: str) -> None:
    """Marks are per source stream: entries of another source with lower ids still pass."""
    late = workload(producers=4, per_producer=10, seed=2)
    append(r, SOURCE, late)
    early = [{**e, "seq": str(len(late) + i)} for i, e in enumerate(workload(4, 10, seed=3))]
    r.xadd("other", {"producer": "x"}, id="1-1")  # ids below every entry of SOURCE
    for i, e in enumerate(early):
        r.xadd("other", e, id=f"1-{i + 2}")  # type: ignore[arg-type]
    r.xdel("other", "1-1")
    make_router(redis_url).run(until_idle=True, idle_timeout_ms=200)
    make_router(redis_url, source="other").run(until_idle=True, idle_timeout_ms=200)
    check_exactly_once_in_order(late + early, routed(r))


def test_bad_entries_are_dead_lettered_once_and_acked(r: redis.Redis, redis_url: str) -> None:
    good = workload(producers=2, per_producer=3)
    bad: list[tuple[dict[str | bytes, str | bytes], str]] = [
        ({"ts": "1"}, MISSING_PRODUCER),
        ({"producer": "", "ts": "1"}, EMPTY_PRODUCER),
        ({"producer": b"\xff\xfe", "ts": "1"}, INVALID_PRODUCER),
        ({"producer": "p" * 257}, INVALID_PRODUCER),
        ({"producer": "p", **{f"f{i}": "1" for i in range(300)}}, TOO_MANY_FIELDS),
        ({"producer": "p", "blob": "x" * 70_000}, ENTRY_TOO_LARGE),
    ]
    append(r, SOURCE, good[:3])
    bad_ids = [r.xadd(SOURCE, fields) for fields, _ in bad]  # type: ignore[arg-type]
    append(r, SOURCE, good[3:])
    router = make_router(redis_url)
    stats = router.run(until_idle=True, idle_timeout_ms=200)
    assert (stats.routed, stats.dead_lettered) == (len(good), len(bad))
    check_exactly_once_in_order(good, routed(r))
    raw = redis.Redis.from_url(redis_url)
    letters = raw.xrange(DEAD)
    assert [(f[b"source_id"].decode(), f[b"reason"].decode()) for _, f in letters] == [
        (i, reason) for i, (_, reason) in zip(bad_ids, bad, strict=True)
    ]
    assert all(f[b"source_stream"] == SOURCE.encode() for _, f in letters)
    assert letters[2][1][b"field.producer"] == b"\xff\xfe", "original bytes kept"
    # A replay of the same entries (crash before the XACK) writes no second dead letter.
    entries = raw.xrange(SOURCE)
    router.route([(i.decode(), f) for i, f in entries])
    assert raw.xlen(DEAD) == len(bad)
    assert pending(r) == 0
    raw.close()


def test_entries_left_pending_by_another_consumer_are_routed_first(
    r: redis.Redis, redis_url: str
) -> None:
    events = workload(producers=6, per_producer=20)
    append(r, SOURCE, events)
    r.xgroup_create(SOURCE, "detector-router", id="0")
    # A router named "old" read 50 entries and died before routing them.
    r.xreadgroup("detector-router", "old", {SOURCE: ">"}, count=50)
    stats = make_router(redis_url, consumer="new").run(until_idle=True, idle_timeout_ms=200)
    assert stats.routed == len(events)
    check_exactly_once_in_order(events, routed(r))
    assert pending(r) == 0


def test_one_router_per_source_at_a_time(r: redis.Redis, redis_url: str) -> None:
    append(r, SOURCE, workload(producers=2, per_producer=5))
    holder = make_router(redis_url)
    holder.acquire(threading.Event())
    waiting = make_router(redis_url, consumer="second")
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    assert waiting.run(stop=stop).read == 0, "routed while another router held the lease"
    # A router whose lease was taken over (it stalled past the TTL) stops routing.
    r.set(holder.lease_key, "someone-else", px=5000)
    with pytest.raises(LeaseLostError):
        holder.renew_lease()


class TakeoverAfterOneCommand(redis.Redis):
    """A client that, once armed, lets another router take the lease over right after its
    next command's reply: between a GET and a DEL, the race a non-atomic release loses."""

    takeover: tuple[redis.Redis, str] | None = None

    def execute_command(self, *args: Any, **options: Any) -> Any:
        reply = super().execute_command(*args, **options)
        if self.takeover is not None:
            other, key = self.takeover
            self.takeover = None
            other.set(key, "other-router:0", px=5000)
        return reply


def test_release_never_deletes_a_lease_another_router_took_over(
    r: redis.Redis, redis_url: str
) -> None:
    """The lease is released by the package's script (the check and the DEL in one step), so
    a takeover cannot fall between the check and the DEL."""
    release_sha = r.script_load(ownership._RELEASE)
    r.script_flush()
    client = TakeoverAfterOneCommand.from_url(redis_url)
    router = Router(
        RouterConfig(source=SOURCE, base=BASE, partitions=P, block_ms=50, lease_ttl_ms=1000),
        client,
    )
    router.acquire(threading.Event())
    assert r.get(router.lease_key) is not None
    client.takeover = (r, router.lease_key)
    router.release()
    assert client.takeover is None, "the release sent no command"
    assert r.get(router.lease_key) == "other-router:0", "deleted another router's lease"
    assert r.script_exists(release_sha) == [True], "not released by ownership's script"
    # Taken over before the release: left in place too.
    r.delete(router.lease_key)
    router.acquire(threading.Event())
    r.set(router.lease_key, "third-router:0", px=5000)
    router.release()
    assert r.get(router.lease_key) == "third-router:0"
    client.close()


def test_dead_letters_do_not_trim_the_dead_letter_stream(r: redis.Redis, redis_url: str) -> None:
    """The router sets no cap on the dead letters (the workers' appends trim them): more
    than one stream node of earlier dead letters survives its append."""
    for i in range(450):
        r.xadd(DEAD, {"n": str(i)})
    r.xadd(SOURCE, {"ts": "1"})  # no producer
    stats = make_router(redis_url).run(until_idle=True, idle_timeout_ms=200)
    assert stats.dead_lettered == 1
    assert r.xlen(DEAD) == 451


def test_routing_goes_on_after_its_connections_are_killed(
    r: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Connection errors are retried: the pending entries are replayed, nothing lost or
    doubled; each reconnection is logged."""
    caplog.set_level(logging.INFO, logger="detector.router")
    events = workload(producers=10, per_producer=60, seed=5)
    append(r, SOURCE, events)
    router = make_router(redis_url, batch_size=10)
    stats: list[RouterStats] = []
    thread = threading.Thread(
        target=lambda: stats.append(router.run(until_idle=True, idle_timeout_ms=500))
    )
    thread.start()
    kills = 0
    deadline = time.monotonic() + 30
    while thread.is_alive() and kills < 3 and time.monotonic() < deadline:
        if _total(r) >= (kills + 1) * len(events) // 4:
            kills += r.client_kill_filter(_type="normal", skipme=True) > 0
        time.sleep(0.001)
    thread.join(timeout=30)
    assert kills == 3, "the router finished before its connections could be killed"
    assert stats, "the router did not finish"
    check_exactly_once_in_order(events, routed(r))
    assert pending(r) == 0
    # redis-py retries some killed connections itself; each outage the router saw is logged
    # as over once reads work again.
    seen = [m for m in caplog.messages if m.startswith(("redis unavailable", "reconnected after"))]
    if seen:
        assert seen[-1].startswith("reconnected after"), seen


def test_exactly_once_across_kill_9_of_the_router(r: redis.Redis, redis_url: str) -> None:
    events = workload(producers=30, per_producer=120, seed=4)
    append(r, SOURCE, events)
    argv = [
        sys.executable, "-m", "detector.cli", "route", "--redis-url", redis_url,
        "--source", SOURCE, "--stream", BASE, "--partitions", str(P), "--batch-size", "20",
        "--block-ms", "100", "--lease-ttl-ms", "600", "--until-idle", "--idle-timeout-ms", "300",
    ]  # fmt: skip
    kills = 0
    for fraction in (0.2, 0.5):
        proc = subprocess.Popen(argv, env=clean_env(), stderr=subprocess.DEVNULL)
        try:
            while _total(r) < fraction * len(events) and proc.poll() is None:
                time.sleep(0.005)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if _total(r) < len(events):
            kills += 1
    assert kills == 2, "the router finished before it could be killed mid-run"
    # The last run waits out the dead router's lease, then replays what it left pending.
    done = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    check_exactly_once_in_order(events, routed(r))
    assert pending(r) == 0


def test_the_generated_acl_user_is_enough(r: redis.Redis, redis_url: str) -> None:
    """The router user of `detector acl --partitioned`, with the defaults: nothing refused."""
    password = secrets.token_hex(16)
    lines = acl_lines(AclConfig(partitioned=True), {"router": password})
    [line] = [x for x in lines if x.startswith("ACL SETUSER detector-router ")]
    r.execute_command(*line.split())  # Redis 7 joins the space-split "( ... )" selectors back
    try:
        events = workload(producers=6, per_producer=10)
        append(r, "events", events)
        r.xadd("events", {"ts": "1"})  # no producer: dead-lettered
        url = redis_url.replace("redis://", "redis://detector-router@")
        client = connect(url, block_ms=50, password=password)
        config = RouterConfig(partitions=P, block_ms=50, lease_ttl_ms=1000)
        stats = Router(config, client).run(until_idle=True, idle_timeout_ms=200)
        client.close()
        assert r.acl_log() == []
        assert (stats.routed, stats.dead_lettered) == (len(events), 1)
        check_exactly_once_in_order(events, routed(r))
    finally:
        r.acl_deluser("detector-router")
        r.acl_log_reset()


def _total(r: redis.Redis) -> int:
    return sum(int(r.xlen(partition_stream(BASE, p))) for p in range(P))


def test_route_command_runs_unchanged_on_a_cluster(
    redis_cluster: LocalCluster,  # noqa: F811
    cluster_url: str,  # noqa: F811
) -> None:
    client = redis_cluster.client(decode_responses=True)
    try:
        events = workload(producers=12, per_producer=20, seed=6)
        for e in events:
            client.xadd(SOURCE, e)  # type: ignore[arg-type]
        client.xadd(SOURCE, {"ts": "1"})  # no producer: dead-lettered
        result = CliRunner().invoke(
            cli,
            ["route", "--redis-url", cluster_url, "--cluster", "--source", SOURCE,
             "--stream", BASE, "--partitions", str(P), "--until-idle",
             "--idle-timeout-ms", "300", "--block-ms", "100"],
            env={k: None for k in clean_env() if k.startswith("DETECTOR_")},
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        check_exactly_once_in_order(events, routed(client))
        assert client.xlen(DEAD) == 1
        nodes = {redis_cluster.node_of(partition_stream(BASE, p)) for p in range(P)}
        assert nodes == {0, 1, 2}, "the partitions spread over every master"
    finally:
        client.close()
