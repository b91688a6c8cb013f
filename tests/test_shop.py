"""The synthetic shop stream: determinism, shape, and that every incident is really there."""

from __future__ import annotations

import itertools
import statistics
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from detector.shop import simulator as shop
from detector.shop.simulator import Incident

MINUTE = 60_000
START = 1_767_225_600_000

Entry = tuple[int, dict[str, str]]


@pytest.fixture(scope="module")
def stream() -> shop.ShopStream:
    """Every kind twice, default rates and duration."""
    return shop.generate(seed=11, kinds=shop.INCIDENT_KINDS, incidents_per_kind=2)


@pytest.fixture(scope="module")
def by_producer(stream: shop.ShopStream) -> dict[str, list[Entry]]:
    out: dict[str, list[Entry]] = defaultdict(list)
    for e in stream.events:
        out[e["producer"]].append((int(e["ts"]), e))
    return out


def _between(entries: list[Entry], a: int, b: int) -> list[dict[str, str]]:
    """Entries with ts in [a, b]."""
    times = [ts for ts, _ in entries]
    return [e for _, e in entries[bisect_left(times, a) : bisect_right(times, b)]]


def _before(entries: list[Entry], t: int) -> list[dict[str, str]]:
    return _between(entries, 0, t - 1)


def _clean(
    entries: list[Entry], a: int, b: int, inc: Incident, incidents: list[Incident]
) -> list[dict[str, str]]:
    """The producer's entries in [a, b] outside its other incidents."""
    others = [i for i in incidents if i.producer == inc.producer and i != inc]
    return [
        e
        for e in _between(entries, a, b)
        if not any(i.start_ms <= int(e["ts"]) <= i.end_ms for i in others)
    ]


def _clean_before(
    entries: list[Entry], inc: Incident, incidents: list[Incident]
) -> list[dict[str, str]]:
    """The producer's history before ``inc``, without its other incidents."""
    return _clean(entries, 0, inc.start_ms - 1, inc, incidents)


def _data(e: dict[str, str]) -> dict[str, Any]:
    data = orjson.loads(e["data"])
    assert isinstance(data, dict)
    return data


def _size(e: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in e.items())


def _service(producer: str) -> str:
    return producer.rsplit("-", 1)[0]


def _incidents(stream: shop.ShopStream, kind: str) -> list[Incident]:
    found = [i for i in stream.incidents if i.kind == kind]
    assert len(found) == 2, kind
    return found


# --------------------------------------------------------------------------------------------
# Determinism and shape
# --------------------------------------------------------------------------------------------

SMALL: dict[str, Any] = {
    "duration_s": 2 * 3600,
    "warmup_s": 1800,
    "rate_scale": 0.2,
    "kinds": shop.INCIDENT_KINDS,
}


def test_same_seed_same_bytes_and_other_seed_differs() -> None:
    a = shop.generate(seed=5, **SMALL)
    b = shop.generate(seed=5, **SMALL)
    c = shop.generate(seed=6, **SMALL)
    assert orjson.dumps(a.events) == orjson.dumps(b.events)
    assert a.incidents == b.incidents
    assert a.events != c.events
    assert a.incidents != c.incidents


def test_iter_events_is_generate_streamed() -> None:
    incidents, events = shop.iter_events(seed=5, **SMALL)
    whole = shop.generate(seed=5, **SMALL)
    assert incidents == whole.incidents
    assert list(events) == whole.events


def test_an_incident_leaves_other_producers_untouched() -> None:
    clean = shop.generate(seed=5, duration_s=3 * 3600, rate_scale=0.2, kinds=())
    dirty = shop.generate(seed=5, duration_s=3 * 3600, rate_scale=0.2, kinds=("flood",))
    (flood,) = dirty.incidents
    assert clean.incidents == []
    assert [e for e in clean.events if e["producer"] != flood.producer] == [
        e for e in dirty.events if e["producer"] != flood.producer
    ]


def test_default_size_and_rate_scale() -> None:
    small = shop.generate(duration_s=6 * 3600, rate_scale=0.1)
    # The defaults give ~10x that: roughly 100k-300k events for six hours.
    assert 10_000 <= len(small.events) <= 30_000


def test_stream_size(stream: shop.ShopStream) -> None:
    assert 100_000 <= len(stream.events) <= 300_000


def test_events_sorted_and_well_formed(stream: shop.ShopStream) -> None:
    times = [int(e["ts"]) for e in stream.events]
    assert times == sorted(times)
    assert times[0] >= START
    assert times[-1] < START + 6 * 3600 * 1000
    for e in stream.events:
        assert list(e) == ["producer", "ts", "type", "data"]
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in e.items())
        assert _data(e)
        assert _size(e) < 64 * 1024


def test_event_ids_unique_except_replays(stream: shop.ShopStream) -> None:
    seen: set[tuple[str, str]] = set()
    repeats: list[tuple[str, int]] = []
    for e in stream.events:
        data = _data(e)
        eid = data.get("event_id", data.get("eventId"))
        assert isinstance(eid, str)
        key = (e["producer"], eid)
        if key in seen:
            repeats.append((e["producer"], int(e["ts"])))
        seen.add(key)
    assert repeats
    for producer, ts in repeats:
        inc = shop.incident_for(producer, ts, stream.incidents, grace_ms=0)
        assert inc is not None and inc.kind == "replayed_ids"


def test_schema_stable_per_type_outside_incidents(
    stream: shop.ShopStream, by_producer: dict[str, list[Entry]]
) -> None:
    for producer in ("cart-1", "payment-1", "inventory-1", "shipping-1", "auth-1"):
        shapes: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
        for _, e in by_producer[producer][:3000]:
            if shop.incident_for(producer, int(e["ts"]), stream.incidents, grace_ms=0):
                continue  # an incident's doing (a foreign type, a release)
            shapes[e["type"]][tuple(_data(e))] += 1
        assert len(shapes) == 3
        for etype, keys in shapes.items():
            assert etype.startswith(_service(producer) + ".")
            # The most common shape is the schema; anything else is an incident's doing.
            assert keys.most_common(1)[0][1] >= 0.98 * sum(keys.values())


def test_every_service_has_a_stable_schema_per_type() -> None:
    for svc in shop.SERVICES.values():
        assert len(svc.types) == 3
        for outlier in svc.outliers:
            assert any(outlier.field in shop._KEYS[t] for t in svc.types)
        for field, _ in svc.novel:
            assert any(field in shop._KEYS[t] for t in svc.types)
        assert any("latency_ms" in shop._KEYS[t] for t in svc.types)
        assert all(shop._KEYS[t][0] == "event_id" for t in svc.types)


# --------------------------------------------------------------------------------------------
# Incident placement
# --------------------------------------------------------------------------------------------


def test_each_kind_requested_count(stream: shop.ShopStream) -> None:
    counts = Counter(i.kind for i in stream.incidents)
    assert counts == dict.fromkeys(shop.INCIDENT_KINDS, 2)
    demo = shop.generate(duration_s=2 * 3600, warmup_s=1800, rate_scale=0.1)
    assert sorted(i.kind for i in demo.incidents) == sorted(shop.DEMO_KINDS)


def test_incidents_after_warmup_inside_stream_and_apart(stream: shop.ShopStream) -> None:
    end = START + 6 * 3600 * 1000
    per_producer: dict[str, list[Incident]] = defaultdict(list)
    for inc in stream.incidents:
        assert START + 3600 * 1000 <= inc.start_ms <= inc.end_ms < end
        assert inc.detail and inc.producer in inc.detail
        per_producer[inc.producer].append(inc)
    for incs in per_producer.values():
        incs.sort(key=lambda i: i.start_ms)
        for a, b in itertools.pairwise(incs):
            assert a.end_ms + shop._SAME_PRODUCER_GAP_MS <= b.start_ms
    assert stream.incidents == sorted(stream.incidents, key=lambda i: (i.start_ms, i.producer))


def test_incidents_spread_over_the_stream(stream: shop.ShopStream) -> None:
    hours = Counter((i.start_ms - START) // (3600 * 1000) for i in stream.incidents)
    assert set(hours) == {1, 2, 3, 4, 5}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown incident kinds"):
        shop.generate(kinds=("meteor",))
    with pytest.raises(ValueError, match="instances"):
        shop.generate(instances={"kitchen": 2})
    with pytest.raises(ValueError, match="too short"):
        shop.generate(duration_s=3600, warmup_s=3500, kinds=("silence",))
    with pytest.raises(ValueError, match="overlap"):
        shop.generate(
            duration_s=2 * 3600,
            instances={"cart": 2},
            incidents_per_kind=3,
            kinds=("slow_poisoning",),
        )


# --------------------------------------------------------------------------------------------
# Each kind does what it says
# --------------------------------------------------------------------------------------------


def test_flood(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    for inc in _incidents(stream, "flood"):
        entries = by_producer[inc.producer]
        during = len(_between(entries, inc.start_ms, inc.end_ms))
        before = len(
            _clean(entries, inc.start_ms - 10 * MINUTE, inc.start_ms - 1, inc, stream.incidents)
        )
        assert before > 0
        expected = before * (inc.end_ms - inc.start_ms) / (10 * MINUTE)
        assert during >= 10 * expected


def test_silence(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    for inc in _incidents(stream, "silence"):
        entries = by_producer[inc.producer]
        assert _between(entries, inc.start_ms, inc.end_ms) == []
        length = inc.end_ms - inc.start_ms
        assert len(_between(entries, inc.start_ms - length, inc.start_ms - 1)) >= 30
        assert _between(entries, inc.end_ms + 1, inc.end_ms + 5 * MINUTE)


def test_off_hours_burst(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    for inc in _incidents(stream, "off_hours_burst"):
        assert (inc.start_ms // (3600 * 1000)) % 24 < 8  # night, UTC
        entries = by_producer[inc.producer]
        length = inc.end_ms - inc.start_ms
        during = len(_between(entries, inc.start_ms, inc.end_ms))
        before = len(
            _clean(entries, inc.start_ms - 2 * length, inc.start_ms - 1, inc, stream.incidents)
        )
        assert during >= 5 * before / 2


def test_foreign_type(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    for inc in _incidents(stream, "foreign_type"):
        own = _service(inc.producer) + "."
        entries = by_producer[inc.producer]
        during = _between(entries, inc.start_ms, inc.end_ms)
        foreign = [e for e in during if not e["type"].startswith(own)]
        assert len(foreign) >= 5
        assert foreign[0]["ts"] == str(inc.start_ms) and foreign[-1]["ts"] == str(inc.end_ms)
        assert all(e["type"].startswith(own) for e in _clean_before(entries, inc, stream.incidents))


def test_new_type(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    for kind in ("new_type", "new_type_shape"):
        for inc in _incidents(stream, kind):
            assert inc.start_ms == inc.end_ms
            entries = by_producer[inc.producer]
            (event,) = [e for e in _between(entries, inc.start_ms, inc.end_ms) if e["type"]
                        not in shop.SERVICES[_service(inc.producer)].types]  # fmt: skip
            assert event["type"] in inc.detail
            seen = {e["type"] for e in stream.events if e is not event}
            assert event["type"] not in seen  # never sent by anyone else, before or after
            fields = set(_data(event))
            usual = {frozenset(shop._KEYS[t]) for t in shop._KEYS}
            assert (frozenset(fields) in usual) == (kind == "new_type")
            if kind == "new_type_shape":  # only the event id is a field the shop knows
                assert fields & {k for t in shop._KEYS for k in shop._KEYS[t]} == {"event_id"}


def test_stream_pause(stream: shop.ShopStream) -> None:
    times = [int(e["ts"]) for e in stream.events]
    for inc in _incidents(stream, "stream_pause"):
        assert inc.producer == ""
        assert 2 * MINUTE <= inc.end_ms - inc.start_ms <= 5 * MINUTE
        assert bisect_left(times, inc.start_ms) == bisect_right(times, inc.end_ms)  # no event
        before = {e["producer"] for e in stream.events
                  if inc.start_ms - 5 * MINUTE <= int(e["ts"]) < inc.start_ms}  # fmt: skip
        after = {e["producer"] for e in stream.events
                 if inc.end_ms < int(e["ts"]) <= inc.end_ms + 5 * MINUTE}  # fmt: skip
        assert before == after and len(before) >= 14  # everyone stops, everyone comes back
        near = [
            i
            for i in stream.incidents
            if i.kind not in ("slow_poisoning", "group_departure", "group_rate_departure")  # creeps
            and i is not inc
            and i.start_ms - 10 * MINUTE < inc.end_ms
            and inc.start_ms < i.end_ms + 10 * MINUTE
        ]
        assert near == []  # fmt: skip


def test_value_outlier(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    for inc in _incidents(stream, "value_outlier"):
        entries = by_producer[inc.producer]
        history: dict[str, list[float]] = defaultdict(list)
        for e in _clean_before(entries, inc, stream.incidents):
            for k, v in _data(e).items():
                if isinstance(v, int | float):
                    history[k].append(float(v))
        outliers = 0
        for e in _between(entries, inc.start_ms, inc.end_ms):
            for k, v in _data(e).items():
                if not isinstance(v, int | float) or k not in history:
                    continue
                mean, sd = statistics.fmean(history[k]), statistics.pstdev(history[k])
                far = abs(v - mean) > 20 * sd
                out_of_range = v > 3 * max(history[k]) or v < min(history[k]) - 10 * sd
                outliers += far and out_of_range
        assert outliers >= 3, inc


def test_schema_drift(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    for inc in _incidents(stream, "schema_drift"):
        entries = by_producer[inc.producer]
        usual: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        for e in _clean_before(entries, inc, stream.incidents):
            usual[e["type"]].add(tuple(_data(e)))
        during = _between(entries, inc.start_ms, inc.end_ms)
        assert len(during) >= 10
        assert all(tuple(_data(e)) not in usual[e["type"]] for e in during)
        after = _clean(entries, inc.end_ms + 1, inc.end_ms + 10 * MINUTE, inc, stream.incidents)
        assert all(tuple(_data(e)) in usual[e["type"]] for e in after)


def test_oversized_payload(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    for inc in _incidents(stream, "oversized_payload"):
        entries = by_producer[inc.producer]
        normal = statistics.median(_size(e) for e in _before(entries, inc.start_ms))
        big = [_size(e) for e in _between(entries, inc.start_ms, inc.end_ms)]
        assert sum(s >= 20_000 for s in big) >= 2
        assert max(big) >= 50 * normal
        assert max(big) < 64 * 1024
        for e in _between(entries, inc.start_ms, inc.end_ms):
            data = _data(e)
            # Still within the decoder's caps: no string over 16 Ki chars, < 256 leaves.
            assert len(data) < 250
            assert all(len(v) <= 16 * 1024 for v in data.values() if isinstance(v, str))


def test_new_categorical_value(
    stream: shop.ShopStream, by_producer: dict[str, list[Entry]]
) -> None:
    for inc in _incidents(stream, "new_categorical_value"):
        service = _service(inc.producer)
        seen: dict[str, set[str]] = defaultdict(set)
        for producer, entries in by_producer.items():
            if _service(producer) == service:
                for e in _before(entries, inc.start_ms):
                    if shop.incident_for(producer, int(e["ts"]), stream.incidents, 0):
                        continue
                    for k, v in _data(e).items():
                        if isinstance(v, str):
                            seen[k].add(v)
        categorical = {k for k, vs in seen.items() if len(vs) <= 10}
        novel = 0
        for e in _between(by_producer[inc.producer], inc.start_ms, inc.end_ms):
            novel += any(k in categorical and v not in seen[k] for k, v in _data(e).items())
        assert novel >= 3, inc


def test_replayed_ids(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    for inc in _incidents(stream, "replayed_ids"):
        entries = by_producer[inc.producer]
        earlier = {_data(e).get("event_id"): e for e in _before(entries, inc.start_ms)}
        replays = [
            e
            for e in _between(entries, inc.start_ms, inc.end_ms)
            if _data(e).get("event_id") in earlier
        ]
        assert len(replays) >= 8
        assert replays[0]["ts"] == str(inc.start_ms) and replays[-1]["ts"] == str(inc.end_ms)
        originals = [earlier[_data(e)["event_id"]] for e in replays]
        for e, original in zip(replays, originals, strict=True):
            assert e["data"] == original["data"] and e["type"] == original["type"]
        assert int(replays[0]["ts"]) - int(originals[0]["ts"]) >= 5 * MINUTE


def test_new_producer(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    regular = {f"{s}-{i}" for s, n in shop.DEFAULT_INSTANCES.items() for i in range(1, n + 1)}
    for inc in _incidents(stream, "new_producer"):
        assert inc.producer not in regular
        entries = by_producer[inc.producer]
        assert len(entries) >= 5
        assert inc.start_ms <= entries[0][0] and entries[-1][0] <= inc.end_ms
        assert all(e["type"].startswith(_service(inc.producer) + ".") for _, e in entries)


def test_slow_poisoning(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    for inc in _incidents(stream, "slow_poisoning"):
        assert inc.end_ms - inc.start_ms >= 2 * 3600 * 1000 * 0.99
        entries = by_producer[inc.producer]
        length = inc.end_ms - inc.start_ms

        def latencies(es: list[dict[str, str]]) -> dict[str, list[float]]:
            out: dict[str, list[float]] = defaultdict(list)
            for e in es:
                v = _data(e).get("latency_ms")
                if v is not None:
                    out[e["type"]].append(v)
            return out

        before = latencies(_between(entries, inc.start_ms - 30 * MINUTE, inc.start_ms - 1))
        first = latencies(_between(entries, inc.start_ms, inc.start_ms + length // 10))
        last = latencies(_between(entries, inc.end_ms - length // 10, inc.end_ms))
        main = max(before, key=lambda t: len(before[t]))  # the commonest type with latency
        assert min(len(before[main]), len(first[main]), len(last[main])) >= 10
        usual = statistics.median(before[main])
        assert statistics.median(last[main]) >= 2.5 * usual
        assert statistics.median(first[main]) <= 1.5 * usual  # slow: no jump


def test_group_departure(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    def median_latency(producer: str, a: int, b: int) -> float:
        es = [_data(e) for e in _between(by_producer[producer], a, b)]
        return statistics.median(v for d in es if (v := d.get("latency_ms")) is not None)

    for inc in _incidents(stream, "group_departure"):
        svc = _service(inc.producer)
        peers = [p for p in by_producer if _service(p) == svc and p != inc.producer]
        assert len(peers) >= 2  # a kind of at least three
        length = inc.end_ms - inc.start_ms
        before = (inc.start_ms - 30 * MINUTE, inc.start_ms - 1)
        first = (inc.start_ms, inc.start_ms + length // 10)
        last = (inc.end_ms - length // 10, inc.end_ms)
        usual = median_latency(inc.producer, *before)
        assert median_latency(inc.producer, *last) >= 1.25 * usual  # away from where it was ...
        assert median_latency(inc.producer, *first) <= 1.1 * usual  # ... slowly
        for p in peers:  # ... and from its peers, which stay
            assert median_latency(p, *last) <= 1.15 * median_latency(p, *before)


def test_group_rate_departure(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    def per_peer(producer: str, a: int, b: int, peers: list[str]) -> float:
        """The producer's events in [a, b] over the mean of its peers'."""
        own = len(_between(by_producer[producer], a, b))
        return own * len(peers) / sum(len(_between(by_producer[p], a, b)) for p in peers)

    for inc in _incidents(stream, "group_rate_departure"):
        svc = _service(inc.producer)
        peers = [p for p in by_producer if _service(p) == svc and p != inc.producer]
        assert len(peers) >= 2  # a kind of at least three
        length = inc.end_ms - inc.start_ms
        assert 30 * MINUTE <= length <= 5 * 3600_000  # 3-5 h (shorter in a short stream)
        first = (inc.start_ms, inc.start_ms + length // 10)
        last = (inc.end_ms - length // 10, inc.end_ms)
        before = per_peer(inc.producer, inc.start_ms - 30 * MINUTE, inc.start_ms - 1, peers)
        assert 0.8 <= before <= 1.25  # with its peers before ...
        assert 0.7 <= per_peer(inc.producer, *first, peers) <= 1.4  # ... slowly away ...
        end = per_peer(inc.producer, *last, peers)
        assert end >= 2.5 or end <= 0.4  # ... to x3-x4 or a third to a quarter of theirs


# --------------------------------------------------------------------------------------------
# incident_for
# --------------------------------------------------------------------------------------------


def test_incident_for_boundaries() -> None:
    a = Incident("flood", "cart-1", 10_000, 20_000, "a")
    b = Incident("silence", "cart-1", 70_000, 90_000, "b")
    c = Incident("flood", "auth-1", 10_000, 20_000, "c")
    incs = [a, b, c]
    assert shop.incident_for("cart-1", 9_999, incs) is None
    assert shop.incident_for("cart-1", 10_000, incs) is a
    assert shop.incident_for("cart-1", 20_000, incs) is a
    assert shop.incident_for("cart-1", 69_999, incs) is a  # a's grace
    assert shop.incident_for("cart-1", 70_000, incs) is b  # inside b beats a's grace
    assert shop.incident_for("cart-1", 80_000, incs) is b
    assert shop.incident_for("cart-1", 150_000, incs) is b
    assert shop.incident_for("cart-1", 150_001, incs) is None
    assert shop.incident_for("cart-1", 20_001, incs, grace_ms=0) is None
    assert shop.incident_for("cart-2", 15_000, incs) is None
    assert shop.incident_for("auth-1", 15_000, incs) is c
    assert shop.incident_for("auth-1", 15_000, []) is None


def test_release(stream: shop.ShopStream, by_producer: dict[str, list[Entry]]) -> None:
    for inc in _incidents(stream, "release"):
        svc = inc.producer.removesuffix("-*")
        # The service's instances (not a new producer of it appearing later: not its group).
        group = [
            p for p in by_producer if _service(p) == svc and by_producer[p][0][0] < inc.start_ms
        ]
        assert len(group) >= 2
        firsts = []
        for producer in group:
            new = [e for e in _between(by_producer[producer], inc.start_ms, inc.end_ms)
                   if e["type"] not in shop.SERVICES[svc].types]  # fmt: skip
            assert len({e["type"] for e in new}) == 1 and len(new) >= 10
            assert new[0]["type"] in inc.detail
            firsts.append(int(new[0]["ts"]))
            assert shop.incident_for(producer, firsts[-1], stream.incidents) == inc
        assert min(firsts) == inc.start_ms and max(firsts) - min(firsts) <= 300_000
