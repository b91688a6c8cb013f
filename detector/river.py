"""The detector as a River anomaly detector: :class:`Detector`, for River's own loops.

``x`` is one event as a flat dict: its ``producer`` and ``ts`` (epoch ms, ISO-8601 text or an
aware ``datetime``), an optional ``type``, and its payload fields (numbers, text; a nested dict
or list goes in as JSON, flattened with dotted names as the worker does). It is decoded and
validated by the worker's own :class:`~detector.core.events.Decoder`, then judged by the same
:class:`~detector.core.pipeline.Pipeline` as ``detector run``: the same scores for the same
events in the same order.

Examples:
    >>> det = Detector(model="stats")
    >>> t0 = 1_700_000_000_000
    >>> for i in range(300):
    ...     x = {"producer": "pay-1", "ts": t0 + i * 1000, "amount": 10.0 + i % 3}
    ...     _ = det.score_one(x)
    ...     det.learn_one(x)
    >>> det.score_one({"producer": "pay-1", "ts": t0 + 300_000, "amount": 11.0}) < 0.99
    True
    >>> det.score_one({"producer": "pay-1", "ts": t0 + 300_000, "amount": 5000.0}) > 0.9999
    True
    >>> det.score_one({"producer": "new-1", "ts": t0, "amount": 1.0})  # warming up
    0.0
"""

from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime
from typing import Any

import orjson
from river import base

from detector.core.events import Decoder, Event
from detector.core.pipeline import Pipeline
from detector.core.scoring import load_spec


class Detector(base.AnomalyDetector):
    """A detector spec as a River anomaly detector (River's ``base.AnomalyDetector``):
    ``learn_one(x)``, ``score_one(x)``.

    ``score_one`` gives the calibrated score in [0, 1] (the event's rarity among its producer's
    past scores; 0.0 while the producer warms up, as River's detectors do before they have
    learned) and changes nothing but what the spec's model itself changes when it scores
    (River's ``PredictiveAnomalyDetection`` updates its error statistics). ``learn_one`` then
    decides and learns as the worker does (suspect events do not teach the baselines); after
    ``score_one`` of the same ``x`` it reuses that judgement instead of judging again.

    Args:
        model: a shipped spec's name or a spec file's path (``detector models``).
        threshold: overrides the spec's alert threshold (alerts are counted in ``alerts``).
        max_producers: producers tracked at once (see ``detector run --max-producers``).
        idle_ttl_ms: producers silent this long (event time) are forgotten.
    """

    def __init__(
        self,
        model: str = "stats",
        threshold: float | None = None,
        max_producers: int = 100_000,
        idle_ttl_ms: int = 24 * 3600 * 1000,
    ) -> None:
        # River's clone() rebuilds an estimator from these attributes, named as the arguments.
        self.model = model
        self.threshold = threshold
        self.max_producers = max_producers
        self.idle_ttl_ms = idle_ttl_ms
        self.pipeline = Pipeline(load_spec(model), threshold, max_producers, idle_ttl_ms)
        self.alerts = 0  # alerts the worker would have sent (cooldown included)
        self._decoder = Decoder()
        self._seq = 0
        self._last: tuple[dict[Hashable, Any], Event, float | None] | None = None  # x, event, raw

    def _event(self, x: dict[Hashable, Any]) -> Event:
        """``x`` as the stream entry the worker would read, decoded as it decodes one."""
        fields: dict[bytes, bytes] = {}
        for key, value in x.items():
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, dict | list | bool) or value is None:
                value = orjson.dumps(value).decode()
            fields[str(key).encode()] = str(value).encode()
        self._seq += 1
        return self._decoder.decode("river", f"0-{self._seq}", fields)

    def score_one(self, x: dict[Hashable, Any]) -> float:
        event = self._event(x)
        judged = self.pipeline.preview(event)
        self._last = dict(x), event, None if judged is None else judged[0]
        return 0.0 if judged is None or judged[1] is None else judged[1]

    def learn_one(self, x: dict[Hashable, Any]) -> None:
        last, self._last = self._last, None
        if last is not None and last[0] == x:  # just scored: its judgement stands
            verdict = self.pipeline.conclude(last[1], last[2])
        else:
            verdict = self.pipeline.conclude(self._event(x), None)
        if verdict.alert is not None:
            self.alerts += 1
