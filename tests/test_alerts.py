"""Alerts (detector/core/alerts.py): deterministic ids, the wire fields and their parse, the
global alert budget."""

from __future__ import annotations

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from detector.core.alerts import (
    ALERT_STORM,
    ANOMALY,
    PRODUCER_EXPLOSION,
    SILENCE,
    Alert,
    AlertBudget,
    alert_id,
)
from detector.core.features import Reason

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
reasons = st.lists(
    st.builds(
        Reason,
        text,
        text,
        text,
        text,
        st.floats(0, 64, allow_nan=False).map(lambda x: round(x, 4)),
    ),
    max_size=4,
).map(tuple)
alerts = st.builds(
    Alert,
    alert_id=st.text("0123456789abcdef", min_size=32, max_size=32),
    producer=text,
    source_stream=text,
    source_id=st.from_regex(r"\A[0-9]{1,13}-[0-9]{1,4}\Z"),
    event_time=st.integers(0, 2**53),
    score=st.floats(0, 1),
    threshold=st.floats(0, 1.01),
    model=text,
    reasons=reasons,
    suppressed=st.integers(0, 10**9),
    kind=st.sampled_from([ANOMALY, SILENCE, PRODUCER_EXPLOSION, ALERT_STORM]),
)


def _decoded(fields: dict[str, str | bytes]) -> dict[str, str]:
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in fields.items()}


@given(alerts)
def test_from_fields_reads_back_to_fields(alert: Alert) -> None:
    assert Alert.from_fields(_decoded(alert.to_fields(emitted_at_ms=1))) == alert


def test_an_alert_round_trips_through_a_real_stream(r: redis.Redis) -> None:
    why = (Reason("value", "amount", "5000", "usually 10-20", 7.25),)
    alert = Alert(alert_id("orders", "5-0", "stats"), "svc-1", "orders", "5-0", 5, 0.999999,
                  0.99999, "stats", why, suppressed=2)  # fmt: skip
    r.xadd("alerts", alert.to_fields(emitted_at_ms=9))  # type: ignore[arg-type]
    ((_, fields),) = r.xrange("alerts")
    assert fields["emitted_at"] == "9"
    assert Alert.from_fields(fields) == alert


@pytest.mark.parametrize(
    "broken",
    [{}, {"score": "high"}, {"reasons": "not json"}, {"event_time": "soon"}, {"reasons": "[1]"}],
)
def test_a_malformed_entry_is_a_value_error(broken: dict[str, str]) -> None:
    good = _decoded(
        Alert("a" * 32, "p", "s", "1-0", 1, 0.5, 0.4, "m", ()).to_fields(emitted_at_ms=0)
    )
    fields = {**good, **broken} if broken else {}
    with pytest.raises(ValueError, match="not an alert entry"):
        Alert.from_fields(fields)


def test_alert_ids_depend_on_the_entry_and_the_model_only() -> None:
    base = alert_id("orders", "1-0", "stats")
    assert base == alert_id("orders", "1-0", "stats") and len(base) == 32
    others = {alert_id("orders", "1-1", "stats"), alert_id("payments", "1-0", "stats"),
              alert_id("orders", "1-0", "metrics")}  # fmt: skip
    assert base not in others and len(others) == 3


def test_the_budget_caps_alerts_per_event_time_minute_and_survives_a_restore() -> None:
    budget = AlertBudget(2)
    assert budget.roll(0) is None
    assert [budget.allow(p) for p in ("a", "b", "c", "c", "d")] == [True, True, False, False, False]
    restored = AlertBudget(2)
    restored.restore(budget.to_meta())
    assert restored.roll(30_000) is None  # same minute: still spent
    assert not restored.allow("e")
    assert restored.roll(60_000) == (0, 4, ("c", "d", "e"))
    assert restored.allow("f") and restored.capped_total == 4
    assert AlertBudget(0).allow("any")  # 0: no cap
