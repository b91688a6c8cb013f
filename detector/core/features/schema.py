"""Schema: a payload shape (event type and field names) the producer rarely or never sent."""

from __future__ import annotations

import sys
import zlib
from typing import TYPE_CHECKING

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.categories import Categories, Counts, Novelty, Vocab
from detector.core.features.clock import Clock
from detector.core.features.config import FeatureConfig
from detector.core.features.feature import Feature
from detector.core.features.surprise import Reason

if TYPE_CHECKING:
    from detector.core.features.types import Adoption

KEY = "schema"  # the one key of the schema feature's novelty burst


_COLUMNS = ("counts", "shapes", "names", "fields", "novel")  # in the checkpoint's base


class SchemaFeature(Feature):
    """Per slot, one row of :attr:`counts` (row = slot): the shapes it sent; the field lists
    of the first ``max_schemas`` of them (for the reasons: a tuple of shape ids, each shape's
    key and field list held once in :attr:`shapes` for all producers); its recent novelties."""

    name = "schema"

    def __init__(self, cfg: FeatureConfig, clock: Clock) -> None:
        super().__init__(cfg, clock)
        self.counts = Counts()
        self.shapes = Vocab()
        self.names: list[tuple[str, ...]] = []  # the field list of each shape id
        self.fields: list[tuple[int, ...]] = []  # per slot: its shape ids, in learned order
        self.novel = Novelty(KEY)
        self.adoption: Adoption | None = None  # peers: a release's type, so its shape, is no news

    def reset(self, slot: int) -> None:
        if slot == self.counts.rows:
            self.counts.add_row()
            self.fields.append(())
        else:
            self.counts.reset(slot)
            for sid in self.fields[slot]:
                if self.shapes.release(sid):
                    self.names[sid] = ()
            self.fields[slot] = ()
        self.novel.reset(slot)

    def judge(self, slot: int, event: Event) -> float:
        cfg = self.cfg
        key, _ = shape_of(event)
        burst = self.novel.burst(slot, event.event_time_ms, cfg.burst_s * 1000)
        s = self.counts.surprise(slot, key, cfg.novelty_prior, burst, cfg.min_count)
        if s > 0 and self.adoption is not None and self.adoption.adopted(slot, event):
            return 0.0
        return s

    def explain(self, slot: int, event: Event) -> Reason | None:
        s = self.judge(slot, event)
        if not s > 0:
            return None
        return Reason("schema", "", self._diff(slot, shape_of(event)[1]), "usual shape", s)

    def advance(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        if (
            cfg.novelty_burst
            and self.clock.n[slot] > 1
            and self.counts.is_new(slot, shape_of(event)[0], cfg.min_count)
        ):
            self.novel.note(slot, event.event_time_ms, cfg.burst_s * 1000)

    def learn(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        key, names = shape_of(event)
        self.counts.update(slot, key, cfg.max_schemas)
        held = self.fields[slot]
        if len(held) < cfg.max_schemas:
            sid = self.shapes.ids.get(key)
            if sid is None or sid not in held:
                self._hold(slot, key, names)

    def _hold(self, slot: int, key: str, names: tuple[str, ...]) -> None:
        sid = self.shapes.add(key)
        if self.shapes.refs[sid] == 1:
            while len(self.names) <= sid:
                self.names.append(())
            self.names[sid] = tuple(map(sys.intern, names))
        self.fields[slot] += (sid,)

    def dump(self, slot: int, w: Writer) -> None:
        self.counts.dump(slot, w)
        held = self.fields[slot]
        w.count(len(held))
        for sid in held:
            w.text(self.shapes.text(sid))
            names = self.names[sid]
            w.count(len(names))
            for name in names:
                w.text(name)
        self.novel.dump(slot, w)

    def load(self, slot: int, r: Reader) -> None:
        self.reset(slot)
        self.counts.load(slot, r)
        for _ in range(r.count()):
            key = r.text()
            self._hold(slot, key, tuple(r.text() for _ in range(r.count())))
        self.novel.load(slot, r)

    def dump_table(self, w: Writer) -> None:
        from detector.core.features import tables  # (it knows the categorical classes)

        tables.dump(w, self, _COLUMNS)

    def load_table(self, r: Reader) -> None:
        from detector.core.features import tables

        tables.load(r, self, _COLUMNS)

    def view(self, slot: int) -> tuple[Categories, dict[str, tuple[str, ...]]]:
        """The slot's shape counts (read live) and field lists by shape key."""
        fields = {self.shapes.text(sid): self.names[sid] for sid in self.fields[slot]}
        return Categories(self.counts, lambda: slot), fields

    def _diff(self, slot: int, names: tuple[str, ...]) -> str:
        """Added and missing fields against the producer's most common shape."""
        counts = self.counts.counts(slot)
        if not counts:
            return "unusual shape"
        usual_key = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
        sid = self.shapes.ids.get(usual_key)
        usual = set(self.names[sid] if sid is not None and sid in self.fields[slot] else ())
        added = sorted(set(names) - usual)[:5]
        missing = sorted(usual - set(names))[:5]
        parts = []
        if added:
            parts.append("+" + ",".join(added))
        if missing:
            parts.append("-" + ",".join(missing))
        return " ".join(parts) or "known fields, unusual combination"


def shape_of(event: Event) -> tuple[str, tuple[str, ...]]:
    """The event's shape key (type and a checksum of its sorted field names) and the names."""
    # A producer sends the same few shapes in the same key order: look them up by the fields
    # as they came (sorting, joining and hashing them cost more than the rest of the shape
    # feature). The table is cleared when full, so hostile shapes cannot grow it.
    global _LAST
    last = _LAST
    if last[0] is event:  # judge, advance and learn ask in turn: one lookup per event
        return last[1]
    raw = (event.type, *event.numbers, "\x00", *event.strings)
    found = _SHAPES.get(raw)
    if found is None:
        names = tuple(sorted((*event.numbers, *event.strings)))
        # crc32, not hash(): the key must be the same in every process (checkpoints, replays).
        found = (f"{event.type}|{zlib.crc32('|'.join(names).encode()):08x}", names)
        if len(_SHAPES) >= _MAX_SHAPES:
            _SHAPES.clear()
        _SHAPES[raw] = found
    _LAST = (event, found)  # one rebinding: a reader sees an event with its own shape
    return found


_SHAPES: dict[tuple[str | None, ...], tuple[str, tuple[str, ...]]] = {}
_MAX_SHAPES = 4096
_LAST: tuple[Event | None, tuple[str, tuple[str, ...]]] = (None, ("", ()))
