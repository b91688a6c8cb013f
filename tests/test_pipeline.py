"""Score, decide, learn (detector/core/pipeline.py) over the shipped specs."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import pickle
import random
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from detector.core.alerts import Alert, alert_id
from detector.core.codec import Reader, Writer
from detector.core.events import Decoder, Event
from detector.core.features.store import ProducerView
from detector.core.pipeline import MAX_RUNS, Decisions, Pipeline, Verdict
from detector.core.scoring import Decision, ModelSpec, load_spec

SPECS = ["stats", "hst"]
ALL_SPECS = [*SPECS, "metrics"]  # metrics: no rate or size feature, alerts from 0.999
SECOND = 1000
HOUR = 3600 * SECOND
N = 400  # normal history before an anomaly (warm-up of the shipped specs is 200)


def ev(
    i: int,
    producer: str = "p1",
    *,
    t0: int = 0,
    v: float | None = None,
    etype: str = "order",
    numbers: dict[str, float] | None = None,
    strings: dict[str, str] | None = None,
    size: int | None = None,
    t: int | None = None,
) -> Event:
    """The producer's usual event number ``i`` (one a second), or a variation of it."""
    ts = t0 + i * SECOND if t is None else t
    if numbers is None:
        numbers = {"v": 10.0 + i % 5 if v is None else v, "q": 1.0 + i % 2}
    return Event(
        "orders",
        f"{ts}-{i}",
        producer,
        ts,
        etype,
        numbers,
        {"cur": ("EUR", "USD")[i % 2]} if strings is None else strings,
        80 + i % 3 if size is None else size,
    )


def history(n: int = N, producer: str = "p1", t0: int = 0) -> list[Event]:
    return [ev(i, producer, t0=t0) for i in range(n)]


def spec_with(name: str, **decision: Any) -> ModelSpec:
    spec = load_spec(name)
    return dataclasses.replace(spec, decision=dataclasses.replace(spec.decision, **decision))


def warm(name: str = "stats", **decision: Any) -> Pipeline:
    p = Pipeline(spec_with(name, **decision))
    out = p.process(history())
    assert not any(v.flagged for v in out)
    return p


def baselines(st: ProducerView) -> dict[str, Any]:
    """What the producer has learned (not the clock, not the decision state)."""
    return {
        "numeric": {k: (m.count, m.mean, m.var) for k, m in st.numeric.items()},
        "categorical": {k: (c.n, dict(c.counts)) for k, c in st.categorical.items()},
        "types": (st.types.n, dict(st.types.counts)),
        "schemas": (st.schemas.n, dict(st.schemas.counts)),
        "size": (st.size.count, st.size.mean, st.size.var),
        "rate": (st.rate.count, st.rate.mean, st.rate.var) if st.rate else None,
        "arrivals": (st.arrivals.count, st.arrivals.mean, st.arrivals.var) if st.arrivals else None,
        "seasonal": {
            k: (s.count.tolist(), s.mean.tolist(), s.var.tolist()) for k, s in st.seasonal.items()
        },
        "windows": {k: (w.n, w.values.tolist()) for k, w in st.windows.items()},
    }


def summary(verdicts: list[Verdict]) -> list[tuple[Any, ...]]:
    return [
        (v.event.entry_id, v.score, v.flagged, v.alert, v.error, v.held, v.side_alerts)
        for v in verdicts
    ]


def mixed_stream(n_per_producer: int = 500) -> list[Event]:
    """Three interleaved producers, with value, category and size anomalies after warm-up."""
    out = []
    for i in range(n_per_producer):
        for k, p in enumerate(("a", "b", "c")):
            e = ev(i, p, t0=k * 7)
            if i > 250 and i % 53 == k:
                e = ev(i, p, t0=k * 7, v=1e5)
            elif i > 250 and i % 71 == k:
                e = ev(i, p, t0=k * 7, strings={"cur": "XMR"})
            elif i > 250 and i % 97 == k:
                e = ev(i, p, t0=k * 7, size=9000)
            out.append(e)
    return out


# --------------------------------------------------------------------------------------------
# Warm-up


@pytest.mark.parametrize("name", ALL_SPECS)
def test_warm_up_gives_no_score_then_scores(name: str) -> None:
    p = Pipeline(load_spec(name))
    warmup = p.decision.warmup_events
    out = p.process(history(warmup + 50))
    for v in out[:warmup]:
        assert (v.score, v.flagged, v.alert, v.error) == (None, False, None, None)
    for v in out[warmup:]:
        assert v.score is not None
        assert 0.0 <= v.score <= 1.0
        assert v.error is None


@pytest.mark.parametrize("warmup", [0, 1, 10])
def test_warm_up_follows_the_spec(warmup: int) -> None:
    p = Pipeline(spec_with("stats", warmup_events=warmup))
    out = p.process(history(20))
    assert [v.score is None for v in out] == [i < warmup for i in range(20)]


def test_warm_up_is_per_producer() -> None:
    p = Pipeline(load_spec("stats"))
    p.process(history(300, "old"))
    out = p.process(history(10, "new", t0=HOUR))
    # The first event of a producer unknown among established ones is news (new_producer) ...
    first = out[0].alert
    assert first is not None and first.reasons[0].feature == "new_producer"
    # ... and the rest of its warm-up is not scored.
    assert all(v.score is None for v in out[1:])
    assert p.process([ev(300, "old")])[0].score is not None


def test_new_producers_alert_only_once_some_producer_is_established() -> None:
    cold = Pipeline(load_spec("stats"))
    # A cold start: every producer is new, none is news ...
    out = cold.process([ev(i, f"p{i % 50}") for i in range(500)])
    assert not any(v.alert for v in out)
    # ... nor one appearing in the first hour, even after another got established.
    cold.process(history(300, "busy", t0=500 * SECOND))
    (late,) = cold.process([ev(0, "late", t0=HOUR - SECOND)])
    assert late.alert is None
    (news,) = cold.process([ev(0, "later", t0=HOUR)])
    assert news.alert is not None
    warmed = Pipeline(load_spec("stats"))
    warmed.process(history(300, "old"))
    snap = warmed.snapshot({}, full=True)
    assert snap.meta["established"] is True
    # The flag survives a checkpoint even when no tracked producer is established any more.
    snap.producers = {}
    restored = Pipeline(load_spec("stats"))
    restored.restore(snap)
    (verdict,) = restored.process([ev(0, "newcomer", t0=HOUR)])
    assert verdict.alert is not None and verdict.alert.reasons[0].feature == "new_producer"


def test_no_alert_during_warm_up_even_for_an_outlier() -> None:
    p = Pipeline(load_spec("stats"))
    out = p.process([*history(100), ev(100, v=1e7)])
    assert (out[-1].score, out[-1].flagged, out[-1].alert) == (None, False, None)


# --------------------------------------------------------------------------------------------
# Anomalies after warm-up


def rate_flood() -> list[Event]:
    start = (N - 1) * SECOND
    return [ev(k, t=start + 5 * (k + 1)) for k in range(30)]  # 200/s instead of 1/s


ANOMALIES = {
    "value": lambda: [ev(N, v=5000.0)],
    "size": lambda: [ev(N, size=4000)],
    "type": lambda: [ev(N, etype="refund")],
    "category": lambda: [ev(N, strings={"cur": "XMR"})],
    "schema": lambda: [ev(N, numbers={"v": 11.0, "q": 1.0, "coupon": 3.0})],
    "rate": rate_flood,
}


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("feature", sorted(ANOMALIES))
def test_injected_anomaly_alerts_with_the_right_reason(name: str, feature: str) -> None:
    p = warm(name)
    out = p.process(ANOMALIES[feature]())
    first = next(v for v in out if v.alert is not None)
    alert = first.alert
    assert alert is not None
    assert first.flagged
    assert first.score is not None
    # The spec's threshold, raised by its rarity horizon for this producer's rate.
    threshold = p.threshold_for(p.view("p1").slot)
    assert alert.score == first.score >= alert.threshold == threshold >= p.threshold
    assert alert.reasons[0].feature == feature
    assert 1 <= len(alert.reasons) <= 3
    surprises = [r.surprise for r in alert.reasons]
    assert surprises == sorted(surprises, reverse=True)
    # Every verdict up to the alert was scored without error.
    assert all(v.error is None and v.score is not None for v in out)


def test_alert_fields() -> None:
    p = warm("stats")
    event = ev(N, v=5000.0)
    (verdict,) = p.process([event])
    alert = verdict.alert
    assert alert is not None
    assert alert.alert_id == alert_id("orders", event.entry_id, "stats")
    assert (alert.producer, alert.source_stream, alert.source_id) == ("p1", "orders", "400000-400")
    assert alert.event_time == event.event_time_ms
    assert alert.model == "stats"
    assert alert.suppressed == 0
    top = alert.reasons[0]
    assert (top.feature, top.field, top.observed) == ("value", "v", "5000")
    assert "value(v) 5000 vs" in alert.why
    fields = alert.to_fields(emitted_at_ms=123)
    assert fields["alert_id"] == alert.alert_id
    assert orjson.loads(fields["reasons"])[0]["feature"] == "value"


def test_normal_events_after_warm_up_do_not_alert() -> None:
    p = warm("stats")
    out = p.process([ev(i) for i in range(N, N + 300)])
    assert not any(v.flagged for v in out)


def test_threshold_override() -> None:
    spec = spec_with("stats", rarity_horizon_ms=0)  # the threshold alone decides
    default = Pipeline(spec)
    low = Pipeline(spec, threshold=0.5)
    assert (default.threshold, low.threshold) == (load_spec("stats").decision.threshold, 0.5)
    events = history(N + 100)
    assert not any(v.flagged for v in default.process(events))
    out = low.process(events)
    alerts = [v.alert for v in out if v.alert is not None]
    assert alerts
    assert all(a.threshold == 0.5 and 0.5 <= a.score < default.threshold for a in alerts)
    assert all(v.flagged == (v.score is not None and v.score >= 0.5) for v in out)


def test_threshold_above_one_never_flags() -> None:
    p = Pipeline(load_spec("stats"), threshold=1.01)
    out = p.process([*history(), ev(N, v=5000.0)])
    assert out[-1].score == pytest.approx(1.0)
    assert not out[-1].flagged
    assert out[-1].alert is None


# --------------------------------------------------------------------------------------------
# Cooldown


def test_cooldown_suppresses_and_counts() -> None:
    p = warm("stats")
    cooldown = p.decision.cooldown_ms
    assert cooldown == 300_000
    events = [ev(i, v=5000.0) if i in (400, 410, 420, 720) else ev(i) for i in range(400, 721)]
    out = {v.event.event_time_ms // SECOND: v for v in p.process(events)}
    flagged = sorted(i for i, v in out.items() if v.flagged)
    assert flagged == [400, 410, 420, 720]
    assert out[400].alert is not None
    assert out[400].alert.suppressed == 0
    # Within 300 s of event time: flagged, counted, not sent.
    assert out[410].alert is None
    assert out[420].alert is None
    last = out[720].alert
    assert last is not None
    assert last.suppressed == 2
    assert p.view("p1").suppressed == 0


def test_cooldown_is_per_producer() -> None:
    p = Pipeline(load_spec("stats"))
    p.process(
        sorted([*history(producer="a"), *history(producer="b")], key=lambda e: e.event_time_ms)
    )
    out = p.process([ev(N, "a", v=5000.0), ev(N, "b", v=5000.0)])
    assert all(v.alert is not None for v in out)


# --------------------------------------------------------------------------------------------
# Protected learning


@pytest.mark.parametrize("name", ALL_SPECS)
@pytest.mark.parametrize("protect_threshold", [0.999, 1.5])
def test_flagged_event_does_not_shift_the_baseline(name: str, protect_threshold: float) -> None:
    # A protect threshold above the alert threshold still protects from the alert threshold.
    p = warm(name, protect_threshold=protect_threshold)
    st = p.view("p1")
    before = baselines(st)
    model_before = pickle.dumps(p.model)
    n = st.n
    (v,) = p.process([ev(N, v=5000.0, strings={"cur": "XMR"})])
    assert v.flagged
    assert baselines(st) == before
    assert pickle.dumps(p.model) == model_before
    assert st.n == n + 1  # the clock still advances
    # The same outlier again is just as surprising: nothing of it was learned.
    again = p.store.evidence(st.slot, ev(N + 1, v=5000.0))
    first = p.store.evidence(st.slot, ev(N, v=5000.0))
    assert again.surprise["value"] == first.surprise["value"] > 10


def test_suspect_event_is_protected_without_alerting() -> None:
    # Never alert (threshold > 1), but protect from 0.999.
    p = Pipeline(spec_with("stats", protect_threshold=0.999), threshold=1.5)
    p.process(history())
    st = p.view("p1")
    before = baselines(st)
    (v,) = p.process([ev(N, v=5000.0)])
    assert (v.flagged, v.alert) == (False, None)
    assert v.score is not None
    assert v.score >= 0.999
    assert baselines(st) == before


def test_normal_event_after_warm_up_is_learned() -> None:
    p = warm("stats")
    st = p.view("p1")
    count = st.numeric["order\x1fv"].count
    (v,) = p.process([ev(N)])
    assert not v.flagged
    assert st.numeric["order\x1fv"].count == count + 1


def shifted(start: int, n: int) -> list[Event]:
    """A sustained level shift of ``v`` from ~12 to ~1000."""
    return [ev(i, v=1000.0 + 10 * (i % 5)) for i in range(start, start + n)]


def test_sustained_change_is_accepted_after_events_and_time() -> None:
    p = warm("stats", adapt_after_events=5, adapt_after_ms=20_000)
    st = p.view("p1")
    m = st.numeric["order\x1fv"]
    count, mean = m.count, m.mean
    counts, flags = [], []
    for e in shifted(N, 200):
        (v,) = p.process([e])
        counts.append(m.count)
        flags.append(v.flagged)
    # The run must last more than 5 events AND span 20 s of event time: the 21st event (20 s
    # after the first) is the first one learned.
    assert all(flags[:21])
    assert counts[:20] == [count] * 20
    assert counts[20] == count + 1
    # Then the new level becomes normal: it stops alerting and the baseline has moved to it.
    assert not any(flags[-100:])
    assert counts[-1] > count + 150
    assert m.mean > mean + 2.0


@pytest.mark.parametrize(
    ("events", "ms"),
    [(5, 10**9), (10**6, 5_000)],
    ids=["time-not-reached", "count-not-reached"],
)
def test_sustained_change_needs_both_conditions(events: int, ms: int) -> None:
    p = warm("stats", adapt_after_events=events, adapt_after_ms=ms)
    st = p.view("p1")
    before = baselines(st)
    out = p.process(shifted(N, 60))
    assert all(v.flagged for v in out)
    assert baselines(st) == before


def test_calibration_learns_only_the_first_of_a_flagged_run() -> None:
    p = warm("stats")
    st = p.view("p1")
    assert st.calibration is not None
    n = st.calibration.n
    out = p.process(shifted(N, 10))
    assert all(v.flagged for v in out)
    assert st.calibration.n == n + 1


def test_one_alert_does_not_blind_the_producer() -> None:
    fresh = warm("stats")
    probe = ev(N + 400, strings={"cur": "XMR"})  # an unseen currency, after the cooldown
    fresh.process([ev(i) for i in range(N, N + 400)])
    (control,) = fresh.process([probe])
    assert control.alert is not None  # without a prior incident it alerts

    p = warm("stats")
    (incident,) = p.process([ev(N, v=5000.0)])
    assert incident.alert is not None
    p.process([ev(i) for i in range(N + 1, N + 400)])
    (v,) = p.process([probe])
    assert v.alert is not None
    assert v.alert.reasons[0].feature == "category"


# --------------------------------------------------------------------------------------------
# Determinism and persistence


@pytest.mark.parametrize("name", ALL_SPECS)
def test_two_pipelines_give_identical_scores(name: str) -> None:
    events = mixed_stream()
    a = Pipeline(load_spec(name)).process(events)
    b = Pipeline(load_spec(name)).process(events)
    assert summary(a) == summary(b)
    assert any(v.alert is not None for v in a)


@pytest.mark.parametrize("name", ALL_SPECS)
def test_pickled_mid_stream_continues_identically(name: str) -> None:
    events = mixed_stream()
    cut = len(events) // 2  # warm producers, anomalies still to come
    p = Pipeline(load_spec(name))
    p.process(events[:cut])
    restored = pickle.loads(pickle.dumps(p))  # noqa: S301 (our own bytes)
    assert restored.events_seen == p.events_seen == cut
    rest_a = p.process(events[cut:])
    rest_b = restored.process(events[cut:])
    assert summary(rest_a) == summary(rest_b)
    assert any(v.alert is not None for v in rest_a)


def test_batching_does_not_change_scores() -> None:
    events = mixed_stream(300)
    whole = Pipeline(load_spec("stats")).process(events)
    p = Pipeline(load_spec("stats"))
    pieces = [v for k in range(0, len(events), 37) for v in p.process(events[k : k + 37])]
    assert summary(whole) == summary(pieces)


# --------------------------------------------------------------------------------------------
# Bounds and failures


def test_producer_cap_and_ttl_reach_the_store() -> None:
    p = Pipeline(load_spec("stats"), max_producers=2, idle_ttl_ms=60 * SECOND)
    p.process([ev(0, "a"), ev(0, "b"), ev(1, "c")])
    assert list(p.store.producers) == ["b", "c"]
    p.process([ev(i, "c") for i in range(2, 201)])  # not a pause of the stream: c goes on
    assert list(p.store.producers) == ["c"]
    assert p.store.evicted == 2


def test_one_failing_event_does_not_stop_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    # The decoder never yields a string among numbers; a hand-built Event with one makes
    # scoring raise.
    p = warm("stats")
    bad = ev(N, numbers={"v": "oops", "q": 1.0})  # type: ignore[dict-item]
    with caplog.at_level(logging.ERROR, logger="detector.core.pipeline"):
        out = p.process([bad, ev(N + 1), ev(N + 2, v=5000.0)])
    assert out[0].error is not None
    assert (out[0].score, out[0].flagged, out[0].alert) == (None, False, None)
    assert out[1].error is None
    assert out[1].score is not None
    assert out[2].alert is not None
    assert any(bad.entry_id in r.getMessage() for r in caplog.records)


def test_decoded_entries_end_to_end() -> None:
    decoder = Decoder()
    p = Pipeline(load_spec("stats"))
    entries = []
    for i in range(N + 1):
        amount = 5000.0 if i == N else 10.0 + i % 5
        data = orjson.dumps({"amount": amount, "cur": ("EUR", "USD")[i % 2]})
        fields = {b"producer": b"svc-1", b"ts": str(i * SECOND).encode(), b"type": b"order"}
        entries.append((f"{i * SECOND}-0", {**fields, b"data": data}))
    out = p.process([decoder.decode("orders", eid, f) for eid, f in entries])
    assert out[0].score is None
    assert not any(v.flagged for v in out[:-1])
    alert = out[-1].alert
    assert alert is not None
    assert (alert.producer, alert.reasons[0].feature, alert.reasons[0].field) == (
        "svc-1",
        "value",
        "amount",
    )


# --------------------------------------------------------------------------------------------
# Cooldown as seen by benchmarks (Verdict.held)


def test_events_inside_the_cooldown_are_held() -> None:
    p = warm("stats", cooldown_ms=10 * SECOND)
    out = p.process([ev(N, v=5000.0), ev(N + 1), ev(N + 2, v=6000.0), ev(N + 10), ev(N + 11)])
    assert out[0].alert is not None and not out[0].held  # the alert itself is not held
    assert [v.held for v in out[1:]] == [True, True, False, False]
    assert out[2].flagged and out[2].alert is None  # flagged, held back, counted
    assert not any(v.held for v in warm("stats").process([ev(N + k) for k in range(5)]))


# --------------------------------------------------------------------------------------------
# Time-of-day context (metrics spec)


def metric(t: int, x: float, producer: str = "cpu-1") -> Event:
    return Event("m", f"{t}-0", producer, t, None, {"value": x}, {}, 30)


def test_metrics_spec_alerts_on_a_value_wrong_for_its_hour() -> None:
    hour, step = 3600 * SECOND, 300 * SECOND
    events = []
    for k in range(14 * 24 * 12):  # two weeks of 5-minute samples: 100 by day, 10 at night
        t = k * step
        events.append(metric(t, (100.0 if 12 <= (t // hour) % 24 < 18 else 10.0) + k % 3))
    p = Pipeline(load_spec("metrics"))
    assert not any(v.alert for v in p.process(events)[2000:])
    t = len(events) * step + 3 * hour - (len(events) * step) % (24 * hour)  # 03:00 next day
    (v,) = p.process([metric(t, 100.0)])
    assert v.alert is not None
    assert "at this time of day" in v.alert.reasons[0].expected


# --------------------------------------------------------------------------------------------
# Silence


def two_producers(n: int, stop_b: int) -> list[Event]:
    """Producers a and b, one event a second each; b stops after ``stop_b`` events."""
    out = []
    for i in range(n):
        out.append(ev(i, "a"))
        if i < stop_b:
            out.append(ev(i, "b", t0=500))
    return out


def test_silence_is_off_when_a_spec_leaves_it_out() -> None:
    p = Pipeline(spec_with("stats", silence_after=0.0))
    assert not any(v.side_alerts for v in p.process(two_producers(600, 300)))
    assert Decision().silence_after == 0.0  # the dataclass default: off


def test_a_producer_that_stops_raises_one_silence_alert() -> None:
    p = Pipeline(spec_with("stats", silence_after=10.0, silence_min_ms=20 * SECOND))
    out = p.process(two_producers(600, 300))
    found = [(v, a) for v in out for a in v.side_alerts]
    assert len(found) == 1  # once per silence, not at every check
    v, alert = found[0]
    assert v.event.producer == "a"  # revealed by another producer's event
    assert alert.producer == "b"
    assert 20 * SECOND <= alert.event_time - 299 * SECOND - 500 < 60 * SECOND
    assert (alert.source_stream, alert.source_id) == ("orders", v.event.entry_id)
    assert alert.alert_id == alert_id("orders", v.event.entry_id, "stats\0silence\0b")
    reason = alert.reasons[0]
    assert reason.feature == "silence"
    assert reason.expected == "one every ~1s"
    assert reason.surprise > 8
    assert not v.held and v.alert is None  # the revealing event itself is unaffected


def test_silence_is_raised_again_after_the_producer_resumes_and_stops_again() -> None:
    # Beyond the cooldown the first silence started (inside it, counted: as every alert).
    spec = spec_with("stats", silence_after=10.0, silence_min_ms=20 * SECOND, cooldown_ms=60_000)
    p = Pipeline(spec)
    first = p.process(two_producers(400, 300))
    back = [ev(i, "b", t0=500) for i in range(400, 420)]
    again = p.process([e for i in range(400, 600) for e in (ev(i, "a"), *back[i - 400 : i - 399])])
    assert sum(len(v.side_alerts) for v in first) == 1
    assert sum(len(v.side_alerts) for v in again) == 1


def test_no_silence_before_warm_up_or_within_the_minimum() -> None:
    p = Pipeline(spec_with("stats", silence_after=10.0, silence_min_ms=20 * SECOND))
    assert not any(v.side_alerts for v in p.process(two_producers(600, 100)))  # b never warm
    q = Pipeline(spec_with("stats", silence_after=10.0, silence_min_ms=10 * 60 * SECOND))
    assert not any(v.side_alerts for v in q.process(two_producers(600, 300)))  # 5 min < 10 min


def test_silence_survives_a_checkpoint_mid_stream() -> None:
    spec = spec_with("stats", silence_after=10.0, silence_min_ms=20 * SECOND)
    events = two_producers(600, 300)
    whole = Pipeline(spec).process(events)
    p = Pipeline(spec)
    head = p.process(events[:610])
    restored = pickle.loads(pickle.dumps(p))  # noqa: S301 (our own bytes)
    tail = restored.process(events[610:])
    assert summary([*head, *tail]) == summary(whole)
    snap = p.snapshot({}, full=True)
    assert snap.meta["next_silence_ms"] == p.store.next_silence_ms


# --------------------------------------------------------------------------------------------
# Anomaly likelihood (calibration.likelihood_window)


def with_likelihood(name: str, window: int = 20) -> ModelSpec:
    spec = load_spec(name)
    cal = dataclasses.replace(spec.calibration, likelihood_window=window)
    return dataclasses.replace(spec, calibration=cal)


def test_likelihood_is_off_in_stats_and_leaves_its_scores_alone() -> None:
    assert load_spec("stats").calibration.likelihood_window == 0
    assert Pipeline(load_spec("stats")).likelihood is None


def stuck_metric() -> tuple[list[Event], ModelSpec]:
    """A metric around 100 (sd 5), then stuck near 113.5 (2.7 sd): each value alone is about
    1 in 100, far from the 0.9999 threshold; twenty in a row are not. The spec: stats without
    cooldown and without the drift feature (the per-field answer to the same shift)."""
    rng = random.Random(1)
    base = [metric(i * SECOND, rng.gauss(100.0, 5.0)) for i in range(1500)]
    stuck = [metric(i * SECOND, 113.5 + rng.gauss(0.0, 0.3)) for i in range(1500, 1540)]
    no_drift = dataclasses.replace(load_spec("stats").features, disabled=("drift",))
    decision = dataclasses.replace(
        load_spec("stats").decision, cooldown_ms=0, threshold=0.9999, rarity_horizon_ms=0
    )
    return base + stuck, dataclasses.replace(
        load_spec("stats"), features=no_drift, decision=decision
    )


def test_likelihood_flags_a_sustained_shift_and_explains_it() -> None:
    events, plain_spec = stuck_metric()
    plain = Pipeline(plain_spec).process(events)
    spec = dataclasses.replace(plain_spec, calibration=with_likelihood("stats").calibration)
    out = Pipeline(spec).process(events)
    assert not any(v.alert for v in plain[1500:])
    first = next(v for v in out[1500:] if v.alert is not None)
    assert first.alert is not None
    assert first.alert.reasons[0].feature == "likelihood"
    assert "over the last 20 events" in first.alert.reasons[0].observed
    assert first.event.event_time_ms - 1500 * SECOND <= 20 * SECOND
    assert all(0.0 <= v.score <= 1.0 for v in out if v.score is not None)


def test_the_likelihood_alerts_from_its_own_level() -> None:
    # decision.likelihood_threshold: a run (the likelihood leads) alerts only at or above it;
    # scores, and alerts an event's own score raises, are unchanged.
    events, plain_spec = stuck_metric()
    events.append(metric(1540 * SECOND, 400.0))  # far beyond: alerts by its own score
    spec = dataclasses.replace(plain_spec, calibration=with_likelihood("stats").calibration)
    out = Pipeline(spec).process(events)
    runs = [i for i, v in enumerate(out) if v.alert and v.alert.reasons[0].feature == "likelihood"]
    own = [i for i, v in enumerate(out) if v.alert and v.alert.reasons[0].feature != "likelihood"]
    assert runs and own
    level = max(out[i].score or 0.0 for i in runs)
    assert 0.9999 <= level < 1.0
    higher = dataclasses.replace(spec.decision, likelihood_threshold=math.nextafter(level, 1.0))
    held = Pipeline(dataclasses.replace(spec, decision=higher)).process(events)
    assert [v.score for v in held] == [v.score for v in out]
    assert all(held[i].alert is None and not held[i].flagged for i in runs)
    assert all(held[i].alert is not None for i in own)


def no_cooldown(spec: ModelSpec) -> Any:
    return dataclasses.replace(spec.decision, cooldown_ms=0)


def test_likelihood_state_survives_a_pickle_mid_stream() -> None:
    spec = with_likelihood("stats")
    events = mixed_stream()
    cut = len(events) // 2
    p = Pipeline(spec)
    p.process(events[:cut])
    restored = pickle.loads(pickle.dumps(p))  # noqa: S301 (our own bytes)
    assert summary(p.process(events[cut:])) == summary(restored.process(events[cut:]))
    assert p.view("a").likelihood is not None


def test_metrics_state_goes_through_a_signed_checkpoint() -> None:
    # The new per-producer state (time-of-day profiles, value windows, likelihood, silence)
    # passes the checkpoint's restricted unpickler and resumes bit for bit.
    from detector.core.checkpoint import Signer, decode_fields, encode_fields

    spec = load_spec("metrics")
    spec = dataclasses.replace(
        spec, decision=dataclasses.replace(spec.decision, silence_after=10.0)
    )
    events = two_producers(1500, 1200)
    cut = 2300  # b is warm, its silence is still to come
    original = Pipeline(spec)
    original.process(events[:cut])
    st = original.view("a")
    assert st.seasonal and st.windows and st.likelihood is not None
    signer = Signer(b"k" * 32)
    fields = encode_fields(signer, original.snapshot({"orders": "1-0"}, full=True))
    restored = Pipeline(spec)
    restored.restore(decode_fields(signer, {k.encode(): v for k, v in fields.items()}))
    rest_a, rest_b = original.process(events[cut:]), restored.process(events[cut:])
    assert summary(rest_a) == summary(rest_b)
    assert sum(len(v.side_alerts) for v in rest_a) == 1


def interleaved(start: int, n: int) -> list[Event]:
    """An unseen currency on every other event, the usual events between them."""
    return [ev(i, strings={"cur": "XMR"}) if i % 2 else ev(i) for i in range(start, start + n)]


def test_interleaved_suspects_teach_the_calibration_once_per_run() -> None:
    # Suspect events with normal ones between them: without a run gap each is "the first of
    # a run" and teaches the calibration, until they calibrate below the threshold and are
    # learned as normal (poisoning); with it, the run teaches it once and stays flagged.
    poisoned = warm("stats", suspect_run_gap_ms=0, adapt_after_ms=10**9)
    assert not all(v.flagged for v in poisoned.process(interleaved(N, 40))[1::2])

    p = warm("stats", suspect_run_gap_ms=300_000, adapt_after_ms=10**9)
    st = p.view("p1")
    assert st.calibration is not None
    n = st.calibration.n
    out = p.process(interleaved(N, 40))
    assert all(v.flagged for v in out[1::2])
    assert st.calibration.n == n + 20 + 1  # the 20 normal events, and the run's first


def test_interleaved_sustained_change_is_accepted_after_events_and_time() -> None:
    # The run spans the normal events between its suspects, so a change on some events
    # still becomes the new normal (no freezing) after adapt_after_events and adapt_after_ms.
    p = warm("stats", suspect_run_gap_ms=60_000, adapt_after_events=5, adapt_after_ms=20_000)
    st = p.view("p1")
    cur = st.categorical["order\x1fcur"]
    assert st.calibration is not None
    n = st.calibration.n
    out = p.process(interleaved(N, 400))
    flags = [v.flagged for v in out[1::2]]
    assert all(flags[:10])  # 20 s of event time: 10 suspects, none learned
    assert not any(flags[-100:])
    assert cur.counts["XMR"] > 100
    # The calibration learned the run's first score only, not those accepted after it.
    usual = sum(v.score is not None and v.score < 0.999 for v in out)
    assert st.calibration.n == n + usual + 1


def test_rarity_horizon_raises_the_threshold_of_busy_producers() -> None:
    # 1 event/s, and one every 10 s: the same per-event threshold would alert the busy one
    # ten times as often per day; the horizon asks both for the same rarity per day.
    day = 24 * HOUR
    # (No silence: p1 is quiet while p2 goes on, and its silence would start a cooldown.)
    p = Pipeline(spec_with("stats", threshold=0.999, rarity_horizon_ms=10 * day, silence_after=0.0))
    p.process(history() + [ev(i, "p2", t=i * 10 * SECOND) for i in range(N)])
    busy, quiet = p.view("p1").slot, p.view("p2").slot
    assert p.threshold_for(busy) == pytest.approx(1 - SECOND / (10 * day), rel=0.05)
    assert 1 - p.threshold_for(quiet) == pytest.approx(10 * (1 - p.threshold_for(busy)), rel=0.1)
    assert p.threshold_for(busy, 1 - 1e-9) == 1 - 1e-9  # never below the given threshold
    off = Pipeline(spec_with("stats", threshold=0.999, rarity_horizon_ms=0))
    off.process(history())
    assert off.threshold_for(off.view("p1").slot) == 0.999
    (v,) = p.process([ev(N, v=5000.0)])
    assert v.alert is not None
    assert v.alert.threshold == p.threshold_for(busy)


# --------------------------------------------------------------------------------------------
# A pause of the whole stream (issue 17): one alert, then a continuation


def fleet(producers: int, t0: int, seconds: int, seed: int, step_ms: int = 100) -> list[Event]:
    """Stationary traffic: each producer one event per ~``step_ms`` (jittered), with a small
    count ``items`` (mean 2.5), a log-normal ``amount`` and a currency, from ``t0``."""
    rng = random.Random(seed)
    out = []
    for k in range(producers):
        t = t0 + rng.randrange(step_ms)
        while t < t0 + seconds * SECOND:
            numbers = {"items": 1.0 + sum(rng.random() < 0.3 for _ in range(5)),
                       "amount": round(2.0 ** rng.gauss(4.0, 0.7), 2)}  # fmt: skip
            strings = {"cur": rng.choice(("EUR", "USD"))}
            out.append(Event("orders", f"{t}-{k}", f"p{k}", t, "order", numbers, strings, 90))
            t += rng.randint(step_ms // 2, 3 * step_ms // 2)
    return sorted(out, key=lambda e: (e.event_time_ms, e.producer))


def alerts_of(verdicts: Sequence[Verdict]) -> list[Alert]:
    return [a for v in verdicts for a in (v.alert, *v.side_alerts) if a is not None]


def test_a_pause_of_every_producer_is_one_alert_and_the_resumption_a_continuation() -> None:
    # 20 producers, 30 s of stationary traffic (past warm-up, references 30 s young), two
    # minutes without any event, the same traffic again. Each producer's view of the pause
    # was a silence (20 alerts), and its first value after it a third of its drift reference
    # (weighted by the two minutes it stood for): drift alerts against a wrong reference.
    before, after = fleet(20, 0, 30, seed=5), fleet(20, 150 * SECOND, 120, seed=6)
    p = Pipeline(load_spec("stats"))
    assert alerts_of(p.process(before)) == []
    alerts = alerts_of(p.process(after))
    assert [(a.kind, a.producer) for a in alerts] == [("stream_pause", "")]
    pause = alerts[0].reasons[0]
    gap_s = (after[0].event_time_ms - before[-1].event_time_ms) / SECOND
    assert (pause.feature, pause.observed) == ("stream", f"no event for {gap_s:.4g}s")
    assert pause.expected.endswith("from 20 producers")
    assert alerts[0].source_id == after[0].entry_id
    for k in range(20):  # the references learned over the traffic's time, not the pause's
        view = p.view(f"p{k}")
        covered = [d.last_ms - d.first_ms for d in view.drifts.values()]
        assert covered and max(covered) < 151 * SECOND
        assert view.gap.mean < math.log1p(200)  # smoothed inter-arrival ~100 ms, no 2-min gap


def test_a_pause_is_relative_to_the_streams_usual_pace() -> None:
    # One producer, one event every ~30 s: gaps of minutes are its usual pace, not a pause;
    # an hour without it is one (the whole stream went quiet: no silence of its own).
    rng = random.Random(3)
    times = list(itertools.accumulate(int(rng.expovariate(1 / 30_000)) for _ in range(400)))
    events = [ev(k, t=t, v=10.0 + k % 5) for k, t in enumerate(times)]
    p = Pipeline(load_spec("stats"))
    out = p.process(events)
    assert max(b - a for a, b in itertools.pairwise(times)) > 120 * SECOND
    assert alerts_of(out) == []
    late = [ev(400 + k, t=times[-1] + HOUR + k * 30_000) for k in range(3)]
    assert [a.kind for a in alerts_of(p.process(late))] == ["stream_pause"]


def test_a_pause_is_judged_the_same_after_a_restore() -> None:
    before, after = fleet(4, 0, 30, seed=1), fleet(4, 150 * SECOND, 20, seed=2)
    spec = load_spec("stats")
    whole = Pipeline(spec)
    expected = summary([*whole.process(before), *whole.process(after)])
    p = Pipeline(spec)
    head = p.process(before)
    snap = p.snapshot({}, full=True)
    assert (snap.meta["steps"], snap.meta["step_ms"]) == (p.store.steps, p.store.step_ms)
    resumed = Pipeline(spec)
    resumed.restore(snap)
    out = resumed.process(after)
    assert summary([*head, *out]) == expected
    assert [a.kind for a in alerts_of(out)] == ["stream_pause"]


# --------------------------------------------------------------------------------------------
# One cooldown for every kind of alert (issue 17)


def test_the_cooldown_covers_silence_alerts() -> None:
    # b goes quiet while a goes on (a silence alert), then comes back 16 s later with an
    # outlier: inside the cooldown the silence started, counted in b's next alert.
    p = Pipeline(spec_with("stats", silence_after=10.0, silence_min_ms=20 * SECOND))
    events = [ev(i, "a") for i in range(700)]
    events += [ev(i, "b", t0=500) for i in range(300)]
    out_alert = ev(340, "b", t0=500, v=5000.0)
    events += [out_alert, *(ev(i, "b", t0=500) for i in range(341, 680))]
    events += [ev(680, "b", t0=500, v=6000.0)]
    out = p.process(sorted(events, key=lambda e: e.event_time_ms))
    alerts = alerts_of(out)
    assert [(a.kind, a.producer) for a in alerts] == [("silence", "b"), ("anomaly", "b")]
    silence, last = alerts
    assert silence.event_time < out_alert.event_time_ms < silence.event_time + 300 * SECOND
    (held,) = [v for v in out if v.event is out_alert]
    assert held.flagged and held.held and held.alert is None
    assert last.event_time == 680 * SECOND + 500 and last.suppressed == 1


def test_the_silence_reason_and_thresholds_use_the_true_usual_rate() -> None:
    # p1 sends events in pairs sharing a timestamp, every 2 s: one a second (a mean of log
    # gaps, 0 for the second of each pair, put it at ~22 a second); then it stops, b goes on.
    pairs = [ev(i, t=(i // 2) * 2 * SECOND) for i in range(2 * 1800)]
    other = [ev(k, "b", t=k * 2 * SECOND + 1) for k in range(1900)]
    p = Pipeline(spec_with("stats", silence_after=10.0))
    out = p.process(sorted(pairs + other, key=lambda e: e.event_time_ms))
    slot = p.view("p1").slot
    assert p.threshold_for(slot) == pytest.approx(1 - SECOND / p.decision.rarity_horizon_ms)
    (silence,) = alerts_of(out)
    assert (silence.kind, silence.producer) == ("silence", "p1")
    usual_s = silence.reasons[0].expected.removeprefix("one every ~").removesuffix("s")
    assert float(usual_s) == pytest.approx(1.0, rel=0.02)


# --------------------------------------------------------------------------------------------
# First-time behaviour: a never-seen type of an established producer (issue 17)


def shop_history(n: int, seed: int = 3) -> list[Event]:
    """An established producer's ``n`` events of a handful of types, each with its fields."""
    rng = random.Random(seed)
    types = {"order.created": ("amount", "items"), "order.paid": ("amount",),
             "order.shipped": ("weight",), "user.login": ("latency",)}  # fmt: skip
    out, t = [], 0
    for i in range(n):
        t += rng.randint(200, 1800)
        etype = rng.choices(list(types), weights=[5, 4, 3, 2])[0]
        numbers = {f: round(2.0 ** rng.gauss(5.0, 0.6), 2) for f in types[etype]}
        strings = {"cur": rng.choice(("EUR", "USD"))}
        out.append(Event("s", f"{t}-{i}", "svc", t, etype, numbers, strings, 100 + i % 20))
    return out


def drop_table(t: int, k: int = 0) -> Event:
    return Event("s", f"{t}-x{k}", "svc", t, "admin.drop_table", {"rows_affected": 182734.0},
                 {"table": "orders", "actor": "root"}, 140)  # fmt: skip


def test_a_first_seen_type_of_an_established_producer_alerts_at_its_first_event() -> None:
    history_ = shop_history(2600)
    p = Pipeline(load_spec("stats"))
    assert alerts_of(p.process(history_)) == []
    t = history_[-1].event_time_ms
    (v,) = p.process([drop_table(t + 500)])
    assert v.alert is not None and v.flagged and not v.held
    top, *others = v.alert.reasons
    assert (top.feature, top.observed) == ("type", "admin.drop_table")
    assert top.expected.startswith("never sent in 2") and "order.created" in top.expected
    assert any(r.feature == "schema" and "+actor,rows_affected,table" in r.observed for r in others)
    assert not any(r.feature == "type" for r in others)  # the decisive reason, once


def test_only_the_first_event_of_a_new_type_goes_through_the_cooldown() -> None:
    p = Pipeline(load_spec("stats"))
    history_ = shop_history(2600)
    p.process(history_)
    t = history_[-1].event_time_ms
    outlier = dataclasses.replace(history_[-1], entry_id="o", event_time_ms=t + 100,
                                  numbers={"amount": 1e6})  # fmt: skip
    out = p.process([outlier, drop_table(t + 10 * SECOND), drop_table(t + 20 * SECOND, 1)])
    assert [v.alert is not None for v in out] == [True, True, False]
    assert out[1].alert is not None and out[1].alert.reasons[0].observed == "admin.drop_table"
    assert out[2].held  # its second event: a rare type, inside the cooldown


def test_a_burst_of_new_types_is_one_alert_a_later_new_type_another() -> None:
    p = Pipeline(load_spec("stats"))
    history_ = shop_history(2600)
    p.process(history_)
    t = history_[-1].event_time_ms
    burst = int(p.spec.features.burst_s * SECOND)
    times = (t + SECOND, t + 2 * SECOND + burst // 3, t + 3 * SECOND + burst // 3 + burst)
    out = p.process([dataclasses.replace(drop_table(s, k), type=f"admin.t{k}")
                     for k, s in enumerate(times)])  # fmt: skip
    assert [v.alert is not None for v in out] == [True, False, True]  # all in one cooldown
    assert out[1].flagged and out[1].held


def test_minted_types_are_bounded_and_their_overflow_alerts_once() -> None:
    p = Pipeline(load_spec("stats"))
    history_ = shop_history(2600)
    p.process(history_)
    t = history_[-1].event_time_ms
    minted = [dataclasses.replace(history_[-1], entry_id=f"m{k}", event_time_ms=t + k * SECOND,
                                  type=f"admin.t{k}") for k in range(1, 200)]  # fmt: skip
    out = p.process(minted)
    leads = [v.alert.reasons[0] for v in out if v.alert is not None]
    overflow = [r for r in leads if r.expected.startswith("more than ")]
    assert len(overflow) == 1  # once, not per event
    assert len(leads) == 2  # the burst's first new type (the rest: one incident), the overflow
    assert overflow[0].expected.startswith(f"more than {p.spec.features.max_types} types")
    types = p.view("svc").types
    assert types.saturated and types.counts == {}  # bounded: nothing more is learned


def with_rare_type(start: int, n: int, declined: float = 250.0) -> list[Event]:
    """``n`` seconds of the usual events, and a rare type (one every 2 minutes, rarer than
    the stats spec's one-minute run gap) whose ``v`` is ``declined``."""
    return [
        ev(i, etype="declined", v=declined + i % 7) if i % 120 == 60 else ev(i)
        for i in range(start, start + n)
    ]


def test_a_rare_types_lasting_change_is_adapted_to_like_a_common_types() -> None:
    # A suspect run per event type: the rare type's suspects, 2 minutes apart among normal
    # events of another type, are one run that adapts after adapt_after_events (20) and
    # adapt_after_ms (15 min); with one run per producer, broken at the 1-minute gap, each was
    # a run of one and the type's row stayed frozen (seed 11's false drift alerts).
    p = Pipeline(load_spec("stats"))
    warmup = 6 * 3600
    assert not any(v.flagged for v in p.process(with_rare_type(0, warmup)))
    st = p.view("p1")
    row = st.numeric["declined\x1fv"]
    count = row.count
    assert st.calibration is not None
    n = st.calibration.n
    out = p.process(with_rare_type(warmup, 100 * 120, declined=2500.0))
    rare = [v for v in out if v.event.type == "declined"]
    assert all(v.flagged for v in rare[:5])
    # One run: the calibration learned its first score only (one run per suspect taught it
    # each of them, until it let them through as normal).
    usual = sum(v.score is not None and v.score < 0.999 for v in out)
    assert st.calibration.n == n + usual + 1
    # Frozen for the run's first 20 events (and 15 min), then learned: the new level is normal.
    assert row.count - count == len(rare) - 20
    assert not any(v.flagged for v in rare[-40:])
    assert not any(v.flagged for v in out if v.event.type == "order")
    # Its run lasts ten of the type's inter-arrivals (~20 min), not the spec's minute.
    ((_, streak, since, until),) = st.suspect_runs
    suspects = [v.event.event_time_ms for v in rare if v.score is not None and v.score >= 0.999]
    assert streak == len(suspects) > 20 and since == suspects[0]
    assert until - suspects[-1] > 10 * 60_000


def test_a_one_off_on_a_rare_type_still_alerts() -> None:
    p = Pipeline(load_spec("stats"))
    warmup = 6 * 3600
    p.process(with_rare_type(0, warmup))
    spike = ev(warmup, etype="declined", v=5000.0)
    (v,) = p.process([spike])
    assert v.alert is not None and v.alert.reasons[0].feature in {"value", "drift"}
    later = p.process(with_rare_type(warmup + 1, 4 * 3600))
    assert not any(v.flagged for v in later)  # one event: nothing adapted to it
    assert p.view("p1").numeric["declined\x1fv"].mean < math.log1p(400)
    (again,) = p.process([ev(warmup + 1 + 4 * 3600, etype="declined", v=5000.0)])
    assert again.alert is not None


def test_a_common_types_run_keeps_the_spec_gap_and_others_do_not_join_it() -> None:
    p = warm("stats", adapt_after_events=5, adapt_after_ms=20_000)
    st = p.view("p1")
    m = st.numeric["order\x1fv"]
    count = m.count
    out = p.process(shifted(N, 60))
    # As before per type: the 21st event (20 s after the first) is the first one learned.
    assert all(v.flagged for v in out[:21]) and m.count == count + 60 - 20
    ((_, streak, _, until),) = st.suspect_runs
    suspects = [v.event.event_time_ms for v in out if v.score is not None and v.score >= 0.999]
    assert streak == len(suspects)
    assert until == suspects[-1] + 60_000  # one event a second: the spec's 60 s
    # Another type's suspect event opens its own run; the order run goes on.
    p.process([ev(N + 60, etype="refund", v=1.0)])
    assert [r[1] for r in st.suspect_runs] == [1, streak]


def test_suspect_runs_are_bounded_and_round_trip_in_records_and_columns() -> None:
    ds = Decisions(64)
    for slot in range(3):
        ds.reset(slot)
    for key in range(1, MAX_RUNS + 3):  # beyond the bound, the run nearest to breaking goes
        r = ds.open_run(0, key, key)
        ds.run_streak[r], ds.run_until[r] = key, 1000 + key
    assert [ds.run_key[r] for r in ds.runs(0)] == list(range(MAX_RUNS + 2, 2, -1))
    r = ds.open_run(1, 7, 5)
    ds.run_streak[r], ds.run_until[r] = 1, 10
    ds.open_run(1, 8, 20)  # the run of 7 broke at 10: its row is free again
    assert [ds.run_key[r] for r in ds.runs(1)] == [8]

    def runs(d: Decisions) -> list[list[tuple[int, ...]]]:
        return [
            [(d.run_key[r], d.run_streak[r], d.run_since[r], d.run_until[r]) for r in d.runs(s)]
            for s in range(3)
        ]

    table = Writer()
    ds.dump_table(table)
    restored = Decisions(64)
    restored.load_table(Reader(table.bytes()))
    assert runs(restored) == runs(ds)
    record = Writer()
    ds.dump(0, record)
    restored.reset(2)
    restored.load(2, Reader(record.bytes()))
    assert runs(restored)[2] == runs(ds)[0]
    rows = len(restored.run_key)
    restored.reset(0)  # its rows go to the free chain, and are reused
    assert runs(restored)[0] == []
    restored.load(0, Reader(record.bytes()))
    assert runs(restored)[0] == runs(ds)[0] and len(restored.run_key) == rows
