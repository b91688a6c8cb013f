"""The joint feature (detector/core/features/joint.py): values each usual alone but unusual
together alert, with a reason naming the fields and their broken relation."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from detector.core.events import Event
from detector.core.features import FeatureConfig, FeatureStore
from detector.core.features.joint import JointFeature, chi2_surprise
from detector.core.pipeline import Pipeline
from detector.core.scoring import load_spec

CFG = FeatureConfig(joint_fields=4)
SECOND = 1000


def reading(t: int, flow: float, pressure: float, temp: float, producer: str = "pump-1") -> Event:
    numbers = {"flow": math.exp(flow), "pressure": math.exp(pressure), "temp": temp}
    return Event("s", f"{t}-0", producer, t, "reading", numbers, {}, 60)


def usual(r: random.Random, t: int, producer: str = "pump-1") -> Event:
    """Flow and pressure follow one factor (r ~ 0.97); the temperature its own noise."""
    f = r.gauss(0.0, 1.0)
    flow = 3.0 + 0.3 * f + 0.05 * r.gauss(0.0, 1.0)
    pressure = 2.0 + 0.3 * f + 0.05 * r.gauss(0.0, 1.0)
    return reading(t, flow, pressure, 20.0 + r.gauss(0.0, 1.0), producer)


def broken() -> Event:
    """Flow 1.5 sd up while pressure is 1.2 sd down: each usual alone."""
    return reading(10**9, 3.0 + 1.5 * 0.3, 2.0 - 1.2 * 0.3, 20.0)


def trained(cfg: FeatureConfig = CFG, n: int = 2000) -> FeatureStore:
    store = FeatureStore(cfg)
    r = random.Random(1)
    for i in range(n):
        store.observe(usual(r, i * SECOND), learn=True)
    return store


def test_a_broken_correlation_is_surprising_and_named() -> None:
    store = trained()
    odd = store.observe(broken(), learn=False)
    assert odd.surprise["value"] < 2.0  # each field usual alone
    assert odd.surprise["joint"] > 6.0
    top = odd.reasons[0]
    assert top.feature == "joint" and top.field in ("flow, pressure", "pressure, flow")
    assert "what" in top.observed and "predicts" in top.observed
    assert "usually they move together (r=0.9" in top.expected


def test_usual_events_are_not_jointly_surprising() -> None:
    store = trained()
    r = random.Random(2)
    surprises = [
        store.observe(usual(r, (3000 + i) * SECOND), learn=True).surprise["joint"]
        for i in range(2000)
    ]
    # About chi-square: surprise >= 3 (p <= 0.001) for a few in a thousand at most.
    assert sum(s >= 3.0 for s in surprises) <= 6
    assert max(surprises) < 5.0


def unrelated(r: random.Random, t: int) -> Event:
    """Pressure on a factor of its own: each field usual alone, and many events close enough
    to the relation to be only a little unusual together."""
    f, g = r.gauss(0.0, 1.0), r.gauss(0.0, 1.0)
    flow = 3.0 + 0.3 * f + 0.05 * r.gauss(0.0, 1.0)
    pressure = 2.0 + 0.3 * g + 0.05 * r.gauss(0.0, 1.0)
    return reading(t, flow, pressure, 20.0 + r.gauss(0.0, 1.0))


def test_a_relation_broken_for_a_while_accumulates_as_a_run() -> None:
    # Each event of the break is learned (none is unusual enough to be held back), as a busy
    # producer's model learns a long break: the run (CUSUM of T²) still piles the evidence up.
    store = trained()
    r = random.Random(4)
    out = [store.observe(unrelated(r, (3000 + i) * SECOND), learn=True) for i in range(40)]
    joint = store.by_name["joint"]
    assert isinstance(joint, JointFeature)
    (row,) = joint.table.rows(store.slot_of("pump-1") or 0)
    events = [e for e in out if e.surprise["joint"] > 0]
    assert max(e.surprise["joint"] for e in out[:12]) < 5.0  # none of the first is news alone
    assert max(e.surprise["joint"] for e in out) >= 10.0
    top = max(events, key=lambda e: e.surprise["joint"]).reasons[0]
    assert top.feature == "joint" and top.observed.startswith("their relation off for a run")
    # Once the relation holds again, the run falls back within tens of events.
    after = [store.observe(usual(r, (4000 + i) * SECOND), learn=True) for i in range(100)]
    assert max(e.surprise["joint"] for e in after[60:]) < 3.0
    assert joint.table.run[row] < 3.0 * math.log(10)


def test_joint_is_off_by_default_and_keeps_no_state() -> None:
    store = trained(FeatureConfig())
    assert store.observe(broken(), learn=False).surprise["joint"] == 0.0
    joint = store.by_name["joint"]
    assert isinstance(joint, JointFeature) and joint.table.rows(store.slot_of("pump-1") or 0) == []


def test_joint_state_round_trips_its_record() -> None:
    store = trained()
    slot = store.slot_of("pump-1")
    assert slot is not None
    record = store.record(slot)
    again = FeatureStore(CFG)
    again.restore({"pump-1": record}, store.counters())
    slot2 = again.slot_of("pump-1")
    assert slot2 is not None and again.record(slot2) == record
    a, b = store.observe(broken(), learn=False), again.observe(broken(), learn=False)
    assert a.surprise == b.surprise and a.reasons == b.reasons


def test_a_missing_field_is_neither_judged_nor_learned() -> None:
    store = trained()
    partial = Event("s", "x-0", "pump-1", 10**9, "reading", {"flow": 99.0}, {}, 60)
    assert store.observe(partial, learn=True).surprise["joint"] == 0.0
    joint = store.by_name["joint"]
    assert isinstance(joint, JointFeature)
    (row,) = joint.table.rows(store.slot_of("pump-1") or 0)
    assert joint.table.count[row] == 2000


def test_types_with_a_joint_model_are_bounded() -> None:
    store = FeatureStore(dataclasses.replace(CFG, joint_max_types=2))
    for i in range(5):
        e = Event("s", f"{i}-0", "p", i, f"t{i}", {"a": 1.0, "b": 2.0}, {}, 10)
        store.observe(e, learn=True)
    joint = store.by_name["joint"]
    assert isinstance(joint, JointFeature) and len(joint.table.rows(store.slot_of("p") or 0)) == 2


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 8])
def test_chi2_tail_matches_the_closed_forms(k: int) -> None:
    # The mean (k) of a chi-square: its tail there, from the series in math's terms.
    x = float(k)
    h = x / 2
    if k % 2 == 0:
        p = math.exp(-h) * sum(h**i / math.factorial(i) for i in range(k // 2))
    else:
        p = math.erfc(math.sqrt(h)) + math.exp(-h) * sum(
            h ** (i - 0.5) / math.gamma(i + 0.5) for i in range(1, (k - 1) // 2 + 1)
        )
    assert chi2_surprise(x, k) == pytest.approx(-math.log10(p), rel=1e-9)
    assert chi2_surprise(1e6, k) == 64.0  # capped, never inf or nan


@pytest.mark.parametrize(
    "change", [{"joint_fields": 1}, {"joint_fields": 17}, {"joint_ridge": 0.0}, {"joint_fading": 0}]
)
def test_bad_joint_settings_are_refused(change: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="joint"):
        dataclasses.replace(CFG, **change)


def test_the_stats_spec_alerts_on_a_correlation_break_and_says_why() -> None:
    spec = load_spec("stats")
    assert spec.features.joint_fields >= 2
    pipeline = Pipeline(spec)
    r = random.Random(3)
    events = [usual(r, i * 10 * SECOND) for i in range(3000)]
    verdicts = pipeline.process(events)
    assert [v.alert for v in verdicts if v.alert is not None] == []  # stationary: no alert
    (v,) = pipeline.process([reading(30_001 * 10 * SECOND, 3.0 + 0.45, 2.0 - 0.36, 20.0)])
    assert v.alert is not None, v.score
    assert v.alert.reasons[0].feature == "joint"
    assert "joint(" in v.alert.why and "move together" in v.alert.why


def test_a_broken_relation_accepted_as_the_new_normal_stops_alerting() -> None:
    # Pressure leaves flow's factor for good; the pipeline accepts the run as the new normal
    # after 5 events and a minute: the joint model restarts from it (a slow model catching up
    # would keep the run high and page again after each cooldown).
    spec = load_spec("stats")
    adapt = dataclasses.replace(spec.decision, adapt_after_events=5, adapt_after_ms=60_000)
    pipeline = Pipeline(dataclasses.replace(spec, decision=adapt))
    r = random.Random(3)
    pipeline.process([usual(r, i * 10 * SECOND) for i in range(3000)])
    verdicts = pipeline.process([unrelated(r, (3000 + i) * 10 * SECOND) for i in range(400)])
    alerted = [i for i, v in enumerate(verdicts) if v.alert is not None]
    assert len(alerted) == 1 and alerted[0] < 30, alerted
    assert not any(v.flagged for v in verdicts[100:])


def test_rows_share_their_type_and_field_names_and_let_them_go() -> None:
    """Rows of one type and fields share one type string and one tuple of names (built anew
    by each event's decode, they were a string and a tuple per row); a reset lets go of a
    tuple no row holds; restored from a base or a pickle, the rows share them again."""
    import pickle

    from detector.core.features.joint import JointTable

    table = JointTable(3, 4)
    for slot in range(6):
        table.reset(slot)
        for etype in ("paid", "refund"):
            table.add(slot, "".join(etype), tuple("".join(n) for n in ("amount", "items")))
    table.add(5, "".join("odd"), ("ms",) * 2)
    rows = [r for s in range(6) for r in table.rows(s)]
    assert len({id(table.names[r]) for r in rows}) == 2
    assert len({id(table.etype[r]) for r in rows}) == 3
    assert {k: v[1] for k, v in table.shapes.items()} == {("amount", "items"): 12, ("ms", "ms"): 1}
    table.reset(5)
    assert {k: v[1] for k, v in table.shapes.items()} == {("amount", "items"): 10}
    copy = pickle.loads(pickle.dumps(table))  # noqa: S301 (its own bytes)
    copy.reset(4)
    assert {k: v[1] for k, v in copy.shapes.items()} == {("amount", "items"): 8}
    cfg = FeatureConfig(joint_fields=3)
    store = FeatureStore(cfg)
    for i, producer in enumerate(("a", "b") * 30):
        numbers = {"amount": 1.0 + i % 7, "items": float(i % 3)}
        store.observe(Event("s", f"{i}-0", producer, 1000 * i, "paid", numbers, {}, 50), True)
    restored = FeatureStore(cfg)
    restored.restore({}, store.counters(), base=store.base())
    joint = restored.by_name["joint"]
    assert isinstance(joint, JointFeature)
    assert {k: v[1] for k, v in joint.table.shapes.items()} == {("amount", "items"): 2}
    joint.reset(restored.producers["a"])
    assert {k: v[1] for k, v in joint.table.shapes.items()} == {("amount", "items"): 1}
