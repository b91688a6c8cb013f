"""Rate: a flood, judged by the smoothed inter-arrival an event gives against its usual level
(one-sided: faster than usual only)."""

from __future__ import annotations

import math
from array import array

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features import tables
from detector.core.features.clock import Clock
from detector.core.features.columns import capacity, column, grown
from detector.core.features.config import FeatureConfig
from detector.core.features.drift import DriftTable
from detector.core.features.feature import Feature
from detector.core.features.moments import MomentsTable
from detector.core.features.surprise import Reason, two_sided

_HALF = math.log10(2.0)


class RateFeature(Feature):
    """The usual smoothed log inter-arrival per producer (a row per slot): moments over events,
    or (with ``rate_horizon_s``) a reference over a span of event time (:attr:`drifts`), which a
    flood of hundreds of events in seconds cannot teach before it looks unusual.

    The smoothed inter-arrival averages logs: it judges a flood well (a run of short gaps pulls
    it down fast) but is a geometric mean, below the mean inter-arrival (~0.56x for Poisson
    arrivals) and far below it when events share a timestamp (a gap of 0 each). What the usual
    *rate* is (the thresholds, silence, the reasons) comes instead from :attr:`events` beside
    the timed reference: the accepted events, each decayed over ``rate_horizon_s`` of event
    time since it came, so arrivals per time covered (:meth:`usual_ms`)."""

    name = "rate"

    def __init__(self, cfg: FeatureConfig, clock: Clock) -> None:
        super().__init__(cfg, clock)
        timed = cfg.rate_horizon_s > 0
        self.moments = None if timed else MomentsTable(cfg.fading_factor)
        self.drifts = DriftTable() if timed else None
        self.events: array[float] = column("d", 0)  # per slot; timed reference only

    def reset(self, slot: int) -> None:
        table = self.moments if self.drifts is None else self.drifts
        assert table is not None  # noqa: S101 (one of the two)
        table.reserve(slot + 1)
        table.clear(slot)
        if self.drifts is not None:
            if slot >= len(self.events):
                self.events = grown(self.events, capacity(len(self.events), slot + 1))
            self.events[slot] = 0.0

    def skip(self, gap_ms: int) -> None:
        if self.drifts is not None:
            self.drifts.skip(gap_ms)

    def usual_ms(self, slot: int) -> float:
        """The usual inter-arrival in ms: with the timed reference, the time it
        covers over the accepted events in it, both decayed over ``rate_horizon_s`` (events
        sharing a timestamp count each); else, or before it covers any time, the smoothed
        one's (:meth:`usual`)."""
        timed = self.drifts
        if timed is not None:
            span, events = timed.covered_ms(slot), self.events[slot]
            if span > 0 and events > 0:
                horizon_ms = self.cfg.rate_horizon_s * 1000
                return -math.expm1(-span / horizon_ms) * horizon_ms / events
        return math.expm1(min(self.usual(slot), 700.0))

    def usual(self, slot: int) -> float:
        """The usual smoothed log inter-arrival over event time, learned from accepted events
        (else the clock's own smoothing): the level a flood is judged against."""
        timed = self.drifts
        if timed is not None and timed.count[slot]:
            mean: float = timed.mean[slot]
            return mean
        gap: float = self.clock.gap.mean[slot]
        return gap

    def _judge(self, slot: int, event: Event) -> tuple[float, float]:
        """(surprise, smoothed log inter-arrival this event gives)."""
        cfg = self.cfg
        return rate_surprise(
            self.moments, self.drifts, self.clock, slot, event.event_time_ms, cfg.min_count,
            cfg.min_sd,
        )  # fmt: skip

    def judge(self, slot: int, event: Event) -> float:
        return self._judge(slot, event)[0]

    def explain(self, slot: int, event: Event) -> Reason | None:
        s, smoothed = self._judge(slot, event)
        if s <= 0:
            return None
        table = self.moments if self.drifts is None else self.drifts
        assert table is not None  # noqa: S101 (one of the two)
        usual_ms = geometric = math.expm1(min(table.mean[slot], 700.0))
        now_ms = math.expm1(min(smoothed, 700.0))
        if self.drifts is not None:
            # Smoothed inter-arrivals are geometric means: the usual rate is the arrivals per
            # time, and the present one that times how much shorter the smoothed gap now is.
            usual_ms = self.usual_ms(slot)
            now_ms = usual_ms * now_ms / geometric if geometric > 0 else 0.0
        return Reason("rate", "", f"{_per_s(now_ms):.3g}/s", f"{_per_s(usual_ms):.3g}/s", s)

    def learn(self, slot: int, event: Event) -> None:
        horizon_ms = self.cfg.rate_horizon_s * 1000
        t = event.event_time_ms
        timed = self.drifts
        if timed is not None and self.clock.n[slot] > 1 and timed.count[slot]:
            # Before the reference moves: each arrival decays from when it came.
            dt = max(t - timed.last_ms[slot], 0)
            self.events[slot] = self.events[slot] * math.exp(-dt / horizon_ms) + 1.0
        learn_rate(self.moments, self.drifts, self.clock, slot, t, horizon_ms)

    def dump(self, slot: int, w: Writer) -> None:
        table = self.moments if self.drifts is None else self.drifts
        assert table is not None  # noqa: S101 (one of the two)
        table.dump(slot, w)
        if self.drifts is not None:
            w.f64(self.events[slot])

    def load(self, slot: int, r: Reader) -> None:
        table = self.moments if self.drifts is None else self.drifts
        assert table is not None  # noqa: S101 (one of the two)
        table.load(slot, r)
        if self.drifts is not None:
            self.events[slot] = r.f64()

    def dump_table(self, w: Writer) -> None:
        tables.dump(w, self, ("moments", "drifts", "events"))

    def load_table(self, r: Reader) -> None:
        tables.load(r, self, ("moments", "drifts", "events"))


def rate_surprise(
    moments: MomentsTable | None, drifts: DriftTable | None, clock: Clock, slot: int, t_ms: int,
    min_count: int, min_sd: float,
) -> tuple[float, float]:  # fmt: skip
    """(surprise, smoothed log inter-arrival) of an event at ``t_ms`` against the usual level
    in row ``slot`` of ``drifts`` (if given) or ``moments``: one-sided, faster than usual only."""
    if drifts is not None:
        count = drifts._count[slot]
    else:
        assert moments is not None  # noqa: S101 (one of the two)
        count = moments._count[slot]
    if count < min_count or clock._last_ms[slot] < 0:
        return 0.0, 0.0
    smoothed = clock.next_gap(slot, t_ms)
    if drifts is not None:
        z = -drifts.z(slot, smoothed, min_sd)  # positive: faster than usual
    else:
        assert moments is not None  # noqa: S101 (one of the two)
        z = -moments.z(slot, smoothed, min_sd)
    s = two_sided(z) - _HALF if z > 0 else 0.0
    return max(s, 0.0), smoothed


def learn_rate(
    moments: MomentsTable | None, drifts: DriftTable | None, clock: Clock, slot: int, t_ms: int,
    horizon_ms: float,
) -> None:  # fmt: skip
    """Fold the clock's smoothed inter-arrival into the usual level (a reference over event
    time: no restart, as no CUSUM steps it)."""
    if clock._n[slot] <= 1:
        return  # no inter-arrival yet
    gap = clock.gap._mean[slot]
    if drifts is not None:
        drifts.learn(slot, gap, t_ms, horizon_ms, math.inf)
    else:
        assert moments is not None  # noqa: S101 (one of the two)
        moments.update(slot, gap)


def _per_s(gap_ms: float) -> float:
    return 1000.0 / gap_ms if gap_ms > 0 else float("inf")
