"""Analyst feedback (issue 18): ``detector feedback`` appends a verdict on an alert; the worker
that owns the producer reads it like an event (in order, acked with its checkpoint); a false
positive suppresses the repeat of its pattern and lets the baselines learn it, a confirmed
alert's pattern is never adopted as normal; rules are bounded, checkpointed and restored;
bad feedback is dead-lettered; the same events and feedback give the same verdicts offline."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import redis
from click.testing import CliRunner

from detector.cli import cli as main_group
from detector.core.errors import InvalidEventError
from detector.core.events import Event
from detector.core.feedback import (
    CONFIRMED,
    FALSE_POSITIVE,
    MAX_RULES,
    PROTECT,
    RULE_MS,
    SUPPRESS,
    Feedback,
    FeedbackRules,
    MarkedReason,
    Pattern,
    merge_order,
)
from detector.core.pipeline import Pipeline, Verdicts
from detector.core.scoring import load_spec
from detector.core.settings import Settings
from detector.gateway import feedback as writer
from detector.gateway.partitions import partition_of, partition_stream
from detector.offline import Scoring, score_file
from detector.runtime.worker import Worker
from tests.helpers import append

FB = "test:feedback"
ALERTS = "detector:alerts"
DEAD = "detector:dead-letter"
MIN = 60_000


# -- the core: what a verdict teaches ------------------------------------------------------


def _event(i: int, t: int, v: float, producer: str = "p1") -> Event:
    return Event("s", f"{i + 1}-0", producer, t, "t", {"v": v}, {}, 40)


def _normal(n: int = 300) -> list[Event]:
    return [_event(i, i * 1000, 1.0 + i % 2) for i in range(n)]


def _fp(alert_event: Event, verdict: str = FALSE_POSITIVE, observed: str = "5000") -> Feedback:
    why = (MarkedReason("value", "v", observed),)
    return Feedback("a", verdict, alert_event.producer, alert_event.event_time_ms, why, "t")


def _incident(pipeline: Pipeline, feedback: str | None) -> Verdicts:
    """Normal events, an outlier at 5000 (an alert), feedback on it (if any), then repeats
    of 5000-ish values after the cooldown, separated by normal events."""
    out = pipeline.process(_normal())
    assert out[-1].alert is None
    first = _event(300, 300_000, 5000.0)
    assert pipeline.process([first])[0].alert is not None
    if feedback is not None:
        assert pipeline.apply_feedback(_fp(first, feedback))
    # One event a second as before; every 6 minutes (past the 5-minute cooldown) a repeat.
    later = [
        _event(300 + k, 300_000 + k * 1000, 5000.0 + k if k % 360 == 0 else 1.0 + k % 2)
        for k in range(1, 3 * 360 + 1)
    ]
    return pipeline.process(later)


def test_a_false_positive_suppresses_its_repeat_and_lets_the_baseline_learn_it() -> None:
    spec = load_spec("stats")
    control, taught = Pipeline(spec), Pipeline(spec)
    before = _incident(control, None)
    after = _incident(taught, FALSE_POSITIVE)
    assert sum(v.alert is not None for v in before) == 3  # without feedback: each repeat alerts
    assert all(v.alert is None and not v.flagged for v in after)
    learned = next(iter(taught.view("p1").numeric.values())).count
    kept_out = next(iter(control.view("p1").numeric.values())).count
    assert learned == kept_out + 3  # the repeats learned as normal, not kept out


@pytest.mark.parametrize("part", [1, 7, 64, 5000])
def test_a_batch_scored_in_parts_gives_the_same_verdicts_and_feedback_order(part: int) -> None:
    spec = load_spec("stats")
    first = _event(300, 300_000, 5000.0)
    later = [
        _event(300 + k, 300_000 + k * 1000, 5000.0 + k if k % 360 == 0 else 1.0 + k % 2)
        for k in range(1, 800)
    ]
    batch = [first, *later]
    # Feedback before the alert, after it, twice at one index, and past the last event.
    due = [(0, _fp(first)), (1, _fp(first, CONFIRMED)), (361, _fp(first)), (361, _fp(first)),
           (len(batch), _fp(first))]  # fmt: skip
    whole, parted = Pipeline(spec), Pipeline(spec)
    for p in (whole, parted):
        p.process(_normal())
    expected = whole.process(batch, due)
    got = Verdicts(batch)
    for start in range(0, len(batch), part):
        parted.process_part(got, start, min(start + part, len(batch)), due)
    assert list(got) == list(expected) and got.emitted() == expected.emitted()
    assert [a for k in range(0, len(batch), part) for a in got.emitted(k, k + part)] == (
        expected.emitted()
    )
    assert parted.snapshot({}, full=True).base == whole.snapshot({}, full=True).base


def test_a_suppression_matches_its_band_only() -> None:
    p = Pattern("value", "v", "t", "5000")
    assert p.matches(Pattern("value", "v", "t", "9000"))
    assert p.matches(Pattern("value", "v", "", "2600"))  # the type unknown: any
    assert not p.matches(Pattern("value", "v", "t", "50000"))  # another band: alerts
    assert not p.matches(Pattern("value", "v", "t", "-5000"))
    assert not p.matches(Pattern("value", "w", "t", "5000"))  # another field
    assert not p.matches(Pattern("value", "v", "u", "5000"))  # another type
    assert Pattern("category", "currency", "", "XYZ").matches(
        Pattern("category", "currency", "t", "XYZ")
    )
    assert not Pattern("category", "currency", "", "XYZ").matches(
        Pattern("category", "currency", "", "XYW")
    )


def test_another_band_still_alerts_after_a_false_positive() -> None:
    pipeline = Pipeline(load_spec("stats"))
    pipeline.process(_normal())
    first = _event(300, 300_000, 5000.0)
    assert pipeline.process([first])[0].alert is not None
    pipeline.apply_feedback(_fp(first))
    far = _event(301, 300_000 + 6 * MIN, 500_000.0)
    assert pipeline.process([far])[0].alert is not None


def test_rules_expire_after_seven_days_of_event_time() -> None:
    rules = FeedbackRules()
    rules.reset(0)
    rules.add(0, _fp(_event(0, 1000, 5000.0)), now_ms=2000)
    reason = [MarkedReason("value", "v", "5000")]
    assert rules.match(0, reason, "t", 2000 + RULE_MS) == SUPPRESS
    assert rules.match(0, reason, "t", 2001 + RULE_MS) == 0


def test_a_confirmed_pattern_is_never_adopted_as_the_new_normal() -> None:
    """A long run of the same anomaly becomes the new normal (adapt_after_events and _ms):
    unless an analyst confirmed it, when its events stay out of the baselines."""
    spec = load_spec("stats")
    adapted, kept_out = Pipeline(spec), Pipeline(spec)
    for pipeline, verdict in ((adapted, None), (kept_out, CONFIRMED)):
        pipeline.process(_normal())
        first = _event(300, 300_000, 5000.0)
        assert pipeline.process([first])[0].alert is not None
        if verdict is not None:
            pipeline.apply_feedback(_fp(first, verdict))
        run = [_event(301 + k, 300_000 + (k + 1) * 1000, 5000.0 + k % 3) for k in range(1200)]
        pipeline.process(run)
    adopted = next(iter(adapted.view("p1").numeric.values())).count
    kept = next(iter(kept_out.view("p1").numeric.values())).count
    assert adopted > 300 + 50  # the run was adopted as the new normal
    assert kept == 300  # never learned
    assert kept_out.view("p1").feedback_rules[0].kind == PROTECT


def test_rules_are_bounded_per_producer_oldest_first() -> None:
    rules = FeedbackRules()
    rules.reset(0)
    for k in range(MAX_RULES + 3):
        fb = replace(_fp(_event(0, 0, 1.0)), reasons=(MarkedReason("category", "c", f"v{k}"),))
        rules.add(0, fb, 0)
    kept = [r.pattern.observed for r in rules.rules[0]]
    assert kept == [f"v{k}" for k in range(3, MAX_RULES + 3)]
    assert rules.evicted == 3 and rules.applied == MAX_RULES + 3


def test_feedback_on_an_unknown_producer_is_counted_not_applied() -> None:
    pipeline = Pipeline(load_spec("stats"))
    pipeline.process(_normal(10))
    assert not pipeline.apply_feedback(_fp(_event(0, 0, 1.0, producer="nobody")))
    assert pipeline.feedback.unknown == 1 and pipeline.feedback.applied == 0


def test_the_rules_are_checkpointed_restored_and_evicted_with_the_producer() -> None:
    spec = load_spec("stats")
    pipeline = Pipeline(spec, idle_ttl_ms=3_600_000, track_changes=True)
    pipeline.process(_normal())
    first = _event(300, 300_000, 5000.0)
    pipeline.process([first])
    pipeline.apply_feedback(_fp(first))
    snap = pipeline.snapshot({}, full=True)
    restored = Pipeline(spec, idle_ttl_ms=3_600_000)
    restored.restore(replace(snap, producers=dict(snap.producers.items())))
    assert restored.view("p1").feedback_rules == pipeline.view("p1").feedback_rules != ()
    # Evicted (idle past the TTL): forgotten with the producer; a new slot starts with none.
    # Another producer goes on for 2 hours (a pause of everyone would move p1's clock too).
    other = [_event(1000 + k, 301_000 + k * 30_000, 1.0, producer="p2") for k in range(250)]
    pipeline.process(other)
    with pytest.raises(KeyError):
        pipeline.view("p1")
    pipeline.process([_event(2000, other[-1].event_time_ms + 1000, 1.0)])
    assert pipeline.view("p1").feedback_rules == ()


def test_feedback_fields_are_validated() -> None:
    good = _fp(_event(0, 5, 1.0)).to_fields()
    assert Feedback.from_fields(good) == _fp(_event(0, 5, 1.0))
    assert Feedback.from_fields({k.encode(): v.encode() for k, v in good.items()}).producer == "p1"
    for bad, why in (
        ({**good, "verdict": "maybe"}, "verdict"),
        ({k: v for k, v in good.items() if k != "producer"}, "producer: missing"),
        ({**good, "event_time": "soon"}, "event_time"),
        ({**good, "reasons": "[1]"}, "reasons"),
        ({**good, "reasons": "[]"}, "reasons"),
        ({**good, "reasons": "{"}, "not JSON"),
        ({**good, "note": "x" * 5000}, "longer"),
    ):
        with pytest.raises(InvalidEventError, match=why) as info:
            Feedback.from_fields(bad)
        assert info.value.reason == "invalid_feedback"


def test_merge_order() -> None:
    assert merge_order(["1-0", "3-0", "3-5"], ["0-9", "3-0", "3-1", "4-0"]) == [0, 2, 2, 3]
    assert merge_order([], ["1-0"]) == [0]


# -- on Redis: the CLI, the worker, restarts, dead letters, offline == run ----------------


def _events(n: int = 300, start: int = 1_767_225_600_000) -> list[dict[str, str]]:
    return [
        {"producer": "svc-1", "ts": str(start + i * 1000), "type": "t",
         "data": orjson.dumps({"v": 1.0 + i % 2}).decode()}
        for i in range(n)
    ]  # fmt: skip


def _spike(t: int, v: float = 5000.0) -> dict[str, str]:
    return {"producer": "svc-1", "ts": str(t), "type": "t", "data": orjson.dumps({"v": v}).decode()}


def _repeats(after_ms: int, k: int = 3) -> list[dict[str, str]]:
    """One event a second; every 6 minutes (past the cooldown) a repeat of the spike."""
    out = _events(k * 360, after_ms + 1000)
    for n in range(1, k + 1):
        out[n * 360 - 1] = _spike(int(out[n * 360 - 1]["ts"]), 5000.0 + n)
    return out


def _cli(*args: str, **env_vars: str) -> tuple[int, str]:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("DETECTOR_")}
    out = CliRunner().invoke(main_group, list(args), env={**env, **env_vars})
    return out.exit_code, out.output


def _settings(settings_factory: Callable[..., Settings], **changes: object) -> Settings:
    return settings_factory(feedback_stream=FB, checkpoint_every=50, **changes)


def test_cli_appends_and_the_worker_applies_it_in_order(
    r: redis.Redis, redis_url: str, stream_name: str,
    worker_factory: Callable[..., Worker], settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    normal = _events()
    last = int(normal[-1]["ts"])
    append(r, stream_name, [*normal, _spike(last + 1000)])
    worker = worker_factory(_settings(settings_factory))
    assert worker.run().alerts == 1
    ((_, alert),) = r.xrange(ALERTS)
    alert_id = alert["alert_id"]

    code, out = _cli("feedback", alert_id, "false-positive", "--note", "batch job",
                     "--redis-url", redis_url, "--stream", FB)  # fmt: skip
    assert code == 0, out
    assert "false-positive" in out and "svc-1" in out
    ((_, fields),) = r.xrange(FB)
    fb = Feedback.from_fields(fields)
    assert (fb.alert_id, fb.producer, fb.note) == (alert_id, "svc-1", "batch job")
    assert fb.reasons[0].feature == "value" and fb.event_time == last + 1000

    append(r, stream_name, _repeats(last + 1000))
    stats = worker.run()  # cumulative counters: the first run's alert only
    assert stats.alerts == 1 and stats.invalid == 0 and r.xlen(ALERTS) == 1  # repeats suppressed
    assert worker.pipeline.feedback.applied == 1
    assert r.xpending(FB, "detector")["pending"] == 0  # acked with the checkpoint
    assert worker.metrics.feedback.labels("applied")._value.get() == 1

    code, out = _cli("feedback", "no-such-alert", "confirmed", "--redis-url", redis_url,
                     "--stream", FB)  # fmt: skip
    assert code == 1 and "no alert" in out


def test_the_rules_survive_a_restart_from_the_checkpoint(
    r: redis.Redis, stream_name: str,
    worker_factory: Callable[..., Worker], settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    normal = _events()
    last = int(normal[-1]["ts"])
    append(r, stream_name, [*normal, _spike(last + 1000)])
    worker_factory(_settings(settings_factory)).run()
    ((_, alert),) = r.xrange(ALERTS)
    found = writer.find_alert(r, ALERTS, alert["alert_id"])
    assert found is not None
    writer.append(r, FB, writer.feedback_of(found, FALSE_POSITIVE))
    worker_factory(_settings(settings_factory)).run()  # applies it, commits, stops
    append(r, stream_name, _repeats(last + 1000))
    restarted = worker_factory(_settings(settings_factory))
    stats = restarted.run()
    assert stats.alerts == 0
    assert restarted.pipeline.view("svc-1").feedback_rules[0].kind == SUPPRESS
    assert restarted.pipeline.feedback.applied == 0  # from the checkpoint, not re-applied


def test_bad_feedback_is_dead_lettered_with_a_reason(
    r: redis.Redis, stream_name: str,
    worker_factory: Callable[..., Worker], settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    append(r, stream_name, _events(20))
    bad = r.xadd(FB, {"alert_id": "x", "verdict": "nope"})
    worker = worker_factory(_settings(settings_factory))
    stats = worker.run()
    assert stats.invalid == 1 and stats.redis_errors == 0
    ((_, letter),) = r.xrange(DEAD)
    assert letter["reason"] == "invalid_feedback" and letter["source_id"] == bad
    assert worker.metrics.feedback.labels("invalid")._value.get() == 1
    assert r.xpending(FB, "detector")["pending"] == 0


def test_run_equals_score_with_the_same_feedback(
    r: redis.Redis, stream_name: str, tmp_path: Path,
    worker_factory: Callable[..., Worker], settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    normal = _events()
    last = int(normal[-1]["ts"])
    ids = append(r, stream_name, [*normal, _spike(last + 1000)])
    worker = worker_factory(_settings(settings_factory, batch_size=64))
    worker.run()
    ((_, alert),) = r.xrange(ALERTS)
    found = writer.find_alert(r, ALERTS, alert["alert_id"])
    assert found is not None
    # The verdict comes after the first repeat (it alerts) and before the others: the worker
    # reads full batches of events before it, so it holds the verdict until it gets there.
    repeats = _repeats(last + 1000)
    ids += append(r, stream_name, repeats[:400])
    # Ids of two streams order them only to the millisecond (the sequence is each stream's):
    # in the same millisecond as the first repeat, the verdict would read as older than it.
    time.sleep(0.005)
    writer.append(r, FB, writer.feedback_of(found, FALSE_POSITIVE))
    time.sleep(0.005)
    ids += append(r, stream_name, repeats[400:])
    worker.run()
    run_alerts = [f["source_id"] for _, f in r.xrange(ALERTS)]
    assert len(run_alerts) == 2

    events = tmp_path / "events.jsonl"
    with events.open("wb") as fh:
        for entry_id, fields in r.xrange(stream_name):
            fh.write(orjson.dumps({"_id": entry_id, **fields}) + b"\n")
    feedback = tmp_path / "feedback.jsonl"
    with feedback.open("wb") as fh:
        for entry_id, fields in r.xrange(FB):
            fh.write(orjson.dumps({"_id": entry_id, **fields}) + b"\n")
    out = tmp_path / "scores.csv"
    counts = score_file(events, out, Scoring(stream=stream_name, feedback=feedback))
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    offline_alerts = [ids[i] for i, row in enumerate(rows) if row["alert"] == "1"]
    assert offline_alerts == run_alerts and counts.alerts == 2
    # Without the feedback, offline alerts on every repeat: the feedback made the difference.
    assert score_file(events, out, Scoring(stream=stream_name)).alerts == 4


def test_partitioned_feedback_goes_to_the_producers_partition(r: redis.Redis) -> None:
    fb = replace(_fp(_event(0, 0, 1.0)), producer="orders-1")
    stream, _ = writer.append(r, FB, fb, partitions=8)
    assert stream == partition_stream(FB, partition_of("orders-1", 8)) == f"{FB}:{{6}}"
    assert r.xlen(stream) == 1


# -- ACL: the feedback writer's grant; readers may not write feedback ----------------------


def test_feedback_runs_fully_under_its_acl_users_and_readers_may_not_write_it() -> None:
    from detector.acl import AclConfig, acl_lines
    from detector.gateway.embedded import EmbeddedRedis
    from tests.test_security import (
        PASSWORDS,
        STREAM,
        USERS,
        denied_log,
        refused,
        secure_server,
        user_client,
        user_url,
        worker_settings,
        workload,
    )  # fmt: skip

    passwords = {**PASSWORDS, "feedback": "f-Pa55-3c4d5e"}
    users = {**USERS, "feedback": "detector-feedback"}
    cfg = AclConfig(streams=(STREAM,), group="detector", consumer="c1", feedback_stream=FB,
                    feedback_writer=True)  # fmt: skip
    lines = acl_lines(cfg, passwords)
    assert any(line.startswith("ACL SETUSER detector-feedback") for line in lines)
    assert not any(line.startswith("ACL SETUSER detector-feedback") for line in acl_lines(
        replace(cfg, feedback_writer=False), passwords))  # fmt: skip
    server = EmbeddedRedis()
    server.start()
    try:
        admin = secure_server(server, lines)
        admin.acl_log_reset()
        producer = user_client(server, "producer")
        append(producer, STREAM, workload())
        settings = worker_settings(user_url(server, "worker"), feedback_stream=FB)
        assert Worker(settings).run().alerts == 1
        url = f"redis://{users['feedback']}@127.0.0.1:{server.port}/0"
        alert_id = admin.xrange(ALERTS)[0][1]["alert_id"]
        code, out = _cli("feedback", alert_id, "confirmed", "--redis-url", url, "--stream", FB,
                         DETECTOR_REDIS_PASSWORD=passwords["feedback"])  # fmt: skip
        assert code == 0, out
        stats = Worker(settings).run()  # reads and acks the feedback, as its user
        assert stats.redis_errors == 0 and stats.invalid == 0
        assert admin.xpending(FB, "detector")["pending"] == 0
        assert denied_log(admin) == []  # nothing any of them did was refused
        # Readers of alerts may not write feedback; the worker may read it, not write it.
        reader = user_client(server, "reader")
        refused(lambda: reader.xadd(FB, {"alert_id": "x"}))
        worker = user_client(server, "worker")
        refused(lambda: worker.xadd(FB, {"alert_id": "x"}))
        writer_client = redis.Redis.from_url(url, password=passwords["feedback"],
                                             decode_responses=True)  # fmt: skip
        refused(lambda: writer_client.xrange(FB))  # the writer cannot read the feedback back
        refused(lambda: writer_client.xadd(ALERTS, {"alert_id": "x"}))
        for client in (producer, reader, worker, writer_client, admin):
            client.close()
    finally:
        server.stop()
