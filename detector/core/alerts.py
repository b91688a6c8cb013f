"""Alerts: the event the detector emits downstream, and its wire format.

An alert's id is derived from the source stream, the entry id and the model, so reprocessing
an entry reproduces the same id; the sink (:mod:`detector.gateway.streams`) writes each id once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from detector.core.features import Reason

# What an alert is about (its ``kind`` field).
ANOMALY = "anomaly"  # one event of a producer
SILENCE = "silence"  # a producer stopped sending
PRODUCER_EXPLOSION = "producer_explosion"  # producers refused: the store is full (producer "")
ALERT_STORM = "alert_storm"  # alerts held back by the global cap (producer "")
STREAM_PAUSE = "stream_pause"  # no producer sent anything for a while (producer "")
KINDS = (ANOMALY, SILENCE, PRODUCER_EXPLOSION, ALERT_STORM, STREAM_PAUSE)
MINUTE_MS = 60_000


def alert_id(stream: str, entry_id: str, model: str) -> str:
    """Deterministic id of the alert an entry raises under a model.

    >>> alert_id("events", "1-0", "stats") == alert_id("events", "1-0", "stats")
    True
    """
    return hashlib.sha256(f"{stream}\0{entry_id}\0{model}".encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Alert:
    """One anomalous event, with why.

    Attributes:
        alert_id: see :func:`alert_id`.
        producer: the producer the event came from.
        source_stream: input stream.
        source_id: input entry id.
        event_time: event time, epoch ms.
        score: calibrated score in [0, 1].
        threshold: the threshold it crossed.
        model: model spec name.
        reasons: top contributing features, largest surprise first.
        suppressed: anomalous events of this producer held back by the cooldown (or the
            global cap) since its previous alert; for ``alert_storm``, the alerts held back.
        kind: what the alert is about: ``anomaly``, ``silence``, ``producer_explosion``,
            ``alert_storm`` or ``stream_pause`` (the last three concern the detector or the
            stream as a whole, with producer ``""``).
    """

    alert_id: str
    producer: str
    source_stream: str
    source_id: str
    event_time: int
    score: float
    threshold: float
    model: str
    reasons: tuple[Reason, ...]
    suppressed: int = 0
    kind: str = ANOMALY

    @property
    def why(self) -> str:
        """One line for humans: the top reasons."""
        return "; ".join(
            f"{r.feature}{'(' + r.field + ')' if r.field and r.field != r.feature else ''}"
            f" {r.observed} vs {r.expected}"
            for r in self.reasons
        )

    def reasons_json(self) -> bytes:
        return orjson.dumps(
            [
                {
                    "feature": r.feature,
                    "field": r.field,
                    "observed": r.observed,
                    "expected": r.expected,
                    "contribution": round(r.surprise, 4),
                }
                for r in self.reasons
            ]
        )

    def to_fields(self, emitted_at_ms: int) -> dict[str, str | bytes]:
        """The stream entry (contract in the README)."""
        return {
            "alert_id": self.alert_id,
            "producer": self.producer,
            "source_stream": self.source_stream,
            "source_id": self.source_id,
            "event_time": str(self.event_time),
            "score": repr(self.score),
            "threshold": repr(self.threshold),
            "model": self.model,
            "reasons": self.reasons_json(),
            "suppressed": str(self.suppressed),
            "kind": self.kind,
            "emitted_at": str(emitted_at_ms),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Alert:
        """The alert of a stream entry (decoded fields): :meth:`to_fields` read back, without
        ``emitted_at``; a reason's ``contribution`` comes back as its (rounded) surprise.

        Raises:
            ValueError: a field is missing or malformed.

        >>> why = (Reason("rate", "", "9/s", "1/s", 3.0),)
        >>> a = Alert("id", "p", "s", "1-0", 5, 0.99, 0.9, "m", why)
        >>> Alert.from_fields({k: v if isinstance(v, str) else v.decode()
        ...                    for k, v in a.to_fields(7).items()}) == a
        True
        """
        try:
            reasons = tuple(
                Reason(
                    str(r["feature"]),
                    str(r.get("field") or ""),
                    str(r.get("observed", "")),
                    str(r.get("expected", "")),
                    float(r.get("contribution", 0.0)),
                )
                for r in orjson.loads(fields.get("reasons", "[]"))
            )
            return cls(
                alert_id=fields["alert_id"],
                producer=fields["producer"],
                source_stream=fields.get("source_stream", ""),
                source_id=fields.get("source_id", ""),
                event_time=int(fields["event_time"]),
                score=float(fields["score"]),
                threshold=float(fields["threshold"]),
                model=fields.get("model", ""),
                reasons=reasons,
                suppressed=int(fields.get("suppressed") or 0),
                kind=fields.get("kind") or ANOMALY,
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # JSONDecodeError too
            msg = f"not an alert entry: {type(exc).__name__}: {exc}"
            raise ValueError(msg) from None


class AlertBudget:
    """At most ``per_minute`` alerts per minute of event time over all producers (0: no cap).

    The per-producer cooldown bounds one producer; this bounds many misbehaving ones. Alerts
    over the cap are not sent but counted, with the first producers held back, into one
    ``alert_storm`` summary when the minute is over. Minutes follow the watermark (the latest
    event time seen), never the wall clock, so a replay caps the same alerts.

    Examples:
        >>> b = AlertBudget(2)
        >>> b.roll(1_000), [b.allow(p) for p in "abc"], b.roll(61_000)
        (None, [True, True, False], (0, 1, ('c',)))
    """

    __slots__ = ("capped", "capped_total", "minute", "per_minute", "producers", "sent")
    SAMPLE = 5  # producers named in a summary

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.minute = -1
        self.sent = 0
        self.capped = 0
        self.capped_total = 0
        self.producers: list[str] = []

    def roll(self, now_ms: int) -> tuple[int, int, tuple[str, ...]] | None:
        """Enter the minute of ``now_ms``; returns (start ms, alerts held back, first
        producers) of the minute left behind, if it held any back."""
        minute = now_ms // MINUTE_MS
        if minute <= self.minute:
            return None
        done = (self.minute * MINUTE_MS, self.capped, tuple(self.producers))
        self.minute, self.sent, self.capped, self.producers = minute, 0, 0, []
        return done if done[1] else None

    def allow(self, producer: str) -> bool:
        """Whether one more alert may go out in the current minute (:meth:`roll` first); if
        not, it is counted against ``producer``."""
        if self.per_minute <= 0:
            return True
        if self.sent < self.per_minute:
            self.sent += 1
            return True
        self.capped += 1
        self.capped_total += 1
        if len(self.producers) < self.SAMPLE and producer not in self.producers:
            self.producers.append(producer)
        return False

    def to_meta(self) -> dict[str, Any]:
        return {
            "storm_minute": self.minute,
            "storm_sent": self.sent,
            "storm_capped": self.capped,
            "storm_producers": list(self.producers),
            "alerts_capped": self.capped_total,
        }

    def restore(self, meta: Mapping[str, Any]) -> None:
        self.minute = int(meta.get("storm_minute", -1))
        self.sent = int(meta.get("storm_sent", 0))
        self.capped = int(meta.get("storm_capped", 0))
        self.producers = [str(p) for p in meta.get("storm_producers", [])]
        self.capped_total = int(meta.get("alerts_capped", 0))
