"""State that survives: checkpoints in Redis, restarts, baselines, poison entries."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import redis

from detector.core.checkpoint import Signer
from detector.core.pipeline import Verdict
from detector.core.settings import CHECKPOINT_KEY, Settings
from detector.runtime.worker import Worker
from tests.conftest import TEST_KEY
from tests.helpers import append, order_events, outlier
from tests.test_cli import clean_env, cli


def _scores(verdicts: list[Verdict]) -> dict[str, float | None]:
    return {v.event.entry_id: v.score for v in verdicts}


def test_a_restarted_worker_resumes_exactly_where_its_checkpoint_left(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker],
    settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    events = order_events(producers=3, per_producer=500, seed=3)
    events.append(outlier("svc-2", int(events[-1]["ts"]) + 500))
    ids = append(r, stream_name, events)

    reference: list[Verdict] = []
    worker_factory(settings_factory(group="reference"), on_verdicts=reference.extend).run()

    first: list[Verdict] = []
    w1 = worker_factory(settings_factory(checkpoint_every=100), on_verdicts=first.extend)
    w1.run(max_events=700)  # stops mid-stream; its final checkpoint covers what it read
    assert r.xpending(stream_name, "detector")["pending"] == 0
    second: list[Verdict] = []
    stats = worker_factory(on_verdicts=second.extend).run()

    assert stats.replayed == 0 and stats.events == len(ids) - w1.stats.events
    resumed = {**_scores(first), **_scores(second)}
    assert resumed == _scores(reference)  # same scores, event for event
    assert len(resumed) == len(ids)


def test_entries_after_the_checkpoint_are_replayed_into_the_restored_state(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker],
    settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    """A crash between checkpoints: the pending entries after it are learned exactly once."""
    events = order_events(producers=3, per_producer=400, seed=4)
    append(r, stream_name, events)
    reference: list[Verdict] = []
    worker_factory(settings_factory(group="reference"), on_verdicts=reference.extend).run()

    w1 = worker_factory(settings_factory(checkpoint_every=300, checkpoint_interval_ms=10**9))
    # Dies before committing: no commit of w1's ever reaches Redis.
    w1.consumers[0].streams.send_commit = lambda *a, **k: None  # type: ignore[method-assign]
    w1.run(max_events=1000)
    # Nothing was ever committed: every entry it read is still pending for consumer c1.
    assert r.xpending(stream_name, "detector")["pending"] == 1000

    after: list[Verdict] = []
    w2 = worker_factory(settings_factory(), on_verdicts=after.extend)
    w2.run()
    assert _scores(after) == _scores(reference)
    n = sum(w2.pipeline.store.clock.n[s] for s in w2.pipeline.store.producers.values())
    assert n == len(events)  # learned exactly once each
    assert r.xpending(stream_name, "detector")["pending"] == 0


def test_commits_encoded_between_reads_are_exactly_commits_in_one_go(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker],
    settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    """Tiny commit slices: batches are read and scored while a commit is being encoded; the
    scores, the final checkpoint, and a resume after commits stop landing mid-encoding are
    those of commits written in one go."""
    events = order_events(producers=6, per_producer=300, seed=8)
    events.append(outlier("svc-4", int(events[-1]["ts"]) + 500))
    append(r, stream_name, events)
    small = {"checkpoint_every": 200, "batch_size": 40}
    reference: list[Verdict] = []
    whole = settings_factory(group="whole", commit_slice_ms=0, **small)
    worker_factory(whole, on_verdicts=reference.extend).run()

    sliced: list[Verdict] = []
    w = worker_factory(
        settings_factory(group="sliced", commit_slice_ms=0.001, **small),
        on_verdicts=sliced.extend,
    )
    c = w.consumers[0].checkpointer
    write, during = c._write_frozen, []

    def noted_write() -> None:  # entries read and scored between the freeze and the write
        during.append(c.since_commit)  # counted from the freeze
        write()

    c._write_frozen = noted_write  # type: ignore[method-assign]
    w.run()
    assert sum(n > 0 for n in during) >= 5, during  # reading went on during commits
    assert _scores(sliced) == _scores(reference)
    assert any(v.alert is not None for v in sliced)
    with _bytes_client(r) as raw:
        final = [
            raw.hgetall(CHECKPOINT_KEY.format(group=g, consumer="c1")) for g in ("whole", "sliced")
        ]
    whole_meta, sliced_meta = (
        orjson.loads(Signer(TEST_KEY).verify("meta", f.pop(b"meta"))) | {"created_at_ms": 0}
        for f in final
    )
    assert final[0] == final[1] and len(final[0]) == 8  # model, 6 producers, peers: blob for blob
    assert whole_meta == sliced_meta

    # Commits stop reaching Redis after the third: the one written last was encoded while
    # later batches changed the state; a resumed worker replays exactly what it did not ack.
    w1 = worker_factory(settings_factory(group="crash", commit_slice_ms=0.001, **small))
    c1, landed = w1.consumers[0], []
    commit = c1.streams.send_commit

    def first_three(*args: object) -> None:
        if len(landed) < 3:
            landed.append(commit(*args))  # type: ignore[arg-type]

    c1.streams.send_commit = first_three  # type: ignore[method-assign]
    w1.run(max_events=1000)
    assert r.xpending(stream_name, "crash")["pending"] == 1000 - 3 * 200
    resumed: list[Verdict] = []
    w2 = worker_factory(settings_factory(group="crash", **small), on_verdicts=resumed.extend)
    w2.run()
    assert w2.stats.replayed == 0
    expected = _scores(reference)
    assert _scores(resumed) == {v.event.entry_id: expected[v.event.entry_id] for v in resumed}
    assert len(resumed) == len(events) - 3 * 200
    assert sum(w2.pipeline.store.clock.n[s] for s in w2.pipeline.store.producers.values()) == len(
        events
    )


def test_restored_and_committed_state_is_out_of_the_cyclic_gc(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker],
    settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    """Full collections over every producer's state paused the worker ~90 ms (design.md)."""
    append(r, stream_name, order_events(producers=3, per_producer=200, seed=2))
    w = worker_factory(settings_factory(checkpoint_every=100))
    w.run()
    collected = {id(o) for o in gc.get_objects()}  # frozen objects are not among them
    store = w.pipeline.store
    # Every producer's state is in the features' tables (columns), not an object per producer:
    # the tables holding the categorical fields' and the numeric fields' rows.
    states = [store.by_name["category"].fields, store.by_name["value"].rows]
    assert not any(id(st) in collected for st in states)
    assert all(gc.is_tracked(st) for st in states)  # tracked, but frozen


def test_pending_entries_below_the_checkpoint_are_acked_not_relearned(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker],
    settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    events = order_events(producers=2, per_producer=300, seed=6)
    append(r, stream_name, events)
    w1 = worker_factory()
    w1.run()
    # Simulate a commit whose XACK was lost: make the last 100 entries pending again.
    last_ids = [i for i, _ in r.xrange(stream_name)][-100:]
    r.xclaim(stream_name, "detector", "c1", 0, last_ids, force=True)
    assert r.xpending(stream_name, "detector")["pending"] == 100
    w2 = worker_factory()
    stats = w2.run()
    assert stats.replayed == 100
    assert sum(w2.pipeline.store.clock.n[s] for s in w2.pipeline.store.producers.values()) == len(
        events
    )
    assert r.xpending(stream_name, "detector")["pending"] == 0


def _bytes_client(r: redis.Redis) -> redis.Redis:
    """A client of the same server that returns bytes (checkpoint blobs are binary)."""
    return redis.Redis(connection_pool=r.connection_pool.__class__(**{
        **r.connection_pool.connection_kwargs, "decode_responses": False}))  # fmt: skip


def _tamper(r: redis.Redis, key: str) -> None:
    with _bytes_client(r) as raw:
        fields = raw.hgetall(key)
        name = next(k for k in fields if k.startswith(b"p:"))
        blob = bytearray(fields[name])
        blob[-1] ^= 0xFF
        raw.hset(key, name, bytes(blob))


def test_tampered_or_foreign_checkpoints_stop_the_worker_with_exit_3(
    r: redis.Redis, redis_url: str
) -> None:
    append(r, "events", order_events(producers=2, per_producer=100))
    base = ["run", "--redis-url", redis_url, "--until-idle", "--idle-timeout-ms", "200",
            "--consumer", "w1"]  # fmt: skip
    assert cli(*base).returncode == 0
    key = CHECKPOINT_KEY.format(group="detector", consumer="w1")
    assert r.exists(key)

    other_key = cli(*base, env={"DETECTOR_CHECKPOINT_KEY": "x" * 32})
    assert other_key.returncode == 3 and "bad signature" in other_key.stderr

    _tamper(r, key)
    tampered = cli(*base)
    assert tampered.returncode == 3 and "bad signature" in tampered.stderr
    # The operator's way out: relearn.
    assert cli(*base, "--reset-state").returncode == 0


def test_checkpoint_of_another_model_is_refused_with_exit_3(r: redis.Redis, redis_url: str) -> None:
    append(r, "events", order_events(producers=1, per_producer=50))
    base = ["run", "--redis-url", redis_url, "--until-idle", "--idle-timeout-ms", "200"]
    assert cli(*base).returncode == 0
    out = cli(*base, "--model", "hst")
    assert out.returncode == 3 and "incompatible checkpoint" in out.stderr


def test_train_then_run_from_baseline_alerts_without_warm_up(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    history = order_events(producers=3, per_producer=600, seed=8)
    src = tmp_path / "history.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in history))
    env = {"DETECTOR_BASELINES_DIR": str(tmp_path / "baselines")}
    trained = cli("train", "--input", str(src), "--baseline", "shop", env=env)
    assert trained.returncode == 0, trained.stderr
    assert "learned 1800 events from 3 producers" in trained.stderr
    assert (tmp_path / "baselines" / "shop.baseline").exists()

    # Live traffic: the very first event of svc-1 is anomalous.
    t = int(history[-1]["ts"]) + 3_600_000
    append(r, "events", [outlier("svc-1", t)])
    run = cli("run", "--redis-url", redis_url, "--until-idle", "--idle-timeout-ms", "200",
              "--baseline", "shop", env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    alerts = r.xrange("detector:alerts")
    assert len(alerts) == 1 and alerts[0][1]["producer"] == "svc-1"
    # Without the baseline the same event is warm-up: no alert.
    r.delete("detector:alerts")
    append(r, "cold", [outlier("svc-1", t)])
    cold = cli("run", "--redis-url", redis_url, "--until-idle", "--idle-timeout-ms", "200",
               "--stream", "cold", "--consumer", "cold")  # fmt: skip
    assert cold.returncode == 0 and r.xlen("detector:alerts") == 0


def test_train_from_a_stream_range_and_backtest_thresholds(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    events = order_events(producers=2, per_producer=500, seed=9)
    ids = append(r, "history", events)
    env = {"DETECTOR_BASELINES_DIR": str(tmp_path)}
    out = cli("train", "--redis-url", redis_url, "--stream", "history", "--to", ids[599],
              "--baseline", "h", env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "learned 600 events" in out.stderr

    later = order_events(producers=2, per_producer=100, seed=10)
    later.append(outlier("svc-0", int(later[-1]["ts"]) + 1000))
    src = tmp_path / "later.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in later))
    backtest = cli("score", "--input", str(src), "--output", str(tmp_path / "s.csv"),
                   "--baseline", "h", env=env)  # fmt: skip
    assert backtest.returncode == 0, backtest.stderr
    assert "alerts each threshold would have produced" in backtest.stderr
    rows = (tmp_path / "s.csv").read_text().splitlines()[1:]
    assert all(row.split(",")[2] for row in rows)  # known producers: no warm-up at all
    assert rows[-1].endswith(",1")


def test_poison_entries_are_dead_lettered_after_max_deliveries(
    r: redis.Redis, stream_name: str, worker_factory: Callable[..., Worker],
    settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    ids = append(r, stream_name, order_events(producers=1, per_producer=20))
    r.xgroup_create(stream_name, "detector", id="0")
    r.xreadgroup("detector", "c1", {stream_name: ">"}, count=5)
    for _ in range(3):  # three crash-restarts re-delivered the first five entries
        r.xreadgroup("detector", "c1", {stream_name: "0"}, count=5)
    stats = worker_factory(settings_factory(max_deliveries=3)).run()
    assert stats.poison == 5
    letters = r.xrange("detector:dead-letter")
    assert [f["source_id"] for _, f in letters] == ids[:5]
    assert {f["reason"] for _, f in letters} == {"poison"}
    assert r.xpending(stream_name, "detector")["pending"] == 0


def test_graceful_stop_commits_the_checkpoint(r: redis.Redis, redis_url: str) -> None:
    append(r, "events", order_events(producers=2, per_producer=200))
    proc = subprocess.run(
        [sys.executable, "-m", "detector.cli", "run", "--redis-url", redis_url, "--until-idle",
         "--idle-timeout-ms", "200", "--consumer", "w9", "--checkpoint-every", "100000",
         "--checkpoint-interval-ms", "100000000"],
        env=clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    raw = redis.Redis.from_url(redis_url)
    fields = raw.hgetall(CHECKPOINT_KEY.format(group="detector", consumer="w9"))
    meta = orjson.loads(Signer(TEST_KEY).verify("meta", fields[b"meta"]))
    assert meta["events_seen"] == 400
    assert sum(1 for k in fields if k.startswith(b"p:")) == 2
    raw.close()
