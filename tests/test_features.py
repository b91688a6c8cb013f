"""Per-producer state and feature evidence (detector/features.py)."""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterable

from detector.events import Decoder, Event
from detector.features import FEATURES, MAX_SURPRISE, Evidence, FeatureConfig, FeatureStore

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
    st = store.producers["pay-1"]
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
    before = store.evidence(store.state("pay-1"), odd)
    assert store.observe(odd, learn=True) == before
    # Had the event been part of its own baseline, a repeat would look less surprising.
    again = store.observe(ev(201 * SECOND, numbers={"amount": 900.0, "qty": 1.0}), learn=False)
    assert again.surprise["value"] < before.surprise["value"]


def test_learn_false_leaves_baselines_but_advances_clock() -> None:
    store = trained()
    st = store.producers["pay-1"]
    numeric = {k: (m.count, m.mean.get(), m.var.get()) for k, m in st.numeric.items()}
    cats = {k: dict(c.counts) for k, c in st.categorical.items()}
    n, size_count = st.n, st.size.count
    store.observe(ev(300 * SECOND, numbers={"amount": 5e6}, strings={"cur": "XMR"}), learn=False)
    assert {k: (m.count, m.mean.get(), m.var.get()) for k, m in st.numeric.items()} == numeric
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
    ids = store.producers["pay-1"].categorical["paid\x1forder_id"]
    assert ids.saturated
    assert ids.counts == {}
    evidence = store.observe(ev(200 * SECOND, strings={"order_id": "o-new", "cur": "EUR"}), False)
    assert evidence.surprise["category"] == 0.0
    # A low-cardinality field of the same producer is still judged.
    evidence = store.observe(ev(201 * SECOND, strings={"order_id": "o-x", "cur": "XMR"}), False)
    assert evidence.reasons[0].field == "cur"


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


def test_pickle_round_trip_gives_identical_evidence() -> None:
    events = mixed_stream(1200)
    store = FeatureStore(CFG, max_producers=6, idle_ttl_ms=3_600_000)
    feed(store, events[:600])
    restored = pickle.loads(pickle.dumps(store))  # noqa: S301 (our own bytes)
    assert restored.evicted == store.evicted
    assert list(restored.producers) == list(store.producers)
    assert store.evicted > 0
    assert feed(restored, events[600:]) == feed(store, events[600:])
    assert restored.evicted == store.evicted


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
    size = len(pickle.dumps(store))
    burst(store, 10 * cap, 20 * cap)
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
