"""The commit and ack state machine, through an in-memory fake of the Redis gateway.

No redis-server: :class:`FakeGateway` implements the gateway protocol the
:class:`~detector.runtime.checkpointer.Checkpointer` writes through (one transaction: HSET, HDEL,
XACK), keeping a hash per key and a pending set per stream. The real-server tests of the same
lifecycle are in test_state.py, test_worker.py, test_crash.py and test_ownership.py.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
import redis
from prometheus_client import CollectorRegistry

from detector.core.checkpoint import Signer, decode_fields
from detector.core.events import Decoder
from detector.core.pipeline import Pipeline
from detector.core.scoring import load_spec
from detector.core.settings import Settings
from detector.gateway.ownership import NO_FENCE, Fence, FencedError, NoFence
from detector.gateway.streams import Acks, Entry, HashFields
from detector.runtime.checkpointer import Checkpointer
from detector.runtime.consumer import Runtime
from detector.runtime.metrics import Metrics
from tests.conftest import TEST_KEY
from tests.helpers import order_events

STREAM = "ev"
KEY = "cp"


class FakeGateway:
    """The commit side of the Redis gateway in memory: what one MULTI (or fenced script) does.

    ``lease_lost`` makes a refusing fence refuse, as the fenced script does; ``failures``
    connection errors are raised before anything is applied, as a lost connection does.
    """

    def __init__(self, fence: Fence | NoFence = NO_FENCE) -> None:
        self.fence = fence
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.pending: dict[str, set[str]] = {}
        self.commits: list[dict[str, list[str]]] = []  # the acks of each commit, in order
        self.written: list[set[str]] = []  # the fields each commit wrote
        self.lease_lost = False
        self.failures = 0

    def deliver(self, entries: list[Entry]) -> None:
        """XREADGROUP's side effect: the entries are pending for the consumer."""
        for stream, entry_id, _ in entries:
            self.pending.setdefault(stream, set()).add(entry_id)

    def commit(self, key: str, fields: HashFields, removed: Sequence[str], acks: Acks) -> None:
        if self.fence.refuses and self.lease_lost:
            raise FencedError("fake: lease lost")
        if self.failures:
            self.failures -= 1
            raise redis.ConnectionError("fake: connection lost")
        h = self.hashes.setdefault(key, {})
        h.update(fields)
        for name in removed:
            h.pop(name, None)
        for stream, ids in acks.items():
            self.pending[stream] -= set(ids)
        self.commits.append({s: list(ids) for s, ids in acks.items()})
        self.written.append(set(fields))

    def send_commit(self, key: str, fields: HashFields, removed: Sequence[str], acks: Acks) -> None:
        self.commit(key, fields, removed, acks)  # written at once, as a durable write is

    def commit_written(self, block: bool) -> bool:
        return True

    def pack_commit(self, key: str, fields: object) -> None:
        pass  # written at once: nothing packed ahead

    def committed(self, signer: Signer) -> tuple[dict[str, object], Pipeline]:
        """The checkpoint's meta, and a pipeline restored from it."""
        fields = {k.encode(): v for k, v in self.hashes[KEY].items()}
        snap = decode_fields(signer, fields)
        pipeline = _pipeline(Settings())
        pipeline.restore(snap)
        return snap.meta, pipeline


def _pipeline(s: Settings) -> Pipeline:
    return Pipeline(load_spec(s.model), threshold=s.threshold, track_changes=True)


class Rig:
    """A checkpointer over a fake gateway, fed like a consumer feeds it."""

    def __init__(self, fence: Fence | NoFence = NO_FENCE, **settings: object) -> None:
        s = Settings(streams=(STREAM,), checkpoint_secret=TEST_KEY, **settings)  # type: ignore[arg-type]
        spec = load_spec(s.model)
        self.rt = Runtime(
            settings=s, spec=spec, signer=Signer(TEST_KEY), decoder=Decoder(s.event_format),
            metrics=Metrics(CollectorRegistry(), s.streams, spec.name),
        )  # fmt: skip
        self.pipeline = _pipeline(s)
        self.gateway = FakeGateway(fence)
        self.cp = Checkpointer(self.rt, self.pipeline, self.gateway, KEY)
        self.events = order_events(producers=4, per_producer=150, seed=3)
        self.next = 0

    def batch(self, n: int, claimed: bool = False) -> list[str]:
        """Read, score and hand over the next ``n`` entries (ids 1-0, 2-0, ...)."""
        entries: list[Entry] = []
        for fields in self.events[self.next : self.next + n]:
            self.next += 1
            raw = {k.encode(): v.encode() for k, v in fields.items()}
            entries.append((STREAM, f"{self.next}-0", raw))
        self.gateway.deliver(entries)
        decode = self.rt.decoder.decode
        self.pipeline.process([decode(s, i, f) for s, i, f in entries])
        self.cp.offsets[STREAM] = entries[-1][1]
        self.cp.received(entries)
        self.cp.after_batch(claimed)
        return [e[1] for e in entries]

    def age(self, seconds: float) -> None:
        """Let time pass since the last commit."""
        self.cp.last_commit -= seconds

    def acked(self) -> set[str]:
        delivered = {f"{i}-0" for i in range(1, self.next + 1)}
        return delivered - self.gateway.pending.get(STREAM, set())

    def check_consistent(self) -> None:
        """The acked entries are exactly those the committed state learned, up to its offset."""
        meta, restored = self.gateway.committed(self.rt.signer)
        upto = int(str(meta["offsets"][STREAM]).partition("-")[0])  # type: ignore[index]
        assert self.acked() == {f"{i}-0" for i in range(1, upto + 1)}
        assert sum(restored.store.clock.n[s] for s in restored.store.producers.values()) == upto  # type: ignore[attr-defined]


def test_entries_are_acked_only_by_the_commit_that_holds_their_state() -> None:
    rig = Rig(checkpoint_every=10**6)
    rig.batch(50)
    assert rig.gateway.commits == [] and len(rig.gateway.pending[STREAM]) == 50
    rig.cp.commit()
    assert rig.gateway.commits == [{STREAM: [f"{i}-0" for i in range(1, 51)]}]
    assert rig.gateway.pending[STREAM] == set()
    rig.check_consistent()
    rig.cp.commit()  # nothing new: nothing written
    assert len(rig.gateway.commits) == 1
    assert rig.rt.stats.checkpoints == 1


def test_a_commit_due_by_count_is_frozen_encoded_in_slices_and_acks_only_its_entries() -> None:
    rig = Rig(checkpoint_every=100, commit_slice_ms=1.0)
    first = rig.batch(60) + rig.batch(60)  # due: frozen after the second batch
    assert rig.cp.frozen is not None and rig.gateway.commits == []
    assert rig.cp.unacked(STREAM) == set(first)
    rig.cp.step(deadline=0.0)  # one producer's state per slice: three left
    assert rig.cp.frozen is not None and rig.gateway.commits == []
    later = rig.batch(30)  # read and scored while the frozen commit is being encoded
    assert rig.cp.since_commit == 30  # counted from the freeze
    # The batch changed the states left: the store kept their records as they were at the
    # freeze; one state a slice, the commit completes with them.
    for _ in range(3):
        rig.cp.step(deadline=0.0)
    assert rig.cp.frozen is None
    assert rig.gateway.commits == [{STREAM: first}]  # not the entries read since the freeze
    assert rig.gateway.pending[STREAM] == set(later)
    meta, _ = rig.gateway.committed(rig.rt.signer)
    assert meta["offsets"] == {STREAM: first[-1]}  # the offsets as they were at the freeze
    rig.check_consistent()


def test_a_freeze_writes_the_older_frozen_commit_first() -> None:
    rig = Rig(checkpoint_every=50, commit_slice_ms=1.0)
    a = rig.batch(50)  # frozen
    b = rig.batch(50)  # due again: the first is written, the second frozen
    assert rig.gateway.commits == [{STREAM: a}]
    rig.cp.commit()
    assert rig.gateway.commits == [{STREAM: a}, {STREAM: b}]
    rig.check_consistent()


def test_a_commit_is_retried_through_connection_errors_and_lands_once() -> None:
    rig = Rig(checkpoint_every=10**6)
    ids = rig.batch(40)
    rig.gateway.failures = 2
    rig.cp.commit()
    assert rig.gateway.commits == [{STREAM: ids}] and rig.rt.stats.redis_errors == 2
    rig.check_consistent()


def test_claimed_entries_are_committed_at_once() -> None:
    rig = Rig(checkpoint_every=10**6)
    ids = rig.batch(10, claimed=True)
    assert rig.gateway.commits == [{STREAM: ids}]


@pytest.mark.parametrize("refuses", [False, True])
def test_the_fence_decides_how_a_commit_due_by_time_is_written(refuses: bool) -> None:
    """Behind a fence that never refuses it is frozen and encoded in slices; behind a lease
    it is written in one go, so that a lost lease refuses it before anything is applied."""
    fence = Fence(3, "lease:{3}", "w:7") if refuses else NO_FENCE
    rig = Rig(fence, checkpoint_every=10**6, checkpoint_interval_ms=1000, commit_slice_ms=1.0)
    ids = rig.batch(40)  # four producers changed
    assert rig.cp.frozen is None  # not due yet
    rig.age(1.0)
    rig.cp.tick(deadline=0.0)
    if refuses:
        assert rig.gateway.commits == [{STREAM: ids}] and rig.cp.frozen is None
    else:
        assert rig.gateway.commits == [] and rig.cp.frozen is not None  # one slice so far
        while rig.cp.frozen is not None:
            rig.cp.tick(deadline=0.0)  # nothing new is due: encoding goes on
        assert rig.gateway.commits == [{STREAM: ids}]
    meta, _ = rig.gateway.committed(rig.rt.signer)
    assert (meta.get("partition"), meta.get("epoch")) == ((3, 7) if refuses else (None, None))


def test_a_lost_lease_refuses_the_commit_and_nothing_is_written() -> None:
    rig = Rig(Fence(0, "lease:{0}", "w:1"), checkpoint_every=10**6, checkpoint_interval_ms=1000)
    first = rig.batch(20)
    rig.age(1.0)
    rig.cp.tick(deadline=0.0)  # due by time: in one go
    assert rig.gateway.commits == [{STREAM: first}]
    rig.batch(20)
    rig.age(1.0)
    rig.gateway.lease_lost = True
    with pytest.raises(FencedError):
        rig.cp.tick(deadline=0.0)
    assert rig.gateway.commits == [{STREAM: first}]
    assert rig.rt.stats.checkpoints == 1
    rig.check_consistent()  # the checkpoint is still the first commit's


def test_a_baseline_start_commits_every_producer_once() -> None:
    rig = Rig(checkpoint_every=10**6)
    rig.batch(40)
    rig.cp.commit()
    rig.cp.require_full()  # e.g. restored from a baseline: the hash holds none of its producers
    rig.cp.commit()
    first, second = rig.gateway.written
    assert sum(k.startswith("p:") for k in first) == 4
    # Every producer, changed or not: a base of them all, and the records go.
    assert "b:0" in second and not any(k.startswith("p:") for k in second)
    assert not any(k.startswith("p:") for h in rig.gateway.hashes.values() for k in h)
    rig.cp.commit()
    assert len(rig.gateway.written) == 2  # and only once


@pytest.mark.parametrize("seed", range(5))
def test_any_schedule_of_batches_ticks_and_commits_keeps_acks_and_state_together(
    seed: int,
) -> None:
    """Whatever interleaving of batches, housekeeping slices, freezes and commits: after each
    write, the acked entries are exactly those the committed state learned."""
    rng = random.Random(seed)
    rig = Rig(checkpoint_every=rng.choice([30, 70, 200]),
              checkpoint_interval_ms=rng.choice([0, 10**9]),
              commit_slice_ms=rng.choice([0.0, 1.0]))  # fmt: skip
    writes = 0
    while rig.next < len(rig.events) - 20:
        action = rng.random()
        if action < 0.6:
            rig.batch(rng.randint(1, 20), claimed=rng.random() < 0.05)
        elif action < 0.9:
            rig.cp.tick(deadline=0.0)
        else:
            rig.cp.commit()
        if len(rig.gateway.commits) > writes:
            writes = len(rig.gateway.commits)
            rig.check_consistent()
    rig.cp.commit()
    rig.check_consistent()
    assert rig.acked() == {f"{i}-0" for i in range(1, rig.next + 1)}
    assert writes >= 3
