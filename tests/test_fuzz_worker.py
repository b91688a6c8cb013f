"""Worker fuzz: hostile entries, mixed with valid ones, through the real worker and Redis.

Hostile entries are generated (hypothesis, and a seeded flood harness): invalid UTF-8 in
names, values and producer ids, unparsable, non-object and deeply nested JSON, strings and
entries of megabytes, thousands of fields or JSON leaves, NaN / inf / 1e308 / 1e999 (rejected
inside JSON, categories as flat values), values of the wrong type, missing or empty producers,
timestamps far in the past or future, entries deleted while pending (read back empty), random
bytes. They are appended between the events of warmed-up producers, and a worker runs until
the stream is idle.

Oracles:
- the worker returns (never crashes or stalls: a wall-clock bound per run);
- every entry is accounted for exactly once: events processed + dead-lettered = appended, no
  dead letter twice, nothing pending, the group has read every entry and has no lag;
- an entry the generator built to break the contract is dead-lettered, and one it built to
  satisfy it is not; every dead letter has a reason, which is the reason the decoder gives for
  that entry on its own, and carries the original fields byte for byte (unless truncated);
- no event makes scoring fail (a dead letter with reason ``error``).

CI runs a short form (a few seconds); ``pytest -m slow tests/test_fuzz_worker.py`` runs more
examples and a 100k-entry flood.
"""

from __future__ import annotations

import itertools
import random
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.core.errors import InvalidEventError
from detector.core.events import Decoder
from detector.core.settings import EventFormat, Settings
from detector.gateway.embedded import EmbeddedRedis
from detector.gateway.streams import DEAD_LETTER_COPY_BYTES, DEAD_LETTER_COPY_FIELDS, connect
from detector.runtime.worker import RunStats, Worker
from tests.conftest import TEST_KEY
from tests.helpers import order_events

Expect = Literal["reject", "valid", "any"]
Fields = dict[bytes, bytes]
FMT = EventFormat()
_runs = itertools.count()
MAX_RUN_S = 30.0  # "never stalls": one worker run over one generated stream
# Entries with thousands of fields once crashed the append script (Lua `unpack` limit): the
# dead-letter copy now caps its field count (test_entry_with_thousands_of_fields_...).
MAX_GENERATED_FIELDS = 6000


@dataclass(frozen=True)
class Hostile:
    fields: Fields
    expect: Expect
    kind: str


# -- generators ---------------------------------------------------------------------------

_name = st.text("abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=12).filter(
    lambda s: s not in ("producer", "ts", "type", "data")
)
_producer = st.sampled_from(["svc-0", "svc-1", "svc-2", "new-prod"])
_invalid_utf8 = st.tuples(st.binary(max_size=8), st.sampled_from(
    [b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]
), st.binary(max_size=8)).map(lambda t: t[0] + t[1] + t[2]).filter(
    lambda b: _not_utf8(b)
)  # fmt: skip


def _not_utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return True
    return False


def _entry(producer: str | None, **more: bytes) -> Fields:
    out: Fields = {} if producer is None else {b"producer": producer.encode()}
    out.update({k.encode(): v for k, v in more.items()})
    return out


@st.composite
def hostile(draw: st.DrawFn, max_mb: float = 2.0) -> Hostile:  # noqa: C901 - one branch per kind
    kind = draw(st.sampled_from(KINDS))
    p = draw(_producer)
    if kind == "utf8_value":
        return Hostile({b"producer": p.encode(), draw(_name).encode(): draw(_invalid_utf8)},
                       "reject", kind)  # fmt: skip
    if kind == "utf8_name":
        return Hostile({b"producer": p.encode(), draw(_invalid_utf8): b"x"}, "reject", kind)
    if kind == "utf8_producer":
        return Hostile({b"producer": draw(_invalid_utf8), b"a": b"1"}, "reject", kind)
    if kind == "json_garbage":
        # Text that does not end in "}" is never a JSON object: invalid or not an object.
        raw = draw(st.binary(max_size=64)).rstrip()
        raw = raw[:-1] if raw.endswith(b"}") else raw
        return Hostile(_entry(p, data=raw), "reject", kind)
    if kind == "json_not_object":
        value = draw(st.sampled_from([b"[1, 2]", b'"text"', b"12", b"null", b"true", b"[]"]))
        return Hostile(_entry(p, data=value), "reject", kind)
    if kind == "json_deep":
        depth = draw(st.integers(FMT.max_json_depth + 1, 100_000))
        opener, closer = draw(st.sampled_from([(b'{"a":', b"}"), (b"[", b"]")]))
        body = opener * depth + b"1" + closer * depth
        return Hostile(_entry(p, data=b'{"x":' + body + b"}"), "reject", kind)
    if kind == "json_non_finite":
        value = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"]))
        return Hostile(_entry(p, data=b'{"amount": ' + value + b"}"), "reject", kind)
    if kind == "flat_non_finite":
        # A flat value that is not a finite number is a category: the event is kept.
        value = draw(st.sampled_from([b"nan", b"NaN", b"inf", b"-inf", b"+Infinity", b"1e999",
                                      b"-1E400", b"INF", b"0387565616e7823087"]))  # fmt: skip
        return Hostile(_entry(p, amount=value), "valid", kind)
    if kind == "huge_value":
        size = draw(st.integers(FMT.max_entry_bytes + 1, int(max_mb * 1024 * 1024)))
        return Hostile(_entry(p, blob=b"x" * size), "reject", kind)
    if kind == "long_string":
        size = draw(st.integers(FMT.max_string_len + 1, FMT.max_entry_bytes - 100))
        return Hostile(_entry(p, note=b"y" * size), "reject", kind)
    if kind == "many_fields":
        n = draw(st.integers(FMT.max_fields + 1, MAX_GENERATED_FIELDS))
        fields = {f"f{i}".encode(): b"1" for i in range(n)}
        return Hostile({b"producer": p.encode(), **fields}, "reject", kind)
    if kind == "many_leaves":
        n = draw(st.integers(FMT.max_fields + 1, 3000))
        data = orjson.dumps({f"k{i}": i for i in range(n)})
        return Hostile(_entry(p, data=data), "reject", kind)
    if kind == "bad_time":
        ts = draw(st.sampled_from([b"-1", b"1e20", b"yesterday", b"", b"NaN", b"2026-13-45",
                                   b"0001-01-01T00:00:00Z", b"12:00", b"\xff"]))  # fmt: skip
        return Hostile(_entry(p, ts=ts, a=b"1"), "reject", kind)
    if kind == "empty_producer":
        return Hostile({b"producer": b"", b"a": b"1"}, "reject", kind)
    if kind == "long_producer":
        n = draw(st.integers(FMT.max_name_len + 1, 5000))
        return Hostile({b"producer": b"p" * n, b"a": b"1"}, "reject", kind)
    if kind == "extreme_valid":
        # Valid but extreme: huge finite numbers, times at the ends of the valid range, types
        # and payloads a producer never sent, numbers in JSON strings, no producer at all.
        producer = draw(st.one_of(st.none(), _producer))
        ts = draw(st.sampled_from([b"0", b"1", b"253402300799999", b"9999-12-31T23:59:59Z",
                                   b"1970-01-01T00:00:00", b"1767225600000"]))  # fmt: skip
        amount = draw(st.sampled_from([b"1e308", b"-1e308", b"5e-324", b"0", b"-0", b"1" * 300]))
        data = orjson.dumps({"amount": draw(st.sampled_from([1e308, -1e308, 0, "12e4", None,
                                                             True, [1, [2, [3]]]]))})  # fmt: skip
        etype = draw(st.sampled_from([b"order.created", b"\xe2\x80\xae", b"x" * 200, b"[1]"]))
        fields = {b"ts": ts, b"type": etype, b"amount": amount, b"data": data}
        if producer is not None:
            fields[b"producer"] = producer.encode()
        return Hostile(fields, "valid", kind)
    # "random": anything at all (the decoder decides).
    fields = draw(st.dictionaries(st.binary(max_size=12), st.binary(max_size=40),
                                  min_size=1, max_size=8))  # fmt: skip
    return Hostile(fields, "any", kind)


KINDS = [
    "utf8_value", "utf8_name", "utf8_producer", "json_garbage", "json_not_object", "json_deep",
    "json_non_finite", "flat_non_finite", "huge_value", "long_string", "many_fields",
    "many_leaves", "bad_time", "empty_producer", "long_producer", "extreme_valid", "random",
]  # fmt: skip


def _seeded(rng: random.Random, max_mb: float) -> Hostile:
    """The same kinds without hypothesis (fast, for the flood harness)."""
    kind = rng.choice(KINDS)
    p = rng.choice(["svc-0", "svc-1", "svc-2", "new-prod"]).encode()
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\x80abc"])
    simple: dict[str, tuple[Fields, Expect]] = {
        "utf8_value": ({b"producer": p, b"name": bad}, "reject"),
        "utf8_name": ({b"producer": p, bad: b"x"}, "reject"),
        "utf8_producer": ({b"producer": bad, b"a": b"1"}, "reject"),
        "json_garbage": ({b"producer": p, b"data": b'{"a": [1, 2'}, "reject"),
        "json_not_object": ({b"producer": p, b"data": b"[1]"}, "reject"),
        "json_deep": ({b"producer": p, b"data": b'{"a":' * 50 + b"1" + b"}" * 50}, "reject"),
        "json_non_finite": ({b"producer": p, b"data": b'{"a": NaN}'}, "reject"),
        "flat_non_finite": ({b"producer": p, b"a": rng.choice([b"inf", b"1e999"])}, "valid"),
        "huge_value": (
            {b"producer": p, b"blob": b"x" * rng.randint(70_000, int(max_mb * 1024 * 1024))},
            "reject",
        ),
        "long_string": ({b"producer": p, b"note": b"y" * 20_000}, "reject"),
        "many_fields": (
            {b"producer": p, **{f"f{i}".encode(): b"1" for i in range(rng.randint(257, 3900))}},
            "reject",
        ),
        "many_leaves": (
            {b"producer": p, b"data": orjson.dumps({f"k{i}": i for i in range(300)})},
            "reject",
        ),
        "bad_time": ({b"producer": p, b"ts": rng.choice([b"-5", b"1e20", b"soon"])}, "reject"),
        "empty_producer": ({b"producer": b"", b"a": b"1"}, "reject"),
        "long_producer": ({b"producer": b"p" * 300}, "reject"),
        "extreme_valid": (
            {b"producer": p, b"ts": rng.choice([b"0", b"253402300799999"]), b"amount": b"1e308"},
            "valid",
        ),
        "random": (
            {
                rng.randbytes(rng.randint(0, 8)): rng.randbytes(rng.randint(0, 30))
                for _ in range(rng.randint(1, 5))
            },
            "any",
        ),
    }
    fields, expect = simple[kind]
    return Hostile(fields, expect, kind)


# -- the harness --------------------------------------------------------------------------


@dataclass
class Outcome:
    stats: RunStats
    appended: int
    rejected: dict[str, str] = field(default_factory=dict)  # source id -> reason
    kinds: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def _reason(decoder: Decoder, stream: str, entry_id: str, fields: Fields) -> str | None:
    try:
        decoder.decode(stream, entry_id, fields)
    except InvalidEventError as exc:
        return exc.reason
    return None


def run_mixed(
    url: str,
    valid: list[dict[str, str]],
    hostile_at: list[tuple[int, Hostile]],
    *,
    delete_pending: int = 0,
) -> Outcome:
    """Append valid events with hostile entries inserted at the given positions, run a
    worker until idle, and check every oracle; returns the outcome."""
    n = next(_runs)
    stream, consumer = f"fuzz:{n}", f"fz-{n}"
    settings_ = Settings(
        redis_url=url, streams=(stream,), consumer=consumer, until_idle=True,
        idle_timeout_ms=150, block_ms=50, checkpoint_secret=TEST_KEY,
        alerts_stream=f"fuzz:{n}:alerts", dead_letter_stream=f"fuzz:{n}:dead",
    )  # fmt: skip
    raw = redis.Redis.from_url(url)
    entries: list[tuple[Fields, Expect, str]] = [
        ({k.encode(): v.encode() for k, v in e.items()}, "valid", "valid") for e in valid
    ]
    for pos, h in sorted(hostile_at, key=lambda t: t[0], reverse=True):
        entries.insert(min(pos, len(entries)), (h.fields, h.expect, h.kind))
    ids: list[str] = []
    pipe = raw.pipeline(transaction=False)
    for i, (fields, _, _) in enumerate(entries):
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
        if i % 200 == 199:
            ids += [x.decode() for x in pipe.execute()]
    ids += [x.decode() for x in pipe.execute()]
    expected = {eid: (f, e, k) for eid, (f, e, k) in zip(ids, entries, strict=True)}

    if delete_pending:
        # A previous incarnation read entries and died; some were deleted before it acked:
        # they come back from the pending list without fields (empty entries).
        raw.xgroup_create(stream, settings_.group, id="0")
        raw.xreadgroup(settings_.group, consumer, {stream: ">"}, count=delete_pending * 3)
        for eid in ids[: delete_pending * 3 : 3]:
            raw.xdel(stream, eid)
            expected[eid] = ({}, "reject", "deleted_pending")

    client = connect(url, block_ms=settings_.block_ms)
    started = time.monotonic()
    stats = Worker(settings_, client).run()
    seconds = time.monotonic() - started
    client.close()
    assert seconds < MAX_RUN_S, f"worker took {seconds:.1f}s: stalled?"

    letters = raw.xrange(settings_.dead_letter_stream)
    out = Outcome(stats, len(ids), seconds=seconds)
    out.kinds = Counter(k for _, _, k in expected.values())
    decoder = Decoder(settings_.event_format)
    for _, lf in letters:
        sid = lf[b"source_id"].decode()
        assert lf[b"source_stream"].decode() == stream
        assert sid not in out.rejected, f"dead-lettered twice: {sid}"
        reason = lf[b"reason"].decode()
        assert reason, f"dead letter without a reason: {sid}"
        out.rejected[sid] = reason
        fields, _, kind = expected[sid]
        assert reason != "error", f"scoring failed on a {kind} entry: {lf[b'detail']!r}"
        # The original fields, byte for byte, unless the copy was capped.
        if b"truncated" not in lf:
            assert {k[6:]: v for k, v in lf.items() if k.startswith(b"field.")} == fields
        else:
            copied_bytes = sum(len(k) + len(v) for k, v in fields.items())
            assert copied_bytes > DEAD_LETTER_COPY_BYTES or len(fields) > DEAD_LETTER_COPY_FIELDS

    for eid, (fields, expect, kind) in expected.items():
        reason = _reason(decoder, stream, eid, fields)
        if expect == "reject":
            assert reason is not None, f"{kind} entry passed the decoder: {fields!r:.300}"
        elif expect == "valid":
            assert reason is None, f"{kind} entry rejected ({reason}): {fields!r:.300}"
        assert out.rejected.get(eid) == reason, (kind, eid, reason, out.rejected.get(eid))

    # Every entry exactly once: processed + dead-lettered = appended; nothing left behind.
    assert stats.events == len(ids)
    assert stats.invalid == len(out.rejected)
    assert stats.scored + stats.warmup + stats.invalid == len(ids)
    assert raw.xpending(stream, settings_.group)["pending"] == 0
    (group,) = raw.xinfo_groups(stream)
    assert group["entries-read"] == len(ids) and group["lag"] in (0, None)
    raw.delete(stream, settings_.alerts_stream, settings_.dead_letter_stream)  # memory
    raw.close()
    return out


def _warm_events(seed: int, per_producer: int = 250) -> list[dict[str, str]]:
    return order_events(producers=3, per_producer=per_producer, seed=seed)


# -- tests --------------------------------------------------------------------------------


def _fuzz(max_examples: int, max_mb: float) -> tuple[Callable[[str], None], Counter[str]]:
    """A hypothesis test over generated streams, and the counts it accumulates."""
    totals: Counter[str] = Counter()

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
            HealthCheck.data_too_large, HealthCheck.large_base_example,
        ],
    )  # fmt: skip
    @given(
        seed=st.integers(0, 2**16),
        placed=st.lists(st.tuples(st.integers(0, 800), hostile(max_mb)), min_size=1, max_size=25),
    )
    def check(redis_url: str, seed: int, placed: list[tuple[int, Hostile]]) -> None:
        out = run_mixed(redis_url, _warm_events(seed), placed)
        totals["examples"] += 1
        totals["entries"] += out.appended
        s = out.stats
        totals["lost"] += out.appended - (s.scored + s.warmup + s.invalid)
        totals["hostile"] += len(placed)
        totals["dead-lettered"] += len(out.rejected)
        totals["alerts"] += out.stats.alerts
        totals["MB"] += sum(len(k) + len(v) for _, h in placed for k, v in h.fields.items())

    return check, totals  # type: ignore[return-value]


def _report(totals: Counter[str]) -> None:
    print(f"\nfuzz: {dict(totals, MB=round(totals['MB'] / 2**20, 1))}")


_fuzz_short, _short_totals = _fuzz(max_examples=25, max_mb=2.0)
_fuzz_long, _long_totals = _fuzz(max_examples=300, max_mb=8.0)


def test_fuzz_hostile_entries_among_valid_ones(redis_url: str) -> None:
    _fuzz_short(redis_url)  # type: ignore[call-arg]
    _report(_short_totals)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzz_hostile_entries_long(redis_url: str) -> None:
    _fuzz_long(redis_url)  # type: ignore[call-arg]
    _report(_long_totals)


def _flood(url: str, valid_per_producer: int, hostile_n: int, seed: int, max_mb: float) -> None:
    rng = random.Random(seed)
    valid = _warm_events(seed, per_producer=valid_per_producer)
    placed = [(rng.randrange(len(valid) + 1), _seeded(rng, max_mb)) for _ in range(hostile_n)]
    out = run_mixed(url, valid, placed, delete_pending=20)
    reasons = Counter(out.rejected.values())
    s = out.stats
    lost = out.appended - (s.scored + s.warmup + s.invalid)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nflood seed {seed}: {out.appended} entries ({hostile_n} hostile, "
        f"{len(valid)} valid), {len(out.rejected)} dead-lettered, lost {lost}, "
        f"{s.alerts} alerts, {out.seconds:.1f}s, test process max RSS {rss_mb:.0f} MB; "
        f"reasons {dict(reasons)}"
    )
    assert reasons["empty_entry"] == 20


def test_seeded_flood_with_deleted_pending_entries(redis_url: str) -> None:
    _flood(redis_url, valid_per_producer=400, hostile_n=600, seed=1, max_mb=1.0)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_seeded_flood_long() -> None:
    # Many entries rather than big ones (the hypothesis long form sends up to 8 MB each).
    with EmbeddedRedis() as server:
        for seed in (2, 3):
            _flood(server.url, valid_per_producer=20_000, hostile_n=30_000, seed=seed, max_mb=0.2)
            redis.Redis.from_url(server.url).flushall()


def test_entry_with_thousands_of_fields_is_dead_lettered_not_lost(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    stream = "wide"
    raw.xadd(stream, {"producer": "p", "a": "1"})
    wide_id = raw.xadd(stream, {f"f{i}": "1" for i in range(5000)}).decode()  # type: ignore[arg-type]
    raw.xadd(stream, {"producer": "p", "a": "2"})
    settings_ = Settings(
        redis_url=redis_url, streams=(stream,), consumer="c1", until_idle=True,
        idle_timeout_ms=100, block_ms=50, checkpoint_secret=TEST_KEY,
    )  # fmt: skip
    crashes = 0
    for _ in range(3):  # restarted after a crash, as a supervisor would
        client = connect(redis_url, block_ms=settings_.block_ms)
        try:
            Worker(settings_, client).run()
        except redis.ResponseError:
            crashes += 1
        finally:
            client.close()
    letters = {f[b"source_id"].decode() for _, f in raw.xrange(settings_.dead_letter_stream)}
    pending = raw.xpending(stream, settings_.group)["pending"]
    raw.close()
    assert pending == 0
    assert wide_id in letters, f"acked without a dead letter after {crashes} crash(es): lost"
    assert crashes == 0
