"""Category: a categorical field's value (per event type) the producer rarely or never sent.
Fields with id-like cardinality (more than ``max_categories`` values) are not judged."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.categories import ID_FIELD, Categories, Novelties
from detector.core.features.feature import Feature
from detector.core.features.surprise import Reason, type_prefix


@dataclass(slots=True)
class Fields:
    """One producer's categorical fields (by type-prefixed name), and the recent novelties
    per field name (a field's novelties count together over event types)."""

    values: dict[str, Categories] = field(default_factory=dict)
    novel: Novelties = field(default_factory=Novelties)


class CategoryFeature(Feature[Fields]):
    name = "category"

    def new(self) -> Fields:
        return Fields()

    def _best(self, slot: int, event: Event) -> tuple[float, str, Categories | None]:
        cfg, f = self.cfg, self.slots[slot]
        burst_ms = cfg.burst_s * 1000
        best, best_field, best_c = 0.0, "", None
        prefix = type_prefix(event.type)
        for name, value in event.strings.items():
            c = f.values.get(prefix + name)
            if c is not None and not c.saturated:  # an id field: never judged, skip the burst
                burst = (
                    f.novel.burst(name, event.event_time_ms, burst_ms) if f.novel.recent else 0.0
                )
                s = c.surprise(value, cfg.novelty_prior, burst, cfg.min_count)
                if s > best:
                    best, best_field, best_c = s, name, c
        return best, best_field, best_c

    def judge(self, slot: int, event: Event) -> float:
        return self._best(slot, event)[0]

    def explain(self, slot: int, event: Event) -> Reason | None:
        s, name, c = self._best(slot, event)
        if c is None:
            return None
        return Reason("category", name, event.strings[name], c.expected(), s)

    def advance(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        if not (cfg.novelty_burst and self.clock.n[slot] > 1):
            return
        f = self.slots[slot]
        prefix = type_prefix(event.type)
        new = [
            name
            for name, value in event.strings.items()
            if (c := f.values.get(prefix + name)) is not None and c.is_new(value, cfg.min_count)
        ]
        for name in new:
            f.novel.note(name, event.event_time_ms, cfg.burst_s * 1000)

    def learn(self, slot: int, event: Event) -> None:
        cfg, values = self.cfg, self.slots[slot].values
        prefix = type_prefix(event.type)
        for name, value in event.strings.items():
            key = prefix + name
            c = values.get(key)
            if c is None:
                if len(values) >= cfg.max_categorical_fields:
                    continue
                c = values[sys.intern(key)] = Categories()
            elif c.saturated:
                continue  # an id field: nothing left to count
            c.update(value, cfg.max_categories)
            if c.saturated:
                values[key] = ID_FIELD

    def dump(self, slot: int, w: Writer) -> None:
        f = self.slots[slot]
        w.count(len(f.values))
        for key, c in f.values.items():
            w.text(key)
            c.dump(w)
        f.novel.dump(w)

    def load(self, slot: int, r: Reader) -> None:
        values = {}
        for _ in range(r.count()):
            key, c = sys.intern(r.text()), Categories.load(r)
            values[key] = ID_FIELD if c.saturated else c  # the one shared id table
        self.slots[slot] = Fields(values, Novelties.load(r))
