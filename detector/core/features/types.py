"""Type: an event type the producer rarely or never sent."""

from __future__ import annotations

from dataclasses import dataclass, field

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.categories import Categories, Novelties
from detector.core.features.feature import Feature
from detector.core.features.surprise import Reason

KEY = "type"  # the one key of the type feature's novelty burst


@dataclass(slots=True)
class Seen:
    """Counts of the values a producer sent, and its recent novelties among them."""

    values: Categories = field(default_factory=Categories)
    novel: Novelties = field(default_factory=Novelties)

    def dump(self, w: Writer) -> None:
        self.values.dump(w)
        self.novel.dump(w)

    @classmethod
    def load(cls, r: Reader) -> Seen:
        return cls(Categories.load(r), Novelties.load(r))


class TypeFeature(Feature[Seen]):
    name = "type"

    def new(self) -> Seen:
        return Seen()

    def judge(self, slot: int, event: Event) -> float:
        if event.type is None:
            return 0.0
        cfg, seen = self.cfg, self.slots[slot]
        burst = seen.novel.burst(KEY, event.event_time_ms, cfg.burst_s * 1000)
        return seen.values.surprise(event.type, cfg.novelty_prior, burst, cfg.min_count)

    def explain(self, slot: int, event: Event) -> Reason | None:
        s = self.judge(slot, event)
        if not s > 0 or event.type is None:
            return None
        return Reason("type", "type", event.type, self.slots[slot].values.expected(), s)

    def advance(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        if cfg.novelty_burst and self.clock.n[slot] > 1 and event.type is not None:
            seen = self.slots[slot]
            if seen.values.is_new(event.type, cfg.min_count):
                seen.novel.note(KEY, event.event_time_ms, cfg.burst_s * 1000)

    def learn(self, slot: int, event: Event) -> None:
        if event.type is not None:
            self.slots[slot].values.update(event.type, self.cfg.max_categories)

    def dump(self, slot: int, w: Writer) -> None:
        self.slots[slot].dump(w)

    def load(self, slot: int, r: Reader) -> None:
        self.slots[slot] = Seen.load(r)
