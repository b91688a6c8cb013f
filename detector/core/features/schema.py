"""Schema: a payload shape (event type and field names) the producer rarely or never sent."""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass, field

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.categories import Categories, Novelties
from detector.core.features.feature import Feature
from detector.core.features.surprise import Reason

KEY = "schema"  # the one key of the schema feature's novelty burst


@dataclass(slots=True)
class Shapes:
    """Counts of a producer's shapes, their field lists (for the reasons) and recent novelties."""

    counts: Categories = field(default_factory=Categories)
    fields: dict[str, tuple[str, ...]] = field(default_factory=dict)
    novel: Novelties = field(default_factory=Novelties)


class SchemaFeature(Feature[Shapes]):
    name = "schema"

    def new(self) -> Shapes:
        return Shapes()

    def judge(self, slot: int, event: Event) -> float:
        cfg, shapes = self.cfg, self.slots[slot]
        key, _ = shape_of(event)
        burst = shapes.novel.burst(KEY, event.event_time_ms, cfg.burst_s * 1000)
        return shapes.counts.surprise(key, cfg.novelty_prior, burst, cfg.min_count)

    def explain(self, slot: int, event: Event) -> Reason | None:
        s = self.judge(slot, event)
        if not s > 0:
            return None
        return Reason("schema", "", _diff(self.slots[slot], shape_of(event)[1]), "usual shape", s)

    def advance(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        if cfg.novelty_burst and self.clock.n[slot] > 1:
            shapes = self.slots[slot]
            if shapes.counts.is_new(shape_of(event)[0], cfg.min_count):
                shapes.novel.note(KEY, event.event_time_ms, cfg.burst_s * 1000)

    def learn(self, slot: int, event: Event) -> None:
        cfg, shapes = self.cfg, self.slots[slot]
        key, names = shape_of(event)
        shapes.counts.update(key, cfg.max_schemas)
        if key not in shapes.fields and len(shapes.fields) < cfg.max_schemas:
            shapes.fields[sys.intern(key)] = _field_list(names)

    def dump(self, slot: int, w: Writer) -> None:
        shapes = self.slots[slot]
        shapes.counts.dump(w)
        w.count(len(shapes.fields))
        for key, names in shapes.fields.items():
            w.text(key)
            w.count(len(names))
            for name in names:
                w.text(name)
        shapes.novel.dump(w)

    def load(self, slot: int, r: Reader) -> None:
        counts = Categories.load(r)
        fields = {}
        for _ in range(r.count()):
            key = sys.intern(r.text())
            fields[key] = _field_list(tuple(r.text() for _ in range(r.count())))
        self.slots[slot] = Shapes(counts, fields, Novelties.load(r))


def shape_of(event: Event) -> tuple[str, tuple[str, ...]]:
    """The event's shape key (type and a checksum of its sorted field names) and the names."""
    # A producer sends the same few shapes in the same key order: look them up by the fields
    # as they came (sorting, joining and hashing them cost more than the rest of the shape
    # feature). The table is cleared when full, so hostile shapes cannot grow it.
    raw = (event.type, *event.numbers, "\x00", *event.strings)
    found = _SHAPES.get(raw)
    if found is None:
        names = tuple(sorted((*event.numbers, *event.strings)))
        # crc32, not hash(): the key must be the same in every process (checkpoints, replays).
        found = (f"{event.type}|{zlib.crc32('|'.join(names).encode()):08x}", names)
        if len(_SHAPES) >= _MAX_SHAPES:
            _SHAPES.clear()
        _SHAPES[raw] = found
    return found


_SHAPES: dict[tuple[str | None, ...], tuple[str, tuple[str, ...]]] = {}
_MAX_SHAPES = 4096

# One copy of each schema's field list among producers: every producer learns (and a
# checkpoint restores) its own, though most producers of a service send the same shapes.
# Shared lists live as long as the process, so they are bounded (~1.5 MB; hostile producers'
# shapes must not grow it without end): beyond, lists are kept unshared.
_FIELD_LISTS: dict[tuple[str, ...], tuple[str, ...]] = {}
_MAX_FIELD_LISTS = 10_000


def _field_list(names: tuple[str, ...]) -> tuple[str, ...]:
    shared = _FIELD_LISTS.get(names)
    if shared is None:
        shared = tuple(map(sys.intern, names))
        if len(_FIELD_LISTS) < _MAX_FIELD_LISTS:
            _FIELD_LISTS[shared] = shared
    return shared


def _diff(shapes: Shapes, names: tuple[str, ...]) -> str:
    """Added and missing fields against the producer's most common shape."""
    if not shapes.counts.counts:
        return "unusual shape"
    usual_key = max(shapes.counts.counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
    usual = set(shapes.fields.get(usual_key, ()))
    added = sorted(set(names) - usual)[:5]
    missing = sorted(usual - set(names))[:5]
    parts = []
    if added:
        parts.append("+" + ",".join(added))
    if missing:
        parts.append("-" + ",".join(missing))
    return " ".join(parts) or "known fields, unusual combination"
