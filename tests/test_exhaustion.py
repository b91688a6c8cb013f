"""Resource exhaustion: producer-id explosion, alert storms, a flooding producer.

Short forms run in CI; the 1M-producer-id form drives a real worker and is ``-m slow``.
The figures in docs/security.md ("Resource exhaustion") come from these tests.
"""

from __future__ import annotations

import dataclasses
import random
import resource
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis

from detector.core.admission import OVERFLOW
from detector.core.alerts import ALERT_STORM, ANOMALY, KINDS, PRODUCER_EXPLOSION, Alert
from detector.core.checkpoint import PRODUCER_PREFIX, Signer, decode_fields, encode_fields
from detector.core.events import Decoder, Event
from detector.core.pipeline import Pipeline, Verdict
from detector.core.scoring import ModelSpec, load_spec
from detector.core.settings import Settings
from detector.runtime.worker import Worker
from tests.helpers import START_MS

SECOND = 1000
MINUTE = 60 * SECOND


def ev(producer: str, t: int, i: int, v: float | None = None, stream: str = "s") -> Event:
    """A usual event of ``producer`` at event time ``t`` (``i`` varies it and names it)."""
    numbers = {"v": 10.0 + i % 5 if v is None else v, "q": 1.0 + i % 2}
    return Event(stream, f"{t}-{i}", producer, t, "order", numbers, {"cur": "EUR"}, 80 + i % 3)


def spec_with(name: str = "stats", **decision: Any) -> ModelSpec:
    spec = load_spec(name)
    return dataclasses.replace(spec, decision=dataclasses.replace(spec.decision, **decision))


def established(p: Pipeline, producers: list[str], n: int, t0: int = 0) -> int:
    """Feed ``n`` usual events to each producer, one a second, interleaved; returns the end."""
    events = [
        ev(name, t0 + i * SECOND + k, i) for i in range(n) for k, name in enumerate(producers)
    ]
    out = p.process(events)
    assert not any(v.flagged or v.error for v in out)
    return t0 + n * SECOND


def alerts_of(verdicts: list[Verdict]) -> list[Alert]:
    return [a for v in verdicts for a in ((v.alert,) if v.alert else ()) + v.side_alerts]


def reason(alert: Alert, field: str) -> str:
    return next(r.observed for r in alert.reasons if r.field == field)


# --------------------------------------------------------------------------------------------
# Determinism: replay from incremental checkpoints


def _flood_stream(seed: int) -> list[Event]:
    rng = random.Random(seed)
    events, t = [], 0
    for i in range(6000):
        t += rng.randint(5, 60)
        if i < 1500:
            name = f"svc-{i % 5}"
        else:
            name = f"svc-{i % 5}" if i % 4 == 0 else f"minted-{rng.getrandbits(24)}"
        v = 1e6 if i > 1500 and i % 97 == 0 else None  # some anomalies, some capped
        events.append(ev(name, t, i, v))
    return events


def _pipeline() -> Pipeline:
    spec = spec_with(warmup_events=50, cooldown_ms=20 * SECOND)
    return Pipeline(spec, max_producers=30, admit_per_min=3, max_alerts_per_min=2,
                    track_changes=True)  # fmt: skip


def _key(v: Verdict) -> tuple[Any, ...]:
    return (v.event.entry_id, v.score, v.flagged, v.held, v.alert, v.side_alerts)


def test_replay_from_incremental_checkpoints_gives_identical_verdicts() -> None:
    events = _flood_stream(3)
    whole = _pipeline()
    expected = [_key(v) for v in whole.process(events)]
    signer = Signer(b"k" * 32)
    live, hash_fields, got = _pipeline(), {}, []
    for start in range(0, len(events), 700):
        got.extend(_key(v) for v in live.process(events[start : start + 700]))
        snap = live.snapshot({"s": events[start].entry_id})
        hash_fields.update(encode_fields(signer, snap))
        for name in snap.removed:
            hash_fields.pop(PRODUCER_PREFIX + name, None)
        live.committed()
        # A fresh process resumes from the hash (restricted unpickler) after every commit.
        live = _pipeline()
        live.restore(decode_fields(signer, {k.encode(): v for k, v in hash_fields.items()}))
    assert got == expected
    assert live.snapshot({}, full=True).meta | {"created_at_ms": 0} == whole.snapshot(
        {}, full=True
    ).meta | {"created_at_ms": 0}
    all_alerts = [a for k in expected for a in ((k[4],) if k[4] else ()) + k[5]]
    assert {a.kind for a in all_alerts} >= {ANOMALY, PRODUCER_EXPLOSION, ALERT_STORM}
    assert (PRODUCER_PREFIX + OVERFLOW) in hash_fields


# --------------------------------------------------------------------------------------------
# Alert storms


def test_a_producer_whose_every_event_is_anomalous_gets_one_alert_per_cooldown() -> None:
    p = Pipeline(load_spec("stats"))
    t = established(p, ["p1"], 400)
    run = [ev("p1", t + i * SECOND, 400 + i, v=1e6 * (1 + i % 7)) for i in range(1800)]
    out = p.process(run)
    flagged = [v for v in out if v.flagged]
    alerts = [v.alert for v in out if v.alert is not None]
    span = run[-1].event_time_ms - run[0].event_time_ms
    assert len(flagged) > len(alerts) >= 1
    assert len(alerts) <= span // p.decision.cooldown_ms + 1
    # Every flagged event is either an alert or counted in the producer's next alert.
    held_since, reported = 0, []
    for v in out:
        if v.alert is not None:
            reported.append((v.alert.suppressed, held_since))
            held_since = 0
        elif v.flagged:
            held_since += 1
    assert [s for s, _ in reported] == [h for _, h in reported]
    assert held_since == p.view("p1").suppressed


def test_ten_thousand_misbehaving_producers_cannot_flood_the_alert_stream() -> None:
    # Threshold 0 and a warm-up of one event: every producer's second event is an anomaly.
    cap, n = 100, 10_000
    # Its threshold alone decides (no rarity horizon raising it per producer).
    spec = spec_with(warmup_events=1, silence_after=0.0, new_producer=False, rarity_horizon_ms=0)
    p = Pipeline(spec, threshold=0.0, max_producers=2 * n, max_alerts_per_min=cap)
    # 200 s of event time; each producer's two events 10 ms apart.
    events = [ev(f"p{k}", k * 20 + j * 10, j) for k in range(n) for j in (0, 1)]
    events.append(ev("tick", n * 20 + 2 * MINUTE, 0))  # closes the last minute
    out = p.process(events)
    alerts = alerts_of(out)
    anomalies = [a for a in alerts if a.kind == ANOMALY]
    storms = [a for a in alerts if a.kind == ALERT_STORM]
    per_minute = Counter(a.event_time // MINUTE for a in anomalies)
    assert max(per_minute.values()) <= cap
    assert len(storms) <= len(per_minute) + 1
    held = sum(a.suppressed for a in storms)
    assert held == p.budget.capped_total
    assert len(anomalies) + held == sum(v.flagged for v in out) == n  # one flag per producer
    assert all(reason(a, "producers") for a in storms)
    # A capped producer's next alert (after its cooldown) says what was held back.
    capped = reason(storms[0], "producers").split(",")[0]
    later = p.process([ev(capped, n * 20 + 10 * MINUTE, 2 + i) for i in range(2)])
    assert later[0].alert is not None and later[0].alert.suppressed == 1


# --------------------------------------------------------------------------------------------
# Fairness under a flooding producer


def test_a_flooding_producer_leaves_the_others_verdicts_and_state_unchanged() -> None:
    others = [f"svc-{k}" for k in range(5)]
    plain, flooded = Pipeline(load_spec("stats")), Pipeline(load_spec("stats"))
    t = established(plain, others, 300)
    established(flooded, others, 300)
    normal = [
        ev(name, t + i * SECOND + k, 300 + i) for i in range(200) for k, name in enumerate(others)
    ]
    flood = [ev("flood", t + i * 10, i, v=float(i % 1000)) for i in range(20_000)]
    mixed = sorted(normal + flood, key=lambda e: e.event_time_ms)
    base = {v.event.entry_id: _key(v) for v in plain.process(normal)}
    tracemalloc.start()
    block_s, peaks = [], []
    for start in range(0, len(mixed), 2000):
        started = time.perf_counter()
        out = flooded.process(mixed[start : start + 2000])
        block_s.append(time.perf_counter() - started)
        peaks.append(tracemalloc.get_traced_memory()[0])
        for v in out:
            if v.event.producer != "flood":
                assert _key(v) == base[v.event.entry_id]  # same verdict as without the flood
    tracemalloc.stop()
    for name in others:
        # Events seen, the usual rate learned (over event time in this spec), the fields.
        a, b = plain.view(name), flooded.view(name)
        usual = plain.store.rate.usual(a.slot), flooded.store.rate.usual(b.slot)
        assert (a.n, usual[0], a.gap.mean, a.numeric.keys()) == (
            b.n,
            usual[1],
            b.gap.mean,
            b.numeric.keys(),
        )
        assert a.arrivals is not None and a.arrivals.count > 0  # the usual rate is learned
    assert len(flooded.store) == len(others) + 1
    # Flat cost: memory does not grow with the flood (second half vs first half), and the
    # fastest block of the second half is about as fast as the first half's (a relative check
    # on minima, which CPU contention from other processes only ever raises).
    half = len(peaks) // 2
    assert max(peaks[half:]) - max(peaks[:half]) < 0.05 * max(peaks[:half])
    assert min(block_s[half:-1]) < 2 * min(block_s[:half])


# --------------------------------------------------------------------------------------------
# Through the worker


def _append(client: redis.Redis, stream: str, entries: Iterator[dict[str, str]]) -> int:
    n, pipe = 0, client.pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
        n += 1
        if n % 5000 == 0:
            pipe.execute()
    pipe.execute()
    return n


def _entry(producer: str, ts: int, amount: float) -> dict[str, str]:
    data = orjson.dumps({"amount": amount, "currency": "EUR"}).decode()
    return {"producer": producer, "ts": str(ts), "type": "order", "data": data}


def _explosion_entries(legit: int, warm: int, minted: int, every: int) -> Iterator[dict[str, str]]:
    """``legit`` producers warm up (``warm`` events each, one a second), then ``minted`` fresh
    ids at 1 ms of event time each, the legitimate producers sending one event per ``every``."""
    rng = random.Random(11)
    t = START_MS
    for _ in range(warm):
        t += SECOND
        for k in range(legit):
            yield _entry(f"svc-{k}", t + k, round(rng.lognormvariate(3.0, 0.3), 2))
    for i in range(minted):
        t += 1
        yield _entry(f"minted-{i}", t, 20.0)
        if i % every == 0:
            for k in range(legit):
                yield _entry(f"svc-{k}", t, round(rng.lognormvariate(3.0, 0.3), 2))


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _run_explosion(
    r: redis.Redis,
    stream: str,
    worker_factory: Callable[..., Worker],
    settings: Settings,
    legit: int,
    warm: int,
    minted: int,
    every: int,
) -> dict[str, Any]:
    appended = _append(r, stream, _explosion_entries(legit, warm, minted, every))
    last_id = ["0-0"]
    out_of_order = [0]
    seen = [0]

    def check(verdicts: list[Verdict]) -> None:
        for v in verdicts:  # one stream, one consumer: ids only increase, unless reprocessed
            ms, _, seq = v.event.entry_id.partition("-")
            a_ms, _, a_seq = last_id[0].partition("-")
            if (int(ms), int(seq)) <= (int(a_ms), int(a_seq)):
                out_of_order[0] += 1
            last_id[0] = v.event.entry_id
            seen[0] += 1

    worker = worker_factory(settings, on_verdicts=check)
    rss_before, started = _rss_kb(), time.perf_counter()
    stats = worker.run()
    wall = time.perf_counter() - started
    p = worker.pipeline
    m = worker.metrics
    m.set_exhaustion(p.admission.refused, p.admission.admitted, p.budget.capped_total)
    alerts = r.xrange(settings.alerts_stream)
    kinds = Counter(fields["kind"] for _, fields in alerts)
    ids = [fields["alert_id"] for _, fields in alerts]
    legit_alerts = sorted(
        (f["producer"], int(f["event_time"])) for _, f in alerts if f["producer"].startswith("svc-")
    )
    # The same legitimate events without the minted ids, offline: their alerts must not change.
    decoder, alone = Decoder(), Pipeline(worker.spec)
    legit_only = [
        decoder.decode(stream, f"0-{i}", {k.encode(): v.encode() for k, v in fields.items()})
        for i, fields in enumerate(_explosion_entries(legit, warm, minted, every))
        if fields["producer"].startswith("svc-")
    ]
    expected = sorted((a.producer, a.event_time) for a in alerts_of(alone.process(legit_only)))
    return {
        "appended": appended,
        "events": stats.events,
        "verdicts": seen[0],
        "reprocessed": out_of_order[0],
        "pending": r.xpending(stream, settings.group)["pending"],
        "lag": r.xinfo_groups(stream)[0]["lag"],
        "tracked": len(p.store),
        "refused": p.admission.refused,
        "admitted": p.admission.admitted,
        "alerts": len(alerts),
        "kinds": dict(kinds),
        "duplicate_alerts": len(ids) - len(set(ids)),
        "legit_alerts": len(legit_alerts),
        "legit_alerts_as_without_flood": legit_alerts == expected,
        "legit_tracked": sum(f"svc-{k}" in p.store.producers for k in range(legit)),
        "refused_metric": m.registry.get_sample_value("detector_producers_refused"),
        "kinds_metric": {
            k: m.registry.get_sample_value("detector_alerts_total", {"kind": k}) for k in KINDS
        },
        "rss_before_kb": rss_before,
        "rss_after_kb": _rss_kb(),
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "wall_s": round(wall, 1),
        "events_per_s": round(stats.events / wall),
    }


def _check_explosion(fig: dict[str, Any], legit: int, cap: int) -> None:
    assert fig["events"] == fig["verdicts"] == fig["appended"]  # nothing lost
    assert fig["reprocessed"] == 0 and fig["duplicate_alerts"] == 0  # no duplicates
    assert fig["pending"] == 0 and fig["lag"] == 0
    assert fig["tracked"] == cap and fig["legit_tracked"] == legit
    assert fig["legit_alerts_as_without_flood"]
    assert fig["kinds"].get(PRODUCER_EXPLOSION, 0) >= 1
    assert fig["kinds_metric"] == {k: fig["kinds"].get(k, 0) for k in KINDS}  # alerts by kind
    assert fig["refused_metric"] == fig["refused"] > 0


def test_worker_survives_a_producer_id_explosion(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker],
    settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    cap, legit = 500, 5
    settings = settings_factory(max_producers=cap, checkpoint_every=2000)
    fig = _run_explosion(r, stream_name, worker_factory, settings, legit, 250, 20_000, 1000)
    _check_explosion(fig, legit, cap)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_worker_survives_a_million_producer_ids(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker],
    settings_factory: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    cap, legit = 20_000, 20
    settings = settings_factory(max_producers=cap)
    fig = _run_explosion(r, stream_name, worker_factory, settings, legit, 250, 1_000_000, 1000)
    with capsys.disabled():
        print("\nexplosion figures:", fig)
    _check_explosion(fig, legit, cap)


def test_worker_reports_held_back_alerts_in_the_stream_and_the_metrics(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker]
) -> None:
    rng = random.Random(5)
    warm = [_entry("p1", START_MS + i * SECOND, round(rng.lognormvariate(3.0, 0.3), 2))
            for i in range(300)]  # fmt: skip
    t = START_MS + 300 * SECOND
    storm = [_entry("p1", t + i * SECOND, 1e6 * (1 + i % 7)) for i in range(800)]
    _append(r, stream_name, iter(warm + storm))
    worker = worker_factory()
    worker.run()
    written = [f for _, f in r.xrange(worker.settings.alerts_stream)]
    alerts = [f for f in written if f["kind"] == ANOMALY]
    cooldown = worker.spec.decision.cooldown_ms
    assert 1 <= len(alerts) <= 800 * SECOND // cooldown + 1
    assert all(f["producer"] == "p1" for f in alerts)
    held = sum(int(f["suppressed"]) for f in alerts) + worker.pipeline.view("p1").suppressed
    sample = worker.metrics.registry.get_sample_value
    assert sample("detector_alerts_suppressed_total") == held > 0
    # Counted by kind (every kind's series exists from the start, at 0).
    for kind in KINDS:
        assert sample("detector_alerts_total", {"kind": kind}) == sum(
            f["kind"] == kind for f in written
        ), kind
    assert sample("detector_alerts_total", {"kind": ANOMALY}) == len(alerts)
