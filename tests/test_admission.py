"""Admission (detector/core/admission.py): a full producer store admits newcomers only in place of
producers in warm-up, within a per-minute budget, or after the idle TTL; the rest share the
overflow state, counted by a distinct sketch and reported in ``producer_explosion`` alerts.
Part of the resource exhaustion suite (tests/test_exhaustion.py, docs/security.md)."""

from __future__ import annotations

import math
import random

import pytest

from detector.core.admission import OVERFLOW, DistinctSketch
from detector.core.alerts import PRODUCER_EXPLOSION
from detector.core.pipeline import Pipeline
from detector.core.scoring import load_spec
from tests.test_exhaustion import MINUTE, SECOND, alerts_of, established, ev, reason, spec_with


def test_minted_ids_never_evict_established_producers() -> None:
    cap, per_min = 40, 5
    p = Pipeline(load_spec("stats"), max_producers=cap, admit_per_min=per_min)
    legit = [f"svc-{k}" for k in range(10)]
    t = established(p, legit, 250)
    slots = {name: p.store.producers[name] for name in legit}
    n_before = {name: p.store.view(name).n for name in legit}
    # 20,000 fresh ids over ~10 minutes of event time, the legitimate producers carrying on.
    flood, events = 20_000, []
    for i in range(flood):
        t += 30
        events.append(ev(f"minted-{i}", t, i))
        if i % 33 == 0:
            events.extend(ev(name, t + k, 250 + i // 33) for k, name in enumerate(legit))
    out = p.process(events)

    assert len(out) == len(events) and not any(v.error for v in out)  # nothing lost
    assert len(p.store) == cap
    for name in legit:  # same slots, never evicted (that would restart their counts)
        assert p.store.producers[name] == slots[name]
        assert p.store.view(name).n == n_before[name] + flood // 33 + 1
    minutes = (t - events[0].event_time_ms) // MINUTE + 2
    adm = p.admission
    assert adm.admitted <= per_min * minutes
    assert adm.refused == flood - (cap - len(legit)) - adm.admitted
    assert p.store.view(OVERFLOW).n == adm.refused
    # No alert about a legitimate producer; explosion alerts rate limited by the cooldown.
    alerts = alerts_of(out)
    assert not [a for a in alerts if a.producer in legit]
    explosions = [a for a in alerts if a.kind == PRODUCER_EXPLOSION]
    cooldown = p.decision.cooldown_ms
    assert 1 <= len(explosions) <= math.ceil((t - events[0].event_time_ms) / cooldown) + 1
    assert all(a.producer == OVERFLOW for a in explosions)
    reported = sum(int(reason(a, "refused_events")) for a in explosions)
    assert reported + adm.report_refused == adm.refused
    # Every minted id is distinct: the distinct estimate tracks the refused events (HLL, m=256).
    for a in explosions[1:]:
        refused, distinct = (
            int(reason(a, "refused_events")),
            int(reason(a, "refused_producers")[1:]),
        )
        assert abs(distinct - refused) <= 0.25 * refused


def test_newcomers_replace_only_producers_in_warm_up_within_the_minute_budget() -> None:
    p = Pipeline(spec_with(warmup_events=20), max_producers=3, admit_per_min=2)
    established(p, ["old"], 25)  # past warm-up, and the least recently seen below
    t = 25 * SECOND
    p.process([ev("young-1", t, 0), ev("young-2", t + 1, 0)])
    p.process([ev("new-1", t + 2, 0)])  # full: replaces young-1, the LRU producer in warm-up
    assert list(p.store.producers) == ["old", "young-2", "new-1"]
    p.process([ev("new-2", t + 3, 0)])  # replaces young-2: the minute's budget (2) is spent
    p.process([ev("new-3", t + 4, 0)])
    assert list(p.store.producers) == ["old", "new-1", "new-2"]
    assert (p.admission.admitted, p.admission.refused) == (2, 1)
    p.process([ev("new-3", t + MINUTE, 1)])  # next minute: admitted in place of new-1
    assert list(p.store.producers) == ["old", "new-2", "new-3"]
    assert p.store.evicted == 3


def test_a_store_full_of_established_producers_admits_only_after_the_idle_ttl() -> None:
    p = Pipeline(spec_with(warmup_events=20), max_producers=2, idle_ttl_ms=10 * MINUTE)
    t = established(p, ["a", "b"], 25)
    out = p.process([ev(f"x{i}", t + i, i) for i in range(50)])
    assert list(p.store.producers) == ["a", "b"]
    assert p.admission.refused == 50 and p.store.evicted == 0
    assert [a.kind for a in alerts_of(out)] == [PRODUCER_EXPLOSION]  # one, at the first refusal
    # "a" idle > TTL while "b" goes on (no pause of the whole stream, which would not count)
    b = [ev("b", t + k * 30 * SECOND, 30 + k) for k in range(1, 23)]
    p.process([*b, ev("c", t + 12 * MINUTE, 0)])
    assert list(p.store.producers) == ["b", "c"]


def test_distinct_sketch_is_deterministic_and_close() -> None:
    rng = random.Random(7)
    ids = [f"p-{rng.getrandbits(40)}" for _ in range(50_000)]
    a, b = DistinctSketch(), DistinctSketch()
    for x in ids:
        a.add(x)
    for x in reversed(ids):
        b.add(x)
    assert a.to_hex() == b.to_hex()
    assert abs(a.estimate() - len(set(ids))) <= 0.25 * len(set(ids))
    assert DistinctSketch().estimate() == 0


def test_overflow_key_cannot_be_a_decoded_producer() -> None:
    from detector.core.errors import InvalidEventError
    from detector.core.events import Decoder

    with pytest.raises(InvalidEventError) as info:
        Decoder().decode("s", "1-0", {b"producer": OVERFLOW.encode(), b"v": b"1"})
    assert info.value.reason == "empty_producer"
