"""The feature store: which producers are tracked, in which slot, and their features.

A tracked producer owns a *slot*: an index into every part's per-slot state (its clock, each
feature, and whatever parts the caller adds, such as the decision state). A forgotten
producer's slot is cleared and reused. The store is bounded by a cap and an idle TTL in event
time; beyond the cap, an admission policy decides (see :mod:`detector.core.admission`).
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from detector.core.admission import OVERFLOW, Admission
from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features import tables
from detector.core.features.categories import Categories
from detector.core.features.category import CategoryFeature
from detector.core.features.clock import Clock
from detector.core.features.columns import no_collection
from detector.core.features.config import FEATURES, FeatureConfig
from detector.core.features.drift import Drift, DriftFeature
from detector.core.features.feature import Feature
from detector.core.features.joint import JointFeature
from detector.core.features.judgements import Judgements
from detector.core.features.moments import Moments
from detector.core.features.peers import PeerFeature
from detector.core.features.rate import RateFeature
from detector.core.features.replay import IdCounts, ReplayFeature
from detector.core.features.resonance import ResonanceFeature
from detector.core.features.schema import SchemaFeature
from detector.core.features.sequence import SequenceFeature
from detector.core.features.size import SizeFeature
from detector.core.features.surprise import Evidence, Reason
from detector.core.features.types import TypeFeature
from detector.core.features.value import ValueFeature


class Part(Protocol):
    """Per-slot state kept beside the features (the clock, the decision state).

    A part may also write every slot's state at once, as columns (``dump_table(w)`` and
    ``load_table(r)``: the checkpoint's base, :meth:`FeatureStore.base`); one that does not
    is written there slot by slot with ``dump``.
    """

    def reset(self, slot: int) -> None: ...

    def dump(self, slot: int, w: Writer) -> None: ...

    def load(self, slot: int, r: Reader) -> None: ...


class ProducerView:
    """What the detector holds about one producer, read live from its slot (for inspection,
    tests and benchmarks: the state objects themselves, not copies; read it, do not keep it
    past the producer's eviction)."""

    def __init__(self, store: FeatureStore, slot: int) -> None:
        self.slot = slot
        self._store = store
        f = store.by_name
        rate, size, value, drift = f["rate"], f["size"], f["value"], f["drift"]
        assert isinstance(rate, RateFeature) and isinstance(size, SizeFeature)  # noqa: S101
        assert isinstance(value, ValueFeature) and isinstance(drift, DriftFeature)  # noqa: S101
        # Views of the rows, built now: live, as the rows they read.
        gap = store.clock.gap
        self.gap = Moments(gap.fading, gap, slot)
        self.rate = (
            None if rate.moments is None else Moments(rate.cfg.fading_factor, rate.moments, slot)
        )
        self.arrivals = None if rate.drifts is None else Drift(rate.drifts, slot)
        self.size = Moments(size.moments.fading, size.moments, slot)
        rows = value.rows
        keyed = [(rows.keys.names[rows.key[row]], row) for row in rows.rows(slot)]
        self.numeric = {key: Moments(rows.moments.fading, rows.moments, row) for key, row in keyed}
        self.seasonal = {k: s for k, row in keyed if (s := rows.seasonal[row]) is not None}
        self.windows = {k: w for k, row in keyed if (w := rows.windows[row]) is not None}
        seen = drift.drifts.seen
        self.drifts = {k: Drift(drift.drifts, row) for k, row in keyed if seen[row]}
        # The categorical features' rows, through views that read them live.
        self.types: Categories = store.types.view(slot)
        self.categorical: dict[str, Categories] = store.categories.view(slot)
        self.schemas, self.schema_fields = store.schemas.view(slot)

    @property
    def n(self) -> int:
        return self._store.clock.n[self.slot]

    @property
    def last_ms(self) -> int:
        return self._store.clock.last_ms[self.slot]

    @property
    def seq(self) -> int:
        return self._store.clock.seq[self.slot]

    @property
    def ids(self) -> IdCounts | None:
        """Its repeats of event ids (the ids themselves are in the store's shared window)."""
        return _typed(self._store.by_name["replayed_id"], ReplayFeature).table.get(self.slot)


def _named(records: Mapping[str, bytes], name: str) -> dict[str, bytes]:
    """The records a feature named ``name`` wrote: ``name`` and ``name.<part>``."""
    prefix = name + "."
    return {k: v for k, v in records.items() if k == name or k.startswith(prefix)}


T = TypeVar("T")

#: A commit rewrites the base (every part's columns, :meth:`FeatureStore.base`) instead of
#: adding producer records once the records written since the last base pass this share of
#: the producers (a restore reads each record after the base, slot by slot) ...
REBASE_SHARE = 0.25
#: ... and this many (small stores keep adding records: a base of theirs is small anyway).
REBASE_MIN = 1024


# The per-event loops over the features (compiled, store.pxd: C calls of typed features).


def judged(
    features: list[Feature], columns: list[int], slot: int, event: Event, out: Judgements, i: int
) -> None:
    """Row ``i`` of ``out``: each feature's surprise, in its column."""
    for k in range(len(features)):
        feature: Feature = features[k]
        s = feature.judge(slot, event)
        if s > 0:
            out.put(i, columns[k], s)


def first_decisive(features: list[Feature], slot: int, event: Event) -> Reason | None:
    """The first of ``features`` to find a reason decisive."""
    for feature in features:
        reason = feature.decisive(slot, event)
        if reason is not None:
            return reason
    return None


def advanced(features: list[Feature], slot: int, event: Event) -> None:
    for feature in features:
        feature.advance(slot, event)


def learned(features: list[Feature], slot: int, event: Event) -> None:
    for feature in features:
        feature.learn(slot, event)


def _typed(feature: Feature, cls: type[T]) -> T:
    assert isinstance(feature, cls)  # noqa: S101 (the registry's)
    return feature


def build_features(cfg: FeatureConfig, clock: Clock) -> list[Feature]:
    """Every feature, in :data:`FEATURES` order (the registry: one line per feature)."""
    rate, value, types = RateFeature(cfg, clock), ValueFeature(cfg, clock), TypeFeature(cfg, clock)
    schema, drift = SchemaFeature(cfg, clock), DriftFeature(cfg, clock, value)
    features: list[Feature] = [
        rate,
        value,
        SizeFeature(cfg, clock),
        types,
        CategoryFeature(cfg, clock),
        schema,
        ReplayFeature(cfg, clock),
        drift,
        JointFeature(cfg, clock),
        PeerFeature(cfg, clock, types, rate, schema, value, drift),
        SequenceFeature(cfg, clock, value),
        ResonanceFeature(cfg, clock),
    ]
    assert tuple(f.name for f in features) == FEATURES  # noqa: S101 (the registry's order)
    return features


class FeatureStore:
    """Per-producer state in slots, bounded by a cap and an idle TTL in event time.

    Beyond the cap: without ``admission``, the least recently seen producer is evicted (LRU);
    with it, established producers stay and refused newcomers share the :attr:`overflow`
    slot (the pipeline always passes one).

    Args:
        parts: per-slot state of the caller's own (reset, dumped and loaded with the slot).
    """

    def __init__(
        self,
        cfg: FeatureConfig,
        max_producers: int = 100_000,
        idle_ttl_ms: int = 24 * 3600 * 1000,
        track_changes: bool = False,
        admission: Admission | None = None,
        parts: Sequence[Part] = (),
    ) -> None:
        self.cfg = cfg
        self.track_changes = track_changes
        self.max_producers = max_producers
        self.idle_ttl_ms = idle_ttl_ms
        self.admission = admission
        self.clock = Clock(cfg.rate_fading_factor)
        self.features = build_features(cfg, self.clock)
        self.by_name = {f.name: f for f in self.features}
        # (column, feature) of the features that judge: a feature's column in Judgements.
        live = [f for f in self.features if f.on]  # the features the spec turns on
        self._judges = [
            (k, f) for k, f in enumerate(self.features) if f.on and f.name not in cfg.disabled
        ]
        self._judging = [f for _, f in self._judges]
        self._columns = [k for k, _ in self._judges]
        # The features that may find a reason decisive (Feature.decisive); with peers on, the
        # peer feature stands in for the type feature's (it refines that reason).
        self._decisive = [f for _, f in self._judges if type(f).decisive is not Feature.decisive]
        stood_in = "type" if cfg.peers and "type" not in cfg.disabled else "peer"
        self._decisive = [f for f in self._decisive if f.name != stood_in]
        # The features with facts to note or baselines to learn (the others' calls are no-ops).
        self._advancing = [f for f in live if type(f).advance is not Feature.advance]
        self._learning = [f for f in live if type(f).learn is not Feature.learn]
        self._parts: list[Part] = [self.clock, *self.features, *parts]
        self.producers: OrderedDict[str, int] = OrderedDict()  # producer -> slot, LRU order
        self._free: list[int] = []
        self._slots = 0
        # Producers refused admission are all scored in this one slot (never evicted).
        self.overflow = self._allocate()
        self.evicted = 0
        self.tick = 0
        self.watermark_ms = 0
        self.next_sweep_ms = 0
        self.next_silence_ms = 0  # next silence check, in event time (see Pipeline)
        # The stream as a whole (:meth:`paused`): events seen, and the usual advance of the
        # watermark per event (an EW mean over ~1 / rate_fading_factor events).
        self.steps = 0
        self.step_ms = 0.0
        # Changed and evicted since the last checkpoint commit (if tracking): only those are
        # written. Untracked stores (offline scoring, training) keep no such sets.
        self.dirty: set[str] = set()
        self.removed: set[str] = set()
        # A commit is encoded from the live state a slice at a time (checkpoint.FrozenCommit):
        # the producers of the last snapshot whose records were not read yet, and the records
        # of those that changed since, taken just before they did (copy on write).
        self._frozen: set[str] = set()
        self._kept: dict[str, bytes] = {}
        # What the checkpoint holds besides the base: the producers with a record written
        # since the base (an empty record: removed since), and the base's pieces.
        self.recorded: set[str] = set()
        self.base_pieces = 0

    @property
    def rate(self) -> RateFeature:
        rate = self.features[0]
        assert isinstance(rate, RateFeature)  # noqa: S101 (the registry's first)
        return rate

    @property
    def types(self) -> TypeFeature:
        return _typed(self.by_name["type"], TypeFeature)

    @property
    def peers(self) -> PeerFeature:
        return _typed(self.by_name["peer"], PeerFeature)

    @property
    def categories(self) -> CategoryFeature:
        return _typed(self.by_name["category"], CategoryFeature)

    @property
    def schemas(self) -> SchemaFeature:
        return _typed(self.by_name["schema"], SchemaFeature)

    def __len__(self) -> int:
        return len(self.producers)

    def _allocate(self) -> int:
        if self._free:
            return self._free.pop()
        slot, self._slots = self._slots, self._slots + 1
        for part in self._parts:
            part.reset(slot)
        return slot

    def slot_of(self, producer: str) -> int | None:
        """The producer's slot, if tracked (the overflow slot for :data:`OVERFLOW`)."""
        return self.overflow if producer == OVERFLOW else self.producers.get(producer)

    def state(self, producer: str, now_ms: int = 0) -> int:
        """The producer's slot, given on first sight; marks it most recently used.

        When the store is full and the admission policy refuses the producer, the shared
        :attr:`overflow` slot. ``now_ms``: the event's time, for the admission budget's minute
        (which follows the watermark).
        """
        slot = self.producers.get(producer)
        adm = self.admission
        if slot is None:
            if len(self.producers) >= self.max_producers:
                victim = (
                    next(iter(self.producers))
                    if adm is None
                    else adm.victim(self._events_of, max(self.watermark_ms, now_ms))
                )
                if victim is None:
                    return self._refuse(producer)
                self._evict(victim)
            slot = self.producers[producer] = self._allocate()
            if adm is not None:
                adm.created(producer)
        else:
            self.producers.move_to_end(producer)
            if adm is not None:
                adm.seen(producer, self.clock.n[slot])
        self.changing(producer)
        self.tick += 1
        self.clock.seq[slot] = self.tick
        return slot

    def _events_of(self, producer: str) -> int | None:
        slot = self.producers.get(producer)
        return None if slot is None else self.clock.n[slot]

    def changing(self, producer: str) -> None:
        """Note, before it happens, that ``producer``'s state changes (tracking stores: the
        next commit writes it)."""
        if self.track_changes:
            if self._frozen:
                self._keep(producer)
            self.dirty.add(producer)
            self.removed.discard(producer)  # evicted, then back before the commit

    def _refuse(self, producer: str) -> int:
        assert self.admission is not None  # noqa: S101 (only called with a policy)
        self.admission.refuse(producer)
        self.changing(OVERFLOW)
        return self.overflow

    def _evict(self, producer: str) -> None:
        if self._frozen:
            self._keep(producer)  # a commit being encoded still needs its record
        slot = self.producers.pop(producer)
        for part in self._parts:
            part.reset(slot)  # free its memory now; the slot is reused
        self._free.append(slot)
        self.evicted += 1
        if self.admission is not None:
            self.admission.forget(producer)
        if self.track_changes:
            self.dirty.discard(producer)
            self.removed.add(producer)

    def paused(self, t_ms: int, after: float, min_ms: int) -> int:
        """The pause of the whole stream that an event at ``t_ms`` ends, else 0.

        A pause: no event of any producer for at least ``after`` times the stream's usual
        step (the watermark's mean advance per event) and ``min_ms`` (the silence of the
        stream as a whole, judged as a producer's is). It is time that did not happen for the
        producers: their clocks and time-weighted references skip it (:meth:`Feature.skip`),
        so their next inter-arrival, the weight of their next value and their silence leave
        it out. Call it before the event is judged; a step that is no pause is learned.
        """
        n = self.steps
        self.steps = n + 1
        if n == 0:
            return 0  # the first event: no step yet
        step = max(t_ms - self.watermark_ms, 0)  # an event behind the watermark moves nothing
        if n > 1 and step >= max(after * self.step_ms, min_ms):
            for producer in (*self.producers, OVERFLOW):
                self.changing(producer)  # every producer's time moves
            self.clock.skip(step)
            for feature in self.features:
                feature.skip(step)
            return step
        a = max(self.cfg.rate_fading_factor, 1.0 / n)  # a plain mean of the first steps
        self.step_ms += a * (step - self.step_ms)
        return 0

    def record(self, slot: int) -> bytes:
        """The slot's state as a typed record (the checkpoint's producer entry)."""
        w = Writer()
        for part in self._parts:
            part.dump(slot, w)
        return w.bytes()

    def freeze(self, producers: Iterable[str]) -> None:
        """Records of ``producers`` as they are now will be read (:meth:`frozen_record`) while
        the state moves on, until :meth:`thaw` or the next freeze: each is kept just before
        its producer changes or leaves."""
        self._frozen = set(producers)
        self._kept = {}

    def thaw(self) -> None:
        """The frozen records were written: keep none any more."""
        self._frozen, self._kept = set(), {}

    def _keep(self, producer: str) -> None:
        if producer in self._frozen:
            self._frozen.discard(producer)
            slot = self.slot_of(producer)
            assert slot is not None  # noqa: S101 (frozen producers are tracked until kept)
            self._kept[producer] = self.record(slot)

    def frozen_record(self, producer: str) -> bytes:
        """``producer``'s record as it was at the last :meth:`freeze` (if not thawed since).

        Raises:
            KeyError: neither tracked nor kept.
        """
        kept = self._kept.get(producer)
        if kept is not None:
            return kept
        slot = self.slot_of(producer)
        if slot is None:
            raise KeyError(producer)
        return self.record(slot)

    @staticmethod
    def events_in(record: bytes) -> int:
        """The events a producer's record has seen (its clock comes first in every record)."""
        return Reader(record).i64()

    @staticmethod
    def events_learned(
        base: bytes | bytearray | None, records: Mapping[str, bytes]
    ) -> dict[str, int]:
        """The events each producer of a checkpoint has seen (its base's clock, then the
        records since), without restoring it (tests and tools)."""
        out: dict[str, int] = {}
        if base is not None:
            r = Reader(base)
            r.i64(), r.i64()
            lengths, raw = r.column(), r.blob()
            slots, _ = r.column(), r.column()
            clock = r.section()  # the clock is the first part, its events first
            if not clock.count() or clock.text() != "n":
                msg = "base has no clock columns first"
                raise ValueError(msg)
            n = tables.take(clock)
            at = 0
            for length, slot in zip(lengths, slots, strict=True):
                out[raw[at : at + length].decode()] = n[slot]
                at += length
        for producer, record in records.items():
            if record:
                out[producer] = FeatureStore.events_in(record)
            else:
                out.pop(producer, None)
        return out

    def rebase_due(self) -> bool:
        """Whether the next commit should write a base rather than more producer records."""
        return len(self.recorded) > max(REBASE_SHARE * len(self.producers), REBASE_MIN)

    def base(self) -> bytearray:
        """Every slot's state at once: the store's index (producers in LRU order and their
        slots, free slots), then per part its columns (``dump_table``), or for a part
        without them its record of each tracked slot. The checkpoint's base: restored as it
        is, slot for slot."""
        with no_collection():
            return self._base()

    def _base(self) -> bytearray:
        w = Writer()
        w.i64(self._slots)
        w.i64(self.overflow)
        names = [p.encode() for p in self.producers]
        w.column(array("q", map(len, names)))
        w.blob(b"".join(names))
        w.column(array("q", self.producers.values()))
        w.column(array("q", self._free))
        tracked = array("q", (*self.producers.values(), self.overflow))
        # Each section (and each slot's record in one) is a blob written in place: the base
        # is hundreds of MB at 100k producers, and each copy of it costs as much as its columns.
        for part in self._parts:
            section = w.open_blob()
            dump_table = getattr(part, "dump_table", None)
            if dump_table is not None:
                w.count(1)
                dump_table(w)
            else:  # slot by slot
                w.count(0)
                w.column(tracked)
                for slot in tracked:
                    one = w.open_blob()
                    part.dump(slot, w)
                    w.close_blob(one)
            w.close_blob(section)
        return w.detach()

    def _load_base(self, base: bytes | bytearray) -> None:
        r = Reader(base)
        self._slots, self.overflow = r.i64(), r.i64()
        lengths, raw = r.column(), r.blob()
        slots, free = r.column(), r.column()
        if len(lengths) != len(slots):
            msg = "base index does not match its producers"
            raise ValueError(msg)
        names, at = [], 0
        for n in lengths:
            names.append(raw[at : at + n].decode())
            at += n
        for part in self._parts:
            section = r.section()
            if section.count():
                load_table = getattr(part, "load_table", None)
                if load_table is None:
                    msg = f"base has columns of a part that has none here ({type(part).__name__})"
                    raise ValueError(msg)
                load_table(section)
            else:
                for slot in range(self._slots):
                    part.reset(slot)
                for slot in section.column():
                    one = section.section()
                    part.load(slot, one)
                    if not one.done():
                        msg = "producer record is longer than this layout"
                        raise ValueError(msg)
            if not section.done():
                msg = f"base section of {type(part).__name__} is longer than this layout"
                raise ValueError(msg)
        if not r.done():
            msg = "base is longer than this layout"
            raise ValueError(msg)
        self.producers = OrderedDict(zip(names, slots, strict=True))
        self._free = list(free)

    def _apply(self, records: Mapping[str, bytes]) -> None:
        """The producer records written since the base, over it (an empty one: removed)."""
        for producer, record in records.items():
            if producer == OVERFLOW:
                self._clear_slot(self.overflow)
                self._load(self.overflow, record)
                continue
            held = self.producers.pop(producer, None)
            if held is not None:
                self._clear_slot(held)
            if not record:  # removed since the base
                if held is not None:
                    self._free.append(held)
                continue
            slot = self._allocate() if held is None else held
            self.producers[producer] = slot
            self._load(slot, record)
        if records:  # the LRU order: by last use
            order = sorted(self.producers.items(), key=lambda kv: self.clock.seq[kv[1]])
            self.producers = OrderedDict(order)

    def _clear_slot(self, slot: int) -> None:
        for part in self._parts:
            part.reset(slot)

    def _load(self, slot: int, record: bytes) -> None:
        r = Reader(record)
        for part in self._parts:
            part.load(slot, r)
        if not r.done():
            msg = "producer record is longer than this layout"
            raise ValueError(msg)

    def restore(
        self,
        records: Mapping[str, bytes],
        counters: dict[str, Any],
        baseline: bool = False,
        shared: Mapping[str, bytes] | None = None,
        base: bytes | bytearray | None = None,
        keep: Callable[[str], bool] | None = None,
    ) -> None:
        """Replace the state with a checkpoint's: its ``base`` (every slot's state, as of its
        last full commit; none: start empty), then its producer ``records`` written since
        (each replaces its producer's state; an empty one removes it), in LRU order; and the
        features' shared state with its ``shared`` records (none: afresh). With ``keep``,
        only the producers it accepts stay (a partition's share of a baseline).

        A baseline comes from another time: its producers keep what they learned but forget
        when they were last seen, so live event time does not expire them at once; the
        shared state (ids sent then) starts afresh.

        Raises:
            ValueError: a record does not have this version's layout.
        """
        with no_collection():
            self._restore_slots(records, shared, baseline, base)
        if keep is not None:
            for producer in [p for p in self.producers if not keep(p)]:
                slot = self.producers.pop(producer)
                self._clear_slot(slot)
                self._free.append(slot)
        if baseline:
            for slot in (*self.producers.values(), self.overflow):
                self.clock.last_ms[slot] = -1
            counters = {"evicted": counters["evicted"], "tick": counters["tick"]}  # time: live
        if self.admission is not None:
            young = self.admission.established_events
            self.admission.restore(
                counters, [p for p, slot in self.producers.items() if self.clock.n[slot] < young]
            )
        self.evicted = counters["evicted"]
        self.tick = counters["tick"]
        self.watermark_ms = counters.get("watermark_ms", 0)
        self.next_sweep_ms = counters.get("next_sweep_ms", 0)
        self.next_silence_ms = counters.get("next_silence_ms", 0)
        self.steps = counters.get("steps", 0)
        self.step_ms = counters.get("step_ms", 0.0)
        self.dirty.clear()
        self.removed.clear()
        # A baseline's producers are in no checkpoint yet (its first commit writes a base).
        self.recorded = set() if baseline else set(records)
        self.base_pieces = 0 if baseline else int(counters.get("base_pieces", 0))
        self.thaw()

    def _restore_slots(
        self,
        records: Mapping[str, bytes],
        shared: Mapping[str, bytes] | None,
        baseline: bool,
        base: bytes | bytearray | None,
    ) -> None:
        for feature in self.features:
            feature.load_shared({} if baseline else _named(shared or {}, feature.name))
        self.producers.clear()
        self._free.clear()
        if base is not None:
            self._load_base(base)
        else:
            self._slots = 0  # slots are given again from 0: each is reset as it is given
            self.overflow = self._allocate()
        self._apply(records)

    def shared(self, full: bool = False) -> dict[str, bytes]:
        """The features' shared state as named records: those changed since the last
        :meth:`committed` (every one if ``full``), encoded now."""
        out: dict[str, bytes] = {}
        for feature in self.features:
            out.update(feature.shared(full))
        return out

    def committed(self) -> None:
        """The last snapshot is durable: track changes afresh."""
        self.dirty.clear()
        self.removed.clear()
        for feature in self.features:
            feature.committed()

    def counters(self) -> dict[str, int | float]:
        return {
            "evicted": self.evicted,
            "tick": self.tick,
            "watermark_ms": self.watermark_ms,
            "next_sweep_ms": self.next_sweep_ms,
            "next_silence_ms": self.next_silence_ms,
            "steps": self.steps,
            "step_ms": self.step_ms,
            "base_pieces": self.base_pieces,
        }

    def observe(self, event: Event, learn: bool) -> Evidence:
        """Evidence for ``event`` (with its reasons); then, if ``learn``, fold it into the
        producer's baseline.

        The clock always advances: time is a fact, not a belief to protect. Baselines only
        learn from events the caller accepts.
        """
        slot = self.state(event.producer, event.event_time_ms)
        evidence = self.evidence(slot, event)
        evidence.reasons = self.explain(slot, event)
        self.advance(slot, event)
        if learn:
            self.learn(slot, event)
        self.expire(event.event_time_ms)
        return evidence

    def judge(self, slot: int, event: Event, out: Judgements, i: int) -> None:
        """Row ``i`` of ``out``: each feature's surprise about ``event`` from the slot's state
        before it (no reasons: see :meth:`explain`)."""
        n = self.clock.n[slot]
        out.clear(i, slot, n)
        if n:
            judged(self._judging, self._columns, slot, event, out, i)

    def evidence(self, slot: int, event: Event) -> Evidence:
        """One event's judgement as an object (tests and tools; the pipeline reads rows)."""
        j = Judgements()
        j.start((event,))
        self.judge(slot, event, j, 0)
        return Evidence(j.surprises(0), j.history[0])

    def decisive(self, slot: int, event: Event) -> Reason | None:
        """The first reason that alerts by itself (:meth:`Feature.decisive`), if any; ask it
        before the state moves on, for producers past warm-up."""
        return first_decisive(self._decisive, slot, event)

    def early(self, slot: int, event: Event) -> Reason | None:
        """A reason that alerts by itself for a producer still in warm-up: its departure from
        its peer group (:meth:`PeerFeature.early`); ask it before the state moves on."""
        return self.peers.early(slot, event) if self.cfg.peers else None

    def explain(self, slot: int, event: Event) -> list[Reason]:
        """Every surprising feature's reason, largest surprise first (call it before the
        state moves on: :meth:`advance`, :meth:`learn`)."""
        if not self.clock.n[slot]:
            return []
        reasons = [r for _, f in self._judges if (r := f.explain(slot, event)) is not None]
        reasons.sort(key=lambda r: -r.surprise)
        return reasons

    def advance(self, slot: int, event: Event) -> None:
        """The facts of an event, whatever its verdict: the clock, ids sent, novelties."""
        self.clock.advance(slot, event.event_time_ms)
        advanced(self._advancing, slot, event)

    def learn(self, slot: int, event: Event) -> None:
        """Fold an accepted event into the producer's baselines."""
        learned(self._learning, slot, event)

    def expire(self, now_ms: int) -> None:
        """Evict producers idle for longer than the TTL, at most once a minute of event time."""
        if now_ms > self.watermark_ms:
            self.watermark_ms = now_ms
        if self.watermark_ms < self.next_sweep_ms:
            return
        self.next_sweep_ms = self.watermark_ms + 60_000
        horizon = self.watermark_ms - self.idle_ttl_ms
        # LRU order is order of last event: stop at the first producer still fresh. Producers
        # from a baseline not seen live yet (last_ms < 0) only leave under the LRU cap.
        last_ms = self.clock.last_ms
        stale = []
        for producer, slot in self.producers.items():
            if last_ms[slot] >= horizon:
                break
            if last_ms[slot] >= 0:
                stale.append(producer)
        for producer in stale:
            self._evict(producer)

    def view(self, producer: str) -> ProducerView:
        """What the store holds about ``producer`` (KeyError if not tracked)."""
        slot = self.slot_of(producer)
        if slot is None:
            raise KeyError(producer)
        return ProducerView(self, slot)
