"""Type: an event type the producer rarely or never sent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.categories import Categories, Counts, Novelty
from detector.core.features.clock import Clock
from detector.core.features.config import FeatureConfig
from detector.core.features.feature import Feature
from detector.core.features.surprise import Reason

KEY = "type"  # the one key of the type feature's novelty burst

if TYPE_CHECKING:
    from typing import Protocol

    class Adoption(Protocol):
        """Knows whether a novel event's type is being adopted by its producer's group (the
        peer feature): then its novelty is no news."""

        def adopted(self, slot: int, event: Event) -> bool: ...


class TypeFeature(Feature):
    """Per slot, one row of :attr:`counts` (row = slot): the types it sent, at most
    ``max_types`` (beyond: saturated, no longer judged); and its recent novelties among them.

    With ``first_type_rarity``, a type the producer never sent is decisive
    (:meth:`decisive`) when its past made a new type that rare and no other new type came
    within ``burst_s`` before it (with ``novelty_burst``: a burst of them is one incident),
    and so is the type that overflows the bound (an attacker can mint types: that is news
    once, then types are no longer judged). Its first occurrence is then counted whatever
    the verdict (a fact, as the clock is), so only the first event of a type is news and
    minted types fill the row.
    """

    name = "type"

    def __init__(self, cfg: FeatureConfig, clock: Clock) -> None:
        super().__init__(cfg, clock)
        self.counts = Counts()
        self.novel = Novelty(KEY)
        self._counted = -1  # the slot whose event advance() counted (learn() must not again)
        # With peers on: the slot whose event advance() found to be its first of that type
        # (the peer feature, which advances after, counts it among the type's senders).
        self.track_first = False
        self.first_slot = -1
        self.adoption: Adoption | None = None  # peers: a release's type is no novelty

    def reset(self, slot: int) -> None:
        if slot == self.counts.rows:
            self.counts.add_row()
        else:
            self.counts.reset(slot)
        self.novel.reset(slot)

    def judge(self, slot: int, event: Event) -> float:
        if event.type is None:
            return 0.0
        cfg = self.cfg
        burst = self.novel.burst(slot, event.event_time_ms, cfg.burst_s * 1000)
        s = self.counts.surprise(slot, event.type, cfg.novelty_prior, burst, cfg.min_count)
        if s > 0 and self.adoption is not None and self.adoption.adopted(slot, event):
            return 0.0
        return s

    def explain(self, slot: int, event: Event) -> Reason | None:
        s = self.judge(slot, event)
        if not s > 0 or event.type is None:
            return None
        return Reason("type", "type", event.type, self.counts.expected(slot), s)

    def decisive(self, slot: int, event: Event) -> Reason | None:
        cfg, counts, etype = self.cfg, self.counts, event.type
        if not cfg.first_type_rarity or etype is None:
            return None
        if not counts.is_new(slot, etype, cfg.min_count):
            return None
        s = counts.surprise(slot, etype, cfg.novelty_prior, 0.0, cfg.min_count)
        if counts.distinct(slot) >= cfg.max_types:
            bound = f"more than {cfg.max_types} types: no longer judged for this producer"
            return Reason("type", "type", etype, bound, s)
        # One burst of new types is one incident: its first one alerted (the others are
        # judged by their surprise, which the burst multiplies, inside that cooldown).
        burst = self.novel.within(slot, event.event_time_ms, cfg.burst_s * 1000)
        if s < cfg.first_type_rarity or burst:
            return None
        usual = f"never sent in {counts.n[slot]} events (usually {counts.expected(slot)})"
        return Reason("type", "type", etype, usual, s)

    def advance(self, slot: int, event: Event) -> None:
        cfg, etype = self.cfg, event.type
        self._counted = -1
        if self.track_first:
            first = etype is not None and not self.counts.count(slot, etype)
            self.first_slot = slot if first else -1
        burst = cfg.novelty_burst and self.clock.n[slot] > 1
        if etype is None or not (burst or cfg.first_type_rarity):
            return
        if not self.counts.is_new(slot, etype, cfg.min_count):
            return
        if burst:
            self.novel.note(slot, event.event_time_ms, cfg.burst_s * 1000)
        if cfg.first_type_rarity:
            self.counts.update(slot, etype, cfg.max_types)
            self._counted = slot

    def learn(self, slot: int, event: Event) -> None:
        if self._counted == slot:
            self._counted = -1  # its first occurrence: counted already
        elif event.type is not None:
            self.counts.update(slot, event.type, self.cfg.max_types)

    def dump(self, slot: int, w: Writer) -> None:
        self.counts.dump(slot, w)
        self.novel.dump(slot, w)

    def load(self, slot: int, r: Reader) -> None:
        self.reset(slot)
        self.counts.load(slot, r)
        self.novel.load(slot, r)

    def dump_table(self, w: Writer) -> None:
        from detector.core.features import tables  # (it knows the categorical classes)

        tables.dump(w, self, ("counts", "novel"))

    def load_table(self, r: Reader) -> None:
        from detector.core.features import tables

        tables.load(r, self, ("counts", "novel"))
        self._counted = -1

    def view(self, slot: int) -> Categories:
        return Categories(self.counts, lambda: slot)
