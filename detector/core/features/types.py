"""Type: an event type the producer rarely or never sent."""

from __future__ import annotations

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.categories import Categories, Counts, Novelty
from detector.core.features.clock import Clock
from detector.core.features.config import FeatureConfig
from detector.core.features.feature import Feature
from detector.core.features.surprise import Reason

KEY = "type"  # the one key of the type feature's novelty burst


class TypeFeature(Feature[None]):
    """Per slot, one row of :attr:`counts` (row = slot): the types it sent; and its recent
    novelties among them."""

    name = "type"

    def __init__(self, cfg: FeatureConfig, clock: Clock) -> None:
        super().__init__(cfg, clock)
        self.counts = Counts()
        self.novel = Novelty(KEY)

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
        return self.counts.surprise(slot, event.type, cfg.novelty_prior, burst, cfg.min_count)

    def explain(self, slot: int, event: Event) -> Reason | None:
        s = self.judge(slot, event)
        if not s > 0 or event.type is None:
            return None
        return Reason("type", "type", event.type, self.counts.expected(slot), s)

    def advance(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        if (
            cfg.novelty_burst
            and self.clock.n[slot] > 1
            and event.type is not None
            and self.counts.is_new(slot, event.type, cfg.min_count)
        ):
            self.novel.note(slot, event.event_time_ms, cfg.burst_s * 1000)

    def learn(self, slot: int, event: Event) -> None:
        if event.type is not None:
            self.counts.update(slot, event.type, self.cfg.max_categories)

    def dump(self, slot: int, w: Writer) -> None:
        self.counts.dump(slot, w)
        self.novel.dump(slot, w)

    def load(self, slot: int, r: Reader) -> None:
        self.reset(slot)
        self.counts.load(slot, r)
        self.novel.load(slot, r)

    def view(self, slot: int) -> Categories:
        return Categories(self.counts, lambda: slot)
