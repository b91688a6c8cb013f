"""Integration: the worker against a real redis-server."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from detector.core.alerts import alert_id
from detector.core.checkpoint import FrozenCommit
from detector.core.pipeline import Verdict
from detector.core.settings import CHECKPOINT_KEY, Settings
from detector.gateway.embedded import free_port
from detector.gateway.streams import Output
from detector.offline import Scoring, score_file
from detector.runtime.checkpointer import Checkpointer
from detector.runtime.consumer import ALERT_PART_EVENTS
from detector.runtime.metrics import Metrics
from detector.runtime.worker import Worker
from tests.helpers import append, order_events, outlier

CONTRACT_FIELDS = {
    "alert_id", "producer", "source_stream", "source_id", "event_time", "score", "threshold",
    "model", "reasons", "emitted_at",
}  # fmt: skip


def _stream_with_outlier(
    r: redis.Redis, stream: str, per_producer: int = 400
) -> tuple[list[str], str]:
    events = order_events(producers=3, per_producer=per_producer)
    last_ts = int(events[-1]["ts"])
    events.append(outlier("svc-1", last_ts + 1000))
    ids = append(r, stream, events)
    return ids, ids[-1]


def test_run_emits_alert_with_contract_fields(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker]
) -> None:
    ids, outlier_id = _stream_with_outlier(r, stream_name)
    worker = worker_factory()
    stats = worker.run()

    assert stats.events == len(ids)
    alerts = r.xrange(worker.settings.alerts_stream)
    by_source = {fields["source_id"]: fields for _, fields in alerts}
    assert outlier_id in by_source, f"no alert for the outlier; alerts: {by_source.keys()}"
    fields = by_source[outlier_id]
    assert set(fields) >= CONTRACT_FIELDS
    assert fields["producer"] == "svc-1"
    assert fields["source_stream"] == stream_name
    assert fields["alert_id"] == alert_id(stream_name, outlier_id, "stats")
    assert fields["model"] == "stats"
    assert float(fields["score"]) >= float(fields["threshold"])
    assert 0.0 <= float(fields["score"]) <= 1.0
    reasons = orjson.loads(fields["reasons"])
    assert reasons[0]["feature"] == "value"
    assert reasons[0]["field"] == "amount"
    assert {"feature", "observed", "expected", "contribution"} <= set(reasons[0])
    assert int(fields["event_time"]) == int(
        r.xrange(stream_name, outlier_id, outlier_id)[0][1]["ts"]
    )
    # Everything acknowledged, nothing left for the group.
    assert r.xpending(stream_name, worker.settings.group)["pending"] == 0
    (group,) = r.xinfo_groups(stream_name)
    assert group["lag"] == 0


def test_an_alert_is_written_before_the_rest_of_its_batch_is_scored(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker]
) -> None:
    events = order_events(producers=3, per_producer=400)
    last_ts = int(events[-1]["ts"])
    events.append(outlier("svc-1", last_ts + 1000))
    later = order_events(producers=3, per_producer=70, seed=2)
    events += [e | {"ts": str(int(e["ts"]) + last_ts + 2000)} for e in later]
    ids = append(r, stream_name, events)
    at = len(ids) - len(later) - 1  # the outlier's position: 210 events after it
    worker = worker_factory()
    consumer = worker.consumers[0]
    emit, written = consumer.streams.emit, []

    def noted(out: Output) -> int:  # which alerts, and how many events were scored by then
        written.append(([a.source_id for a in out.alerts], consumer.pipeline.events_seen))
        return emit(out)

    consumer.streams.emit = noted  # type: ignore[method-assign]
    assert worker.settings.batch_size >= 500 and worker.run().events == len(ids)
    (scored,) = [n for sources, n in written if ids[at] in sources]
    # Written once its part of the batch was scored, not after the 210 events behind it.
    assert at < scored <= at + ALERT_PART_EVENTS
    assert [f["source_id"] for _, f in r.xrange(worker.settings.alerts_stream)] == [
        s for sources, _ in written for s in sources
    ]


def test_bad_input_goes_to_dead_letter_with_reason(
    r: redis.Redis, redis_url: str, stream_name: str, worker_factory: Callable[..., Worker]
) -> None:
    raw = redis.Redis.from_url(redis_url)  # bytes replies: the dead letters keep raw bytes
    good = order_events(producers=1, per_producer=5)
    bad: list[tuple[dict[str | bytes, str | bytes], str]] = [
        ({"producer": "p", "data": "{not json"}, "invalid_json"),
        ({"producer": "p", "data": '{"amount": 1e400}'}, "non_finite_number"),
        ({"producer": "p", "data": "[1, 2]"}, "payload_not_object"),
        ({"producer": "p", "data": '{"a":' * 20 + "1" + "}" * 20}, "json_too_deep"),
        ({"producer": "p", "blob": "x" * 70_000}, "entry_too_large"),
        ({b"producer": b"p", b"name": b"\xff\xfe"}, "invalid_utf8"),
        ({"producer": "p", "ts": "yesterday"}, "invalid_time"),
        ({"producer": "", "a": "1"}, "empty_producer"),
    ]
    append(raw, stream_name, good[:2])
    bad_ids = [raw.xadd(stream_name, fields).decode() for fields, _ in bad]  # type: ignore[arg-type]
    append(raw, stream_name, good[2:])
    worker = worker_factory()
    stats = worker.run()

    assert stats.events == len(good) + len(bad)
    assert stats.invalid == len(bad)
    letters = raw.xrange(worker.settings.dead_letter_stream)
    assert len(letters) == len(bad)
    for (_, fields), bad_id, (original, reason) in zip(letters, bad_ids, bad, strict=True):
        assert fields[b"source_id"].decode() == bad_id
        assert fields[b"source_stream"].decode() == stream_name
        assert fields[b"reason"].decode() == reason
        for k, v in original.items():
            kb = k if isinstance(k, bytes) else k.encode()
            vb = v if isinstance(v, bytes) else v.encode()
            assert fields[b"field." + kb] == vb  # the original entry, byte for byte
    assert r.xpending(stream_name, worker.settings.group)["pending"] == 0
    sample = worker.metrics.registry.get_sample_value
    assert sample("detector_dead_lettered_total", {"reason": "invalid_json"}) == 1
    raw.close()


def test_flat_value_that_only_looks_numeric_is_scored_not_dead_lettered(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker]
) -> None:
    # Issue 13: `XADD orders * producer svc-04 event_id 03875656161940159e78230871415040`
    # (a hex id that reads as an overflowing float) was dead-lettered as non_finite_number.
    events = order_events(producers=1, per_producer=300)
    for i, e in enumerate(events):
        e["producer"] = "svc-04"
        e["event_id"] = f"{i:032x}abc"  # ordinary hex ids: categories
    last_ts = int(events[-1]["ts"])
    odd = [
        "03875656161940159e78230871415040",  # the reported one: overflows a double
        "NaN",
        "-Infinity",
        "1e999",
    ]
    for k, event_id in enumerate(odd):
        events.append({**events[-1], "ts": str(last_ts + 1000 * (k + 1)), "event_id": event_id})
    ids = append(r, stream_name, events)
    seen: list[Verdict] = []
    worker = worker_factory(on_verdicts=seen.extend)
    stats = worker.run()

    assert r.xlen(worker.settings.dead_letter_stream) == 0
    assert stats.invalid == 0 and stats.events == len(ids)
    verdicts = {v.event.entry_id: v for v in seen}
    for entry_id, event_id in zip(ids[-len(odd) :], odd, strict=True):
        v = verdicts[entry_id]
        assert v.event.strings["event_id"] == event_id
        assert "event_id" not in v.event.numbers
        assert v.score is not None and v.error is None  # scored, past warm-up
    assert r.xpending(stream_name, worker.settings.group)["pending"] == 0


def test_restart_rereads_own_pending_entries(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker]
) -> None:
    ids, _ = _stream_with_outlier(r, stream_name)
    settings = worker_factory().settings
    r.xgroup_create(stream_name, settings.group, id="0")
    # A previous incarnation of consumer c1 read 300 entries and died before acking.
    r.xreadgroup(settings.group, settings.consumer, {stream_name: ">"}, count=300)
    assert r.xpending(stream_name, settings.group)["pending"] == 300

    stats = worker_factory().run()
    assert stats.events == len(ids)  # the 300 pending ones and the rest, each once
    assert r.xpending(stream_name, settings.group)["pending"] == 0


def test_claims_entries_a_dead_consumer_left_pending(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker],
    settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    ids, _ = _stream_with_outlier(r, stream_name)
    settings = settings_factory(claim_idle_ms=50)
    r.xgroup_create(stream_name, settings.group, id="0")
    r.xreadgroup(settings.group, "dead-consumer", {stream_name: ">"}, count=200)
    time.sleep(0.1)

    worker = worker_factory(settings)
    stats = worker.run()
    assert stats.claimed == 200
    assert stats.events == len(ids)
    assert r.xpending(stream_name, settings.group)["pending"] == 0


def test_reprocessing_never_writes_a_second_alert(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker],
    settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    _stream_with_outlier(r, stream_name)
    first = worker_factory().run()
    alerts_after_first = r.xlen("detector:alerts")
    assert first.alerts >= 1 and alerts_after_first == first.alerts
    # A second group replays the same entries from scratch: same state, same alert ids.
    second = worker_factory(settings_factory(group="replay")).run()
    assert second.alerts == first.alerts
    assert r.xlen("detector:alerts") == alerts_after_first


def test_offline_score_equals_run_scores(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    events = order_events(producers=4, per_producer=300, seed=5)
    events.insert(900, outlier("svc-2", int(events[900]["ts"]) + 1))
    events.append({"producer": "svc-0", "data": "{broken"})  # invalid in both paths
    events.sort(key=lambda e: int(e.get("ts", "9" * 15)))
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    out = tmp_path / "scores.csv"
    score_file(jsonl, out, Scoring(model="stats", stream=stream_name))
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]

    append(r, stream_name, events)
    seen: list[Verdict] = []
    worker_factory(on_verdicts=seen.extend).run()

    assert len(rows) == len(events)
    online = {v.event.entry_id: v for v in seen}
    ids = [i for i, _ in r.xrange(stream_name)]
    offline_scores = [row[2] for row in rows]
    online_scores = [
        ("" if online[i].score is None else repr(online[i].score)) if i in online else ""
        for i in ids
    ]
    assert offline_scores == online_scores
    assert sum(1 for s in offline_scores if s) > 400  # scores were really compared (after warm-up)
    assert [row[3] for row in rows] == [
        str(int(i in online and online[i].alert is not None)) for i in ids
    ]
    assert "1" in [row[3] for row in rows]


def test_metrics_endpoint_serves_named_metrics(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker]
) -> None:
    from prometheus_client import CollectorRegistry

    _stream_with_outlier(r, stream_name)
    port = free_port()
    metrics = Metrics(CollectorRegistry(), (stream_name,), "stats")
    metrics.serve(port, addr="127.0.0.1")
    worker = worker_factory(metrics=metrics)
    worker.run()
    worker._report_group()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in (
        'detector_events_total{outcome="scored"}',
        "detector_alerts_total",
        'detector_dead_lettered_total{reason="invalid_json"}',
        "detector_event_processing_seconds_bucket",
        f'detector_consumer_lag{{stream="{stream_name}"}} 0.0',
        f'detector_pending_entries{{stream="{stream_name}"}} 0.0',
        "detector_producers_tracked 3.0",
        "detector_info",
    ):
        assert name in body, name
    scored = metrics.registry.get_sample_value("detector_events_total", {"outcome": "scored"})
    warmup = metrics.registry.get_sample_value("detector_events_total", {"outcome": "warmup"})
    assert scored is not None and warmup is not None and scored + warmup == 1201
    assert "svc-1" not in body  # producer ids are never label values


def test_until_idle_returns_when_quiet(worker_factory: Callable[..., Worker]) -> None:
    started = time.monotonic()
    stats = worker_factory().run()
    assert stats.events == 0
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("model", ["stats", "hst"])
def test_every_shipped_model_runs_end_to_end(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker],
    settings_factory: Callable[..., Settings], model: str,
) -> None:  # fmt: skip
    ids, outlier_id = _stream_with_outlier(r, stream_name, per_producer=1000)
    stats = worker_factory(settings_factory(model=model)).run()
    assert stats.events == len(ids)
    sources = [f["source_id"] for _, f in r.xrange("detector:alerts")]
    assert outlier_id in sources


def test_deleted_group_is_recreated(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker]
) -> None:
    worker = worker_factory()
    append(r, stream_name, order_events(producers=1, per_producer=10))
    assert worker.run().events == 10
    r.xgroup_destroy(stream_name, worker.settings.group)
    append(r, stream_name, order_events(producers=1, per_producer=5, seed=2))
    stats = worker.run()
    # Recreated right after the last entry the state learned: nothing is lost, and the old
    # entries are not read again.
    assert stats.events == 10 + 5
    assert worker.pipeline.events_seen == 15
    assert r.xpending(stream_name, worker.settings.group)["pending"] == 0


def test_a_commit_due_by_time_is_encoded_in_slices_while_the_worker_runs(
    r: redis.Redis,
    stream_name: str,
    worker_factory: Callable[..., Worker],
    settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = append(r, stream_name, order_events(producers=40, per_producer=15))
    # Never due by count; due by time; slices so short that each encodes one state.
    settings = settings_factory(
        until_idle=False, checkpoint_every=10**6, checkpoint_interval_ms=100, commit_slice_ms=1e-6
    )
    worker = worker_factory(settings)
    sync_commits: list[bool] = []  # whether the worker was stopping at each one-go commit
    steps: list[bool] = []  # whether each encoding step finished the commit
    commit, advance = Checkpointer.commit, FrozenCommit.advance

    def spy_commit(self: Checkpointer) -> None:
        sync_commits.append(worker.rt.stop.is_set())
        commit(self)

    def spy_advance(self: FrozenCommit, deadline: float | None = None) -> bool:
        done = advance(self, deadline)
        if deadline is not None:
            steps.append(done)
        return done

    monkeypatch.setattr(Checkpointer, "commit", spy_commit)
    monkeypatch.setattr(FrozenCommit, "advance", spy_advance)
    key = CHECKPOINT_KEY.format(group=settings.group, consumer=settings.consumer)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        # A commit encoded to the end in slices (the worker has read), then nothing pending.
        while True not in steps or r.xpending(stream_name, settings.group)["pending"]:
            assert time.monotonic() < deadline, "the commit due by time never landed"
            time.sleep(0.05)
        assert sync_commits == []  # written by the housekeeping's slices, not in one go
        assert steps.count(False) >= 10  # 40 producers' states, one per slice
        assert r.hlen(key) > 40  # meta, model and every producer
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert worker.stats.events == len(ids)


@pytest.mark.parametrize("linger_ms", [0.0, 150.0])
def test_a_live_stream_is_read_in_fewer_rounds_with_a_read_linger(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker],
    settings_factory: Callable[..., Settings], linger_ms: float,
) -> None:  # fmt: skip
    """Entries arriving a few at a time: each round after a small one waits ``linger_ms``, so
    they are read in rounds of many (and all of them are processed)."""
    events = order_events(producers=2, per_producer=40)
    worker = worker_factory(settings_factory(read_linger_ms=linger_ms, idle_timeout_ms=1000))
    thread = threading.Thread(target=worker.run)
    thread.start()
    started = time.monotonic()
    try:
        for event in events:  # 80 entries over ~0.8 s
            append(r, stream_name, [event])
            time.sleep(0.01)
    finally:
        arriving_s = time.monotonic() - started
        thread.join(timeout=30)
    assert worker.stats.events == len(events)
    if linger_ms:  # rounds at least 150 ms apart while they arrive, then one for the rest
        assert worker.stats.batches <= arriving_s / 0.15 + 2, (worker.stats.batches, arriving_s)
    else:  # read as they come: most rounds read one entry
        assert worker.stats.batches > 20, worker.stats.batches
