"""Alerts: the event the detector emits downstream, and its wire format.

An alert's id is derived from the source stream, the entry id and the model, so reprocessing
an entry reproduces the same id; the sink (:mod:`detector.streams`) writes each id once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from detector.features import Reason


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
        suppressed: anomalous events of this producer held back by the cooldown since its
            previous alert.
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
            "emitted_at": str(emitted_at_ms),
        }
