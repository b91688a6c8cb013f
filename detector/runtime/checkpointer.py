"""Checkpointer: one consumer's commit lifecycle, from the entries it handled to their ack.

It decides when a commit is due (every ``checkpoint_every`` entries or
``checkpoint_interval_ms``), freezes it (the pipeline's changed state and the offsets as
they are now, plus the entries to ack), encodes it a slice at a time between reads
(``commit_slice_ms``; see :class:`~detector.core.checkpoint.FrozenCommit`), and writes it
through the gateway in one transaction that also XACKs exactly the entries its state
learned. The consumer asks it; nothing else does. See docs/design.md for the commit order.

A lease holder's fence refuses a stale commit; such an owner writes a time-due commit in one
go, so that a lost lease refuses it before anything is applied
(:class:`~detector.gateway.ownership.Fence`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from detector.core.checkpoint import FrozenCommit
from detector.gateway.ownership import Fence, NoFence

if TYPE_CHECKING:
    from detector.core.pipeline import Pipeline
    from detector.gateway.streams import Acks, Entry, HashFields
    from detector.runtime.consumer import Runtime


class CommitGateway(Protocol):
    """What the checkpointer writes through (:class:`~detector.gateway.streams.Streams`)."""

    @property
    def fence(self) -> Fence | NoFence: ...

    def commit(self, key: str, fields: HashFields, removed: Sequence[str], acks: Acks) -> None:
        """One transaction: write ``fields``, delete ``removed``, XACK ``acks``.

        Raises:
            FencedError: the fence refused it; nothing was written.
        """

    def send_commit(self, key: str, fields: HashFields, removed: Sequence[str], acks: Acks) -> None:
        """The same transaction, not waited for (or written at once where it must be)."""

    def commit_written(self, block: bool) -> bool:
        """Whether the commit sent last is written (``block``: wait until it is)."""

    def pack_commit(self, key: str, fields: Iterable[tuple[str, bytes | memoryview]]) -> None:
        """Fields the next commit begins with, to pack for the wire ahead of its write."""


class Checkpointer:
    """When to commit, what, and which entries that acks.

    Args:
        rt: the worker's shared runtime (settings, signer, counters, retry policy).
        pipeline: the state to commit.
        gateway: where commits go.
        key: the checkpoint hash.
    """

    def __init__(self, rt: Runtime, pipeline: Pipeline, gateway: CommitGateway, key: str) -> None:
        self.rt = rt
        self.pipeline = pipeline
        self.gateway = gateway
        self.key = key
        # Last entry id folded into the state, per stream (restored from the checkpoint).
        self.offsets: dict[str, str] = {}
        # Entries handled since the last freeze: the next commit acks them.
        self.to_ack: dict[str, list[str]] = {}
        # A due commit being encoded, and the entries it acks (since_commit counts from its freeze).
        self.frozen: FrozenCommit | None = None
        self.frozen_acks: dict[str, list[str]] = {}
        self.since_commit = 0
        self.last_commit = time.monotonic()
        self.full_next = False
        # A commit sent but not yet known to be written (its acks still pending in Redis),
        # and when it began.
        self.sent: FrozenCommit | None = None
        self.sent_acks: dict[str, list[str]] = {}
        self.sent_at = 0.0

    def received(self, entries: list[Entry]) -> None:
        """Entries handled (their output appended): the next commit acks them."""
        for stream, entry_id, _ in entries:
            self.to_ack.setdefault(stream, []).append(entry_id)
        self.since_commit += len(entries)

    def unacked(self, stream: str) -> set[str]:
        """This consumer's entries of ``stream`` already in the state, waiting for an ack."""
        return {
            *self.to_ack.get(stream, ()),
            *self.frozen_acks.get(stream, ()),
            *self.sent_acks.get(stream, ()),
        }

    def require_full(self) -> None:
        """The next commit writes every producer (the hash holds none of a baseline's)."""
        self.full_next = True

    def due(self) -> bool:
        s = self.rt.settings
        if self.since_commit >= s.checkpoint_every:
            return True
        elapsed_ms = (time.monotonic() - self.last_commit) * 1000
        return bool(self.to_ack) and elapsed_ms >= s.checkpoint_interval_ms

    def after_batch(self, claimed: bool) -> None:
        """A batch was handled: claimed entries may lie below the offsets, so they are
        committed with the state at once; a due commit is frozen (the frozen one written
        first: that bounds the pending list)."""
        if claimed:
            self.commit()
        if self.due():
            self.freeze()

    def tick(self, deadline: float) -> None:
        """Between reads: freeze a commit due by time (written at once behind a fence that
        refuses), then encode the frozen one until ``deadline``.

        Raises:
            FencedError: the lease is lost; nothing was written.
        """
        self.confirm(block=False)
        if self.due():
            if self.gateway.fence.refuses:
                self.commit()
            else:
                self.freeze()
        self.step(deadline)

    def commit(self) -> None:
        """Commit everything handled so far: the frozen commit, if any, then the rest.

        Raises:
            FencedError: the lease is lost; nothing more was written.
        """
        if self.to_ack or self.pipeline.store.dirty or self.full_next:
            self.freeze()  # writes the frozen one first
        if self.frozen is not None:
            self._write_frozen()
        self.confirm(block=True)

    def freeze(self) -> None:
        """Freeze a commit of the state and offsets as they are now (an older frozen commit
        is written first); :meth:`step` encodes and writes it."""
        if self.frozen is not None:
            self._write_frozen()
        pipeline = self.pipeline
        snap = pipeline.snapshot(self.offsets, full=self.full_next)
        snap.meta.update(self.gateway.fence.stamp())  # which owner wrote it
        self.frozen = FrozenCommit(self.rt.signer, snap)
        pipeline.committed()  # changes from now on belong to the next commit
        self.frozen_acks, self.to_ack = self.to_ack, {}
        self.since_commit = 0
        self.full_next = False
        self.last_commit = time.monotonic()

    def step(self, deadline: float) -> None:
        """Encode the frozen commit until ``time.perf_counter()`` passes ``deadline`` (at
        least one state); write it once complete, or at once if ``commit_slice_ms`` is 0.

        Raises:
            FencedError: the lease is lost; nothing was written.
        """
        if self.frozen is None:
            return
        if self.rt.settings.commit_slice_ms <= 0 or self.frozen.advance(deadline):
            self._write_frozen()
        else:  # what the slice encoded goes on the wire format too
            self.gateway.pack_commit(self.key, self.frozen.take())

    def _write_frozen(self) -> None:
        """Encode what is left of the frozen commit and write it: one transaction (behind a
        fence, one script that first checks the lease), retried through connection errors
        (it is idempotent); the entries it acks are exactly those its state learned.

        Raises:
            FencedError: the lease is lost; nothing was written.
        """
        rt, frozen, acks = self.rt, self.frozen, self.frozen_acks
        assert frozen is not None  # noqa: S101 (callers check)
        frozen.advance()
        self.confirm(block=True)  # commits land in order
        started = time.perf_counter()
        rt.with_retries(
            lambda: self.gateway.send_commit(self.key, frozen.fields, frozen.removed, acks),
            even_when_stopping=True,
        )
        self.frozen, self.frozen_acks = None, {}
        self.sent, self.sent_acks, self.sent_at = frozen, acks, started
        self.pipeline.store.thaw()
        settle()

    def confirm(self, block: bool) -> None:
        """Whether the commit sent last is written yet (``block``: wait until it is): the
        reads go on while Redis applies it. One whose connection failed is written again
        (idempotent) until it is.

        Raises:
            FencedError: the lease is lost; nothing was written.
        """
        sent = self.sent
        if sent is None:
            return
        written = False

        def check() -> None:
            nonlocal written
            written = self.gateway.commit_written(block)

        self.rt.with_retries(check, even_when_stopping=True)
        if not written:
            return
        self.sent, self.sent_acks = None, {}
        rt = self.rt
        rt.stats.checkpoints += 1
        rt.metrics.checkpoint_seconds.observe(sent.seconds + time.perf_counter() - self.sent_at)
        rt.metrics.checkpoint_bytes.set(sum(len(v) for v in sent.fields.values()))


def settle() -> None:
    """Take the objects alive now (the state just restored or committed: long-lived) out of
    the cyclic garbage collector's sight: a full collection walks every state object, a pause
    that grows with the producers and sets the latency p99 (benchmarks/README.md §9). The
    state holds no reference cycles, so reference counting still frees evicted producers."""
    gc.freeze()
