"""Analyst feedback: an alert marked false positive or confirmed, and what it teaches.

A feedback entry names an alert and carries what the detector needs of it (producer, event
time, reasons; the CLI copies them from the alert stream), so the worker that owns the
producer applies it without reading anything else. It is an ordered input, like events: the
worker applies it between the events whose stream ids surround its own
(:func:`merge_order`), and ``detector score --feedback`` does the same offline.

What it teaches, per producer (a part of the store's slots: bounded, evicted and checkpointed
with the producer):

- **false positive**: a *suppression* of the alert's pattern (its top reason's feature and
  field, the event type when known, and the observed value's band or category) until 7 days
  of event time after it. A flagged event of that pattern within them neither alerts nor is
  kept out of the baselines: the baselines learn it as normal. Clocks are not rewound.
- **confirmed**: a *protection* of the pattern for as long: a suspect event of that pattern
  is never learned, even past the run length after which a run of suspect events would
  otherwise be adopted as the new normal.

At most :data:`MAX_RULES` rules per producer; a new one evicts the oldest (counted).

Wire schema (stream fields, all strings; see docs/design.md):
``alert_id``, ``verdict`` (``false-positive`` | ``confirmed``), ``producer``, ``event_time``
(the alert's, epoch ms), ``reasons`` (JSON list of ``{"feature", "field", "observed"}``, the
alert's, top first), optional ``event_type``, ``note``, ``by``, ``at_ms``.

Examples:
    >>> fb = Feedback.from_fields({"alert_id": "a1", "verdict": "false-positive",
    ...     "producer": "p", "event_time": "1000",
    ...     "reasons": '[{"feature": "value", "field": "amount", "observed": "5000"}]'})
    >>> Pattern.of(fb.reasons[0], "").matches(Pattern("value", "amount", "", "4200"))
    True
    >>> Feedback.from_fields({"alert_id": "a1", "verdict": "maybe"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    detector.core.errors.InvalidEventError: invalid_feedback: producer: missing
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson

from detector.core.codec import Reader, Writer
from detector.core.errors import InvalidEventError

INVALID = "invalid_feedback"  # the dead-letter reason
FALSE_POSITIVE = "false-positive"
CONFIRMED = "confirmed"
VERDICTS = (FALSE_POSITIVE, CONFIRMED)
SUPPRESS = 1  # rule kinds, as checkpointed
PROTECT = 2
MAX_RULES = 8  # per producer
RULE_MS = 7 * 24 * 3600 * 1000  # how long a rule holds, in the producer's event time
BAND = 2.0  # a numeric observation matches within this factor of the marked one
MAX_FIELD = 4096  # longest accepted text field (bytes)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _number(text: str) -> float | None:
    """The first number in a reason's observed text ("5000", "12.3/s", "recent level 4.1")."""
    m = _NUMBER.search(text)
    if m is None:
        return None
    x = float(m.group())
    return x if math.isfinite(x) else None


@dataclass(frozen=True, slots=True)
class Pattern:
    """What a rule matches: a reason's feature and field, the event type ("" for any), and
    what was observed: a number's band (within a factor :data:`BAND`, same sign), else the
    exact text (a category, a type, a schema change)."""

    feature: str
    field: str
    event_type: str
    observed: str

    @classmethod
    def of(cls, reason: Any, event_type: str) -> Pattern:
        """The pattern of a reason (a :class:`~detector.core.features.Reason` or a
        :class:`MarkedReason`) on an event of ``event_type``."""
        return cls(reason.feature, reason.field, event_type, reason.observed)

    def matches(self, other: Pattern) -> bool:
        """Whether ``other`` (a new event's top reason) is this pattern again."""
        if (self.feature, self.field) != (other.feature, other.field):
            return False
        if self.event_type and other.event_type and self.event_type != other.event_type:
            return False
        a, b = _number(self.observed), _number(other.observed)
        if a is None or b is None:
            return self.observed == other.observed
        if a == 0.0 or b == 0.0:
            return a == b
        return (a > 0) == (b > 0) and 1.0 / BAND <= b / a <= BAND


@dataclass(frozen=True, slots=True)
class MarkedReason:
    """A reason as the feedback carries it (its surprise and expected range are not needed)."""

    feature: str
    field: str
    observed: str


@dataclass(frozen=True, slots=True)
class Feedback:
    """One analyst verdict on one alert (see the module's wire schema)."""

    alert_id: str
    verdict: str
    producer: str
    event_time: int
    reasons: tuple[MarkedReason, ...]
    event_type: str = ""
    note: str = ""
    by: str = ""
    at_ms: int = 0

    def to_fields(self) -> dict[str, str]:
        reasons = [{"feature": r.feature, "field": r.field, "observed": r.observed}
                   for r in self.reasons]  # fmt: skip
        out = {
            "alert_id": self.alert_id, "verdict": self.verdict, "producer": self.producer,
            "event_time": str(self.event_time), "reasons": orjson.dumps(reasons).decode(),
        }  # fmt: skip
        for key in ("event_type", "note", "by"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.at_ms:
            out["at_ms"] = str(self.at_ms)
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> Feedback:
        """Validate a stream entry's (or a JSON line's) fields.

        Raises:
            InvalidEventError: reason ``invalid_feedback``, with what is wrong.
        """
        f = {_text(k): _text(v) for k, v in fields.items()}
        for key, value in f.items():
            if len(value) > MAX_FIELD:
                _bad(f"{key}: longer than {MAX_FIELD} bytes")
        for key in ("alert_id", "verdict", "producer", "event_time", "reasons"):
            if not f.get(key):
                _bad(f"{key}: missing")
        if f["verdict"] not in VERDICTS:
            _bad(f"verdict: {f['verdict']!r} is not one of {', '.join(VERDICTS)}")
        event_time = _int(f, "event_time")
        at_ms = _int(f, "at_ms") if f.get("at_ms") else 0
        try:
            raw = orjson.loads(f["reasons"])
        except orjson.JSONDecodeError as exc:
            _bad(f"reasons: not JSON ({exc})")
        if not isinstance(raw, list) or not raw:
            _bad("reasons: not a non-empty list")
        reasons = []
        for r in raw:
            if not isinstance(r, dict) or not all(
                isinstance(r.get(k), str) for k in ("feature", "field", "observed")
            ):
                _bad("reasons: each needs the strings feature, field and observed")
            reasons.append(MarkedReason(r["feature"], r["field"], r["observed"]))
        return cls(
            f["alert_id"], f["verdict"], f["producer"], event_time, tuple(reasons),
            f.get("event_type", ""), f.get("note", ""), f.get("by", ""), at_ms,
        )  # fmt: skip


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            _bad("not UTF-8")
    return v if isinstance(v, str) else orjson.dumps(v).decode()


def _int(f: Mapping[str, str], key: str) -> int:
    try:
        return int(f[key])
    except ValueError:
        _bad(f"{key}: {f[key]!r} is not an integer")


def _bad(detail: str) -> NoReturn:
    raise InvalidEventError(INVALID, detail)


# A pattern's texts, in their order in a checkpoint.
_PATTERN = ("feature", "field", "event_type", "observed")


@dataclass(frozen=True, slots=True)
class Rule:
    """A producer's rule: ``kind`` (:data:`SUPPRESS` or :data:`PROTECT`) of ``pattern``
    until event time ``until_ms``."""

    kind: int
    pattern: Pattern
    until_ms: int


class FeedbackRules:
    """Each producer slot's rules (a part of the store's slots, like the decision state),
    and the counters of what feedback did."""

    __slots__ = ("applied", "evicted", "rules", "unknown")

    def __init__(self) -> None:
        self.rules: list[tuple[Rule, ...]] = []
        self.applied = 0
        self.unknown = 0  # feedback on a producer this state does not track (or no longer)
        self.evicted = 0  # rules pushed out by newer ones (MAX_RULES)

    def reset(self, slot: int) -> None:
        if slot == len(self.rules):
            self.rules.append(())
        else:
            self.rules[slot] = ()

    def dump(self, slot: int, w: Writer) -> None:
        rules = self.rules[slot]
        w.count(len(rules))
        for rule in rules:
            p = rule.pattern
            w.count(rule.kind)
            w.i64(rule.until_ms)
            for text in (p.feature, p.field, p.event_type, p.observed):
                w.text(text)

    def load(self, slot: int, r: Reader) -> None:
        rules = []
        for _ in range(r.count()):
            kind, until_ms = r.count(), r.i64()
            if kind not in (SUPPRESS, PROTECT):
                msg = f"feedback rule of unknown kind {kind}"
                raise ValueError(msg)
            pattern = Pattern(r.text(), r.text(), r.text(), r.text())
            rules.append(Rule(kind, pattern, until_ms))
        self.rules[slot] = tuple(rules)

    def dump_table(self, w: Writer) -> None:
        """Every slot's rules at once: how many each slot has, then the rules' kinds, ends
        and patterns' texts as columns (most slots have none)."""
        from detector.core.features import tables  # (a part of the store's, like its features)

        w.column(array("q", map(len, self.rules)))
        rules = [rule for held in self.rules for rule in held]
        w.column(array("q", [rule.kind for rule in rules]))
        w.column(array("q", [rule.until_ms for rule in rules]))
        for name in _PATTERN:
            tables.put(w, [getattr(rule.pattern, name) for rule in rules])

    def load_table(self, r: Reader) -> None:
        from detector.core.features import tables

        lengths, kinds, until = r.column(), r.column(), r.column()
        texts = [tables.take(r) for _ in _PATTERN]
        if any(kind not in (SUPPRESS, PROTECT) for kind in kinds):
            msg = "feedback rule of unknown kind"
            raise ValueError(msg)
        made = [
            Rule(kind, Pattern(*pattern), until_ms)
            for kind, until_ms, *pattern in zip(kinds, until, *texts, strict=True)
        ]
        at, rules = 0, []
        for n in lengths:
            rules.append(tuple(made[at : at + n]))
            at += n
        self.rules = rules

    def add(self, slot: int, fb: Feedback, now_ms: int) -> None:
        """Learn ``fb`` for the producer in ``slot``, whose clock reads ``now_ms``."""
        kind = SUPPRESS if fb.verdict == FALSE_POSITIVE else PROTECT
        until = max(fb.event_time, now_ms) + RULE_MS
        pattern = Pattern.of(fb.reasons[0], fb.event_type)
        # A verdict replaces an earlier one on the same pattern (an analyst changing their mind).
        kept = [r for r in self.rules[slot] if r.pattern != pattern]
        kept.append(Rule(kind, pattern, until))
        if len(kept) > MAX_RULES:
            self.evicted += len(kept) - MAX_RULES
            kept = kept[-MAX_RULES:]
        self.rules[slot] = tuple(kept)
        self.applied += 1

    def match(self, slot: int, reasons: Sequence[Any], event_type: str, t: int) -> int:
        """The kind of the newest live rule the top reason matches (0: none)."""
        rules = self.rules[slot]
        if not rules or not reasons:
            return 0
        top = Pattern.of(reasons[0], event_type)
        for rule in reversed(rules):
            if t <= rule.until_ms and rule.pattern.matches(top):
                return rule.kind
        return 0


def merge_order(event_ids: Sequence[str], feedback_ids: Sequence[str]) -> list[int]:
    """For each feedback entry (ids ascending), the index of the first event it comes before:
    the first event whose stream id is higher (``len(event_ids)``: after them all).

    >>> merge_order(["1-0", "3-0", "5-0"], ["2-0", "9-0"])
    [1, 3]
    """
    out, i = [], 0
    for fid in feedback_ids:
        key = id_key(fid)
        while i < len(event_ids) and id_key(event_ids[i]) <= key:
            i += 1
        out.append(i)
    return out


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
