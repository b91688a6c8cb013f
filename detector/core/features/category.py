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
        return best_category(
            f.values, f.novel, type_prefix(event.type), event.strings, event.event_time_ms,
            cfg.burst_s * 1000, cfg.novelty_prior, cfg.min_count,
        )  # fmt: skip

    def judge(self, slot: int, event: Event) -> float:
        return self._best(slot, event)[0]

    def explain(self, slot: int, event: Event) -> Reason | None:
        s, name, c = self._best(slot, event)
        if c is None:
            return None
        return Reason("category", name, event.strings[name], c.expected(), s)

    def advance(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        if cfg.novelty_burst and self.clock.n[slot] > 1:
            f = self.slots[slot]
            note_novelties(
                f.values, f.novel, type_prefix(event.type), event.strings, event.event_time_ms,
                cfg.burst_s * 1000, cfg.min_count,
            )  # fmt: skip

    def learn(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        learn_categories(
            self.slots[slot].values, type_prefix(event.type), event.strings,
            cfg.max_categorical_fields, cfg.max_categories,
        )  # fmt: skip

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


# The per-event loops over an event's categorical fields, as functions of plain arguments:
# compiled, they run over the typed Categories (category.pxd) with C calls to its methods.


def best_category(
    values: dict[str, Categories], novel: Novelties, prefix: str, strings: dict[str, str],
    t_ms: int, burst_ms: float, prior: float, min_count: int,
) -> tuple[float, str, Categories | None]:  # fmt: skip
    """(surprise, field, its counts) of the field whose value is the most surprising."""
    best, best_field, best_c = 0.0, "", None
    bursts = bool(novel.recent)  # no novelty yet (most producers): no burst to look up
    for name, value in strings.items():
        c = values.get(prefix + name)
        if c is None or c.saturated:  # an id field: never judged, skip the burst
            continue
        burst = novel.burst(name, t_ms, burst_ms) if bursts else 0.0
        s = c.surprise(value, prior, burst, min_count)
        if s > best:
            best, best_field, best_c = s, name, c
    return best, best_field, best_c


def note_novelties(
    values: dict[str, Categories], novel: Novelties, prefix: str, strings: dict[str, str],
    t_ms: int, burst_ms: float, min_count: int,
) -> None:  # fmt: skip
    """Note each judged field's never-seen value among the field's recent novelties."""
    for name, value in strings.items():
        c = values.get(prefix + name)
        if c is not None and c.is_new(value, min_count):
            novel.note(name, t_ms, burst_ms)


def learn_categories(
    values: dict[str, Categories], prefix: str, strings: dict[str, str], max_fields: int,
    cap: int,
) -> None:  # fmt: skip
    """Count each field's value (a new field while fewer than ``max_fields`` are tracked)."""
    for name, value in strings.items():
        key = prefix + name
        c = values.get(key)
        if c is None:
            if len(values) >= max_fields:
                continue
            c = values[sys.intern(key)] = Categories()
        elif c.saturated:
            continue  # an id field: nothing left to count
        c.update(value, cap)
        if c.saturated:
            values[key] = ID_FIELD
