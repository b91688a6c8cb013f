"""The contract of a feature: its state per producer slot, its judgement and its learning.

A feature keeps one state per producer *slot* (an index the store gives each tracked producer;
a slot is reused once its producer is forgotten). Per event, in this order and never back:
``judge`` (the surprise, from the state before the event), ``explain`` (only for events that
are flagged, still before any change), ``advance`` (facts every event moves, whatever its
verdict: time, ids sent, novelties) and, for accepted events only, ``learn``.

A feature may also keep state shared by all producers (the replayed-id window), which grows
with events rather than producers: it checkpoints it as records of its own (:meth:`shared`).

Compiled, a feature is an extension type (feature.pxd, and each feature's own .pxd): the
store calls ``judge``, ``advance`` and ``learn`` through C, the event's fields are C members
(:class:`~detector.core.events.Event`), and so is a feature's own state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.clock import Clock
from detector.core.features.config import FeatureConfig
from detector.core.features.surprise import Reason


class Feature:
    """Base of the features: per-slot state in :attr:`slots` (if the feature keeps it as
    objects; most keep columns of their own), built by :meth:`new`."""

    name = ""

    def __init__(self, cfg: FeatureConfig, clock: Clock) -> None:
        self.cfg = cfg
        self.clock = clock
        self.slots: list[Any] = []
        # False: the spec leaves the feature off (no state, every call a no-op); the store
        # then never calls it.
        self.on = True

    def new(self) -> Any:
        """A fresh state for a producer never seen."""
        raise NotImplementedError

    def reset(self, slot: int) -> None:
        """Give ``slot`` a fresh state (a new producer takes it)."""
        if slot == len(self.slots):
            self.slots.append(self.new())
        else:
            self.slots[slot] = self.new()

    def judge(self, slot: int, event: Event) -> float:
        """``-log10(p)`` of the event against the slot's past (0: usual)."""
        raise NotImplementedError

    def explain(self, slot: int, event: Event) -> Reason | None:
        """The reason behind :meth:`judge`'s surprise (None when it is 0)."""
        raise NotImplementedError

    def decisive(self, slot: int, event: Event) -> Reason | None:
        """A reason that alerts by itself, whatever the calibrated score and even inside the
        producer's cooldown: a first occurrence that the producer's own past makes news (a
        never-seen event type). Asked, before the state moves on, for producers past warm-up
        only. None by default.

        The place for knowledge beyond the producer's own past, too: a feature that knows
        which kind of producer usually sends a type (peer groups) would answer here.
        """
        return None

    def advance(self, slot: int, event: Event) -> None:
        """Facts of every event (after the clock advanced)."""

    def learn(self, slot: int, event: Event) -> None:
        """Fold an accepted event into the baselines."""

    def skip(self, gap_ms: int) -> None:
        """A pause of the whole stream (every producer quiet, :meth:`FeatureStore.paused`):
        ``gap_ms`` of event time that did not happen for any producer. Time-weighted state
        moves past it (a reference whose next value would stand for the pause); memories that
        could only grow less sensitive across it (novelty bursts, the replayed-id window) need
        not. None by default."""

    def dump(self, slot: int, w: Writer) -> None:
        raise NotImplementedError

    def load(self, slot: int, r: Reader) -> None:
        raise NotImplementedError

    def shared(self, full: bool) -> dict[str, bytes]:
        """State shared by all producers as named records to checkpoint (each name is the
        feature's or starts with it and a dot): those changed since :meth:`committed`, every
        one if ``full``. None by default."""
        return {}

    def committed(self) -> None:
        """The records :meth:`shared` gave last are durable."""

    def load_shared(self, records: Mapping[str, bytes]) -> None:
        """The shared state from a checkpoint's records (none: start afresh).

        Raises:
            ValueError: a record is missing or has another layout.
        """
