"""Size: the bytes of an entry against the producer's usual sizes (log space)."""

from __future__ import annotations

import math

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features import tables
from detector.core.features.clock import Clock
from detector.core.features.config import FeatureConfig
from detector.core.features.feature import Feature
from detector.core.features.moments import MomentsTable
from detector.core.features.surprise import Reason, two_sided


class SizeFeature(Feature):
    """The moments of the log size, a row per producer slot."""

    name = "size"

    def __init__(self, cfg: FeatureConfig, clock: Clock) -> None:
        super().__init__(cfg, clock)
        self.moments = MomentsTable(cfg.fading_factor)

    def reset(self, slot: int) -> None:
        self.moments.reserve(slot + 1)
        self.moments.clear(slot)

    def judge(self, slot: int, event: Event) -> float:
        cfg = self.cfg
        return size_surprise(self.moments, slot, event.size_bytes, cfg.min_count, cfg.min_sd)

    def explain(self, slot: int, event: Event) -> Reason | None:
        s = self.judge(slot, event)
        if s <= 0:
            return None
        expected = self.moments.expected(slot, self.cfg.min_sd)
        return Reason("size", "", f"{event.size_bytes}B", expected, s)

    def learn(self, slot: int, event: Event) -> None:
        self.moments.update(slot, math.log(max(event.size_bytes, 1)))

    def dump(self, slot: int, w: Writer) -> None:
        self.moments.dump(slot, w)

    def load(self, slot: int, r: Reader) -> None:
        self.moments.load(slot, r)

    def dump_table(self, w: Writer) -> None:
        tables.dump(w, self, ("moments",))

    def load_table(self, r: Reader) -> None:
        tables.load(r, self, ("moments",))


def size_surprise(
    m: MomentsTable, row: int, size_bytes: int, min_count: int, min_sd: float
) -> float:
    """Surprise of an entry of ``size_bytes`` against the usual sizes in row ``row`` of ``m``
    (log space)."""
    if m._count[row] < min_count:
        return 0.0
    return max(two_sided(m.z(row, math.log(max(size_bytes, 1)), min_sd)), 0.0)
