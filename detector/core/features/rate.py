"""Rate: a flood, judged by the smoothed inter-arrival an event gives against its usual level
(one-sided: faster than usual only)."""

from __future__ import annotations

import math

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.clock import Clock
from detector.core.features.drift import Drift
from detector.core.features.feature import Feature
from detector.core.features.moments import Moments
from detector.core.features.surprise import Reason, two_sided

_HALF = math.log10(2.0)


class RateFeature(Feature[Moments | Drift]):
    """The usual smoothed log inter-arrival per producer: moments over events, or (with
    ``rate_horizon_s``) a reference over a span of event time, which a flood of hundreds of
    events in seconds cannot teach before it looks unusual."""

    name = "rate"

    def new(self) -> Moments | Drift:
        return Drift() if self.cfg.rate_horizon_s > 0 else Moments(self.cfg.fading_factor)

    def usual(self, slot: int) -> float:
        """The usual smoothed log inter-arrival over event time, learned from accepted events
        (else the clock's own smoothing): the thresholds' notion of the producer's rate."""
        timed = self.slots[slot]
        if isinstance(timed, Drift) and timed.count:
            return timed.mean
        return self.clock.gap[slot].mean

    def _judge(self, slot: int, event: Event) -> tuple[float, float]:
        """(surprise, smoothed log inter-arrival this event gives)."""
        cfg = self.cfg
        return rate_surprise(
            self.slots[slot], self.clock, slot, event.event_time_ms, cfg.min_count, cfg.min_sd
        )

    def judge(self, slot: int, event: Event) -> float:
        return self._judge(slot, event)[0]

    def explain(self, slot: int, event: Event) -> Reason | None:
        s, smoothed = self._judge(slot, event)
        if s <= 0:
            return None
        usual = self.slots[slot].mean
        return Reason(
            "rate", "", f"{_rate_per_s(smoothed):.3g}/s", f"{_rate_per_s(usual):.3g}/s", s
        )

    def learn(self, slot: int, event: Event) -> None:
        horizon_ms = self.cfg.rate_horizon_s * 1000
        learn_rate(self.slots[slot], self.clock, slot, event.event_time_ms, horizon_ms)

    def dump(self, slot: int, w: Writer) -> None:
        self.slots[slot].dump(w)

    def load(self, slot: int, r: Reader) -> None:
        timed = self.cfg.rate_horizon_s > 0
        self.slots[slot] = Drift.load(r) if timed else Moments.load(r, self.cfg.fading_factor)


def rate_surprise(
    usual: Moments | Drift, clock: Clock, slot: int, t_ms: int, min_count: int, min_sd: float
) -> tuple[float, float]:
    """(surprise, smoothed log inter-arrival) of an event at ``t_ms`` against the ``usual``
    level: one-sided, faster than usual only."""
    if usual.count < min_count or clock.last_ms[slot] < 0:
        return 0.0, 0.0
    smoothed = clock.next_gap(slot, t_ms)
    z = -usual.z(smoothed, min_sd)  # positive: faster than usual
    s = two_sided(z) - _HALF if z > 0 else 0.0
    return max(s, 0.0), smoothed


def learn_rate(
    usual: Moments | Drift, clock: Clock, slot: int, t_ms: int, horizon_ms: float
) -> None:
    """Fold the clock's smoothed inter-arrival into the ``usual`` level (a reference over
    event time: no restart, as no CUSUM steps it)."""
    if clock.n[slot] <= 1:
        return  # no inter-arrival yet
    gap: Moments = clock.gap[slot]  # locals that rate.pxd types (cdef classes)
    if isinstance(usual, Drift):
        timed: Drift = usual
        timed.learn(gap.mean, t_ms, horizon_ms, math.inf)
    else:
        moments: Moments = usual
        moments.update(gap.mean)


def _rate_per_s(smoothed_log_gap: float) -> float:
    gap_ms = math.expm1(min(smoothed_log_gap, 700.0))
    return 1000.0 / gap_ms if gap_ms > 0 else float("inf")
