"""Size: the bytes of an entry against the producer's usual sizes (log space)."""

from __future__ import annotations

import math

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.feature import Feature
from detector.core.features.moments import Moments
from detector.core.features.surprise import Reason, two_sided


class SizeFeature(Feature[Moments]):
    name = "size"

    def new(self) -> Moments:
        return Moments(self.cfg.fading_factor)

    def judge(self, slot: int, event: Event) -> float:
        cfg = self.cfg
        return size_surprise(self.slots[slot], event.size_bytes, cfg.min_count, cfg.min_sd)

    def explain(self, slot: int, event: Event) -> Reason | None:
        s = self.judge(slot, event)
        if s <= 0:
            return None
        expected = self.slots[slot].expected(self.cfg.min_sd)
        return Reason("size", "", f"{event.size_bytes}B", expected, s)

    def learn(self, slot: int, event: Event) -> None:
        self.slots[slot].update(math.log(max(event.size_bytes, 1)))

    def dump(self, slot: int, w: Writer) -> None:
        self.slots[slot].dump(w)

    def load(self, slot: int, r: Reader) -> None:
        self.slots[slot] = Moments.load(r, self.cfg.fading_factor)


def size_surprise(m: Moments, size_bytes: int, min_count: int, min_sd: float) -> float:
    """Surprise of an entry of ``size_bytes`` against the usual sizes ``m`` (log space)."""
    if m.count < min_count:
        return 0.0
    return max(two_sided(m.z(math.log(max(size_bytes, 1)), min_sd)), 0.0)
