"""Writing analyst feedback (``detector feedback``): find the alert, append the verdict.

The alert is looked up by id in the alert stream, newest first (``XREVRANGE`` pages), to copy
what the worker needs (producer, event time, reasons) into the feedback entry: the worker then
applies it without reading anything but its inputs. Partitioned (``--partitions P``), the entry
goes to the producer's partition of the feedback stream (``<stream>:{p}``, the partition
function of the events), whose owner holds the producer's state.
"""

from __future__ import annotations

import time
from typing import Any

from detector.core.alerts import Alert
from detector.core.feedback import Feedback, MarkedReason
from detector.gateway.partitions import partition_of, partition_stream

PAGE = 1000  # alerts per XREVRANGE while looking an alert up


def find_alert(client: Any, stream: str, alert_id: str, limit: int = 1_000_000) -> Alert | None:
    """The alert ``alert_id`` of ``stream`` (None: not among its newest ``limit`` entries)."""
    upper, seen = "+", 0
    while seen < limit:
        page = client.xrevrange(stream, upper, "-", count=PAGE)
        if not page:
            return None
        for entry_id, fields in page:
            f = {_text(k): _text(v) for k, v in fields.items()}
            if f.get("alert_id") == alert_id:
                return Alert.from_fields(f)
            upper = f"({_text(entry_id)}"
        seen += len(page)
        if len(page) < PAGE:
            return None
    return None


def feedback_of(alert: Alert, verdict: str, note: str = "", by: str = "") -> Feedback:
    """The feedback entry for ``alert``: its producer, event time and reasons."""
    reasons = tuple(MarkedReason(r.feature, r.field, r.observed) for r in alert.reasons)
    return Feedback(
        alert.alert_id, verdict, alert.producer, alert.event_time, reasons,
        note=note, by=by, at_ms=int(time.time() * 1000),
    )  # fmt: skip


def feedback_stream(stream: str, producer: str, partitions: int | None) -> str:
    """Where the producer's feedback goes: its partition's stream, as its events'."""
    if partitions is None:
        return stream
    return partition_stream(stream, partition_of(producer, partitions))


def append(
    client: Any,
    stream: str,
    fb: Feedback,
    partitions: int | None = None,
) -> tuple[str, str]:
    """Append ``fb``; returns (stream, entry id)."""
    target = feedback_stream(stream, fb.producer, partitions)
    entry_id = client.xadd(target, fb.to_fields())
    return target, _text(entry_id)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
