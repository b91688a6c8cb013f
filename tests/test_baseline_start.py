"""Starting from a baseline (issue 13.3): a new group reads only what the baseline did not learn.

`detector train --to T --baseline b`, then `detector run --baseline b --group new` used to start
the new group at 0: the training period was read again, one `replayed_id` alert per producer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import redis

from detector import baselines
from detector.core.checkpoint import Signer
from detector.core.events import Decoder
from detector.core.pipeline import Pipeline, Verdict
from detector.core.scoring import load_spec
from detector.core.settings import Settings
from detector.gateway.partitions import partition_of, partition_stream
from detector.runtime.worker import Worker
from tests.conftest import TEST_KEY
from tests.helpers import append, order_events
from tests.test_cli import cli


def _history(producers: int, per_producer: int, seed: int) -> list[dict[str, str]]:
    """Order events, each with a unique flat event id (what `replayed_id` watches)."""
    events = order_events(producers=producers, per_producer=per_producer, seed=seed)
    for i, e in enumerate(events):
        e["event_id"] = f"ev-{seed}-{i}"
    return events


def _later(events: list[dict[str, str]], n: int, seed: int) -> list[dict[str, str]]:
    """``n`` more events per producer after ``events``, with fresh ids."""
    more = _history(3, n, seed)
    shift = int(events[-1]["ts"]) - int(more[0]["ts"]) + 1000
    for e in more:
        e["ts"] = str(int(e["ts"]) + shift)
    return more


def _reasons(r: redis.Redis, stream: str = "detector:alerts") -> list[str]:
    return [
        reason["feature"]
        for _, fields in r.xrange(stream)
        for reason in orjson.loads(fields["reasons"])
    ]


def test_new_group_from_a_baseline_starts_after_the_data_it_learned(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    history = _history(3, 500, seed=21)
    ids = append(r, "orders", history)
    env = {"DETECTOR_BASELINES_DIR": str(tmp_path)}
    trained = cli("train", "--redis-url", redis_url, "--stream", "orders", "--to", ids[999],
                  "--baseline", "b", env=env)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert f"up to entry {ids[999]}" in trained.stderr
    # Entries after --to were not learned: they are new to the baseline, like these.
    new = _later(history, 100, seed=22)
    append(r, "orders", new)

    run = cli("run", "--redis-url", redis_url, "--stream", "orders", "--baseline", "b",
              "--group", "new", "--until-idle", "--idle-timeout-ms", "300", env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "replayed_id" not in _reasons(r), _reasons(r)
    expected = len(history) - 1000 + len(new)
    assert f"processed {expected} events" in run.stderr, run.stderr
    (group,) = r.xinfo_groups("orders")
    assert group["name"] == "new" and group["lag"] == 0 and group["pending"] == 0
    assert group["entries-read"] == len(ids) + len(new)  # read to the end: nothing skipped


def test_baseline_end_is_kept_when_the_group_already_exists(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    # A group that already exists keeps its position (here: the start), so the entries the
    # baseline learned are delivered: they are acked, not learned or scored again.
    history = _history(3, 400, seed=23)
    append(r, "orders", history)
    env = {"DETECTOR_BASELINES_DIR": str(tmp_path)}
    trained = cli("train", "--redis-url", redis_url, "--stream", "orders", "--baseline", "b",
                  env=env)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    r.xgroup_create("orders", "old", id="0")
    append(r, "orders", _later(history, 50, seed=24))
    run = cli("run", "--redis-url", redis_url, "--stream", "orders", "--baseline", "b",
              "--group", "old", "--until-idle", "--idle-timeout-ms", "300", env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "replayed_id" not in _reasons(r)
    assert f"processed {len(history) + 150} events" in run.stderr  # read, and acked
    assert r.xpending("orders", "old")["pending"] == 0


def test_partitioned_run_from_a_baseline_skips_the_period_it_learned(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    # The router gives partition entries ids of its own: the event time tells what the
    # baseline (trained on the source stream) already learned.
    history = _history(3, 400, seed=25)
    source_ids = append(r, "orders", history)
    pipeline = Pipeline(load_spec("stats"))
    raw = redis.Redis.from_url(redis_url)
    done = baselines.learn(
        pipeline, Decoder(), "orders", baselines.read_stream(raw, "orders", "-", "+")
    )
    assert done.last_id == source_ids[-1]
    path = tmp_path / "b.baseline"
    baselines.save(pipeline, path, Signer(TEST_KEY), {"orders": done.last_id})

    new = _later(history, 60, seed=26)
    for e in history + new:  # what the router writes: the same fields, fresh ids
        r.xadd(partition_stream("orders", partition_of(e["producer"], 2)), e)  # type: ignore[arg-type]
    seen: list[Verdict] = []
    settings = Settings(
        redis_url=redis_url, streams=("orders",), group="new", consumer="w0", until_idle=True,
        idle_timeout_ms=300, block_ms=100, checkpoint_secret=TEST_KEY, baseline=path,
        partitions=2, assign="static", worker_index=0, worker_count=1,
    )  # fmt: skip
    stats = Worker(settings, on_verdicts=seen.extend).run()
    raw.close()

    assert "replayed_id" not in _reasons(r)
    assert stats.events == len(history) + len(new)
    assert stats.replayed == len(history)
    assert sorted(v.event.strings["event_id"] for v in seen) == sorted(e["event_id"] for e in new)
    assert all(v.score is not None for v in seen)  # known producers: no warm-up


def test_failed_start_leaves_no_group_it_created_and_keeps_an_existing_one(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    append(r, "orders", order_events(producers=1, per_producer=5))
    r.xgroup_create("orders", "old", id="$")
    env = {"DETECTOR_BASELINES_DIR": str(tmp_path)}
    for group in ("fresh", "old"):
        out = cli("run", "--redis-url", redis_url, "--stream", "orders", "--baseline", "nosuch",
                  "--group", group, "--until-idle", env=env)  # fmt: skip
        assert out.returncode == 3, out.stderr
        assert "cannot read baseline" in out.stderr
    assert [g["name"] for g in r.xinfo_groups("orders")] == ["old"]
    # Partitioned: neither the partition groups nor their streams are created.
    out = cli("run", "--redis-url", redis_url, "--stream", "orders", "--baseline", "nosuch",
              "--group", "fresh", "--partitions", "2", "--worker-count", "1", "--worker-index",
              "0", "--until-idle", env=env)  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert not r.exists(partition_stream("orders", 0), partition_stream("orders", 1))


def test_baseline_ignored_with_an_existing_checkpoint_says_so(
    r: redis.Redis, redis_url: str, tmp_path: Path, worker_factory: Callable[..., Worker]
) -> None:
    history = _history(3, 50, seed=27)
    append(r, "orders", history)
    env = {"DETECTOR_BASELINES_DIR": str(tmp_path)}
    assert cli("train", "--redis-url", redis_url, "--stream", "orders", "--baseline", "b",
               env=env).returncode == 0  # fmt: skip
    base = ["run", "--redis-url", redis_url, "--stream", "orders", "--until-idle",
            "--idle-timeout-ms", "200", "--consumer", "c1"]  # fmt: skip
    first = cli(*base, env=env)
    assert first.returncode == 0, first.stderr
    assert "ignored" not in first.stderr
    second = cli(*base, "--baseline", "b", env=env)
    assert second.returncode == 0, second.stderr
    assert "--baseline" in second.stderr and "ignored" in second.stderr, second.stderr
    assert "checkpoint" in second.stderr
