"""Console: how alerts look to a person (``detector alerts``, ``detector demo``, the text of
``detector notify``)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import orjson


def event_time_text(ms: int) -> str:
    """ISO-8601 UTC to the second.

    >>> event_time_text(1700000000123)
    '2023-11-14T22:13:20Z'
    """
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reasons_text(reasons_json: str | bytes) -> str:
    """The reasons of an alert entry, one clause each."""
    try:
        reasons = orjson.loads(reasons_json)
    except orjson.JSONDecodeError:
        return str(reasons_json)
    parts = []
    for r in reasons:
        field = r.get("field") or ""
        what = (
            f"{r.get('feature')}({field})"
            if field and field != r.get("feature")
            else r.get("feature")
        )
        parts.append(f"{what}: {r.get('observed')} vs usual {r.get('expected')}")
    return "; ".join(parts)


def alert_line(fields: Mapping[str, str]) -> str:
    """One line for an alert entry read from the alert stream (decoded fields).

    >>> alert_line({"event_time": "1700000000123", "producer": "cart-1", "score": "0.9995",
    ...     "reasons": '[{"feature": "rate", "field": "", "observed": "40/s", "expected": "2/s"}]'})
    '2023-11-14T22:13:20Z  cart-1  score=0.99950  rate: 40/s vs usual 2/s'
    """
    when = event_time_text(int(fields.get("event_time", "0")))
    score = float(fields.get("score", "nan"))
    why = reasons_text(fields.get("reasons", "[]"))
    suppressed = int(fields.get("suppressed", "0") or 0)
    more = f"  (+{suppressed} held back)" if suppressed else ""
    return f"{when}  {fields.get('producer')}  score={score:.5f}  {why}{more}"


def alert_json(fields: Mapping[str, str]) -> dict[str, Any]:
    """An alert entry as a JSON object: its fields as they are, ``reasons`` parsed.

    >>> alert_json({"producer": "cart-1", "reasons": '[{"feature": "rate"}]'})
    {'producer': 'cart-1', 'reasons': [{'feature': 'rate'}]}
    """
    out: dict[str, Any] = dict(fields)
    with suppress(orjson.JSONDecodeError):
        out["reasons"] = orjson.loads(fields.get("reasons", "[]"))
    return out


def chat_text(fields: Mapping[str, str]) -> str:
    """An alert as one line of Slack-style markup, with ``&``, ``<`` and ``>`` escaped:
    producer ids and values come from producers, and ``<!channel>`` must ping nobody.

    >>> chat_text({"kind": "anomaly", "event_time": "1700000000123", "producer": "<!channel>",
    ...     "score": "0.99999", "reasons": "[]"})
    'detector anomaly: 2023-11-14T22:13:20Z  &lt;!channel&gt;  score=0.99999  '
    """
    line = f"detector {fields.get('kind') or 'anomaly'}: {alert_line(fields)}"
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
