"""Checkpoints and baselines: signing, refusal, compatibility, exact resumption."""

from __future__ import annotations

import hmac
import os
import pickle
from array import array
from pathlib import Path

import numpy as np
import orjson
import pytest

from detector.baselines import save
from detector.core import checkpoint as checkpoint_module
from detector.core.checkpoint import (
    FORMAT_VERSION,
    FrozenCommit,
    Signer,
    Snapshot,
    decode_fields,
    encode_fields,
    load_file,
    save_file,
)
from detector.core.codec import Reader, Writer
from detector.core.errors import CheckpointError, IncompatibleCheckpointError
from detector.core.events import Decoder, Event
from detector.core.features import FeatureConfig, FeatureStore
from detector.core.features import store as store_module
from detector.core.features.joint import JointFeature
from detector.core.features.replay import ReplayFeature
from detector.core.features.sequence import SequenceFeature
from detector.core.feedback import SUPPRESS, FeedbackRules, Pattern, Rule
from detector.core.pipeline import Pipeline, Verdict
from detector.core.scoring import load_spec
from tests.helpers import order_events, outlier

KEY = b"k" * 32


def _events(n_per_producer: int = 300, seed: int = 1) -> list:  # type: ignore[type-arg]
    d = Decoder()
    raw = order_events(producers=3, per_producer=n_per_producer, seed=seed)
    raw.append(outlier("svc-1", int(raw[-1]["ts"]) + 1000))
    return [
        d.decode("s", f"{i + 1}-0", {k.encode(): v.encode() for k, v in f.items()})
        for i, f in enumerate(raw)
    ]


def _fields(pipeline: Pipeline, signer: Signer) -> dict[bytes, bytes]:
    snap = pipeline.snapshot({"s": "5-0"}, full=True)
    return {k.encode(): v for k, v in encode_fields(signer, snap).items()}


def _incremental(pipeline: Pipeline, signer: Signer) -> dict[bytes, bytes]:
    """A checkpoint hash after a full commit then an incremental one that changed every
    producer: the base and a record of each."""
    full = _fields(pipeline, signer)
    tracking = Pipeline(pipeline.spec, track_changes=True)
    tracking.restore(decode_fields(signer, full))
    tracking.store.dirty.update(tracking.store.producers)
    snap = tracking.snapshot({"s": "5-0"})
    assert snap.base is None
    return full | {k.encode(): v for k, v in encode_fields(signer, snap).items()}


def _half_learned(model: str) -> tuple[Pipeline, list, dict[bytes, bytes]]:  # type: ignore[type-arg]
    """A pipeline that learned the first half of the events, the second half, its checkpoint."""
    events = _events()
    half = len(events) // 2
    original = Pipeline(load_spec(model))
    original.process(events[:half])
    return original, events[half:], _fields(original, Signer(KEY))


@pytest.mark.parametrize("model", ["stats", "hst"])
def test_restored_pipeline_scores_exactly_like_the_original(model: str) -> None:
    original, rest, fields = _half_learned(model)
    signer = Signer(KEY)
    restored = Pipeline(load_spec(model))
    offsets = restored.restore(decode_fields(signer, fields))
    assert offsets == {"s": "5-0"}
    rest_a = [v.score for v in original.process(rest)]
    rest_b = [v.score for v in restored.process(rest)]
    assert rest_a == rest_b
    assert any(s is not None and s > 0.9 for s in rest_a)  # there was something to compare


def _events_with_ids(producers: int = 4, per_producer: int = 3000) -> list[Event]:
    """Order events with an ``event_id``; every 1500 entries, svc-1 re-sends 10 of its
    events from ~5-10 minutes earlier (new times, same ids)."""
    raw = order_events(producers=producers, per_producer=per_producer, seed=3)
    for i, f in enumerate(raw):
        f["data"] = orjson.dumps({**orjson.loads(f["data"]), "event_id": f"id-{i}"}).decode()
    sent = []
    for i, f in enumerate(raw):
        sent.append(f)
        if i >= 2000 and i % 1500 == 0:
            old = [g for g in raw[i - 2400 : i - 1200] if g["producer"] == "svc-1"][:10]
            sent += [{**g, "ts": str(int(f["ts"]) + k)} for k, g in enumerate(old)]
    d = Decoder()
    return [
        d.decode("s", f"{i + 1}-0", {k.encode(): v.encode() for k, v in f.items()})
        for i, f in enumerate(sent)
    ]


def _written(verdicts: list[Verdict]) -> list[tuple[object, ...]]:
    return [(v.score, v.flagged, v.alert and v.alert.alert_id, v.alert and v.alert.reasons)
            for v in verdicts]  # fmt: skip


def test_incremental_commits_of_the_id_window_resume_identically() -> None:
    """The replayed-id window (shared by all producers, in blocks of its own) committed
    incrementally into a hash, restored from it mid-stream: the same verdicts as a run that
    never stopped; a frozen commit holds the window as of its freeze."""
    events = _events_with_ids()
    spec = load_spec("stats")
    uninterrupted = Pipeline(spec).process(events)
    whole = _written(uninterrupted)
    signer, checkpoint = Signer(KEY), dict[str, bytes]()
    p = Pipeline(spec, track_changes=True)
    got: list[tuple[object, ...]] = []
    done = n = 0
    while done < len(events):
        chunk = events[done : done + 700]
        done += len(chunk)
        got += _written(p.process(chunk))
        snap = p.snapshot({"s": chunk[-1].entry_id})
        at_freeze = encode_fields(signer, snap)
        frozen = FrozenCommit(signer, snap)
        p.committed()
        if n == 4:  # the state moves on before the frozen commit is encoded
            chunk = events[done : done + 700]
            done += len(chunk)
            got += _written(p.process(chunk))
        assert frozen.advance() and frozen.fields == at_freeze
        p.store.thaw()
        checkpoint.update(frozen.fields)
        for name in frozen.removed:
            checkpoint.pop(name, None)
        if n % 3 == 2:
            p = Pipeline(spec, track_changes=True)
            p.restore(decode_fields(signer, {k.encode(): v for k, v in checkpoint.items()}))
        n += 1
    assert got == whole
    feature = p.store.by_name["replayed_id"]
    assert isinstance(feature, ReplayFeature) and feature.window is not None
    assert feature.window.capacity == 8192 and len(feature.window) > 4096  # two blocks
    assert "s:replayed_id.1" in checkpoint
    caught = [v.alert.reasons[0].feature for v in uninterrupted if v.alert is not None]
    assert caught.count("replayed_id") >= 5


def test_a_baseline_holds_no_id_window_and_starts_one_afresh(tmp_path: Path) -> None:
    signer, p = Signer(KEY), Pipeline(load_spec("stats"))
    p.process(_events_with_ids(per_producer=300))
    snap = p.snapshot({}, full=True)
    # the id window: a header, a block of 1024; the peer summary
    assert set(snap.shared) == {"replayed_id", "replayed_id.0", "peer"}
    save(p, tmp_path / "b.baseline", signer)
    assert load_file(tmp_path / "b.baseline", signer).shared == {}
    started = Pipeline(load_spec("stats"))
    started.restore(snap, baseline=True)  # its ids are from another time
    feature = started.store.by_name["replayed_id"]
    assert isinstance(feature, ReplayFeature) and feature.window is not None
    assert len(feature.window) == 0 and len(started.store) == 4


def test_incremental_snapshots_hold_only_changed_producers() -> None:
    p = Pipeline(load_spec("stats"), track_changes=True)
    events = _events()
    p.process(events)
    assert len(p.snapshot({}).producers) == 3
    p.committed()
    p.process([e for e in events if e.producer == "svc-0"][-5:])
    assert set(p.snapshot({}).producers) == {"svc-0"}


@pytest.mark.parametrize("model", ["stats", "hst"])
def test_a_frozen_commit_writes_the_state_of_its_freeze_while_the_state_moves_on(
    model: str,
) -> None:
    """Encoded a slice at a time while events keep changing the producers (and the shared
    model), a frozen commit's fields are exactly those of the state at the freeze."""
    events = _events()
    p = Pipeline(load_spec(model), track_changes=True)
    p.process(events[:600])
    signer = Signer(KEY)
    snap = p.snapshot({"s": "600-0"})
    at_freeze = encode_fields(signer, snap)  # what a commit in one go writes
    frozen = FrozenCommit(signer, snap)
    p.committed()
    assert not frozen.advance(deadline=0.0)  # one state encoded, two left
    p.process(events[600:])  # changes every producer and the model
    assert frozen.advance()
    assert frozen.fields == at_freeze
    moved_on = encode_fields(signer, p.snapshot({"s": "600-0"}))
    assert all(moved_on[k] != v for k, v in at_freeze.items() if k.startswith("p:"))


def test_tampered_unsigned_or_foreign_blobs_are_refused() -> None:
    p = Pipeline(load_spec("stats"))
    p.process(_events(50))
    signer = Signer(KEY)
    fields = _fields(p, signer)

    for name in (b"b:0", b"p:svc-1"):
        tampered = _fields(p, signer) if name == b"b:0" else _incremental(p, signer)
        blob = bytearray(tampered[name])
        blob[-5] ^= 1
        tampered[name] = bytes(blob)
        with pytest.raises(CheckpointError, match="bad signature"):
            decode_fields(signer, tampered)

    unsigned = dict(fields)
    unsigned[b"model"] = pickle.dumps(p.model)
    with pytest.raises(CheckpointError, match="bad signature"):
        decode_fields(signer, unsigned)

    with pytest.raises(CheckpointError, match="bad signature"):
        decode_fields(Signer(b"another-key-of-32-bytes-........"), fields)

    swapped = _incremental(p, signer)  # a valid blob moved to another producer's name
    swapped[b"p:svc-0"] = swapped[b"p:svc-1"]
    with pytest.raises(CheckpointError, match="bad signature"):
        decode_fields(signer, swapped)
    incomplete = dict(fields)  # the meta says one base piece
    del incomplete[b"b:0"]
    with pytest.raises(CheckpointError, match="incomplete"):
        decode_fields(signer, incomplete)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_signed_but_malicious_pickle_is_refused_by_the_allow_list() -> None:
    signer = Signer(KEY)
    fields = _fields(Pipeline(load_spec("stats")), signer)
    fields[b"model"] = signer.dumps("model", _Exploit())
    with pytest.raises(CheckpointError, match="not allowed"):
        decode_fields(signer, fields)


def test_the_default_models_checkpoint_needs_no_unpickler(monkeypatch: pytest.MonkeyPatch) -> None:
    original, rest, fields = _half_learned("stats")
    signer = Signer(KEY)
    assert signer.verify("model", fields[b"model"]) == b""  # stateless: rebuilt from the spec
    assert not any(k.startswith(b"p:") for k in fields)  # a full commit: the base alone
    base = signer.verify("b:0", fields[b"b:0"])
    assert b"\x80\x05" not in base[:64] and b"detector.core" not in base  # no pickle

    def refuse(*_: object) -> object:
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(Signer, "loads", refuse)  # the only way a checkpoint unpickles
    restored = Pipeline(load_spec("stats"))
    restored.restore(decode_fields(signer, fields))
    assert [v.score for v in restored.process(rest)] == [v.score for v in original.process(rest)]


def test_an_older_format_is_refused_before_any_of_it_is_decoded() -> None:
    signer = Signer(KEY)
    fields = _fields(Pipeline(load_spec("stats")), signer)
    meta = orjson.loads(signer.verify("meta", fields[b"meta"]))
    fields[b"meta"] = signer.sign("meta", orjson.dumps({**meta, "format": FORMAT_VERSION - 1}))
    # An older format may hold anything (format 3 pickled producer states): nothing of it
    # may be read, not even unpickled.
    fields[b"p:x"] = signer.sign("p:x", _global("os", "system"))
    with pytest.raises(IncompatibleCheckpointError, match=f"format {FORMAT_VERSION - 1}") as info:
        decode_fields(signer, fields)
    assert "detector train" in str(info.value) and "--reset-state" in str(info.value)


@pytest.mark.parametrize("prefix", [b"b:", b"p:"])
def test_a_record_of_another_layout_is_refused(prefix: bytes) -> None:
    signer = Signer(KEY)
    original, _, fields = _half_learned("stats")
    if prefix == b"p:":
        fields = _incremental(original, signer)
    name = next(k for k in fields if k.startswith(prefix))
    record = signer.verify(name.decode(), fields[name])
    for broken in (record[:-3], record + b"\0"):
        fields[name] = signer.sign(name.decode(), broken)
        with pytest.raises(IncompatibleCheckpointError, match="--reset-state"):
            Pipeline(load_spec("stats")).restore(decode_fields(signer, fields))


def _global(module: str, name: str) -> bytes:
    """A protocol-4 pickle of the global ``module.name`` (STACK_GLOBAL)."""
    return (
        b"\x80\x04"
        + b"\x8c" + bytes([len(module)]) + module.encode() + b"\x94"
        + b"\x8c" + bytes([len(name)]) + name.encode() + b"\x94"
        + b"\x93" + b"."
    )  # fmt: skip


def test_a_pickled_model_reaches_only_model_classes() -> None:
    from detector.core.scoring import TreesModel
    from detector.core.trees import HalfSpaceTrees

    signer = Signer(KEY)

    def load(module: str, name: str) -> object:
        return signer.loads("model", signer.sign("model", _global(module, name)))

    assert load("detector.core.scoring", "TreesModel") is TreesModel
    assert load("detector.core.trees", "HalfSpaceTrees") is HalfSpaceTrees
    assert load("detector.core.estimators", "RiverModel").__name__ == "RiverModel"
    # River's model packages, its Rust statistics and the distance LocalOutlierFactor keeps.
    assert load("river.anomaly.svm", "OneClassSVM").__name__ == "OneClassSVM"
    assert load("river.time_series.holt_winters", "HoltWinters").__name__ == "HoltWinters"
    assert load("river._river_rust.stats", "RsQuantile").__name__ == "RsQuantile"
    assert callable(load("river._river_rust.vectordict", "euclidean_distance_tuple"))
    for module, name in [
        ("detector.core.features.store", "FeatureStore"),  # producer state is never pickled
        ("detector.core.features", "FeatureStore"),
        ("detector.core.scoring", "load_spec"),  # a function, not a class
        ("detector.core.scoring", "Path"),  # imported there, defined elsewhere
        ("detector.features", "ProducerState"),  # the paths of format 3 are gone
        ("detector.core.events", "Event"),
        ("detector.core.pipeline", "Pipeline"),
        ("os", "system"),
        ("river.datasets.phishing", "Phishing"),  # River's data and I/O are no model
        ("river.stream.iter_csv", "iter_csv"),
        ("river.utils.math", "sigmoid"),  # River's functions: only its distances
        ("river.anomaly", "OneClassSVM"),  # re-exported there, defined in river.anomaly.svm
    ]:
        with pytest.raises(CheckpointError, match="not allowed"):
            load(module, name)


@pytest.mark.parametrize(
    ("model", "change", "message"),
    [
        ("stats", {"format": FORMAT_VERSION + 1}, "format"),
        ("forecast", {"river": "0.1.0"}, "River 0.1.0"),  # River objects: River must match
        ("stats", {"spec_digest": "0" * 64}, "model spec"),
    ],
)
def test_incompatible_checkpoints_are_refused_with_the_reason(
    model: str, change: dict[str, object], message: str
) -> None:
    signer = Signer(KEY)
    fields = _fields(Pipeline(load_spec(model)), signer)
    meta = orjson.loads(signer.verify("meta", fields[b"meta"]))
    fields[b"meta"] = signer.sign("meta", orjson.dumps({**meta, **change}))
    with pytest.raises(IncompatibleCheckpointError, match=message) as info:
        Pipeline(load_spec(model)).restore(decode_fields(signer, fields))
    assert "--reset-state" in str(info.value)


def test_another_river_release_restores_a_checkpoint_without_a_river_object() -> None:
    original, rest, fields = _half_learned("stats")
    signer = Signer(KEY)
    meta = orjson.loads(signer.verify("meta", fields[b"meta"]))
    assert meta["river_objects"] is False
    fields[b"meta"] = signer.sign("meta", orjson.dumps({**meta, "river": "0.26.9"}))
    restored = Pipeline(load_spec("stats"))
    restored.restore(decode_fields(signer, fields))
    assert [v.score for v in restored.process(rest)] == [v.score for v in original.process(rest)]


def test_checkpoint_of_one_spec_is_refused_by_another() -> None:
    signer = Signer(KEY)
    fields = _fields(Pipeline(load_spec("stats")), signer)
    with pytest.raises(IncompatibleCheckpointError):
        Pipeline(load_spec("hst")).restore(decode_fields(signer, fields))


def test_baseline_file_round_trip_and_tampering(tmp_path: Path) -> None:
    signer = Signer(KEY)
    p = Pipeline(load_spec("stats"))
    p.process(_events(100))
    path = tmp_path / "b" / "shop.baseline"
    save_file(path, signer, p.snapshot({}, full=True))
    snap = load_file(path, signer)
    assert isinstance(snap, Snapshot) and snap.base is not None and not snap.producers
    started = Pipeline(load_spec("stats"))
    started.restore(snap, baseline=True)
    assert set(started.store.producers) == {"svc-0", "svc-1", "svc-2"}

    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_file(path, signer)
    other = tmp_path / "x.baseline"
    other.write_bytes(b"not a baseline")
    with pytest.raises(CheckpointError, match="not a detector baseline"):
        load_file(other, signer)


def test_short_keys_are_refused() -> None:
    with pytest.raises(CheckpointError, match="16 bytes"):
        Signer(b"short")


def _later_events() -> list[Event]:
    """Events of svc-0 and svc-1 only, for ~200 s after :func:`_events` (svc-2 goes idle)."""
    d = Decoder()
    raw = order_events(producers=2, per_producer=200, seed=2)
    shift = 320_000
    return [
        d.decode("s", f"{10_000 + i}-0", {k.encode(): v.encode() for k, v in f.items()})
        for i, f in enumerate({**e, "ts": str(int(e["ts"]) + shift)} for e in raw)
    ]


class _Hash:
    """A checkpoint hash, as the commits of a pipeline leave it."""

    def __init__(self, signer: Signer) -> None:
        self.signer, self.fields = signer, dict[str, bytes]()

    def commit(self, p: Pipeline, full: bool = False) -> Snapshot:
        snap = p.snapshot({"s": "1-0"}, full=full)
        frozen = FrozenCommit(self.signer, snap)
        p.committed()
        assert frozen.advance()
        p.store.thaw()
        self.fields.update(frozen.fields)
        for name in frozen.removed:
            self.fields.pop(name, None)
        return snap

    def restore(self, p: Pipeline) -> Pipeline:
        p.restore(decode_fields(self.signer, {k.encode(): v for k, v in self.fields.items()}))
        return p


def _same_state(a: Pipeline, b: Pipeline) -> None:
    assert list(a.store.producers) == list(b.store.producers)  # LRU order too
    for producer, slot in a.store.producers.items():
        assert a.store.record(slot) == b.store.record(b.store.producers[producer])


def test_a_base_and_the_records_since_restore_the_state_exactly() -> None:
    """A full commit writes the base (no records); later commits add the records of changed
    producers and an empty one for a producer removed since; restored, the state is the
    same, record for record; the next full commit deletes the records."""
    spec, signer = load_spec("stats"), Signer(KEY)
    events, later = _events(), _later_events()

    def fresh() -> Pipeline:
        return Pipeline(spec, idle_ttl_ms=60_000, track_changes=True)

    live, ckpt = fresh(), _Hash(Signer(KEY))
    live.process(events[:450])
    snap = ckpt.commit(live, full=True)
    assert not snap.producers
    assert {k for k in ckpt.fields if k.startswith(("b:", "p:"))} == {"b:0"}
    live.process(events[450:])
    ckpt.commit(live)
    assert {k for k in ckpt.fields if k.startswith("p:")} == {"p:svc-0", "p:svc-1", "p:svc-2"}
    live.process(later[:200])
    assert "svc-2" not in live.store.producers  # idle for over a minute: evicted
    ckpt.commit(live)
    assert signer.verify("p:svc-2", ckpt.fields["p:svc-2"]) == b""  # removed since the base
    restored = ckpt.restore(fresh())
    _same_state(live, restored)
    assert [v.score for v in live.process(later[200:])] == [
        v.score for v in restored.process(later[200:])
    ]
    ckpt.commit(live, full=True)
    assert {k for k in ckpt.fields if k.startswith(("b:", "p:"))} == {"b:0"}
    _same_state(live, ckpt.restore(fresh()))


def test_records_past_a_share_of_the_producers_are_folded_into_a_new_base(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_module, "REBASE_MIN", 0)
    live, ckpt = Pipeline(load_spec("stats"), track_changes=True), _Hash(Signer(KEY))
    live.process(_events()[:300])
    assert ckpt.commit(live).base is None  # no records yet: records
    live.process(_events()[300:])
    snap = ckpt.commit(live)  # 3 records > a quarter of 3 producers: a base instead
    assert "b:0" in ckpt.fields and sorted(snap.removed) == ["svc-0", "svc-1", "svc-2"]
    assert not any(k.startswith("p:") for k in ckpt.fields)
    _same_state(live, ckpt.restore(Pipeline(load_spec("stats"))))


class _Marks:
    """Per-slot state with a record of its own and no columns (as a feature still written
    slot by slot)."""

    def __init__(self) -> None:
        self.marks: list[int] = []

    def reset(self, slot: int) -> None:
        if slot == len(self.marks):
            self.marks.append(0)
        else:
            self.marks[slot] = 0

    def dump(self, slot: int, w: Writer) -> None:
        w.i64(self.marks[slot])

    def load(self, slot: int, r: Reader) -> None:
        self.marks[slot] = r.i64()


def test_a_part_without_columns_is_written_slot_by_slot_in_the_base() -> None:
    marks, copied = _Marks(), _Marks()
    store = FeatureStore(FeatureConfig(), parts=[marks])
    for i, producer in enumerate(("a", "b", "c") * 50):
        ev = Event("s", f"{i}-0", producer, 1000 * i, "paid", {"amount": 1.0 + i % 7}, {}, 50)
        store.observe(ev, learn=True)
    marks.marks[store.producers["b"]] = 7
    copy = FeatureStore(FeatureConfig(), parts=[copied])
    copy.restore({}, store.counters(), base=store.base())
    assert copied.marks[copy.producers["b"]] == 7
    assert all(
        copy.record(copy.producers[p]) == store.record(slot) for p, slot in store.producers.items()
    )


def test_the_parts_written_slot_by_slot_before_are_columns_and_restore_exactly() -> None:
    """The joint models, peer groups, sequence shapes and feedback rules are written as
    columns (format 9): restored from a base, every record and rule is the one written, and
    in the shipped specs' bases they are columns, not records slot by slot."""
    cfg = FeatureConfig(joint_fields=3, peers=True, sequence_window=4, sequence_history=32)
    rules, copied = FeedbackRules(), FeedbackRules()
    store = FeatureStore(cfg, parts=[rules])
    for i, producer in enumerate(("web-1", "web-2", "db-1") * 60):
        numbers = {"amount": 1.0 + i % 7, "items": float(i % 3), "ms": 10.0 + i % 5}
        etype = ("paid", "refund")[i % 2]
        store.observe(Event("s", f"{i}-0", producer, 1000 * i, etype, numbers, {}, 50), True)
    rule = Rule(SUPPRESS, Pattern("value", "amount", "paid", "12.5"), 99)
    rules.rules[store.producers["web-2"]] = (rule, rule)
    # A member's levels in its kind (peer departure by values), as the peer feature keeps them.
    levels, web1 = store.peers.levels, store.producers["web-1"]
    for key in levels.names(web1):
        levels.pop(web1, key)
    levels.put(web1, "paid.amount", 1.5, 0.25)
    levels.put(web1, "", 7.2, 1.6)
    # Its rate level's usual offset from its kind's (peer departure by rates) and its time.
    store.peers.rate_ref[store.producers["web-1"]] = -0.75
    store.peers.rate_ref_ms[store.producers["web-1"]] = 123_456
    joint, sequence = store.by_name["joint"], store.by_name["sequence"]
    assert isinstance(joint, JointFeature) and isinstance(sequence, SequenceFeature)
    assert joint.table.used == 6 and any(s is not None for s in sequence.table.shapes)
    copy = FeatureStore(cfg, parts=[copied])
    base = store.base()
    copy.restore({}, store.counters(), base=base)
    assert copied.rules[copy.producers["web-2"]] == (rule, rule)
    web1 = copy.producers["web-1"]
    assert copy.peers.levels.names(web1) == ["paid.amount", ""]
    assert copy.peers.levels.get(web1, "paid.amount") == (1.5, 0.25)
    assert copy.peers.levels.get(web1, "") == (7.2, 1.6)
    assert (copy.peers.rate_ref[web1], copy.peers.rate_ref_ms[web1]) == (-0.75, 123_456)
    assert all(
        copy.record(copy.producers[p]) == store.record(slot) for p, slot in store.producers.items()
    )
    # The field names of the joint models: each distinct tuple read once, shared by its rows.
    names = copy.by_name["joint"].table.names  # type: ignore[attr-defined]
    assert len({id(t) for t in names if t}) == len({t for t in names if t}) == 1
    converted = ("JointFeature", "PeerFeature", "SequenceFeature", "FeedbackRules")
    for model in ("stats", "hst", "metrics"):
        p = Pipeline(load_spec(model))
        r = Reader(p.store.base())
        r.i64(), r.i64(), r.column(), r.blob(), r.column(), r.column()
        columns = {type(part).__name__: r.section().count() for part in p.store._parts}
        assert all(columns[name] == 1 for name in converted)  # columns, not slot by slot


def test_a_blob_written_in_place_is_the_blob_written_whole() -> None:
    """The base's sections and slot records are written in place (``open_blob``); the bytes
    are those of a record written apart and copied in (``blob``), and so are columns copied
    straight from their buffer."""
    cols = [array("q", range(-5, 5)), np.arange(7.0), np.arange(12.0)[::3], array("b")]
    whole, inner = Writer(), Writer()
    inner.i64(3)
    for col in cols:
        inner.column(col)
    whole.blob(inner.bytes())
    whole.text("after")
    in_place = Writer()
    at = in_place.open_blob()
    in_place.i64(3)
    for col in cols:
        in_place.column(col)
    in_place.close_blob(at)
    in_place.text("after")
    assert in_place.bytes() == whole.bytes()
    r = Reader(in_place.detach())
    section = r.section()
    assert section.i64() == 3
    assert [section.column().tolist() for _ in cols] == [list(c) for c in cols]
    assert section.done() and r.text() == "after" and r.done()
    assert in_place.bytes() == b""  # detached: the writer starts afresh


def test_a_base_of_many_pieces_is_signed_piece_by_piece_and_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each piece of the base is signed where it lies in the base (a streamed HMAC): the
    field is the one-shot HMAC of its name and bytes, then the bytes; restored, the state is
    the same, record for record."""
    monkeypatch.setattr(checkpoint_module, "PIECE_BYTES", 1 << 12)
    monkeypatch.setattr(checkpoint_module, "_STREAMED_BYTES", 1 << 10)
    live = Pipeline(load_spec("stats"), track_changes=True)
    live.process(_events())
    snap = live.snapshot({"s": "1-0"}, full=True)
    assert snap.base is not None
    base = bytes(snap.base)
    fields = encode_fields(Signer(KEY), snap)
    names = [f"b:{k}" for k in range(snap.meta["base_pieces"])]
    assert len(names) > 2 and sorted(names) == sorted(k for k in fields if k.startswith("b:"))
    for k, name in enumerate(names):
        piece = base[k << 12 : (k + 1) << 12]
        assert fields[name] == hmac.digest(KEY, name.encode() + b"\0" + piece, "sha256") + piece
    restored = Pipeline(load_spec("stats"))
    restored.restore(decode_fields(Signer(KEY), {k.encode(): v for k, v in fields.items()}))
    _same_state(live, restored)
    signed = bytes(fields[names[1]])
    tampered = dict(fields, **{names[1]: signed[:-1] + bytes([signed[-1] ^ 1])})
    with pytest.raises(CheckpointError, match="b:1"):
        decode_fields(Signer(KEY), {k.encode(): v for k, v in tampered.items()})
