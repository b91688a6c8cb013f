"""Per-producer state and feature evidence (detector/core/features/)."""

from __future__ import annotations

import itertools
import math
import pickle
import random
import subprocess
import sys
from collections import Counter, deque
from collections.abc import Iterable

import pytest
from hypothesis import given, settings, strategies

from detector.core.codec import Reader, Writer
from detector.core.events import Decoder, Event
from detector.core.features import FEATURES, MAX_SURPRISE, Evidence, FeatureConfig, FeatureStore
from detector.core.features.categories import ID_FIELD, Categories, Counts
from detector.core.features.drift import Drift
from detector.core.features.moments import Moments
from detector.core.features.replay import BYTES_PER_ID, IdCounts, IdTable, IdWindow, ReplayFeature
from detector.core.fingerprints import fingerprint as value_fingerprint
from detector.core.fingerprints import pair_fingerprint

CFG = FeatureConfig()
SECOND = 1000


def ev(
    t: int,
    producer: str = "pay-1",
    *,
    etype: str | None = "paid",
    numbers: dict[str, float] | None = None,
    strings: dict[str, str] | None = None,
    size: int = 60,
) -> Event:
    return Event(
        "s",
        f"{t}-0",
        producer,
        t,
        etype,
        {"amount": 10.0} if numbers is None else numbers,
        {"cur": "EUR"} if strings is None else strings,
        size,
    )


def normal(i: int, producer: str = "pay-1", t0: int = 0) -> Event:
    """The producer's usual event number ``i``: one a second, mildly varying."""
    return ev(
        t0 + i * SECOND,
        producer,
        numbers={"amount": 10.0 + i % 3, "qty": 1.0 + i % 2},
        strings={"cur": ("EUR", "USD")[i % 2]},
        size=60 + i % 4,
    )


def trained(n: int = 200) -> FeatureStore:
    """A store that has seen ``n`` usual events of producer "pay-1"."""
    store = FeatureStore(CFG)
    for i in range(n):
        store.observe(normal(i), learn=True)
    return store


def feed(store: FeatureStore, events: Iterable[Event], learn: bool = True) -> list[Evidence]:
    return [store.observe(e, learn=learn) for e in events]


def slot(store: FeatureStore, producer: str = "pay-1") -> int:
    found = store.slot_of(producer)
    assert found is not None, producer
    return found


def restored(store: FeatureStore, producer: str = "pay-1") -> FeatureStore:
    """A fresh store restored from ``producer``'s checkpoint record (the checkpoint's path)."""
    copy = FeatureStore(store.cfg)
    record = {producer: store.record(slot(store, producer))}
    copy.restore(record, store.counters(), shared=store.shared(full=True))
    return copy


def judged(store: FeatureStore, event: Event) -> dict[str, float]:
    """The surprises of ``event`` against its producer's state, which stays as it is."""
    return store.evidence(slot(store, event.producer), event).surprise


# --------------------------------------------------------------------------------------------
# Bounds


def test_lru_eviction_beyond_max_producers() -> None:
    store = FeatureStore(CFG, max_producers=3)
    for p in ("a", "b", "c"):
        store.observe(ev(0, p), learn=True)
    store.observe(ev(1, "a"), learn=True)  # "a" is now the most recently used
    store.observe(ev(2, "d"), learn=True)  # evicts the least recently used: "b"
    assert list(store.producers) == ["c", "a", "d"]
    assert store.evicted == 1
    store.observe(ev(3, "e"), learn=True)
    store.observe(ev(4, "f"), learn=True)
    assert len(store) == 3
    assert set(store.producers) == {"d", "e", "f"}
    assert store.evicted == 3


def test_evicted_producer_starts_over() -> None:
    store = FeatureStore(CFG, max_producers=1)
    for i in range(50):
        store.observe(normal(i, "a"), learn=True)
    store.observe(ev(0, "b"), learn=True)
    evidence = store.observe(normal(50, "a"), learn=True)
    assert evidence.history == 0
    assert store.evicted == 2


def test_idle_ttl_eviction_by_event_time() -> None:
    ttl = 10 * 60 * SECOND
    store = FeatureStore(CFG, idle_ttl_ms=ttl)
    store.observe(ev(0, "old-1"), learn=True)
    store.observe(ev(0, "old-2"), learn=True)
    store.observe(ev(5 * 60 * SECOND, "fresh"), learn=True)
    # Event time, not wall-clock time, drives expiry: nothing is idle for 10 min yet.
    store.observe(ev(9 * 60 * SECOND, "fresh"), learn=True)
    assert set(store.producers) == {"old-1", "old-2", "fresh"}
    store.observe(ev(11 * 60 * SECOND, "fresh"), learn=True)
    assert set(store.producers) == {"fresh"}
    assert store.evicted == 2
    # An expired producer comes back with no history.
    assert store.observe(ev(12 * 60 * SECOND, "old-1"), learn=True).history == 0


def test_fields_per_producer_are_capped() -> None:
    cfg = FeatureConfig(max_numeric_fields=4, max_categorical_fields=3, max_schemas=5)
    store = FeatureStore(cfg)
    for i in range(100):
        store.observe(ev(i, numbers={f"n{i}": 1.0}, strings={f"s{i}": "x"}, etype=None), learn=True)
    st = store.view("pay-1")
    assert len(st.numeric) == 4
    assert len(st.categorical) == 3
    assert len(st.schema_fields) == 5
    assert st.schemas.saturated


# --------------------------------------------------------------------------------------------
# Evidence reads the state before the event updates it


def test_first_event_has_zero_surprise() -> None:
    store = FeatureStore(CFG)
    evidence = store.observe(ev(0, numbers={"amount": 1e9}, strings={"x": "weird"}), learn=True)
    assert evidence.surprise == dict.fromkeys(FEATURES, 0.0)
    assert evidence.reasons == []
    assert evidence.history == 0
    assert store.observe(ev(1), learn=True).history == 1


def test_evidence_excludes_the_event_itself() -> None:
    store = trained()
    odd = ev(200 * SECOND, numbers={"amount": 900.0, "qty": 1.0}, strings={"cur": "XMR"})
    at = store.state("pay-1")
    before = store.evidence(at, odd)
    before.reasons = store.explain(at, odd)
    assert store.observe(odd, learn=True) == before
    # Had the event been part of its own baseline, a repeat would look less surprising.
    again = store.observe(ev(201 * SECOND, numbers={"amount": 900.0, "qty": 1.0}), learn=False)
    assert again.surprise["value"] < before.surprise["value"]


def test_reasons_explain_the_judged_surprises_of_every_feature() -> None:
    # Judging (every event) and explaining (flagged events only) are separate code paths:
    # each surprising feature's reason must carry the surprise its judge gave, and only they.
    cfg = FeatureConfig(replay_horizon_s=64.0, drift_horizon_s=600.0, novelty_burst=True,
                        seasonal_buckets=24, window_values=100, window_tail=10,
                        joint_fields=4, sequence_window=8)  # fmt: skip
    store, eager = FeatureStore(cfg), FeatureStore(cfg)
    events = mixed_stream(1500)
    events += [with_id(i, f"id-{i % 50}", t0=2000 * SECOND) for i in range(200)]
    events += [normal(0, "p0", t0=2300 * SECOND + 5 * k) for k in range(30)]  # a flood
    seen = set()
    for e in events:
        at = store.state(e.producer, e.event_time_ms)
        split = store.evidence(at, e)
        assert split.reasons == []  # the judges give surprises only
        split.reasons = reasons = store.explain(at, e)
        assert {r.feature: r.surprise for r in reasons} == {
            f: s for f, s in split.surprise.items() if s > 0
        }
        assert [r.surprise for r in reasons] == sorted((r.surprise for r in reasons), reverse=True)
        assert eager.observe(e, learn=True) == split  # the same steps, explained eagerly
        seen.update(r.feature for r in reasons)
        store.advance(at, e)
        store.learn(at, e)
        store.expire(e.event_time_ms)
    # The peer and resonance features judge nothing by themselves: they speak through
    # decisive reasons only.
    assert seen == set(FEATURES) - {"peer", "resonance"}


def test_learn_false_leaves_baselines_but_advances_clock() -> None:
    store = trained()
    st = store.view("pay-1")
    numeric = {k: (m.count, m.mean, m.var) for k, m in st.numeric.items()}
    cats = {k: dict(c.counts) for k, c in st.categorical.items()}
    n, size_count = st.n, st.size.count
    store.observe(ev(300 * SECOND, numbers={"amount": 5e6}, strings={"cur": "XMR"}), learn=False)
    st = store.view("pay-1")
    assert {k: (m.count, m.mean, m.var) for k, m in st.numeric.items()} == numeric
    assert {k: dict(c.counts) for k, c in st.categorical.items()} == cats
    assert st.size.count == size_count
    assert st.n == n + 1
    assert st.last_ms == 300 * SECOND


# --------------------------------------------------------------------------------------------
# Each feature reacts to its anomaly


def test_normal_events_are_unsurprising() -> None:
    store = trained()
    for evidence in feed(store, (normal(i) for i in range(200, 260)), learn=False):
        assert max(evidence.surprise.values()) < 2.0


def test_rate_flood() -> None:
    store = trained()
    t = 199 * SECOND
    surprises = []
    for _ in range(20):
        t += 5  # 200/s instead of 1/s
        surprises.append(store.observe(normal(0, t0=t), learn=False).surprise["rate"])
    assert surprises[-1] > 5
    assert surprises == sorted(surprises)  # the flood builds up
    evidence = store.observe(normal(0, t0=t + 5), learn=False)
    assert evidence.reasons[0].feature == "rate"


def test_slow_down_is_not_a_rate_anomaly() -> None:
    store = trained()
    evidence = store.observe(normal(1, t0=200 * SECOND + 3_600_000), learn=False)
    assert evidence.surprise["rate"] == 0.0


def test_value_outlier() -> None:
    store = trained()
    evidence = store.observe(
        ev(200 * SECOND, numbers={"amount": 900.0, "qty": 1.0}, size=61), learn=False
    )
    assert evidence.surprise["value"] > 5
    top = evidence.reasons[0]
    assert (top.feature, top.field, top.observed) == ("value", "amount", "900")
    lo, hi = (float(x) for x in top.expected.split(".."))
    assert lo < 10 < 12 < hi < 900


def test_negative_value_outlier() -> None:
    store = trained()
    evidence = store.observe(ev(200 * SECOND, numbers={"amount": -11.0, "qty": 1.0}), learn=False)
    assert evidence.surprise["value"] > 5
    assert evidence.reasons[0].field == "amount"


def test_numeric_baselines_are_per_type() -> None:
    store = FeatureStore(CFG)
    for i in range(200):
        etype, amount = ("small", 10.0) if i % 2 else ("big", 10_000.0)
        store.observe(ev(i * SECOND, etype=etype, numbers={"amount": amount}), learn=True)
    usual = store.observe(ev(200 * SECOND, etype="big", numbers={"amount": 10_000.0}), False)
    odd = store.observe(ev(201 * SECOND, etype="small", numbers={"amount": 10_000.0}), False)
    assert usual.surprise["value"] < 1
    assert odd.surprise["value"] > 5


def test_payload_size() -> None:
    store = trained()
    usual = normal(200)
    big = ev(usual.event_time_ms, numbers=usual.numbers, strings=usual.strings, size=6000)
    evidence = store.observe(big, learn=False)
    assert evidence.surprise["size"] > 5
    top = evidence.reasons[0]
    assert (top.feature, top.observed) == ("size", "6000B")
    small = ev(usual.event_time_ms, numbers=usual.numbers, strings=usual.strings, size=5)
    assert store.observe(small, learn=False).surprise["size"] > 5


def test_unseen_type() -> None:
    store = FeatureStore(CFG)
    for i in range(200):
        store.observe(ev(i * SECOND, etype=("paid", "refunded")[i % 2]), learn=True)
    seen = store.observe(ev(200 * SECOND, etype="paid"), learn=False)
    new = store.observe(ev(201 * SECOND, etype="chargeback"), learn=False)
    assert seen.surprise["type"] == 0.0
    assert new.surprise["type"] > 2
    reason = next(r for r in new.reasons if r.feature == "type")
    assert reason.observed == "chargeback"
    assert set(reason.expected.split(",")) == {"paid", "refunded"}


def test_unseen_categorical_value() -> None:
    store = trained()
    new = store.observe(
        ev(200 * SECOND, numbers={"amount": 10.0, "qty": 1.0}, strings={"cur": "XMR"}), False
    )
    assert new.surprise["category"] > 2
    top = new.reasons[0]
    assert (top.feature, top.field, top.observed) == ("category", "cur", "XMR")
    assert set(top.expected.split(",")) == {"EUR", "USD"}


def test_rare_categorical_value_is_surprising_common_is_not() -> None:
    store = FeatureStore(CFG)
    for i in range(200):
        store.observe(ev(i * SECOND, strings={"cur": "GBP" if i in (5, 6) else "EUR"}), True)
    common = store.observe(ev(200 * SECOND, strings={"cur": "EUR"}), learn=False)
    rare = store.observe(ev(201 * SECOND, strings={"cur": "GBP"}), learn=False)
    assert common.surprise["category"] == 0.0
    assert 1 < rare.surprise["category"] < 3


def test_new_schema_lists_added_and_missing_fields() -> None:
    store = trained()
    evidence = store.observe(
        ev(200 * SECOND, numbers={"amount": 10.0, "refund": 3.0}, strings={"cur": "EUR"}),
        learn=False,
    )
    assert evidence.surprise["schema"] > 2
    reason = next(r for r in evidence.reasons if r.feature == "schema")
    assert reason.observed == "+refund -qty"


def test_known_schema_is_unsurprising() -> None:
    store = trained()
    assert store.observe(normal(200), learn=False).surprise["schema"] == 0.0


def test_high_cardinality_field_saturates_and_is_not_judged() -> None:
    cfg = FeatureConfig(max_categories=16)
    store = FeatureStore(cfg)
    for i in range(200):
        store.observe(
            ev(i * SECOND, strings={"order_id": f"o-{i}", "cur": ("EUR", "USD")[i % 2]}), True
        )
    st = store.view("pay-1")
    ids = st.categorical["paid\x1forder_id"]
    assert ids.saturated
    assert ids.counts == {}
    assert ids is ID_FIELD and ID_FIELD.n == 0  # one shared, unchanging table
    # Restored from its record: the shared one, and the fields recorded after it intact.
    back = restored(store).view("pay-1")
    assert back.categorical["paid\x1forder_id"] is ID_FIELD
    assert back.categorical["paid\x1fcur"].counts == st.categorical["paid\x1fcur"].counts
    # Also from a record whose saturated table still counted: read past, and shared.
    w = Writer()
    w.count(1)  # one field
    w.text("paid\x1forder_id")
    w.i64(200)  # its counts: n, saturated, two values seen twice, one seen once
    w.count(1)
    w.count(2)
    for value in ("o-1", "o-2"):
        w.text(value)
        w.i64(2)
    w.u64s([7])
    w.count(0)  # no recent novelties
    r, empty = Reader(w.bytes()), FeatureStore(CFG)
    empty.by_name["category"].load(empty.overflow, r)
    assert r.done() and empty.categories.view(empty.overflow)["paid\x1forder_id"] is ID_FIELD
    evidence = store.observe(ev(200 * SECOND, strings={"order_id": "o-new", "cur": "EUR"}), False)
    assert evidence.surprise["category"] == 0.0
    # A low-cardinality field of the same producer is still judged.
    evidence = store.observe(ev(201 * SECOND, strings={"order_id": "o-x", "cur": "XMR"}), False)
    assert evidence.reasons[0].field == "cur"


def test_repeated_values_are_interned_ids_are_not() -> None:
    # A value seen twice is shared among producers; an id (seen once) is not interned, or
    # the interpreter's table of interned strings would grow with every id held.
    store = FeatureStore(CFG)
    feed(store, (ev(i * SECOND, strings={"order_id": f"x-{i}", "cur": "EUR"}) for i in range(5)))
    counts = store.view("pay-1").categorical["paid\x1forder_id"].counts
    cur = store.view("pay-1").categorical["paid\x1fcur"].counts
    back = restored(store).view("pay-1")
    for table in (counts, cur, back.categorical["paid\x1forder_id"].counts):
        for key in table:
            fresh = key.encode().decode()  # an equal string, not the same object
            assert (sys.intern(fresh) is key) == (table[key] > 1), key
    # Seen once: only their fingerprints are kept (8 bytes each, not a string and a dict entry).
    ids = store.view("pay-1").categorical["paid\x1forder_id"]
    assert cur == {"EUR": 5} and counts == {} and len(ids.once) == 5
    assert back.categorical["paid\x1forder_id"].once == ids.once


def test_producers_share_field_names_and_shapes() -> None:
    # Producers of one service learn the same field names and payload shapes: one copy of
    # each, also once restored from their records (a shape's field list: one per store).
    store = FeatureStore(FeatureConfig(drift_horizon_s=3600.0))
    feed(store, (normal(i, p) for i in range(30) for p in ("pay-1", "pay-2")))
    a, b = store.view("pay-1"), store.view("pay-2")
    copy = FeatureStore(store.cfg)
    records = {p: store.record(slot(store, p)) for p in ("pay-1", "pay-2")}
    copy.restore(records, store.counters(), shared=store.shared(full=True))
    back, back_a = copy.view("pay-2"), copy.view("pay-1")
    assert a.drifts
    for first, st in ((a, b), (back_a, back)):
        assert a.schema_fields.keys() == st.schema_fields.keys()
        for key, names in first.schema_fields.items():
            assert st.schema_fields[key] is names
        for table in ("numeric", "categorical", "drifts"):
            keys, own = list(getattr(a, table)), list(getattr(st, table))
            assert keys == own and all(x is y for x, y in zip(keys, own, strict=True))


def test_surprise_is_bounded() -> None:
    store = trained()
    evidence = store.observe(
        ev(199 * SECOND + 1, numbers={"amount": 1e300, "qty": -1e300}, size=10**9),
        learn=False,
    )
    for s in evidence.surprise.values():
        assert 0.0 <= s <= MAX_SURPRISE
    assert evidence.surprise["value"] > 20
    assert [r.surprise for r in evidence.reasons] == sorted(
        (r.surprise for r in evidence.reasons), reverse=True
    )


# --------------------------------------------------------------------------------------------
# Determinism and persistence


def mixed_stream(n: int) -> list[Event]:
    """Five regular producers, some anomalies, and a one-off producer now and then."""
    out = []
    for i in range(n):
        p = f"p{i % 5}" if i % 50 != 49 else f"once-{i}"
        e = normal(i, p)
        if i % 97 == 13:
            e = ev(e.event_time_ms, p, numbers={"amount": 1e4}, strings={"cur": "XMR"})
        if i % 89 == 5:
            e = ev(e.event_time_ms, p, etype="odd", size=4000)
        out.append(e)
    return out


def test_same_events_same_evidence() -> None:
    events = mixed_stream(1500)
    a = feed(FeatureStore(CFG, max_producers=6), events)
    b = feed(FeatureStore(CFG, max_producers=6), events)
    assert a == b
    assert any(max(e.surprise.values()) > 3 for e in a)


def test_record_round_trip_gives_identical_evidence() -> None:
    events = mixed_stream(1200)
    store = FeatureStore(CFG, max_producers=6, idle_ttl_ms=3_600_000)
    feed(store, events[:600])
    records = {p: store.record(at) for p, at in store.producers.items()}
    back = FeatureStore(CFG, max_producers=6, idle_ttl_ms=3_600_000)
    back.restore(dict(reversed(records.items())), store.counters())  # LRU order: from the seqs
    assert back.evicted == store.evicted
    assert list(back.producers) == list(store.producers)
    assert store.evicted > 0
    assert feed(back, events[600:]) == feed(store, events[600:])
    assert back.evicted == store.evicted


# --------------------------------------------------------------------------------------------
# Hostile but valid events


def test_zero_size_event_does_not_crash() -> None:
    event = Decoder().decode("s", "30000-0", {b"": b""})
    assert event.size_bytes == 0
    store = FeatureStore(CFG)
    for i in range(30):
        store.observe(ev(i * SECOND, event.producer, size=50), learn=True)
    evidence = store.observe(event, learn=True)
    assert math.isfinite(evidence.surprise["size"])


def burst(store: FeatureStore, first: int, last: int) -> None:
    """Five events each from producers ``first`` .. ``last - 1``, one after the other."""
    for k in range(first, last):
        for i in range(5):
            store.observe(normal(i, f"p{k}", t0=k), learn=True)


def test_store_stays_bounded_with_ten_times_max_producers() -> None:
    cap = 50
    store = FeatureStore(CFG, max_producers=cap)
    burst(store, 0, 10 * cap)
    assert len(store) == cap
    assert store.evicted == 9 * cap
    assert list(store.producers) == [f"p{k}" for k in range(9 * cap, 10 * cap)]
    burst(store, 10 * cap, 20 * cap)
    assert len(store) == cap
    assert store.evicted == 19 * cap


def test_store_memory_stays_bounded_with_ten_times_max_producers() -> None:
    cap = 50
    store = FeatureStore(CFG, max_producers=cap)
    burst(store, 0, 10 * cap)
    slots = store._slots  # slots given: the columns have room for at least these
    assert slots <= cap + 1  # evicted producers' slots are reused (+1: the overflow's)
    size = len(pickle.dumps(store))  # everything the store holds, freed slots too
    burst(store, 10 * cap, 20 * cap)
    assert store._slots == slots
    assert len(pickle.dumps(store)) <= size * 1.05


def test_evicted_producer_that_returns_is_not_marked_removed() -> None:
    # A checkpoint commit writes changed producers and deletes removed ones: never both.
    store = FeatureStore(CFG, max_producers=1, track_changes=True)
    store.observe(ev(0, "a"), learn=True)
    store.observe(ev(1, "b"), learn=True)  # evicts "a"
    store.observe(ev(2, "a"), learn=True)  # "a" is back (and evicts "b")
    assert list(store.producers) == ["a"]
    assert "b" in store.removed
    assert "a" in store.dirty
    assert "a" not in store.removed


# --------------------------------------------------------------------------------------------
# Feature toggles, time-of-day profiles, value windows (the metrics spec's features)

HOUR = 3600 * SECOND


def metric(t: int, x: float, producer: str = "cpu-1") -> Event:
    """One sample of a univariate metric stream (no type, one field)."""
    return Event("s", f"{t}-0", producer, t, None, {"value": x}, {}, 30 + len(f"{x:g}"))


def daily(days: int, step_ms: int = 5 * 60 * SECOND) -> list[Event]:
    """A daily cycle: 10 at night, 100 in the afternoon, a little noise; one sample per 5 min."""
    out = []
    for k in range(days * 24 * HOUR // step_ms):
        t = k * step_ms
        hour = (t // HOUR) % 24
        out.append(metric(t, (100.0 if 12 <= hour < 18 else 10.0) + k % 3))
    return out


def test_disabled_features_are_never_computed() -> None:
    cfg = FeatureConfig(disabled=("rate", "size"), min_count=20)
    store = FeatureStore(cfg)
    for i in range(100):
        store.observe(ev(i * SECOND, numbers={"amount": 10.0 + i % 3}), learn=True)
    # A flood of huge entries: neither rate nor size may speak.
    odd = store.observe(ev(100 * SECOND + 1, size=50_000), learn=False)
    assert odd.surprise["rate"] == odd.surprise["size"] == 0.0
    assert {r.feature for r in odd.reasons} <= {"value", "type", "category", "schema"}
    full = trained().observe(ev(200 * SECOND + 1, size=50_000), learn=False)
    assert full.surprise["size"] > 5  # the same event is surprising when size is on


def test_unknown_disabled_feature_is_refused() -> None:
    try:
        FeatureConfig(disabled=("colour",))
    except ValueError as exc:
        assert "colour" in str(exc)
    else:
        raise AssertionError("accepted an unknown feature")


def test_time_of_day_profile_judges_a_value_against_its_hour() -> None:
    on = FeatureStore(FeatureConfig(seasonal_buckets=24, min_count=50))
    off = FeatureStore(FeatureConfig(min_count=50))
    for e in daily(14):
        on.observe(e, learn=True)
        off.observe(e, learn=True)
    t = 14 * 24 * HOUR + 3 * HOUR  # 03:00, when the metric is usually 10
    at_night = metric(t, 100.0)  # an afternoon value at night
    usual = metric(t + 5 * 60 * SECOND, 11.0)
    seasonal = on.observe(at_night, learn=False)
    flat = off.observe(at_night, learn=False)
    assert seasonal.surprise["value"] > 20 > 4 > flat.surprise["value"]
    assert "at this time of day" in seasonal.reasons[0].expected
    assert on.observe(usual, learn=False).surprise["value"] < 2
    prof = on.view("cpu-1").seasonal["value"]
    assert len(prof.count) == 24 and int(prof.count.sum()) == len(daily(14))


def test_time_of_day_buckets_are_utc_event_time() -> None:
    bucket = FeatureStore(FeatureConfig(seasonal_buckets=24)).by_name["value"].bucket
    assert bucket(0) == 0
    assert bucket(HOUR - 1) == 0
    assert bucket(25 * HOUR) == 1
    assert FeatureStore(FeatureConfig(seasonal_buckets=4)).by_name["value"].bucket(7 * HOUR) == 1


def test_value_window_ranks_counts_where_a_normal_fit_saturates() -> None:
    # Sparse counts: mostly 0, sometimes 5 to 7. The window ranks a value among the last
    # ones: 7 has been seen often, 50 never (and lies far beyond the top of the window).
    cfg = FeatureConfig(window_values=500, window_tail=20, min_count=50)
    store = FeatureStore(cfg)
    for i in range(600):
        x = 0.0 if i % 4 else float(5 + (i // 4) % 3)
        store.observe(metric(i * 60 * SECOND, x), learn=True)
    win = store.view("cpu-1").windows["value"]
    assert win.n == 500
    seen = win.surprise(math.log1p(7.0), cfg.window_tail, cfg.min_sd)
    never = win.surprise(math.log1p(50.0), cfg.window_tail, cfg.min_sd)
    assert seen < 1.5 < 10 < never
    assert store.observe(metric(600 * 60 * SECOND, 50.0), learn=False).surprise["value"] > 20


def test_value_window_is_a_bounded_ring() -> None:
    store = FeatureStore(FeatureConfig(window_values=40, window_tail=10))
    for i in range(1000):
        store.observe(metric(i * SECOND, float(i)), learn=True)
    win = store.view("cpu-1").windows["value"]
    assert (win.n, len(win.values)) == (40, 40)
    assert sorted(win.values.tolist()) == [float(math.log1p(i)) for i in range(960, 1000)]


def test_profiles_are_capped_per_producer() -> None:
    cfg = FeatureConfig(
        seasonal_buckets=24, window_values=40, window_tail=10, max_profiled_fields=2
    )
    store = FeatureStore(cfg)
    store.observe(ev(0, numbers={f"f{k}": 1.0 for k in range(6)}), learn=True)
    st = store.view("pay-1")
    assert len(st.seasonal) == len(st.windows) == 2
    assert len(st.numeric) == 6  # the running moments keep their own (larger) cap


def test_profiles_are_off_by_default() -> None:
    st = trained().view("pay-1")
    assert st.seasonal == {} and st.windows == {}


def test_state_with_profiles_round_trips_and_scores_the_same() -> None:
    store = FeatureStore(FeatureConfig(seasonal_buckets=24, window_values=100, window_tail=10))
    for e in daily(3):
        store.observe(e, learn=True)
    copy = restored(store, "cpu-1")
    probe = metric(3 * 24 * HOUR + 7 * HOUR, 60.0)
    assert judged(store, probe) == judged(copy, probe)
    assert copy.view("cpu-1").seasonal and copy.view("cpu-1").windows
    assert len(store.record(slot(store, "cpu-1"))) < 2 * 1024 + 24 * 3 * 8 + 100 * 8


def test_a_judged_time_of_day_bucket_can_explain_a_daily_step() -> None:
    # At 12:00 the metric steps from 10 to 100, every day. The overall moments find the step
    # somewhat surprising each day (a run of such values is what the likelihood adds up);
    # the hour's profile does not.
    explains = FeatureStore(FeatureConfig(seasonal_buckets=24, seasonal_explains=True))
    larger = FeatureStore(FeatureConfig(seasonal_buckets=24))
    for e in daily(14):
        explains.observe(e, learn=True)
        larger.observe(e, learn=True)
    noon = [metric(14 * 24 * HOUR + 12 * HOUR + k * 300 * SECOND, 101.0) for k in range(3)]
    a = [explains.observe(e, learn=True).surprise["value"] for e in noon]
    b = [larger.observe(e, learn=True).surprise["value"] for e in noon]
    assert max(a) < 0.5 < 0.9 < min(b)


# --------------------------------------------------------------------------------------------
# Replayed event ids and slow drift
# --------------------------------------------------------------------------------------------

REPLAY = FeatureConfig(replay_horizon_s=300.0)  # with_id sends one event a second


def with_id(i: int, event_id: str | None = None, t0: int = 0, producer: str = "pay-1") -> Event:
    e = normal(i, producer, t0=t0)
    return ev(e.event_time_ms, producer, numbers=e.numbers, strings={**e.strings,
              "event_id": event_id or f"id-{i}"}, size=e.size_bytes)  # fmt: skip


def window(store: FeatureStore) -> IdWindow:
    feature = store.by_name["replayed_id"]
    assert isinstance(feature, ReplayFeature) and feature.window is not None
    return feature.window


class _Repeats:
    """The per-producer object IdTable's rows replaced (its note, learn and surprise as they
    were): the oracle of the test below."""

    def __init__(self) -> None:
        self.events, self.repeats, self.recent, self.last_ms, self.repeated = 0, 0, 0.0, -1, False

    def note(self, repeat: bool, t_ms: int, burst_ms: float) -> None:
        if self.last_ms >= 0:
            self.recent *= math.exp(-max(t_ms - self.last_ms, 0) / burst_ms)
        self.last_ms = max(self.last_ms, t_ms)
        self.repeated = repeat
        if repeat:
            self.recent += 1.0

    def surprise(self, prior: float, t_ms: int, burst_ms: float) -> float:
        one = -math.log10((self.repeats + prior) / (self.events + 1))
        burst = self.recent * math.exp(-max(t_ms - self.last_ms, 0) / burst_ms)
        return min((1.0 + burst) * one, MAX_SURPRISE)


def test_the_repeats_are_columns_that_count_as_one_object_per_producer() -> None:
    """Each row of an IdTable notes, learns and judges as the object per producer it
    replaces (none until its first id: judged as a fresh one); rows reset and grow; pickled,
    and moved record by record, they come back equal and go on."""
    table, model = IdTable(), dict[int, _Repeats | None]()
    rng = random.Random(3)
    for row in range(25):
        table.reserve(row + 1)
        table.clear(row)
        model[row] = None
    t = 0
    for _ in range(6000):
        row = rng.randrange(25)
        t += rng.randrange(-50, 400)  # (out of order at times)
        op = rng.random()
        want = model[row] or _Repeats()
        assert table.surprise(row, 0.5, t, 2000.0) == want.surprise(0.5, t, 2000.0)
        if op < 0.6:
            if model[row] is None:
                model[row] = _Repeats()
            repeat = rng.random() < 0.2
            table.note(row, repeat, t, 2000.0)
            model[row].note(repeat, t, 2000.0)
        elif op < 0.95:
            table.learn(row)
            if model[row] is not None:
                model[row].events += 1
                model[row].repeats += model[row].repeated
        else:
            table.clear(row)
            model[row] = None
    assert [_fields(table.get(row)) for row in model] == [_fields(m) for m in model.values()]
    copy = pickle.loads(pickle.dumps(table))  # noqa: S301 (its own bytes)
    moved = IdTable()
    for row in model:  # record by record (an incremental commit's)
        w = Writer()
        c = table.get(row)
        w.count(c is not None)
        if c is not None:
            c.dump(w)
        r = Reader(w.bytes())
        moved.reserve(row + 1)
        moved.put(row, IdCounts.load(r) if r.count() else None)
    for other in (copy, moved):
        assert other.rows == table.rows == 25
        assert [_fields(other.get(row)) for row in model] == [_fields(m) for m in model.values()]
        other.reserve(40)
        other.clear(39)
        other.note(39, True, t, 2000.0)  # grows and goes on
        assert _fields(other.get(39)) == (0, 0, 1.0, t, True)


def _fields(c: IdCounts | _Repeats | None) -> tuple[object, ...] | None:
    if c is None:
        return None
    return (c.events, c.repeats, c.recent, c.last_ms, bool(c.repeated))


def test_replayed_id_is_surprising_and_a_burst_more_so() -> None:
    store = FeatureStore(REPLAY)
    feed(store, (with_id(i) for i in range(300)))
    fresh = store.observe(with_id(300), learn=True)
    assert fresh.surprise["replayed_id"] == 0.0
    replays = feed(store, (with_id(301 + k, f"id-{250 + k}") for k in range(3)), learn=False)
    s = [r.surprise["replayed_id"] for r in replays]
    assert 2.0 < s[0] < s[1] < s[2] <= MAX_SURPRISE
    top = replays[0].reasons[0]
    assert (top.feature, top.field, top.observed) == ("replayed_id", "event_id", "id-250")


def test_a_repeat_within_the_horizon_is_seen_after_it_not() -> None:
    store = FeatureStore(REPLAY)
    feed(store, (with_id(i) for i in range(600)))
    # id-10 was sent 590 s ago, id-350 250 s ago: only the latter is within 300 s.
    assert judged(store, with_id(600, "id-10"))["replayed_id"] == 0.0
    assert judged(store, with_id(600, "id-350"))["replayed_id"] > 2.0
    assert len(window(store)) == 301  # ids sent at 299 s .. 599 s


def test_two_producers_sending_the_same_id_are_not_repeats_of_each_other() -> None:
    store = FeatureStore(REPLAY)
    feed(store, (with_id(i, producer=p) for i in range(250) for p in ("pay-1", "pay-2")))
    assert len(window(store)) == 500  # the same 250 ids, once per producer
    assert judged(store, with_id(250, "id-100", producer="pay-2"))["replayed_id"] > 2.0
    feed(store, [with_id(250, "id-250", producer="pay-1")])
    assert judged(store, with_id(251, "id-250", producer="pay-2"))["replayed_id"] == 0.0


def test_an_evicted_producer_back_within_the_horizon_still_has_its_ids() -> None:
    store = FeatureStore(REPLAY, max_producers=1)
    feed(store, (with_id(i) for i in range(250)))
    feed(store, [with_id(250, producer="other")])  # evicts pay-1 and its counts
    feed(store, [with_id(251, "id-251")])  # back: a fresh producer (its first event)
    surprise = judged(store, with_id(252, "id-200"))["replayed_id"]
    assert surprise == -math.log10(REPLAY.novelty_prior / 2)  # a repeat after one event


def test_accepted_repeats_become_usual() -> None:
    store = FeatureStore(FeatureConfig(replay_horizon_s=64.0, burst_s=1.0))
    # A producer that re-sends every 10th event (at-least-once delivery) a second later.
    events = []
    for i in range(400):
        events.append(with_id(i))
        if i % 10 == 0:
            events.append(with_id(i, f"id-{i}"))
    feed(store, events)
    s = store.observe(with_id(401, "id-390"), learn=False).surprise["replayed_id"]
    assert 0.0 < s < 1.5


def test_the_id_window_round_trips_through_the_shared_records() -> None:
    store = FeatureStore(FeatureConfig(replay_horizon_s=3600.0))
    feed(store, (with_id(i) for i in range(100)))
    copy = restored(store)
    probe = with_id(100, "id-42")
    assert judged(copy, probe) == judged(store, probe)
    assert judged(store, probe)["replayed_id"] > 2.0
    # Fed on alike, both grow and forget alike (the table's layout may differ; its ids not).
    for s in (store, copy):
        for i in range(100, 5000):
            s.advance(slot(s), with_id(i))
    a, b = window(store), window(copy)
    assert (a.head, a.count, a.newest_ms, a.capacity) == (b.head, b.count, b.newest_ms, 4096)
    assert sorted(a.table.tolist()) == sorted(b.table.tolist())
    assert a.fps.tolist() == b.fps.tolist() and a.times.tolist() == b.times.tolist()


def test_a_baseline_starts_the_id_window_afresh() -> None:
    store = FeatureStore(REPLAY)
    feed(store, (with_id(i) for i in range(100)))
    copy = FeatureStore(REPLAY)
    copy.restore({"pay-1": store.record(slot(store))}, store.counters(), baseline=True,
                 shared=store.shared(full=True))  # fmt: skip
    assert len(window(copy)) == 0
    assert judged(copy, with_id(100, "id-42"))["replayed_id"] == 0.0


DRIFT = FeatureConfig(drift_horizon_s=4 * 3600.0)


def latency(i: int, scale: float = 1.0) -> Event:
    """One event a second; latency jitters around 100 * scale."""
    return ev(i * SECOND, numbers={"latency_ms": scale * (100.0 + 10.0 * (i * 7 % 5 - 2))})


def test_slow_creep_is_a_drift_the_fast_baseline_misses() -> None:
    store = FeatureStore(DRIFT)
    feed(store, (latency(i) for i in range(3600)))
    # +1% a minute for 90 minutes: the ~100-event moments follow it, the reference does not.
    creep = [latency(3600 + i, 1.01 ** (i / 60)) for i in range(90 * 60)]
    out = feed(store, creep)
    assert max(e.surprise["value"] for e in out) < 3.0
    assert max(e.surprise["drift"] for e in out) > 10.0
    top = max(out, key=lambda e: e.surprise["drift"]).reasons[0]
    assert (top.feature, top.field) == ("drift", "latency_ms")


def test_steady_values_give_little_drift() -> None:
    store = FeatureStore(DRIFT)
    out = feed(store, (latency(i) for i in range(4000)))
    assert max(e.surprise["drift"] for e in out) < 4.0


def test_drift_state_round_trips() -> None:
    store = FeatureStore(DRIFT)
    feed(store, (latency(i) for i in range(300)))
    copy = restored(store)
    probe = latency(300, 3.0)
    assert judged(copy, probe) == judged(store, probe)
    assert judged(store, probe)["drift"] > 0


def test_replay_and_drift_are_off_by_default() -> None:
    st = trained().view("pay-1")
    assert (st.ids, st.drifts) == (None, {})


def quiet(i: int, gap_s: float = 5.0) -> Event:
    """A slow producer: one event every ``gap_s`` seconds, mildly jittered."""
    return ev(int(i * gap_s * SECOND + (i * 7919 % 13) * 100))


def test_timed_rate_baseline_sees_a_flood_a_count_based_one_learns() -> None:
    # One event per 5 s, then a minute-long x50 flood, learned (as unflagged events are): a
    # count-based baseline has followed it by its end, a 30-minute one has not.
    flood = [ev(int(2000 * 5 * SECOND + k * 100)) for k in range(600)]
    timed = FeatureConfig(rate_fading_factor=0.03, rate_horizon_s=1800.0)
    end = {}
    for name, cfg in {"events": FeatureConfig(rate_fading_factor=0.03), "time": timed}.items():
        store = FeatureStore(cfg)
        feed(store, (quiet(i) for i in range(2000)))
        end[name] = feed(store, flood)[-1].surprise["rate"]
    assert end["events"] < 3.0 < 6.0 < end["time"]


def test_timed_rate_is_off_by_default_and_round_trips() -> None:
    assert trained().view("pay-1").arrivals is None
    store = FeatureStore(FeatureConfig(rate_horizon_s=600.0))
    feed(store, (quiet(i) for i in range(300)))
    copy = restored(store)
    assert copy.view("pay-1").arrivals is not None
    probe = quiet(300, 0.1)
    assert judged(copy, probe) == judged(store, probe)
    assert judged(store, probe)["rate"] > 0


BURSTY = FeatureConfig(novelty_burst=True, burst_s=60.0)


def test_repeated_novel_value_in_a_burst_grows_more_surprising() -> None:
    store = FeatureStore(BURSTY)
    feed(store, (normal(i) for i in range(300)))
    odd = [ev(300 * SECOND + k * 5 * SECOND, strings={"cur": "XMR"}) for k in range(4)]
    s = [e.surprise["category"] for e in feed(store, odd, learn=False)]
    assert 2.0 < s[0] < s[1] < s[2] < s[3]
    plain = FeatureStore(CFG)
    feed(plain, (normal(i) for i in range(300)))
    p = [e.surprise["category"] for e in feed(plain, odd, learn=False)]
    assert p[0] == s[0] and p[3] == p[0] < s[3]


def test_novelties_in_other_fields_do_not_multiply_each_other() -> None:
    store = FeatureStore(BURSTY)
    feed(store, (normal(i) for i in range(300)))
    first = store.observe(ev(300 * SECOND, strings={"cur": "XMR"}), learn=False)
    other = store.observe(ev(301 * SECOND, strings={"cur": "EUR", "via": "x"}), learn=False)
    again = store.observe(ev(302 * SECOND, strings={"cur": "BTC"}), learn=False)
    assert other.surprise["category"] == 0.0  # "via" is a new field: no vocabulary yet
    assert again.surprise["category"] > first.surprise["category"]


def test_a_young_vocabulary_is_not_judged() -> None:
    store = FeatureStore(FeatureConfig(min_count=50))
    feed(store, (normal(i) for i in range(40)))
    assert (
        store.observe(ev(41 * SECOND, strings={"cur": "GBP"}), learn=False).surprise["category"]
        == 0.0
    )
    feed(store, (normal(i) for i in range(42, 80)))
    assert (
        store.observe(ev(81 * SECOND, strings={"cur": "GBP"}), learn=False).surprise["category"]
        > 2.0
    )


def test_state_with_every_part_round_trips_its_record() -> None:
    # Every optional part of a producer's state in one record: read back, it is the same
    # state (the same record again) and scores the same.
    cfg = FeatureConfig(replay_horizon_s=300.0, drift_horizon_s=3600.0, rate_horizon_s=600.0,
                        novelty_burst=True, seasonal_buckets=24, window_values=100,
                        window_tail=10, max_categories=16)  # fmt: skip
    store = FeatureStore(cfg)
    feed(store, (with_id(i) for i in range(300)))
    feed(store, (ev(301 * SECOND, strings={"cur": "XMR", "order": f"o-{i}"}) for i in range(20)))
    store.observe(ev(302 * SECOND, strings={"cur": "BTC"}), learn=False)
    st = store.view("pay-1")
    assert st.ids is not None and st.drifts and st.arrivals is not None
    assert st.seasonal and st.windows and ID_FIELD in st.categorical.values()
    assert store.categories.fields.nused[st.slot]  # recent novelties
    copy = restored(store)
    assert copy.record(slot(copy)) == store.record(st.slot)
    probe = with_id(303, "id-250")
    assert judged(copy, probe) == judged(store, probe)
    assert judged(store, probe)["replayed_id"] > 2.0


def test_moments_match_river_ewmean_and_ewvar_bit_for_bit() -> None:
    from river import stats

    rng = random.Random(3)
    for fading in (0.01, 0.1, 0.5):
        ours, mean, var = Moments(fading), stats.EWMean(fading), stats.EWVar(fading)
        for _ in range(5000):
            x = rng.choice([0.0, rng.gauss(5, 2), rng.gauss(5, 2) * 1e3, -rng.expovariate(1)])
            ours.update(x)
            mean.update(x)
            var.update(x)
            assert (ours.mean, ours.var) == (mean.get(), var.get())


def test_cusum_steps_are_the_same_whether_the_drift_judge_ran_or_not() -> None:
    # The judge hands its z values to the CUSUM steps of the same event; with the drift
    # feature disabled the steps compute them themselves: the statistics must not differ.
    rng = random.Random(5)
    stores = [FeatureStore(FeatureConfig(drift_horizon_s=3600.0, disabled=off))
              for off in ((), ("drift",))]  # fmt: skip
    trace: list[list[tuple[float, float, float, float]]] = [[], []]
    for i in range(800):
        creep = (i > 400) * 0.05 * (i - 400)
        e = ev(1000 * i, numbers={"amount": 50 + rng.gauss(0, 5) + creep})
        for store, seen in zip(stores, trace, strict=True):
            store.observe(e, learn=True)
            d = store.view("pay-1").drifts["paid\x1famount"]
            seen.append((d.hi, d.lo, d.mean, d.var))
    assert max(hi for hi, _, _, _ in trace[0]) > 5.0  # the creep moved the CUSUM
    assert trace[0] == trace[1]


@settings(max_examples=200, deadline=None)
@given(
    strategies.lists(
        strategies.sampled_from([f"v{i}" for i in range(12)] + ["x"] * 8), max_size=120
    )
)
def test_categories_count_as_a_plain_counter_would(values: list[str]) -> None:
    # Values seen once are kept as fingerprints, the others by name: the surprises, novelty
    # and saturation are those of a plain count of every value.
    cap, prior = 10, 0.01
    table, seen = Counts(), Counter[str]()
    row = table.add_row()
    c = Categories(table, lambda: row)  # the row, read live
    for value in values:
        expected_new = not seen[value] and not c.saturated and c.n >= 3
        assert table.is_new(row, value, 3) == expected_new
        if not c.saturated and c.n >= 3:
            count, n = seen[value], c.n
            if count == 0:
                p = (sum(1 for k in seen.values() if k == 1) + prior) / (n + 1)
                want = min(-math.log10(min(p, 1.0)), MAX_SURPRISE)
            elif count * 20 >= n:
                want = 0.0
            else:
                p = (sum(k for k in seen.values() if k <= count) + 1) / (n + 1)
                want = min(-math.log10(min(p, 1.0)), MAX_SURPRISE)
            assert table.surprise(row, value, prior, 0.0, 3) == pytest.approx(want, rel=1e-12)
        if not c.saturated and value not in seen and len(seen) >= cap:
            seen.clear()
            table.update(row, value, cap)
            assert c.saturated and c.counts == {} and not c.once
            continue
        table.update(row, value, cap)
        if not c.saturated:
            seen[value] += 1
            assert table.count(row, value) == seen[value] and c.n == seen.total()


def test_categorical_rows_keep_their_values_through_compactions_in_small_columns() -> None:
    # Rows grow and saturate interleaved: their blocks move up and are given back, the pools
    # compact; every row keeps its values in order, and the columns stay within a small
    # factor of the values held (power-of-two blocks never merged held ~2.4x).
    rng, cap = random.Random(5), 40
    table = Counts()
    rows = [table.add_row() for _ in range(300)]
    once: dict[int, list[str]] = {r: [] for r in rows}  # a plain model of each row
    multi: dict[int, dict[str, int]] = {r: {} for r in rows}
    tops, compactions = [0], 0
    for _ in range(30_000):
        r = rng.choice(rows)
        value = f"v{int(rng.paretovariate(0.7))}"
        table.update(r, value, cap)
        if table.sat[r]:
            table.reset(r)
            once[r], multi[r] = [], {}
        elif value in multi[r]:
            multi[r][value] += 1
        elif value in once[r]:
            once[r].remove(value)
            multi[r][value] = 2
        else:
            once[r].append(value)
        compactions += table.once_pool.top < tops[-1]
        tops.append(table.once_pool.top)
    assert compactions >= 3
    for r in rows:
        assert table.counts(r) == multi[r]
        assert table.once(r).tolist() == [value_fingerprint(v) for v in once[r]]
    held = sum(len(v) for v in once.values())
    assert held > 2000 and len(table.fp) <= 2 * held + 320
    held = sum(len(v) for v in multi.values())
    assert held > 1000 and len(table.cnt) == len(table.vid) <= 2 * held + 320


MAX_COUNT = 2**31 - 1


def test_four_byte_counts_stop_at_their_bound() -> None:
    # Counts, moments and drift references hold 4-byte counts: at the bound (MAX_COUNT in
    # each module, a C constant once compiled) a row counts no more (a categorical row keeps
    # its counts as they are) instead of wrapping around.
    table = Counts()
    row = table.add_row()
    for value in ("a", "a", "b"):
        table.update(row, value, 10)
    table.n[row] = MAX_COUNT - 1
    table.update(row, "a", 10)
    assert (table.n[row], table.count(row, "a")) == (MAX_COUNT, 3)
    table.update(row, "a", 10)
    table.update(row, "c", 10)
    assert (table.n[row], table.count(row, "a"), table.count(row, "c")) == (MAX_COUNT, 3, 0)
    m = Moments(0.1)
    m.update(1.0)
    m.table.count[0] = MAX_COUNT - 1
    m.update(3.0)
    m.update(3.0)
    assert m.count == MAX_COUNT and m.mean == pytest.approx(0.1 * 3 + 0.9 * (0.1 * 3 + 0.9))
    d = Drift()
    d.learn(1.0, 0, 3_600_000, 30.0)
    d.table.count[0] = MAX_COUNT
    d.learn(2.0, 1000, 3_600_000, 30.0)
    assert d.count == MAX_COUNT and d.mean > 1.0


def test_the_id_window_forgets_the_oldest_beyond_its_bound() -> None:
    w = IdWindow(horizon_ms=10**9, max_ids=5)
    assert [w.remember(fp, fp) for fp in range(1, 9)] == [False] * 8
    assert [fp for fp in range(1, 9) if w.seen(fp)] == [4, 5, 6, 7, 8]
    assert w.remember(3, 9) is False and not w.seen(4)  # 3 came back as new, 4 went
    store = FeatureStore(FeatureConfig(replay_horizon_s=3600.0, replay_max_ids=50))
    feed(store, (with_id(i, producer=f"p{i % 2}") for i in range(300)))
    assert len(window(store)) == 50
    assert judged(store, with_id(300, "id-251", producer="p1"))["replayed_id"] > 1.0
    assert judged(store, with_id(300, "id-249", producer="p1"))["replayed_id"] == 0.0


def test_the_id_window_costs_24_bytes_per_id_of_capacity() -> None:
    w = IdWindow(horizon_ms=10**9, max_ids=3000)
    held = []
    for fp in range(1, 5000):
        w.remember(fp, fp)
        assert w.nbytes == BYTES_PER_ID * w.capacity
        held.append(len(w))
    assert BYTES_PER_ID == 24
    assert (len(w), w.capacity) == (3000, 4096)  # the ring's power of 2 at the bound
    assert w.capacity <= 2 * max(held)
    assert IdWindow(1, 1).capacity == 1 and IdWindow(1, 100).capacity == 128


def test_an_empty_id_window_round_trips_and_answers() -> None:
    w = IdWindow(60_000, 100)
    assert w.records("r", full=False) == {}  # nothing moved: nothing to write
    back = IdWindow.load(w.records("r", full=True), "r", 60_000, 100)
    assert not back.seen(pair_fingerprint("a", "1")) and not back.remember(7, 0) and back.seen(7)
    assert IdWindow.load({}, "r", 60_000, 100).capacity == 128


def test_fingerprints_tell_producer_and_id_apart() -> None:
    assert pair_fingerprint("ab", "c") != pair_fingerprint("a", "bc")
    assert pair_fingerprint("a", "b") == pair_fingerprint("a", "b") != pair_fingerprint("b", "a")


class WindowOracle:
    """What an IdWindow must answer: a dict of ids and their times, a deque of their order."""

    def __init__(self, horizon_ms: int, max_ids: int) -> None:
        self.horizon_ms, self.max_ids = horizon_ms, max_ids
        self.times: dict[int, int] = {}
        self.order: deque[int] = deque()
        self.newest_ms = -(2**62)

    def remember(self, fp: int, t_ms: int) -> bool:
        repeat = fp in self.times
        self.newest_ms = max(self.newest_ms, t_ms)
        limit = self.newest_ms - self.horizon_ms
        while self.order and self.times[self.order[0]] < limit:
            del self.times[self.order.popleft()]
        if repeat or t_ms < limit:
            return repeat
        if len(self.order) >= self.max_ids:
            del self.times[self.order.popleft()]
        self.order.append(fp)
        self.times[fp] = t_ms
        return False


@settings(max_examples=40, deadline=None)
@given(
    seed=strategies.integers(0, 2**32),
    horizon_ms=strategies.integers(1, 3000),
    max_ids=strategies.integers(1, 6000),
    steps=strategies.integers(100, 12_000),
)
def test_the_id_window_answers_as_a_dict_through_growth_evictions_and_restores(
    seed: int, horizon_ms: int, max_ids: int, steps: int
) -> None:
    # Fingerprints crowd a few home slots (half of them at the table's end: probe runs
    # wrap), so backward-shift deletions move ids around; incremental commits merge into a
    # hash, from which the window is restored now and then, or unpickled.
    rng = random.Random(seed)
    crowded = [(1 << k) - 1 - d for k in (11, 12, 13) for d in range(8)] + list(range(1, 9))
    pool = [
        (k + 1) << 20 | rng.choice(crowded) if k % 2 else rng.randrange(1, 2**64)
        for k in range(3000)
    ]
    w, oracle = IdWindow(horizon_ms, max_ids), WindowOracle(horizon_ms, max_ids)
    checkpoint: dict[str, bytes] = {}
    t = 0
    for step in range(steps):
        t += rng.randrange(-3, 6)  # out of order now and then
        fp = rng.choice(pool[: 200 + step // 2])
        assert w.seen(fp) is (fp in oracle.times)
        assert w.remember(fp, t) is oracle.remember(fp, t)
        if rng.random() < 0.01:  # a commit: changed records only
            checkpoint.update(w.records("r", full=False))
            w.committed()
            if rng.random() < 0.3:  # a restart from the checkpoint
                w = IdWindow.load(checkpoint, "r", horizon_ms, max_ids)
            elif rng.random() < 0.1:
                w = pickle.loads(pickle.dumps(w))  # noqa: S301 (our own bytes)
    assert sorted(int(w.fps[x - 1]) for x in w.table.tolist() if x) == sorted(oracle.times)
    assert all(w.seen(fp) for fp in oracle.times)
    assert (len(w), w.newest_ms) == (len(oracle.order), oracle.newest_ms)
    live = [int(w.fps[(w.head + k) & (w.capacity - 1)]) for k in range(len(w))]
    assert live == list(oracle.order)
    again = IdWindow.load(w.records("r", full=True), "r", horizon_ms, max_ids)
    assert sorted(again.table.tolist()) == sorted(w.table.tolist())


# --------------------------------------------------------------------------------------------
# What a reference covers, and the usual rate (issue 17)


def test_a_drift_reason_states_the_time_its_reference_covers() -> None:
    # 25 s of data (ten a second) is not "~4 h" of reference; four hours and more are.
    store = FeatureStore(DRIFT)
    fast = [ev(i * 100, numbers={"latency_ms": 100.0 + 10.0 * (i * 7 % 5 - 2)}) for i in range(251)]
    feed(store, fast)
    probe = ev(25_100, numbers={"latency_ms": 400.0})
    (reason,) = [r for r in store.explain(slot(store), probe) if r.feature == "drift"]
    assert reason.expected.endswith("(reference over 25 s)")
    feed(store, (latency(i) for i in range(26, 5 * 3600)))
    (reason,) = [
        r for r in store.explain(slot(store), latency(5 * 3600, 4.0)) if r.feature == "drift"
    ]
    assert reason.expected.endswith("(reference over ~4 h)")


TIMED = FeatureConfig(rate_fading_factor=0.03, rate_horizon_s=1800.0)


@pytest.mark.parametrize("arrivals", ["pairs", "poisson"])
def test_the_usual_rate_is_events_per_second(arrivals: str) -> None:
    # One event a second: in pairs sharing a timestamp every 2 s, or Poisson. The smoothed
    # inter-arrival is a mean of logs (0 for the second of a pair): ~22/s and ~1.8/s.
    rng = random.Random(4)
    times = (
        [(i // 2) * 2 * SECOND for i in range(2 * 3600)]
        if arrivals == "pairs"
        else list(itertools.accumulate(int(rng.expovariate(1 / SECOND)) for _ in range(7200)))
    )
    store = FeatureStore(TIMED)
    feed(store, (ev(t) for t in times))
    flood = [ev(times[-1] + k) for k in range(1, 40)]
    reason = feed(store, flood, learn=False)[-1].reasons[0]
    assert reason.feature == "rate"
    assert float(reason.expected.removesuffix("/s")) == pytest.approx(1.0, rel=0.1)
    assert float(reason.observed.removesuffix("/s")) > 5.0  # smoothed over ~30 events
    rate = store.rate
    assert rate.usual_ms(slot(store)) == restored(store).rate.usual_ms(slot(restored(store)))


def test_a_pause_of_the_stream_is_time_that_did_not_happen() -> None:
    cfg = FeatureConfig(drift_horizon_s=4 * 3600.0, rate_horizon_s=1800.0)
    store = FeatureStore(cfg, track_changes=True)
    for i in range(300):  # as the pipeline does: the pause first, then the event
        assert store.paused(i * SECOND, 20.0, 60_000) == 0
        store.observe(latency(i), learn=True)
    s = slot(store)
    (drift,) = store.view("pay-1").drifts.values()
    rate = store.rate.drifts
    assert rate is not None
    before = (store.clock.last_ms[s], drift.first_ms, drift.last_ms, rate.first_ms[s])
    usual_ms = store.rate.usual_ms(s)
    store.committed()
    assert store.paused(299 * SECOND + 5 * 60 * SECOND, 20.0, 60_000) == 5 * 60 * SECOND
    after = (store.clock.last_ms[s], drift.first_ms, drift.last_ms, rate.first_ms[s])
    assert after == tuple(t + 5 * 60 * SECOND for t in before)
    assert store.rate.usual_ms(s) == usual_ms
    assert "pay-1" in store.dirty  # every producer's time moved: the next commit writes it


def test_a_million_restored_rows_free_cleanly() -> None:
    # Compiled, each block move handed the column back as a view of the last view: restoring
    # 100k shop producers (about a million rows of values) chained views that deep, and
    # freeing them overflowed the C stack (a segfault, -11). In a subprocess, so a crash
    # fails this test rather than the run.
    code = (
        "from detector.core.codec import Reader, Writer\n"
        "from detector.core.features.categories import Counts\n"
        "c = Counts()\n"
        "r = c.add_row()\n"
        "for v in ('a', 'a', 'b', 'b', 'c'):\n"
        "    c.update(r, v, 64)\n"
        "w = Writer()\n"
        "c.dump(r, w)\n"
        "record = w.bytes()\n"
        "for _ in range(1_000_000):\n"
        "    c.load(c.add_row(), Reader(record))\n"
        "del c\n"
        "print('freed')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert (out.returncode, out.stdout) == (0, "freed\n"), out.stderr[-2000:]
