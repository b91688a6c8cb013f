"""Peer groups: producers of one kind, and what each kind sends (a bounded summary).

A producer's *kind* comes from the spec's ``peer_patterns`` (an id glob such as ``payment-*``,
the kind named by the glob, or a regex with a ``kind`` group) or, for producers no pattern
matches, from its own type profile: the family (the part before the first ``.``) of the
type it sends most, fixed once it has ``peer_min_events`` events, or at its first event when
that type's family is already a kind (a newcomer of a known kind starts warm).

Per kind, the summary holds its members, per event type the events of its members, how
many of them sent it and the event time of its first (the start of a release), the usual
inter-arrival of its members, and per numeric field of its types the members' levels (each
member's recent mean, in signed-log space, and its spread: sums over the members, so they
merge across workers): at most ``peer_max_kinds`` kinds, ``max_types`` types per kind and
:data:`LEVEL_FIELDS` fields per type (an attacker can mint all three; the kind that
overflows alerts once). It is knowledge beyond a producer's own past, so the peer
feature answers in :meth:`PeerFeature.decisive` (it judges nothing: its surprise stays 0):

- **foreign type**: a producer's first event of a type other kinds own (their members sent it
  ``peer_min_events`` times) and its own kind does not alerts at that event, naming the type
  and the kind that usually sends it (never another producer's id);
- **adoption**: a type new to the producer that another member of its kind already sent is
  not news (a release adopted by the group pages once, at its first sender; a newcomer
  sending its kind's types is no news either: the warm start of types); and within
  ``peer_release_s`` of its kind's first event of it, while another member sends it too, a
  producer's events of the type are no type or shape novelty either (:meth:`PeerFeature.adopted`,
  asked by the type and schema features): the group's adoption is the evidence, so the
  release's later events, the first sender's included, page no more (other features still
  judge them);
- **newcomer departure**: a producer still in warm-up whose kind is known alerts once on a
  foreign type, when its rate is ``peer_rate_factor`` times its kind's usual rate, or when
  its level of a numeric field departs from its kind's (below);
- **departure by values**: an established producer whose own history of a field is
  drifting (its recent level has moved away from its drift reference) and whose recent
  level is outside its kind's usual range alerts once, naming the field, the kind and the
  range (a slow poisoning its own baselines follow, which its peers do not). The range is
  the other members' mean level plus or minus the larger of :data:`DEPART_SPREAD` times
  their spread and :data:`DEPART_SD` sd of their values; a kind with fewer than
  :data:`LEVEL_MIN_OTHERS` other members, or whose members' levels disagree (spread above
  :data:`AGREE` sd of their values), says nothing. The producer may stray again once its
  levels are all back well within the ranges (:data:`RETURN`). A member's level is its
  recent mean once that has forgotten its first value (~3/fading values), refreshed every
  :data:`LEVEL_CHECK_EVERY` events, so members' levels move together when the whole kind's
  do (a newcomer's level: its drift reference, a time-weighted mean since its start). A
  member that strayed is withdrawn from its kind's levels until it is back (of two others,
  one departing would move the range the third is judged by);
- **departure by rates**: likewise with each member's rate level (the rate feature's timed
  reference: its mean log inter-arrival over ``rate_horizon_s``, under key :data:`RATE` of
  its kind's levels, the sd of its values taken as Poisson arrivals'). Members' rates move
  together over a day, so what must drift is the producer's *offset* from its kind's mean:
  each keeps a reference of it over ``drift_horizon_s`` (:attr:`PeerFeature.rate_ref`), and
  an established producer whose rate level is outside its kind's range and whose offset has
  moved that way from its reference alerts once (a producer always apart from its kind
  says nothing), naming the kind and the range in arrivals per second.

Partitioned workers each summarise their own producers (:attr:`PeerFeature.local`) and
share it through Redis (:mod:`detector.runtime.peering`); the others' summaries are merged
into :attr:`PeerFeature.remote`, which the decisions read beside the local one.
"""

from __future__ import annotations

import fnmatch
import math
import re
from array import array
from collections.abc import Iterable, Mapping

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.categories import (
    Pool,
    Vocab,
    grown_block,
    pickled,
    regrow,
    resized,
    unpickled,
)
from detector.core.features.clock import Clock
from detector.core.features.columns import capacity
from detector.core.features.config import FeatureConfig
from detector.core.features.drift import DriftFeature
from detector.core.features.feature import Feature
from detector.core.features.rate import RateFeature
from detector.core.features.schema import SchemaFeature
from detector.core.features.surprise import Reason, unlog
from detector.core.features.types import TypeFeature
from detector.core.features.value import ValueFeature

DEPARTED = 1  # flag: the producer's departure from its kind alerted (once)
JOINED = 2  # flag: counted among its kind's members
STRAYED = 4  # flag: its level of a field departed from its kind's (alerted; cleared on return)
RATE_STRAYED = 8  # flag: its rate departed from its kind's (alerted; cleared on return)
RATE = ""  # the key of the members' rate levels among a kind's levels (no field's key is "")
# The variance of log inter-arrivals of Poisson arrivals (pi^2 / 6, sd 1.28), whatever their
# rate: a rate level's "values' variance" (its range's floor: 0.5 sd, x0.53 to x1.9).
RATE_VAR = math.pi * math.pi / 6.0
DEPARTURE_MIN_EVENTS = 20  # a newcomer's rate is compared once it has this many events
LEVEL_FIELDS = 8  # numeric fields per type whose levels a kind keeps (the rest: none)
LEVEL_MIN_OTHERS = 2  # members besides the producer whose levels make a kind's range
AGREE = 0.5  # members whose levels spread more than this many of their values' sd disagree
DEPART_SPREAD = 4.0  # a level departs beyond this many spreads of its kind's levels ...
DEPART_SD = 0.5  # ... and beyond this many sd of its kind's values (the range's floor)
RETURN = 0.25  # back (may stray again) within this share of the range's half-width: its
# recent level swings by a few standard errors (0.5 let a creep at the range's edge re-alert)
DRIFTING_SE = 3.0  # moved from its own reference by this many standard errors of its level
LEVEL_CHECK_EVERY = 8  # a producer's levels are refreshed, and compared, every 8th event
LEVEL_MEMORY = 3.0  # a recent mean is a level once its first value weighs < e^-3 (~3/fading)


class Kind:
    """One kind's summary: members, per type ``[events, senders, first event time (ms; 0:
    unknown)]``, members' usual gaps, and per numeric field (its key: type prefix and name)
    ``[members, sum of their levels, of their squares, of their values' variances]``, and
    so for their rates (key :data:`RATE`: levels of the log inter-arrival)."""

    __slots__ = ("gap_ms", "gaps", "levels", "members", "saturated", "types")

    def __init__(self) -> None:
        self.members = 0
        self.types: dict[str, list[int]] = {}
        self.gap_ms = 0.0  # sum of the members' latest usual inter-arrivals (ms) ...
        self.gaps = 0  # ... over this many members (each refreshed every peer_min_events)
        self.saturated = False  # more than max_types types: new ones no longer counted
        self.levels: dict[str, list[float]] = {}

    def count(self, etype: str, events: int, senders: int, first_ms: int, cap: int) -> None:
        row = self.types.get(etype)
        if row is None:
            if len(self.types) >= cap:
                self.saturated = True
                return
            row = self.types[etype] = [0, 0, 0]
        row[0] += events
        row[1] += senders
        if first_ms > 0 and (row[2] <= 0 or first_ms < row[2]):
            row[2] = first_ms

    def level(self, key: str, members: float, y: float, yy: float, var: float) -> bool:
        """Add to the levels of field ``key`` (``members`` -1: take one out); False when
        refused (a type the kind does not count, or its :data:`LEVEL_FIELDS` are taken)."""
        row = self.levels.get(key)
        if row is None:
            if members <= 0:
                return False
            if key != RATE:
                etype = key.split("\x1f", 1)[0] if "\x1f" in key else ""
                if etype not in self.types:
                    return False
                prefix = etype + "\x1f"
                if sum(k.startswith(prefix) for k in self.levels) >= LEVEL_FIELDS:
                    return False
            row = self.levels[key] = [0.0, 0.0, 0.0, 0.0]
        row[0] += members
        row[1] += y
        row[2] += yy
        row[3] += var
        if row[0] <= 0:
            del self.levels[key]
        return True

    def merge(self, other: Kind, cap: int) -> None:
        self.members += other.members
        self.gap_ms += other.gap_ms
        self.gaps += other.gaps
        self.saturated |= other.saturated
        for etype, (events, senders, first_ms) in other.types.items():
            self.count(etype, events, senders, first_ms, cap)
        for key in sorted(other.levels):  # sorted: which fields a full type keeps is one
            self.level(key, *other.levels[key])

    def dump(self, w: Writer) -> None:
        w.i64(self.members)
        w.f64(self.gap_ms)
        w.i64(self.gaps)
        w.count(self.saturated)
        w.count(len(self.types))
        for etype in sorted(self.types):  # sorted: the same summary, the same bytes
            events, senders, first_ms = self.types[etype]
            w.text(etype)
            w.i64(events)
            w.i64(senders)
            w.i64(first_ms)
        w.count(len(self.levels))
        for key in sorted(self.levels):
            w.text(key)
            for x in self.levels[key]:
                w.f64(x)

    @classmethod
    def load(cls, r: Reader) -> Kind:
        k = cls()
        k.members, k.gap_ms, k.gaps = r.i64(), r.f64(), r.i64()
        k.saturated = bool(r.count())
        for _ in range(r.count()):
            etype = r.text()
            k.types[etype] = [r.i64(), r.i64(), r.i64()]
        for _ in range(r.count()):
            key = r.text()
            k.levels[key] = [r.f64(), r.f64(), r.f64(), r.f64()]
        return k


Summary = dict[str, Kind]


def dump_summary(summary: Summary) -> bytes:
    """A summary as bytes (the checkpoint's record, and what a worker shares)."""
    w = Writer()
    w.count(len(summary))
    for name in sorted(summary):
        w.text(name)
        summary[name].dump(w)
    return w.bytes()


def load_summary(raw: bytes) -> Summary:
    """The summary :func:`dump_summary` wrote.

    Raises:
        ValueError: another layout.
    """
    r = Reader(raw)
    out = {r.text(): Kind.load(r) for _ in range(r.count())}
    if not r.done():
        msg = "peer summary is longer than this layout"
        raise ValueError(msg)
    return out


def merged(summaries: Iterable[Summary], cap: int) -> Summary:
    """The sum of several workers' summaries (kinds by name)."""
    out: Summary = {}
    for summary in summaries:
        for name, kind in summary.items():
            out.setdefault(name, Kind()).merge(kind, cap)
    return out


def family(etype: str) -> str:
    """The kind a type's senders are named after: its part before the first dot."""
    return etype.split(".", 1)[0]


class Levels:
    """Per slot, its (field key -> level, variance) as last added to its kind's: a block of
    the ``key``/``level``/``var`` columns (from a :class:`Pool`, as the categorical blocks
    are), in the order the keys were last set (a dict's order: a key taken out and set again
    goes last), each key interned in :attr:`keys` (shared by all producers)."""

    def __init__(self) -> None:
        self.keys = Vocab()
        self.pool = Pool()
        self.key = array("i")
        self.level = array("d")
        self.var = array("d")
        self.start = array("i")
        self.size = array("i")
        self.used = array("i")

    def __reduce__(self) -> tuple[object, ...]:
        columns = {"key": "i", "level": "d", "var": "d", "start": "i", "size": "i", "used": "i"}
        return (Levels, (), pickled(self, columns, ("keys", "pool")))

    def __setstate__(self, state: dict[str, object]) -> None:
        unpickled(self, state)

    def extents(self) -> dict[str, int]:
        """How much of each column holds state (a checkpoint writes no more)."""
        top, slots = self.pool.top, len(self.used)
        return dict.fromkeys(("key", "level", "var"), top) | dict.fromkeys(
            ("start", "size", "used"), slots
        )

    def reset(self, slot: int) -> None:
        """Slot ``slot`` afresh: no levels, its keys and block let go."""
        if slot >= len(self.used):
            size = capacity(len(self.used), slot + 1)
            self.start = resized(self.start, "i", size)
            self.size = resized(self.size, "i", size)
            self.used = resized(self.used, "i", size)
        start = self.start[slot]
        for i in range(start, start + self.used[slot]):
            self.keys.release(self.key[i])
        self.pool.release(start, self.size[slot])
        self.start[slot] = 0
        self.size[slot] = 0
        self.used[slot] = 0

    def find(self, slot: int, key: str) -> int:
        """The index of ``key`` among the slot's levels, or -1."""
        kid = self.keys.ids.get(key)
        if kid is None:
            return -1
        start = self.start[slot]
        for i in range(start, start + self.used[slot]):
            if self.key[i] == kid:
                return i
        return -1

    def get(self, slot: int, key: str) -> tuple[float, float] | None:
        i = self.find(slot, key)
        return None if i < 0 else (self.level[i], self.var[i])

    def pop(self, slot: int, key: str) -> tuple[float, float] | None:
        """The slot's (level, variance) of ``key``, taken out (None: it has none)."""
        i = self.find(slot, key)
        if i < 0:
            return None
        out = (self.level[i], self.var[i])
        self.keys.release(self.key[i])
        end = self.start[slot] + self.used[slot] - 1
        for j in range(i, end):  # the later ones move down: the order stays
            self.key[j] = self.key[j + 1]
            self.level[j] = self.level[j + 1]
            self.var[j] = self.var[j + 1]
        self.used[slot] -= 1
        return out

    def put(self, slot: int, key: str, level: float, var: float) -> None:
        """Set the slot's level of ``key`` (a new key goes last)."""
        i = self.find(slot, key)
        if i < 0:
            if self.used[slot] == self.size[slot]:
                self.key, self.level, self.var = regrow(
                    self.pool, self.start, self.size, self.used, len(self.used), slot,
                    grown_block(self.size[slot]),
                    [(self.key, "i"), (self.level, "d"), (self.var, "d")],
                )  # fmt: skip
            i = self.start[slot] + self.used[slot]
            self.key[i] = self.keys.add(key)
            self.used[slot] += 1
        self.level[i] = level
        self.var[i] = var

    def names(self, slot: int) -> list[str]:
        """The slot's keys, in order."""
        start = self.start[slot]
        return [self.keys.text(self.key[i]) for i in range(start, start + self.used[slot])]


# Each slot's state, a column each in the checkpoint's base.
_SLOTS = ("kind", "flags", "gap", "levels", "rate_ref", "rate_ref_ms")


class PeerFeature(Feature):
    """Per slot: the producer's kind (``""``: none yet) and its flags; shared: the summary of
    its own producers' kinds (:attr:`local`) and of other workers' (:attr:`remote`).

    It reads the type feature's counts, the rate feature's usual rate and the value and drift
    features' levels (given, as the drift feature is given the value feature), stands in for
    the type feature's decisive reason when on (``peers``), and tells the type and schema
    features which novel types their kind is adopting (:meth:`adopted`): see the module's
    docstring."""

    name = "peer"

    def __init__(
        self,
        cfg: FeatureConfig,
        clock: Clock,
        types: TypeFeature,
        rate: RateFeature,
        schema: SchemaFeature | None = None,
        value: ValueFeature | None = None,
        drift: DriftFeature | None = None,
    ) -> None:
        super().__init__(cfg, clock)
        self.types = types
        self.rate = rate
        self.value = value
        self.drift = drift
        self.kind: list[str] = []
        self.flags: list[int] = []
        self.gap: list[float] = []  # its usual inter-arrival as last added to its kind's
        # Per field key (and :data:`RATE`), its (level, variance) as last added to its kind's.
        self.levels = Levels()
        # Its own usual offset of its rate level from its kind's (a reference over
        # drift_horizon_s of event time), and when it last moved (ms; 0: none yet).
        self.rate_ref: list[float] = []
        self.rate_ref_ms: list[int] = []
        self.local: Summary = {}
        self.remote: Summary = {}
        self.overflowed = False  # a kind beyond peer_max_kinds was refused (reported once)
        self._overflow_slot = -1  # the producer whose next event reports it
        self.changed = False
        self._globs: list[tuple[str, str]] = []
        self._regexes: list[re.Pattern[str]] = []
        for p in cfg.peer_patterns:
            if "(?P<kind>" in p:
                self._regexes.append(re.compile(p))
            else:
                self._globs.append((p, fnmatch.translate(p)))
        self._glob = [(p, re.compile(rx)) for p, rx in self._globs]
        if cfg.peers:
            types.track_first = True
            if cfg.peer_release_s > 0:  # a release's type and shape novelty: adopted()
                types.adoption = self
                if schema is not None:
                    schema.adoption = self

    # -- per slot ------------------------------------------------------------------------

    def reset(self, slot: int) -> None:
        # An evicted producer's counts, gap and levels stay in its kind's (as its membership).
        self.levels.reset(slot)
        if slot == len(self.kind):
            self.kind.append("")
            self.flags.append(0)
            self.gap.append(0.0)
            self.rate_ref.append(0.0)
            self.rate_ref_ms.append(0)
        else:
            self.kind[slot], self.flags[slot], self.gap[slot] = "", 0, 0.0
            self.rate_ref[slot], self.rate_ref_ms[slot] = 0.0, 0

    def judge(self, slot: int, event: Event) -> float:
        return 0.0

    def explain(self, slot: int, event: Event) -> Reason | None:
        return None

    def dump(self, slot: int, w: Writer) -> None:
        w.text(self.kind[slot])
        w.count(self.flags[slot])
        w.f64(self.gap[slot])
        levels = self.levels
        start, used = levels.start[slot], levels.used[slot]
        w.count(used)
        for i in range(start, start + used):
            w.text(levels.keys.text(levels.key[i]))
            w.f64(levels.level[i])
            w.f64(levels.var[i])
        w.f64(self.rate_ref[slot])
        w.i64(self.rate_ref_ms[slot])

    def load(self, slot: int, r: Reader) -> None:
        self.reset(slot)
        self.kind[slot] = r.text()
        self.flags[slot] = r.count()
        self.gap[slot] = r.f64()
        levels = self.levels
        for _ in range(r.count()):
            key = r.text()
            y = r.f64()
            levels.put(slot, key, y, r.f64())
        self.rate_ref[slot], self.rate_ref_ms[slot] = r.f64(), r.i64()

    def dump_table(self, w: Writer) -> None:
        """Every slot's kind, flags, usual gap, levels and rate reference at once (columns)."""
        from detector.core.features import tables  # (it imports the features' modules)

        tables.dump(w, self, _SLOTS)

    def load_table(self, r: Reader) -> None:
        from detector.core.features import tables

        tables.load(r, self, _SLOTS)
        lists = [name for name in _SLOTS if name != "levels"]
        slots = {len(getattr(self, name)) for name in lists}
        if len(slots) > 1 or len(self.levels.used) < max(slots):
            msg = "base has peer columns of unequal lengths"
            raise ValueError(msg)

    # -- the summary, local and remote ----------------------------------------------------

    def known(self, name: str) -> bool:
        return name in self.local or name in self.remote

    def tally(self, name: str, etype: str) -> tuple[int, int]:
        """Events and senders of ``etype`` in kind ``name``, this worker's and the others'."""
        events = senders = 0
        for summary in (self.local, self.remote):
            kind = summary.get(name)
            row = None if kind is None else kind.types.get(etype)
            if row is not None:
                events, senders = events + row[0], senders + row[1]
        return events, senders

    def owners(self, etype: str, own: str) -> list[str]:
        """The kinds other than ``own`` that own ``etype`` (most events first)."""
        least = self.cfg.peer_min_events
        names = sorted({*self.local, *self.remote} - {own})
        owned = [(e, n) for n in names if (e := self.tally(n, etype)[0]) >= least]
        return [n for _, n in sorted(owned, key=lambda en: -en[0])]

    def first_ms(self, name: str, etype: str) -> int:
        """Event time of kind ``name``'s first event of ``etype`` (0: unknown)."""
        out = 0
        for summary in (self.local, self.remote):
            kind = summary.get(name)
            row = None if kind is None else kind.types.get(etype)
            if row is not None and row[2] > 0 and (out == 0 or row[2] < out):
                out = row[2]
        return out

    def usual_gap_ms(self, name: str) -> float:
        """The mean usual inter-arrival of a kind's members (0: none known)."""
        total, n = 0.0, 0
        for summary in (self.local, self.remote):
            kind = summary.get(name)
            if kind is not None:
                total, n = total + kind.gap_ms, n + kind.gaps
        return total / n if n else 0.0

    def members(self, name: str) -> int:
        return sum(s[name].members for s in (self.local, self.remote) if name in s)

    # -- decisions ------------------------------------------------------------------------

    def decisive(self, slot: int, event: Event) -> Reason | None:
        """An established producer's event (see the module's docstring); the type feature's
        own reason when peers have nothing to say."""
        own_reason = self.types.decisive(slot, event)
        if self._overflow_slot == slot:
            return self._overflow_reason()
        kind, etype = self.kind[slot], event.type
        if not kind or etype is None or self.types.counts.count(slot, etype):
            if own_reason is None and kind and self.clock.n[slot] % LEVEL_CHECK_EVERY == 0:
                return self._strayed(slot, event, kind, True) or self._rate_strayed(slot, kind)
            return own_reason
        foreign = self._foreign(slot, event, kind, etype)
        if foreign is not None:
            return foreign
        if self.tally(kind, etype)[1] > 0:
            return None  # another producer of its kind sends it: adopted, no news
        if own_reason is None:
            return None
        return Reason(
            own_reason.feature, own_reason.field, own_reason.observed,
            f"{own_reason.expected}; new to every {kind} producer", own_reason.surprise,
        )  # fmt: skip

    def adopted(self, slot: int, event: Event) -> bool:
        """The event's type is being adopted by the producer's kind (a release): another
        member sends it too, its kind's first event of it is at most ``peer_release_s`` old,
        and no other kind owns it (a foreign type stays news). Its type and shape novelty
        are then no news (asked by those features for novel events only)."""
        kind, etype = self.kind[slot], event.type
        if not kind or etype is None:
            return False
        since = self.first_ms(kind, etype)
        if since <= 0 or event.event_time_ms - since > self.cfg.peer_release_s * 1000:
            return False
        senders = self.tally(kind, etype)[1]
        others = senders - (self.types.counts.count(slot, etype) > 0)
        return others > 0 and not self.owners(etype, kind)

    def early(self, slot: int, event: Event) -> Reason | None:
        """A producer in warm-up whose kind is known departs from it: a foreign type, a
        rate ``peer_rate_factor`` times its kind's, or a level outside its kind's range (once
        per producer)."""
        cfg = self.cfg
        if not cfg.peers:
            return None
        if self._overflow_slot == slot:
            return self._overflow_reason()
        kind, etype = self.kind[slot], event.type
        if not kind or self.flags[slot] & DEPARTED:
            return None
        if etype is not None and not self.types.counts.count(slot, etype):
            foreign = self._foreign(slot, event, kind, etype)
            if foreign is not None:
                self.flags[slot] |= DEPARTED
                self.changed = True
                return foreign
        if self.clock.n[slot] < DEPARTURE_MIN_EVENTS:
            return None
        usual_ms = self.usual_gap_ms(kind)
        own_ms = max(self.rate.usual_ms(slot), 1.0)
        if not usual_ms or usual_ms < cfg.peer_rate_factor * own_ms:
            strayed = self._strayed(slot, event, kind, False)
            if strayed is not None:
                self.flags[slot] |= DEPARTED
            return strayed
        self.flags[slot] |= DEPARTED
        self.changed = True
        return Reason(
            "peer", "rate", f"{1000.0 / own_ms:.3g}/s",
            f"{kind} producers send ~{1000.0 / usual_ms:.3g}/s each", 2.0 * cfg.first_type_rarity,
        )  # fmt: skip

    def _foreign(self, slot: int, event: Event, kind: str, etype: str) -> Reason | None:
        """A type its kind does not own and other kinds do (one burst of them is one alert)."""
        cfg = self.cfg
        if self.tally(kind, etype)[0] >= cfg.peer_min_events:
            return None
        owners = self.owners(etype, kind)
        if not owners:
            return None
        if self.types.novel.within(slot, event.event_time_ms, cfg.burst_s * 1000):
            return None  # the burst's first new type alerted
        usual = f"usually sent by {owners[0]} producers, never by {kind} producers"
        if len(owners) > 1:
            usual += f" (also by {', '.join(owners[1:3])})"
        s = self.types.counts.surprise(slot, etype, cfg.novelty_prior, 0.0, cfg.min_count)
        return Reason("peer", "type", etype, usual, max(s, cfg.first_type_rarity, 1.0))

    def _strayed(self, slot: int, event: Event, kind: str, established: bool) -> Reason | None:
        """The first of the event's numeric fields whose level departs from its kind's
        (:meth:`_departure`), as a reason (once: until its levels come back)."""
        value = self.value
        if value is None or self.flags[slot] & STRAYED:
            return None
        rows = value.rows
        known = rows.keys.by_type.get(event.type)
        if known is None:
            return None
        for name in event.numbers:
            kid = known.get(name)
            row = -1 if kid is None else rows.find(slot, kid)
            level = None if row < 0 else self._level(row, established)
            far = None if level is None else self._departure(slot, kind, row, level, established)
            if far is None or level is None:
                continue
            self.flags[slot] |= STRAYED
            self._withdraw(slot, kind, False)
            lo, hi = far
            return Reason(
                "peer", name, f"{'recent ' if established else ''}level {unlog(level):.4g}",
                f"{kind} producers' usual level {unlog(lo):.4g} to {unlog(hi):.4g}",
                2.0 * self.cfg.first_type_rarity,
            )  # fmt: skip
        return None

    def _level(self, row: int, recent: bool) -> float | None:
        """The producer's level of the field of ``row`` (signed-log space), if known: its
        ``recent`` mean once that has forgotten its first value (the moments start from it), or
        else its drift reference (a time-weighted mean since its start: a newcomer's)."""
        cfg, value, drift = self.cfg, self.value, self.drift
        assert value is not None  # noqa: S101 (asked only with levels)
        moments = value.rows.moments
        if recent:
            enough = moments.count[row] * cfg.fading_factor >= LEVEL_MEMORY
            return moments.mean[row] if enough else None
        if drift is None or not drift.drifts.seen[row] or drift.drifts.count[row] < cfg.min_count:
            return None
        return float(drift.drifts.mean[row])

    def _departure(
        self, slot: int, kind: str, row: int, level: float, drifting: bool
    ) -> tuple[float, float] | None:
        """The kind's usual range of the field of ``row`` (signed-log space) if ``level`` is
        outside it, and (``drifting``) the producer's own history of the field drifts."""
        usual = self._range(slot, kind, self._key(row), True)
        if usual is None:
            return None
        mean, margin = usual
        away = level - mean
        if abs(away) <= margin or (drifting and not self._drifting(row, away)):
            return None
        return mean - margin, mean + margin

    def _returned(self, slot: int, kind: str, key: str, level: float) -> bool:
        """Whether ``level`` is back within :data:`RETURN` of the kind's range of ``key``
        about its middle, its members agreeing or not (a disagreement is no return: its own
        departure may be what spreads them); a key without enough other members is."""
        usual = self._range(slot, kind, key, False)
        if usual is None:
            return True
        mean, margin = usual
        return abs(level - mean) <= RETURN * margin

    def _key(self, row: int) -> str:
        """The key of the field of the value feature's ``row`` among a kind's levels."""
        assert self.value is not None  # noqa: S101 (asked only with levels)
        rows = self.value.rows
        key: str = rows.keys.names[rows.key[row]]
        return key

    def _range(self, slot: int, kind: str, key: str, agree: bool) -> tuple[float, float] | None:
        """(middle, half-width) of the kind's usual range of ``key`` (a field, or
        :data:`RATE`): the other members' mean level plus or minus the larger of
        :data:`DEPART_SPREAD` spreads and :data:`DEPART_SD` sd of their values (None: too
        few others, or, ``agree``, they disagree)."""
        others = self._others(slot, kind, key, agree)
        if others is None:
            return None
        mean, spread, sd = others
        return mean, max(DEPART_SPREAD * spread, DEPART_SD * sd)

    def _others(
        self, slot: int, kind: str, key: str, agree: bool = True
    ) -> tuple[float, float, float] | None:
        """(mean, spread, values' sd) of the levels of field ``key`` among the kind's other
        members, if there are enough of them and (``agree``) they agree."""
        n = total = squares = var = 0.0
        for summary in (self.local, self.remote):
            k = summary.get(kind)
            sums = None if k is None else k.levels.get(key)
            if sums is not None:
                n, total = n + sums[0], total + sums[1]
                squares, var = squares + sums[2], var + sums[3]
        own = self.levels.get(slot, key)
        if own is not None:  # leave its own level out
            n, total, squares, var = n - 1, total - own[0], squares - own[0] * own[0], var - own[1]
        if n < LEVEL_MIN_OTHERS:
            return None
        mean = total / n
        spread = math.sqrt(max(squares / n - mean * mean, 0.0))
        sd = max(math.sqrt(max(var / n, 0.0)), self.cfg.min_sd)
        return None if agree and spread > AGREE * sd else (mean, spread, sd)

    def _drifting(self, row: int, away: float) -> bool:
        """Whether the producer's own history of the field of ``row`` drifts ``away``'s way:
        its recent level is :data:`DRIFTING_SE` standard errors of it from its drift
        reference (the drift feature's view, before its CUSUM adds up to an alert, or while
        the reference follows). A level apart from its kind's since the producer began is
        its own usual, not a departure."""
        cfg, drift, value = self.cfg, self.drift, self.value
        if drift is None or value is None or cfg.drift_horizon_s <= 0:
            return False
        drifts, moments = drift.drifts, value.rows.moments
        n = drifts.count[row]  # values since the reference (re)started
        if not drifts.seen[row] or n < cfg.min_count:
            return False
        a = cfg.fading_factor  # the recent level is a mean over ~1/a values
        if moments.count[row] > n and n * a < LEVEL_MEMORY:
            # The reference restarted (a new normal accepted) after the level began, and the
            # level still holds values from before: the reference is the fresher of the two,
            # and their gap is the level catching up, not a drift (seed 11's payment-3: its
            # level falling back after a poisoning, read as drifting up).
            return False
        moved = math.copysign(1.0, away) * (moments.mean[row] - drifts.mean[row])
        se = max(math.sqrt(max(moments.var(row), 0.0)), cfg.min_sd) * math.sqrt(a / (2.0 - a))
        return moved >= DRIFTING_SE * se

    def _overflow_reason(self) -> Reason:
        self._overflow_slot = -1
        bound = self.cfg.peer_max_kinds
        return Reason("peer", "kind", f"more than {bound} kinds", "no new kind is learned", 3.0)

    # -- facts ----------------------------------------------------------------------------

    def advance(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        if not cfg.peers:
            return
        kind = self.kind[slot] or self._assign(slot, event)
        if not kind:
            return
        first = self.types.first_slot == slot
        etype = event.type
        summary = self.local.get(kind)
        if summary is None:
            return
        if etype is not None:
            t = event.event_time_ms if first else 0
            summary.count(etype, 1, int(first), t, cfg.max_types)
            self.changed = True
        n = self.clock.n[slot]
        if n >= cfg.peer_min_events and n % cfg.peer_min_events == 0:
            # Its latest usual rate stands for it in its kind's (daily cycles move them all).
            usual_ms, before = self.rate.usual_ms(slot), self.gap[slot]
            summary.gap_ms += usual_ms - before
            summary.gaps += before == 0.0
            self.gap[slot] = usual_ms
        if n % LEVEL_CHECK_EVERY == 0:
            self._contribute(slot, kind, summary, event.event_time_ms)

    def _contribute(self, slot: int, name: str, kind: Kind, event_ms: int) -> None:
        """Its latest levels stand for it in its kind's, unless it strayed: then it may stray
        again (and its levels stand for it again) once they are all back well within the
        kind's ranges."""
        value = self.value
        if value is None:
            self._contribute_rate(slot, name, kind, event_ms)
            return
        rows = value.rows
        moments, names, keys = rows.moments, rows.keys.names, rows.key
        mine, back = self.levels, True
        strayed = bool(self.flags[slot] & STRAYED)
        for row in rows.rows(slot):
            y = self._level(row, True)
            if y is None:
                continue
            key, var = names[keys[row]], moments.var(row)
            if strayed:  # not its kind's usual level while away (withdrawn)
                back = back and self._returned(slot, name, key, y)
                continue
            old = mine.pop(slot, key)
            if old is not None:
                kind.level(key, -1.0, -old[0], -old[0] * old[0], -old[1])
            if kind.level(key, 1.0, y, y * y, var):
                mine.put(slot, key, y, var)
        if back:
            self.flags[slot] &= ~STRAYED
        self._contribute_rate(slot, name, kind, event_ms)

    def _contribute_rate(self, slot: int, name: str, kind: Kind, event_ms: int) -> None:
        """Its latest rate level stands for it in its kind's; its own usual offset from its
        kind's follows (over ``drift_horizon_s`` of event time); it may stray again once its
        rate is back well within the kind's range."""
        level = self._rate_level(slot)
        if level is None:
            return
        y, var, _ = level
        mine = self.levels
        if not self.flags[slot] & RATE_STRAYED:  # while away, withdrawn from its kind's
            old = mine.pop(slot, RATE)
            if old is not None:
                kind.level(RATE, -1.0, -old[0], -old[0] * old[0], -old[1])
            kind.level(RATE, 1.0, y, y * y, var)
            mine.put(slot, RATE, y, var)
        horizon_ms = self.cfg.drift_horizon_s * 1000
        others = self._others(slot, name, RATE, False)
        if others is not None and horizon_ms > 0:
            offset, last = y - others[0], self.rate_ref_ms[slot]
            if last <= 0:
                self.rate_ref[slot] = offset
            else:
                w = -math.expm1(-max(event_ms - last, 0) / horizon_ms)
                self.rate_ref[slot] += w * (offset - self.rate_ref[slot])
            self.rate_ref_ms[slot] = max(last, event_ms)
        if self.flags[slot] & RATE_STRAYED and self._returned(slot, name, RATE, y):
            self.flags[slot] &= ~RATE_STRAYED

    def _withdraw(self, slot: int, name: str, rate: bool) -> None:
        """Take a producer that strayed out of its kind's levels of its fields (``rate``: of
        its rate), until it comes back: a member away from its kind is not its kind's usual
        (of two others, one departing would move the range the third is judged by)."""
        kind = self.local.get(name)
        mine = self.levels
        for key in [k for k in mine.names(slot) if (k == RATE) == rate]:
            old = mine.pop(slot, key)
            assert old is not None  # noqa: S101 (one of its keys)
            y, var = old
            if kind is not None:
                kind.level(key, -1.0, -y, -y * y, -var)
        self.changed = True

    def _rate_level(self, slot: int) -> tuple[float, float, float] | None:
        """The producer's rate level (its usual log inter-arrival over ``rate_horizon_s``, the
        rate feature's timed reference), the variance of its log inter-arrivals (were they
        Poisson's: :data:`RATE_VAR`) and the level's standard error; None before the
        reference covers its horizon. (The reference's own variance is of smoothed
        inter-arrivals, with the daily curve's trend in it: scaled back to single
        inter-arrivals, ~x65 at a = 0.03, the trend made the range x3 wide.)"""
        cfg, rate = self.cfg, self.rate
        timed = rate.drifts
        if timed is None or timed.count[slot] < cfg.min_count:
            return None
        if timed.covered_ms(slot) < cfg.rate_horizon_s * 1000:
            return None
        se = math.sqrt(RATE_VAR / (2.0 * max(rate.events[slot], 1.0)))  # mean of ~events/2
        return float(timed.mean[slot]), RATE_VAR, se

    def _rate_strayed(self, slot: int, kind: str) -> Reason | None:
        """An established producer whose rate level is outside its kind's usual range and has
        moved that way from its own usual offset from its kind (:data:`DRIFTING_SE` standard
        errors of its level and its kind's), as a reason (once: until it comes back)."""
        if self.flags[slot] & RATE_STRAYED or self.rate_ref_ms[slot] <= 0:
            return None
        level = self._rate_level(slot)
        usual = None if level is None else self._range(slot, kind, RATE, True)
        if level is None or usual is None:
            return None
        y, _, se = level
        mean, margin = usual
        away = y - mean
        if abs(away) <= margin:
            return None
        moved = math.copysign(1.0, away) * (away - self.rate_ref[slot])
        if moved < DRIFTING_SE * math.sqrt(2.0) * se:
            return None
        self.flags[slot] |= RATE_STRAYED
        self._withdraw(slot, kind, True)
        now = 1000.0 / max(self.rate.usual_ms(slot), 1e-3)  # arrivals per time: at level y
        lo, hi = now * math.exp(away - margin), now * math.exp(away + margin)
        return Reason(
            "peer", "rate", f"recent rate {now:.3g}/s",
            f"{kind} producers' usual rate {lo:.3g}/s to {hi:.3g}/s",
            2.0 * self.cfg.first_type_rarity,
        )  # fmt: skip

    def _assign(self, slot: int, event: Event) -> str:
        """The producer's kind, if it can be told now (joined: counted as a member, and the
        types it sent so far counted in the kind)."""
        name = self._pattern_kind(event.producer) if self.clock.n[slot] == 1 else None
        if name is None:
            etype = event.type
            if self.clock.n[slot] == 1 and etype is not None and self.known(family(etype)):
                name = family(etype)
            elif self.clock.n[slot] >= self.cfg.peer_min_events:
                sent = self.types.counts.counts(slot)
                if sent:
                    name = family(min(sent, key=lambda t: (-sent[t], t)))
        if name is None:
            return ""
        kind = self.local.get(name)
        if kind is None:
            if len(self.local) >= self.cfg.peer_max_kinds:
                if not self.overflowed:
                    self.overflowed, self._overflow_slot = True, slot
                return ""
            kind = self.local[name] = Kind()
        self.kind[slot] = name
        self.flags[slot] |= JOINED
        kind.members += 1
        self.changed = True
        if self.clock.n[slot] > 1:  # its past types join the kind's (this event: advance)
            sent = self.types.counts.counts(slot)
            for etype, count in sent.items():
                kind.count(etype, count, 1, 0, self.cfg.max_types)
        return name

    def _pattern_kind(self, producer: str) -> str | None:
        for rx in self._regexes:
            m = rx.search(producer)
            if m is not None and m.group("kind"):
                return m.group("kind")
        for glob, rx in self._glob:
            if rx.match(producer):
                return glob
        return None

    # -- shared state ---------------------------------------------------------------------

    def shared(self, full: bool) -> dict[str, bytes]:
        if not self.cfg.peers or not (full or self.changed):
            return {}
        w = Writer()
        w.blob(dump_summary(self.local))
        w.blob(dump_summary(self.remote))
        w.count(self.overflowed)
        return {self.name: w.bytes()}

    def committed(self) -> None:
        self.changed = False

    def load_shared(self, records: Mapping[str, bytes]) -> None:
        self.local, self.remote, self.overflowed, self._overflow_slot = {}, {}, False, -1
        raw = records.get(self.name)
        if raw is None:
            return
        r = Reader(raw)
        self.local, self.remote = load_summary(r.blob()), load_summary(r.blob())
        self.overflowed = bool(r.count())
        if not r.done():
            msg = "peer record is longer than this layout"
            raise ValueError(msg)

    def share(self) -> bytes:
        """This worker's own summary, to publish for the others."""
        return dump_summary(self.local)

    def merge(self, others: Iterable[bytes]) -> None:
        """The other workers' summaries as published (replacing the previous merge)."""
        self.remote = merged((load_summary(raw) for raw in others), self.cfg.max_types)
        self.changed = True
