"""The Redis layer of a consumer (detector/gateway/streams.py) on a real redis-server: where a new
group starts, reads of new and own pending entries, the once-only appends, the commit
transaction, claims of a dead consumer's entries, and the retry policy."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import redis

from detector.core.alerts import Alert, alert_id
from detector.gateway.streams import (
    COMMAND_ARGS,
    DeadLetter,
    Outage,
    Output,
    Streams,
    connect,
    retry,
)

GROUP = "g"


def _streams(url: str, *, consumer: str = "c1", maxlen: int = 1000, stream: str = "in") -> Streams:
    return Streams(
        connect(url, block_ms=1000), streams=(stream,), group=GROUP, consumer=consumer,
        alerts_stream="alerts", dead_letter_stream="dead", maxlen=maxlen,
    )  # fmt: skip


def _fill(r: redis.Redis, n: int, stream: str = "in") -> list[str]:
    return [r.xadd(stream, {"producer": "p", "v": str(i)}) for i in range(n)]


def _grouped(r: redis.Redis, url: str, n: int, consumer: str = "c1") -> tuple[Streams, list[str]]:
    """``n`` entries in the input stream and a consumer of a group that starts before them."""
    ids = _fill(r, n)
    s = _streams(url, consumer=consumer)
    s.ensure_groups()
    return s, ids


def _ids(entries: list[tuple[str, str, dict[bytes, bytes]]]) -> list[str]:
    return [entry_id for _, entry_id, _ in entries]


def test_a_new_group_starts_at_the_history_or_after_the_learned_entry(
    r: redis.Redis, redis_url: str
) -> None:
    whole, ids = _grouped(r, redis_url, 5)
    assert _ids(whole.read({"in": ">"}, 10, None)) == ids  # all of the history
    r.xgroup_destroy("in", GROUP)
    after = _streams(redis_url)
    after.ensure_groups({"in": ids[2]})
    assert _ids(after.read({"in": ">"}, 10, None)) == ids[3:]
    # An existing group keeps its position, whatever the start asked for.
    after.ensure_groups({"in": "0"})
    assert after.read({"in": ">"}, 10, None) == []


def test_own_pending_entries_are_read_again_by_id_until_acked(
    r: redis.Redis, redis_url: str
) -> None:
    s, ids = _grouped(r, redis_url, 4)
    assert _ids(s.read({"in": ">"}, 10, None)) == ids
    assert _ids(s.read({"in": "0"}, 10, None)) == ids  # delivered, not acked: pending
    s.commit("ck", {b"meta": b"m"}, (), {"in": ids[:2]})
    assert _ids(s.read({"in": "0"}, 10, None)) == ids[2:]
    assert r.hget("ck", "meta") == "m"
    assert s.delivery_counts("in", ids[2], ids[3], 10) == {ids[2]: 3, ids[3]: 3}  # 3 reads
    lag, pending = s.group_info()["in"]
    assert (lag, pending) == (0, 2)


def test_the_commit_writes_the_state_drops_evicted_producers_and_acks(
    r: redis.Redis, redis_url: str
) -> None:
    s, ids = _grouped(r, redis_url, 2)
    s.read({"in": ">"}, 10, None)
    r.hset("ck", mapping={"p:gone": "x", "p:kept": "y"})
    s.commit("ck", {b"p:new": b"z"}, ["p:gone"], {"in": ids})
    assert r.hgetall("ck") == {"p:kept": "y", "p:new": "z"}
    assert r.xpending("in", GROUP)["pending"] == 0


def test_a_large_commit_is_one_transaction_of_short_commands(
    r: redis.Redis, redis_url: str
) -> None:
    n = 3 * COMMAND_ARGS + 1
    s, ids = _grouped(r, redis_url, n)
    s.read({"in": ">"}, n, None)
    r.hset("ck", mapping={f"p:gone{i}": "x" for i in range(n)})
    r.config_resetstat()
    fields = {f"p:{i}".encode(): b"v%d" % i for i in range(n)}
    s.commit("ck", fields, [f"p:gone{i}" for i in range(n)], {"in": ids})
    assert r.hgetall("ck") == {f"p:{i}": f"v{i}" for i in range(n)}
    assert r.xpending("in", GROUP)["pending"] == 0
    stats = r.info("commandstats")
    assert stats["cmdstat_multi"]["calls"] == stats["cmdstat_exec"]["calls"] == 1
    for command in ("hset", "hdel", "xack"):  # 4 commands of at most COMMAND_ARGS each
        assert stats[f"cmdstat_{command}"]["calls"] == 4


def test_a_sent_commit_is_applied_while_the_reads_go_on_and_confirmed_later(
    r: redis.Redis, redis_url: str
) -> None:
    n = 2 * COMMAND_ARGS + 1
    s, ids = _grouped(r, redis_url, 2 * n)
    s.read({"in": ">"}, n, None)
    fields = {f"p:{i}": b"v%d" % i for i in range(n)}
    s.send_commit("ck", fields, [], {"in": ids[:n]})
    # The reads go on on their own connection while the commit is applied.
    assert [e[1] for e in s.read({"in": ">"}, n, None)] == ids[n:]
    deadline = time.monotonic() + 5
    while not s.commit_written(block=False):  # its replies read as they come
        assert time.monotonic() < deadline
    assert s.commit_written(block=False)  # nothing in flight
    assert r.hgetall("ck") == {f"p:{i}": f"v{i}" for i in range(n)}
    assert r.xpending("in", GROUP)["pending"] == n  # the first read's acked, the second's not


def test_fields_packed_ahead_are_sent_with_the_rest_of_their_commit(
    r: redis.Redis, redis_url: str
) -> None:
    n = 3 * COMMAND_ARGS + 5
    s, ids = _grouped(r, redis_url, 3)
    s.read({"in": ">"}, 3, None)
    fields = {f"p:{i}": b"v%d" % i for i in range(n)}
    items = list(fields.items())
    s.pack_commit("ck", items[:7])  # as the slices encode them: not whole commands
    s.pack_commit("ck", items[7 : 2 * COMMAND_ARGS + 1])
    r.config_resetstat()
    s.send_commit("ck", fields, ["p:gone"], {"in": ids})
    assert s.commit_written(block=True)
    assert r.hgetall("ck") == {f"p:{i}": f"v{i}" for i in range(n)}
    assert r.xpending("in", GROUP)["pending"] == 0
    stats = r.info("commandstats")
    assert stats["cmdstat_exec"]["calls"] == 1 and stats["cmdstat_hdel"]["calls"] == 1
    assert stats["cmdstat_hset"]["calls"] == 4  # 2 packed ahead, then the 37 fields left
    s.send_commit("ck", {"p:x": b"y"}, [], {})  # the next commit packs afresh
    assert s.commit_written(block=True) and r.hget("ck", "p:x") == "y"


def test_a_sent_commit_whose_connection_failed_is_written_again(
    r: redis.Redis, redis_url: str
) -> None:
    s, ids = _grouped(r, redis_url, 3)
    s.read({"in": ">"}, 3, None)
    # Redis holds writes back, and the connection drops before it applied the transaction.
    r.client_pause(5000, all=False)
    s.send_commit("ck", {"p:a": b"1"}, [], {"in": ids})
    time.sleep(0.1)
    r.client_kill_filter(_type="normal", skipme=True)
    r.client_unpause()
    with pytest.raises(redis.ConnectionError):
        s.commit_written(block=True)
    assert r.hgetall("ck") == {} and r.xpending("in", GROUP)["pending"] == 3
    assert s.commit_written(block=True)  # the retry writes it again (idempotent)
    assert r.hgetall("ck") == {"p:a": "1"} and r.xpending("in", GROUP)["pending"] == 0
    s.send_commit("ck", {"p:b": b"2"}, [], {})  # a fresh connection for the next one
    assert s.commit_written(block=True) and r.hget("ck", "p:b") == "2"


def _alert(n: int) -> Alert:
    return Alert(alert_id("in", f"{n}-0", "m"), "p", "in", f"{n}-0", n, 0.9, 0.5, "m", ())


def test_alerts_and_dead_letters_are_appended_once_ever(r: redis.Redis, redis_url: str) -> None:
    s = _streams(redis_url)
    letter = DeadLetter("in", "7-0", {b"v": b"\xff"}, "invalid_utf8", "field v")
    out = Output(alerts=[_alert(1), _alert(2)], dead_letters=[letter])
    assert s.emit(out) == 3
    assert s.emit(out) == 0  # a replay after a crash writes nothing twice
    assert s.emit(Output(alerts=[_alert(2), _alert(3)])) == 1
    assert [f["alert_id"] for _, f in r.xrange("alerts")] == [_alert(n).alert_id for n in (1, 2, 3)]
    ((_, dead),) = redis.Redis.from_url(redis_url).xrange("dead")
    assert dead[b"reason"] == b"invalid_utf8" and dead[b"field.v"] == b"\xff"


def test_maxlen_caps_the_output_streams_and_zero_means_no_cap(
    r: redis.Redis, redis_url: str
) -> None:
    capped, uncapped = _streams(redis_url, maxlen=10), _streams(redis_url, maxlen=0)
    for n in range(0, 600, 100):
        capped.emit(Output(alerts=[_alert(n + k) for k in range(100)]))
    assert r.xlen("alerts") < 600  # approximate trimming (whole nodes of ~100 entries)
    r.delete("alerts")
    for n in range(0, 600, 100):
        uncapped.emit(Output(alerts=[_alert(1000 + n + k) for k in range(100)]))
    assert r.xlen("alerts") == 600


def test_a_dead_consumers_idle_entries_are_claimed(r: redis.Redis, redis_url: str) -> None:
    dead, ids = _grouped(r, redis_url, 3, consumer="dead")
    alive = _streams(redis_url, consumer="alive")
    dead.read({"in": ">"}, 10, None)
    cursor, entries, deleted = alive.claim("in", 0, "0-0", 10)
    assert _ids(entries) == ids and deleted == 0 and cursor == "0-0"
    r.xdel("in", ids[1])
    _, entries, deleted = dead.claim("in", 0, "0-0", 10)  # taken back: ids[1] is gone
    assert _ids(entries) == [ids[0], ids[2]] and deleted == 1


def test_retry_rides_out_connection_errors_and_gives_up_once_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop, errors, calls = threading.Event(), [], [0]

    def flaky() -> None:
        calls[0] += 1
        if calls[0] < 3:
            raise redis.ConnectionError("down")

    assert retry(flaky, stop, errors.append) is True
    assert calls == [3] and len(errors) == 2
    stop.set()
    assert retry(lambda: flaky_forever(), stop, errors.append) is False

    outage = Outage(logging.getLogger("t"))
    caplog.set_level(logging.INFO, logger="t")
    assert outage.ok() is None  # no outage, nothing to log
    outage.failed()
    outage.failed()  # the first failure dates the outage
    assert outage.ok() is not None and outage.ok() is None
    assert [m for m in caplog.messages if m.startswith("reconnected after")] == [caplog.messages[0]]


def flaky_forever() -> None:
    raise redis.ConnectionError("down")
