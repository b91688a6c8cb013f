"""Peer groups (issue 17): kinds of producers, foreign types, releases, warm starts, and the
summary shared across partitions through Redis."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from detector.core.checkpoint import Signer, decode_fields, encode_fields
from detector.core.events import Event
from detector.core.features import peers
from detector.core.features.peers import dump_summary, load_summary, merged
from detector.core.pipeline import Pipeline, Verdicts
from detector.core.scoring import ModelSpec, load_spec
from detector.core.settings import PEERS_KEY, Settings
from detector.gateway import partitions
from detector.offline import Scoring, score_file
from detector.runtime import peering
from detector.runtime.worker import Worker
from tests.conftest import TEST_KEY
from tests.partitioned import BASE
from tests.partitioned import append as append_partitioned

KINDS = {
    "cart": ("cart.item_added", "cart.item_removed", "cart.checked_out"),
    "payment": ("payment.authorized", "payment.captured"),
}
START = 1_767_225_600_000


def fleet(
    per_producer: int = 400, instances: int = 3, seed: int = 1, start: int = START
) -> list[Event]:
    """Interleaved traffic of two kinds of services, ``instances`` producers each."""
    rng = random.Random(seed)
    producers = [f"{k}-{i}" for k in KINDS for i in range(1, instances + 1)]
    out, t = [], start
    for step in range(per_producer * len(producers)):
        t += rng.randint(20, 180)
        producer = producers[step % len(producers)]
        etype = rng.choice(KINDS[producer.split("-")[0]])
        out.append(Event("s", f"{t}-{step}", producer, t, etype,
                         {"amount": round(rng.lognormvariate(3, 0.3), 2)}, {}, 80))  # fmt: skip
    return out


def event(producer: str, t: int, etype: str, k: int = 0) -> Event:
    return Event("s", f"{t}-x{k}", producer, t, etype, {"amount": 20.0}, {}, 80)


def alerts(out: Verdicts) -> list[tuple[str, str, str, str]]:
    return [(a.producer, a.reasons[0].feature, a.reasons[0].observed, a.reasons[0].expected)
            for a in out.emitted()]  # fmt: skip


def with_features(spec: ModelSpec, **changes: object) -> ModelSpec:
    return dataclasses.replace(spec, features=dataclasses.replace(spec.features, **changes))


def test_a_foreign_type_alerts_at_its_first_event_naming_the_kind_that_sends_it() -> None:
    p = Pipeline(load_spec("stats"))
    history = fleet()
    assert alerts(p.process(history)) == []
    t = history[-1].event_time_ms
    out = p.process([event("payment-2", t + 100, "cart.item_added")])
    (v,) = out
    assert v.alert is not None and not v.held
    top = v.alert.reasons[0]
    assert (top.feature, top.field, top.observed) == ("peer", "type", "cart.item_added")
    assert top.expected == "usually sent by cart producers, never by payment producers"
    assert "cart-" not in " ".join(r.expected + r.observed for r in v.alert.reasons)  # no ids


def test_a_release_adopted_by_a_kind_pages_once() -> None:
    p = Pipeline(load_spec("stats"))
    history = fleet()
    p.process(history)
    t = history[-1].event_time_ms
    rollout = [event(f"cart-{i}", t + 1000 * i + 60_000 * k, "cart.saved_for_later", k)
               for k in range(3) for i in (1, 2, 3)]  # fmt: skip
    rollout.sort(key=lambda e: e.event_time_ms)
    got = [g for g in alerts(p.process(rollout)) if g[1] != "silence"]  # the others paused
    assert len(got) == 1  # the first adopter's first event; the group adopting it is no news
    producer, feature, observed, expected = got[0]
    assert (producer, feature, observed) == ("cart-1", "type", "cart.saved_for_later")
    assert expected.endswith("new to every cart producer")


NOVELTY = ("type", "schema", "peer")  # what a release's new type alerts with
LONG = 5000  # events per producer: a history long enough for a new type to page by its score


def release(t: int, producers: tuple[str, ...], minutes: int = 30) -> list[Event]:
    """``producers`` adopting ``cart.saved_for_later`` a minute apart, each sending it every
    ~70 s for ``minutes`` (longer than the cooldown), beside the fleet's usual traffic."""
    rng = random.Random(7)
    out = []
    for i, producer in enumerate(producers):
        ts = t + 60_000 * i
        while ts < t + minutes * 60_000:
            out.append(event(producer, ts, "cart.saved_for_later", len(out)))
            ts += rng.randint(50_000, 90_000)
    around = fleet(per_producer=minutes * 100, seed=3, start=t)
    return sorted([*out, *around], key=lambda e: e.event_time_ms)


def test_a_release_longer_than_the_cooldown_pages_once_for_the_group() -> None:
    p = Pipeline(load_spec("stats"))
    history = fleet(per_producer=LONG)
    p.process(history)
    t = history[-1].event_time_ms + 100
    got = [g for g in alerts(p.process(release(t, ("cart-1", "cart-2", "cart-3"))))
           if g[1] in NOVELTY]  # fmt: skip
    assert [g[:3] for g in got] == [("cart-1", "type", "cart.saved_for_later")]
    # The window is bounded: past it, a type's novelty is the producer's own past's to judge.
    peers, slot = p.store.peers, p.view("cart-3").slot
    window = round(p.store.cfg.peer_release_s * 1000)
    assert peers.adopted(slot, event("cart-3", t + window, "cart.saved_for_later"))
    assert not peers.adopted(slot, event("cart-3", t + window + 1, "cart.saved_for_later"))


def test_a_foreign_type_sent_by_two_of_a_kind_is_no_release() -> None:
    p = Pipeline(load_spec("stats"))
    history = fleet()
    p.process(history)
    t = history[-1].event_time_ms + 100
    out = p.process([event("payment-1", t, "cart.item_added"),
                     event("payment-2", t + 1000, "cart.item_added")])  # fmt: skip
    assert [a.producer for a in out.emitted()] == ["payment-1", "payment-2"]


def test_without_peers_each_adopter_of_a_release_pages() -> None:
    p = Pipeline(with_features(load_spec("stats"), peers=False))
    history = fleet()
    p.process(history)
    t = history[-1].event_time_ms
    rollout = [event(f"cart-{i}", t + 1000 * i, "cart.saved_for_later") for i in (1, 2, 3)]
    assert len(alerts(p.process(rollout))) == 3  # what peers change


def test_pattern_groups_name_kinds_by_id() -> None:
    spec = with_features(load_spec("stats"), peer_patterns=("cart-*", "^(?P<kind>pay)ment-"))
    p = Pipeline(spec)
    history = fleet()
    p.process(history)
    assert sorted(p.store.peers.local) == ["cart-*", "pay"]
    assert p.store.peers.kind[p.view("payment-3").slot] == "pay"
    t = history[-1].event_time_ms
    (v,) = p.process([event("payment-1", t + 100, "cart.checked_out")])
    assert v.alert is not None
    assert v.alert.reasons[0].expected == "usually sent by cart-* producers, never by pay producers"


def test_a_newcomer_of_a_known_kind_starts_warm() -> None:
    p = Pipeline(load_spec("stats"))
    history = fleet()
    p.process(history)
    t = history[-1].event_time_ms
    warmup = p.decision.warmup_events
    # A newcomer sending its kind's types at its kind's rate, among the others' traffic:
    # nothing to say while it warms up (but that it is new).
    calm = [event("cart-9", t + 600 * k, KINDS["cart"][k % 3], k) for k in range(1, 50)]
    around = fleet(per_producer=10, seed=2, start=t)
    out = p.process(sorted([*calm, *around], key=lambda e: e.event_time_ms))
    assert [a for a in out.emitted() if a.reasons[0].feature != "new_producer"] == []
    slot = p.view("cart-9").slot
    assert p.store.clock.n[slot] < warmup and p.store.peers.kind[slot] == "cart"
    # Still in warm-up: a type only payment producers send is a departure from its kind.
    t2 = max(calm[-1].event_time_ms, around[-1].event_time_ms) + 100
    (v,) = p.process([event("cart-9", t2, "payment.captured", 99)])
    assert v.alert is not None and v.score == 1.0
    assert v.alert.reasons[0].expected.startswith("usually sent by payment producers")
    # Another newcomer sending 50x as fast as its kind: one alert, in warm-up.
    flood = [event("payment-8", t2 + 10 * k, "payment.authorized", k) for k in range(1, 60)]
    got = [g for g in alerts(p.process(flood)) if g[1] != "new_producer"]
    assert [g[:2] for g in got] == [("payment-8", "peer")]
    assert got[0][3].startswith("payment producers send ~")


def test_minted_kinds_are_bounded_and_their_overflow_alerts_once() -> None:
    spec = load_spec("stats")
    spec = with_features(spec, peer_max_kinds=2, peer_patterns=("^(?P<kind>[a-z0-9]+)-",))
    p = Pipeline(spec)
    history = fleet()
    p.process(history)  # two kinds: the bound
    t = history[-1].event_time_ms
    minted = [event(f"rogue{k}-1", t + 1000 * k + j, f"rogue{k}.x", j)
              for k in range(3) for j in range(2)]  # fmt: skip
    minted.sort(key=lambda e: e.event_time_ms)
    got = [g for g in alerts(p.process(minted)) if g[1] == "peer"]
    assert len(got) == 1 and got[0][2] == "more than 2 kinds"
    assert sorted(p.store.peers.local) == ["cart", "payment"]


def test_the_summary_is_checkpointed() -> None:
    spec = load_spec("stats")
    a = Pipeline(spec)
    history = fleet()
    a.process(history)
    b = Pipeline(spec)
    signer = Signer(TEST_KEY)
    fields = encode_fields(signer, a.snapshot({}, full=True))
    b.restore(decode_fields(signer, {k.encode(): v for k, v in fields.items()}))
    assert dump_summary(b.store.peers.local) == dump_summary(a.store.peers.local)
    t = history[-1].event_time_ms
    after = [event("payment-2", t + 100, "cart.item_added"), event("cart-1", t + 200, "x.y")]
    assert alerts(a.process(after)) == alerts(b.process(after))


def test_summaries_merge_as_sums() -> None:
    p = Pipeline(load_spec("stats"))
    p.process(fleet(per_producer=1200))  # levels: ~300 values of a field per member
    one = load_summary(p.store.peers.share())
    two = merged([one, one], 64)
    assert two["cart"].members == 2 * one["cart"].members == 6
    events, senders, first_ms = one["cart"].types["cart.item_added"]
    row = two["cart"].types["cart.item_added"]
    assert row == [2 * events, 2 * senders, first_ms]  # counts add up; the first is the first
    key = "cart.item_added\x1famount"  # the members' levels of a field add up too
    members, total, squares, var = one["cart"].levels[key]
    assert members == 3 and 3 * 2.9 < total < 3 * 3.2 and var > 0
    assert two["cart"].levels[key] == [2 * members, 2 * total, 2 * squares, 2 * var]


# --------------------------------------------------------------------------------------------
# Across partitions and processes


def _fields(e: Event) -> dict[str, str]:
    return {"producer": e.producer, "ts": str(e.event_time_ms), "type": e.type or "",
            "data": orjson.dumps(e.numbers).decode()}  # fmt: skip


def _named(p_count: int, p: int, kind: str, n: int) -> list[str]:
    """``n`` producer ids of ``kind`` that land in partition ``p``."""
    out, i = [], 1
    while len(out) < n:
        name = f"{kind}-{i}"
        if partitions.partition_of(name, p_count) == p:
            out.append(name)
        i += 1
    return out


def test_two_partitioned_workers_share_their_summaries_through_redis(
    r: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peering, "PEER_SHARE_INTERVAL_S", 0.0)  # every round: no waiting
    carts, payments = _named(2, 0, "cart", 3), _named(2, 1, "payment", 3)
    rename = {f"cart-{i}": c for i, c in enumerate(carts, 1)}
    rename |= {f"payment-{i}": c for i, c in enumerate(payments, 1)}
    history = [dataclasses.replace(e, producer=rename[e.producer]) for e in fleet()]
    append_partitioned(r, [_fields(e) for e in history], 2)
    base = Settings(redis_url=redis_url, streams=(BASE,), partitions=2, worker_count=2,
                    until_idle=True, idle_timeout_ms=300, block_ms=100,
                    checkpoint_secret=TEST_KEY)  # fmt: skip

    def worker(i: int, **kwargs: Any) -> Worker:
        return Worker(dataclasses.replace(base, consumer=f"w{i}", worker_index=i), **kwargs)

    worker(0).run()  # the cart producers' partition: publishes what cart producers send
    worker(1).run()  # the payment producers': merges it
    key = PEERS_KEY.format(group=base.group)
    raw = redis.Redis.from_url(redis_url).hgetall(key)  # signed bytes, not text
    assert sorted(raw) == [b"p0", b"p1"]
    p0 = load_summary(Signer(TEST_KEY).verify(key + "\0p0", raw[b"p0"]))
    assert sorted(p0) == ["cart"] and p0["cart"].members == 3
    # A payment producer sends a cart type: its worker never saw a cart producer, yet knows.
    t = history[-1].event_time_ms + 100
    foreign = _fields(event(payments[0], t, "cart.item_added"))
    r.xadd(partitions.partition_stream(BASE, 1), foreign)  # type: ignore[arg-type]
    seen: list[Verdicts] = []
    worker(1, on_verdicts=seen.append).run()
    got = [a for v in seen for a in v.emitted()]
    assert [a.reasons[0].expected for a in got] == [
        "usually sent by cart producers, never by payment producers"
    ]


def test_a_release_across_partitions_pages_once_after_the_merge(redis_url: str) -> None:
    # The first adopter on one partition, the others on another: each partition learns of
    # the other's adoption at the next exchange (every 10 s of event time here), and the
    # group still pages once.
    spec, signer = load_spec("stats"), Signer(TEST_KEY)
    r = redis.Redis.from_url(redis_url)  # the summaries are bytes
    a, b = Pipeline(spec), Pipeline(spec)
    on_a = {"cart-1", "payment-1"}

    def run(events: list[Event]) -> list[tuple[str, str, str, str]]:
        return [*alerts(a.process([e for e in events if e.producer in on_a])),
                *alerts(b.process([e for e in events if e.producer not in on_a]))]  # fmt: skip

    history = fleet(per_producer=LONG)
    run(history)
    peering.exchange(r, "g", signer, {"p0": a, "p1": b})
    t = history[-1].event_time_ms + 100
    rollout = release(t, ("cart-1", "cart-2", "cart-3"))
    got = []
    for start in range(t, rollout[-1].event_time_ms + 1, 10_000):
        got += run([e for e in rollout if start <= e.event_time_ms < start + 10_000])
        peering.exchange(r, "g", signer, {"p0": a, "p1": b})
    novelty = [g[:3] for g in got if g[1] in NOVELTY]
    assert novelty == [("cart-1", "type", "cart.saved_for_later")]


def test_offline_score_equals_run_with_peers(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    history = fleet(per_producer=300)
    t = history[-1].event_time_ms
    extra = [
        event("payment-2", t + 100, "cart.item_added"),
        *(event(f"cart-{i}", t + 1000 * i, "cart.saved_for_later", i) for i in (1, 2, 3)),
    ]
    entries = [_fields(e) for e in (*history, *extra)]
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    out = tmp_path / "scores.csv"
    score_file(jsonl, out, Scoring(model="stats", stream=stream_name))
    offline = [line.split(",")[3] for line in out.read_text().splitlines()[1:]]
    pipe = r.pipeline(transaction=False)
    for e in entries:
        pipe.xadd(stream_name, e)  # type: ignore[arg-type]
    ids = list(pipe.execute())
    seen: list[Verdicts] = []
    worker_factory(on_verdicts=seen.append).run()
    online = {v.event.entry_id: v.alert is not None for vs in seen for v in vs}
    assert offline == [str(int(online[i])) for i in ids]
    assert offline.count("1") == 2  # the foreign type, and the release once


# --------------------------------------------------------------------------------------------
# Departure by values: a producer whose level leaves its kind's


def herd(
    hours: float, start: int = START, seed: int = 4, creep: tuple[str, float] | None = None,
    levels: dict[str, float] | None = None,
) -> list[Event]:  # fmt: skip
    """``hours`` of the two kinds' traffic, each producer an event of its kind's first type
    every ~24 s (its recent level is the last ~40 minutes'), their ``amount`` log-normal about
    20 (times ``levels[producer]``); with ``creep`` ``(producer, factor)``, that producer's
    amounts grow geometrically to ``factor`` times their own by the end."""
    rng = random.Random(seed)
    producers = [f"{k}-{i}" for k in KINDS for i in range(1, 4)]
    span = round(hours * 3_600_000)
    out, t, step = [], start, 0
    while t < start + span:
        t += rng.randint(2_000, 6_000)
        producer = producers[step % len(producers)]
        amount = rng.lognormvariate(3, 0.3) * (levels or {}).get(producer, 1.0)
        if creep is not None and producer == creep[0]:
            amount *= creep[1] ** ((t - start) / span)
        etype = KINDS[producer.split("-")[0]][0]
        out.append(Event("s", f"{t}-{step}", producer, t, etype, {"amount": round(amount, 2)},
                         {}, 80))  # fmt: skip
        step += 1
    return out


def peer_alerts(out: Verdicts) -> list[tuple[str, str, str, str]]:
    return [(a.producer, a.reasons[0].field, a.reasons[0].observed, a.reasons[0].expected)
            for a in out.emitted() if a.reasons[0].feature == "peer"]  # fmt: skip


def test_an_established_producer_drifting_away_from_its_kind_is_flagged_once() -> None:
    p = Pipeline(load_spec("stats"))
    history = herd(8)
    assert alerts(p.process(history)) == []
    # cart-1's amounts double over 16 hours: too slowly for its own drift reference (4 h) to
    # fall far behind, but its level ends far from the other carts'.
    t = history[-1].event_time_ms + 1000
    out = p.process(herd(16, start=t, seed=5, creep=("cart-1", 2.0)))
    got = peer_alerts(out)
    assert [g[:2] for g in got] == [("cart-1", "amount")]  # once, on the field that moved
    observed, expected = got[0][2:]
    assert observed.startswith("recent level ")
    assert expected.startswith("cart producers' usual level ")  # the kind and its range
    low, high = (float(x) for x in expected.rsplit(" ", 3)[1::2])
    assert low < 20 < high < float(observed.rsplit(" ", 1)[1])
    assert "cart-" not in " ".join(r.observed + r.expected for a in out.emitted()
                                   for r in a.reasons)  # fmt: skip


def test_a_producer_at_its_own_steady_level_is_no_departure() -> None:
    # payment-1 has always sent amounts twice the other payments': its own history is long
    # and not drifting, so it is not flagged, however far from its kind; nor is any other.
    p = Pipeline(load_spec("stats"))
    assert peer_alerts(p.process(herd(24, levels={"payment-1": 2.0}))) == []


def test_a_kind_too_small_or_in_disagreement_gives_no_verdict() -> None:
    spec = load_spec("stats")
    creep = ("cart-1", 2.0)
    # Members' levels far apart (x1, x4, x16): no usual range, no verdict.
    p = Pipeline(spec)
    apart = {"cart-2": 4.0, "cart-3": 16.0}
    history = herd(8, levels=apart)
    p.process(history)
    t = history[-1].event_time_ms + 1000
    assert peer_alerts(p.process(herd(16, start=t, seed=5, creep=creep, levels=apart))) == []
    # Two carts only: one other member is no kind's range.
    p = Pipeline(spec)
    pair = [e for e in herd(8) if e.producer != "cart-3"]
    p.process(pair)
    t = pair[-1].event_time_ms + 1000
    rest = [e for e in herd(16, start=t, seed=5, creep=creep) if e.producer != "cart-3"]
    assert peer_alerts(p.process(rest)) == []


def test_a_newcomer_departing_from_its_kinds_level_is_flagged_in_warm_up() -> None:
    p = Pipeline(load_spec("stats"))
    history = herd(8)
    p.process(history)
    t = history[-1].event_time_ms + 1000
    rng = random.Random(6)
    newcomer = [Event("s", f"{t + 7_000 * k}-n", "cart-9", t + 7_000 * k, "cart.item_added",
                      {"amount": round(rng.lognormvariate(3, 0.3) * 3, 2)}, {}, 80)
                for k in range(150)]  # fmt: skip
    around = herd(0.3, start=t, seed=7)
    out = p.process(sorted([*newcomer, *around], key=lambda e: e.event_time_ms))
    got = peer_alerts(out)
    assert [g[:2] for g in got] == [("cart-9", "amount")]
    assert p.store.clock.n[p.view("cart-9").slot] < p.decision.warmup_events


def test_a_departure_across_partitions_is_flagged_after_the_merge(redis_url: str) -> None:
    # cart-1 alone on one partition: its kind's levels are the other partition's, learned
    # through the summaries they exchange through Redis (every 10 minutes of event time).
    spec, signer = load_spec("stats"), Signer(TEST_KEY)
    r = redis.Redis.from_url(redis_url)  # the summaries are bytes
    events = herd(8)
    events += herd(16, start=events[-1].event_time_ms + 1000, seed=5, creep=("cart-1", 2.0))

    def run(exchange: bool) -> list[tuple[str, str, str, str]]:
        a, b, got = Pipeline(spec), Pipeline(spec), []
        for start in range(START, events[-1].event_time_ms + 1, 600_000):
            part = [e for e in events if start <= e.event_time_ms < start + 600_000]
            got += peer_alerts(a.process([e for e in part if e.producer == "cart-1"]))
            got += peer_alerts(b.process([e for e in part if e.producer != "cart-1"]))
            if exchange:
                peering.exchange(r, "departure", signer, {"p0": a, "p1": b})
        return got

    assert run(exchange=False) == []  # alone, cart-1 has no kind to depart from
    got = run(exchange=True)
    assert [g[:2] for g in got] == [("cart-1", "amount")]
    assert got[0][3].startswith("cart producers' usual level ")


# --------------------------------------------------------------------------------------------
# Departure by rates: a producer whose rate leaves its kind's


def traffic(
    hours: float, start: int = START, seed: int = 8, creep: dict[str, float] | None = None,
    rates: dict[str, float] | None = None,
) -> list[Event]:  # fmt: skip
    """``hours`` of the two kinds' traffic, each producer's events a Poisson process of ~0.1/s
    (times ``rates[producer]``) that every producer's rate follows up and down together
    (x0.45 to x2.2 and back every 6 hours, as a daily curve would); with ``creep``, a
    producer's rate grows geometrically to ``creep[producer]`` times its own by the end."""
    rng = random.Random(seed)
    span = hours * 3_600_000
    out = []
    for k, producer in enumerate(f"{kind}-{i}" for kind in KINDS for i in range(1, 4)):
        etype, t, step = KINDS[producer.split("-")[0]][0], float(start), 0
        while True:
            wave = math.exp(0.8 * math.sin(2 * math.pi * (t - START) / 21_600_000))
            factor = (creep or {}).get(producer, 1.0) ** ((t - start) / span)
            t += rng.expovariate(0.1 * wave * factor * (rates or {}).get(producer, 1.0)) * 1000
            if t >= start + span:
                break
            amount = round(rng.lognormvariate(3, 0.3), 2)
            out.append(Event("s", f"{int(t)}-{k}-{step}", producer, int(t), etype,
                             {"amount": amount}, {}, 80))  # fmt: skip
            step += 1
    out.sort(key=lambda e: (e.event_time_ms, e.producer))
    return out


def test_an_established_producer_whose_rate_drifts_away_from_its_kind_is_flagged_once() -> None:
    p = Pipeline(load_spec("stats"))
    history = traffic(8)
    assert peer_alerts(p.process(history)) == []
    # Over 6 hours cart-1's rate creeps to x3.5 its own and payment-2's to a third: slowly
    # enough for their rate references (30 min) to follow, while their kinds keep theirs.
    t = history[-1].event_time_ms + 1000
    out = p.process(traffic(6, start=t, seed=9, creep={"cart-1": 3.5, "payment-2": 1 / 3}))
    got = sorted(a for a in peer_alerts(out))
    assert [g[:2] for g in got] == [("cart-1", "rate"), ("payment-2", "rate")]  # once each
    for (producer, _, observed, expected), faster in zip(got, (True, False), strict=True):
        assert observed.startswith("recent rate ") and observed.endswith("/s")
        kind = producer.split("-")[0]
        assert expected.startswith(f"{kind} producers' usual rate ")  # the kind and its range
        low, high = (float(x.removesuffix("/s")) for x in expected.rsplit(" ", 3)[1::2])
        rate = float(observed.rsplit(" ", 1)[1].removesuffix("/s"))
        assert high < rate if faster else rate < low
    assert "cart-" not in " ".join(r.observed + r.expected for a in out.emitted()
                                   for r in a.reasons)  # fmt: skip


def test_a_producer_at_its_own_steady_rate_or_a_kind_moving_together_is_no_departure() -> None:
    # payment-1 has always sent three times as fast as the other payments: its own history
    # is long and not drifting; and every producer's rate swings x5 together: no departure.
    p = Pipeline(load_spec("stats"))
    assert peer_alerts(p.process(traffic(20, rates={"payment-1": 3.0}))) == []


def test_a_producer_departed_by_its_rate_may_depart_again_after_it_came_back() -> None:
    p = Pipeline(load_spec("stats"))
    history = traffic(8)
    p.process(history)
    t = history[-1].event_time_ms + 1000
    away = traffic(6, start=t, seed=9, creep={"cart-1": 3.5})
    assert [g[:2] for g in peer_alerts(p.process(away))] == [("cart-1", "rate")]
    slot = p.view("cart-1").slot
    assert p.store.peers.flags[slot] & peers.RATE_STRAYED
    # Back with its kind for 6 hours: it may stray again.
    t = away[-1].event_time_ms + 1000
    back = traffic(6, start=t, seed=10)
    assert peer_alerts(p.process(back)) == []
    assert not p.store.peers.flags[slot] & peers.RATE_STRAYED


def test_a_level_catching_up_with_a_restarted_reference_is_not_drifting() -> None:
    # After a new normal is accepted (the drift reference restarts, as after seed 11's slow
    # poisoning of payment-3), the recent level still holds the values before it for ~3/fading
    # values: the gap between the two is the level catching up, not the producer drifting
    # away. The same gap with a reference as old as the level is a drift.
    p = Pipeline(load_spec("stats"))
    p.process(herd(8))
    store = p.store
    value, drift, peer = store.by_name["value"], store.by_name["drift"], store.by_name["peer"]
    rows, drifts = value.rows, drift.drifts
    row = rows.find(p.view("cart-1").slot, rows.keys.by_type["cart.item_added"]["amount"])
    n = rows.moments.count[row]
    assert drifts.count[row] == n > 3 / p.spec.features.fading_factor  # learned alike
    drifts.mean[row] = rows.moments.mean[row] - 1.0  # the level is far above its reference
    assert peer._drifting(row, 1.0)
    assert not peer._drifting(row, -1.0)
    drifts.count[row] = 60  # ... which restarted 60 values ago
    assert not peer._drifting(row, 1.0)
    drifts.count[row] = round(3 / p.spec.features.fading_factor)  # the level has forgotten
    assert peer._drifting(row, 1.0)


def test_the_levels_are_pooled_columns_that_keep_a_dicts_order() -> None:
    """Each slot's levels behave as the dict they replace (a key set again keeps its place, one
    taken out and set again goes last); slots reset, grow past their blocks and compact the
    pool without mixing up each other's; pickled and written as a table they come back equal."""
    import pickle

    from detector.core.codec import Reader, Writer
    from detector.core.features import tables

    levels, model = peers.Levels(), {}
    rng = random.Random(5)
    for slot in range(40):
        levels.reset(slot)
        model[slot] = {}
    keys = [f"t.f{i}" for i in range(12)] + [peers.RATE]
    compacted, top = False, 0
    for step in range(6000):
        slot, key = rng.randrange(40), rng.choice(keys)
        op = rng.random()
        if op < 0.5:
            y, var = rng.random(), float(step)
            levels.put(slot, key, y, var)
            model[slot][key] = (y, var)
        elif op < 0.9:
            assert levels.pop(slot, key) == model[slot].pop(key, None)
        elif op < 0.93:  # an evicted producer's slot taken afresh
            levels.reset(slot)
            model[slot] = {}
        assert levels.names(slot) == list(model[slot])
        compacted, top = compacted or levels.pool.top < top, levels.pool.top
    assert compacted  # the pool's garbage was compacted along the way
    held = {k for m in model.values() for k in m}
    assert set(levels.keys.ids) == held  # a key no slot holds is let go
    w = Writer()
    tables.put(w, levels)
    pickled = pickle.loads(pickle.dumps(levels))  # noqa: S301 (its own bytes)
    for copy in (pickled, tables.take(Reader(w.bytes()))):
        for slot, mine in model.items():
            assert copy.names(slot) == list(mine)
            assert [copy.get(slot, k) for k in mine] == list(mine.values())
        copy.put(39, "t.new", 1.0, 2.0)  # a restored table grows again
        assert copy.get(39, "t.new") == (1.0, 2.0) and copy.get(38, "t.new") is None
