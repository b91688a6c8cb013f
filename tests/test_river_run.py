"""`detector run --model my.toml` with River specs a user writes, on a real redis-server: each
scope end to end through the CLI and the worker, checkpoints resumed, refusals exit 3."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis
from river import anomaly

from detector.core.checkpoint import Signer, decode_fields
from detector.core.estimators import RiverModel
from detector.core.events import Decoder
from detector.core.pipeline import Pipeline
from detector.core.scoring import load_spec
from detector.core.settings import CHECKPOINT_KEY, Settings
from detector.runtime.worker import Worker
from tests.conftest import TEST_KEY
from tests.helpers import append, order_events, outlier
from tests.test_cli import cli

# What a user writes: one forecaster per producer on the orders' amount (the kill -9
# harness's spec, with a warm-up of 20) ...
PER_PRODUCER = (Path(__file__).parent / "specs" / "river_producer.toml").read_text()
# ... or one detector for the whole fleet, over the features' surprises.
SHARED = """\
name = "fleet"
kind = "river"
description = "One River HalfSpaceTrees for every producer"

[river]
scope = "shared"
inputs = ["surprises"]

[[river.pipeline]]
class = "river.anomaly.HalfSpaceTrees"
n_trees = 10
height = 6
window_size = 100
seed = 7

[decision]
threshold = 0.999
warmup_events = 50
cooldown_ms = 60000
"""
SPECS = {"producer": PER_PRODUCER, "shared": SHARED}


def _events(per_producer: int = 300) -> list[dict[str, str]]:
    events = order_events(producers=3, per_producer=per_producer, seed=9)
    t = int(events[-1]["ts"])
    return [*events, outlier("svc-1", t + 1000), outlier("svc-0", t + 5000, amount=7e5)]


def _spec(tmp_path: Path, scope: str) -> str:
    path = tmp_path / "my.toml"
    path.write_text(SPECS[scope])
    return str(path)


def _checkpoint(url: str, consumer: str) -> dict[bytes, bytes]:
    with redis.Redis.from_url(url) as raw:
        return raw.hgetall(CHECKPOINT_KEY.format(group="detector", consumer=consumer))  # type: ignore[return-value]


@pytest.mark.parametrize("scope", ["producer", "shared"])
def test_detector_run_with_a_users_river_spec(
    r: redis.Redis, redis_url: str, tmp_path: Path, scope: str
) -> None:
    spec = _spec(tmp_path, scope)
    ids = append(r, "events", _events())
    base = ["run", "--redis-url", redis_url, "--until-idle", "--idle-timeout-ms", "300",
            "--consumer", "w1", "--model", spec]  # fmt: skip
    out = cli(*base)
    assert out.returncode == 0, out.stderr
    alerts = [f for _, f in r.xrange("detector:alerts")]
    by_source = {f["source_id"]: f for f in alerts}
    assert ids[-2] in by_source and all(f["model"] == load_spec(spec).name for f in alerts)
    assert orjson.loads(by_source[ids[-2]]["reasons"])[0]["feature"] == "value"  # explained
    # The checkpoint holds the River model: per producer in each record, else as the model.
    snap = decode_fields(Signer(TEST_KEY), _checkpoint(redis_url, "w1"))
    restored = Pipeline(load_spec(spec))
    restored.restore(snap)
    model = restored.model
    assert isinstance(model, RiverModel) and snap.meta["river_objects"] is True
    if scope == "producer":
        assert snap.model is None and model.per_slot is not None
        clones = [model.per_slot.slots[s] for s in restored.store.producers.values()]
        assert all(isinstance(c, anomaly.PredictiveAnomalyDetection) for c in clones)
        assert all(c.iter > 250 for c in clones)  # each learned its producer's events
    else:
        assert isinstance(model.estimator, anomaly.HalfSpaceTrees) and model.estimator.trees
    # Restarted on the same checkpoint with more events: resumes, exit 0.
    append(r, "events", _events(per_producer=20)[-2:])
    again = cli(*base)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("scope", ["producer", "shared"])
def test_a_worker_restarted_midway_alerts_as_one_that_never_stopped(
    r: redis.Redis, stream_name: str, tmp_path: Path, scope: str,
    worker_factory: Callable[..., Worker], settings_factory: Callable[..., Settings],
) -> None:  # fmt: skip
    spec = _spec(tmp_path, scope)
    events = _events()
    half = len(events) // 2
    ids = append(r, stream_name, events[:half])
    worker_factory(settings_factory(model=spec, checkpoint_every=100)).run()
    ids += append(r, stream_name, events[half:])
    worker_factory(settings_factory(model=spec, checkpoint_every=100)).run()  # restores
    written = [f["alert_id"] for _, f in r.xrange("detector:alerts")]

    d = Decoder()
    decoded = [
        d.decode(stream_name, i, {k.encode(): v.encode() for k, v in f.items()})
        for i, f in zip(ids, events, strict=True)
    ]
    uninterrupted = Pipeline(load_spec(spec)).process(decoded)
    assert written == [v.alert.alert_id for v in uninterrupted if v.alert is not None]
    assert len(written) >= 2


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_a_checkpoint_holding_a_refused_class_exits_3(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A producer record signed with the right key whose estimator pickle names os.system."""
    spec = _spec(tmp_path, "producer")
    append(r, "events", _events(per_producer=60))
    base = ["run", "--redis-url", redis_url, "--until-idle", "--idle-timeout-ms", "300",
            "--consumer", "w1", "--model", spec]  # fmt: skip
    assert cli(*base).returncode == 0
    key = CHECKPOINT_KEY.format(group="detector", consumer="w1")
    signer = Signer(TEST_KEY)
    forger = Pipeline(load_spec(spec))
    forger.restore(decode_fields(signer, _checkpoint(redis_url, "w1")))
    slot, model = forger.store.slot_of("svc-0"), forger.model
    assert slot is not None and isinstance(model, RiverModel) and model.per_slot is not None
    model.per_slot.slots[slot] = _Exploit()
    with redis.Redis.from_url(redis_url) as raw:
        raw.hset(key, "p:svc-0", signer.sign("p:svc-0", forger.store.record(slot)))
    out = cli(*base)
    assert out.returncode == 3, out.stderr
    assert "posix.system" in out.stderr and "not allowed" in out.stderr  # os.system
