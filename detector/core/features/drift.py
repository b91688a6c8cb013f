"""Drift: a numeric field's level creeping away from a slow reference (slow poisoning), which
the ~100-event baselines of the value feature follow unnoticed."""

from __future__ import annotations

import math
import sys

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.clock import Clock
from detector.core.features.config import FeatureConfig
from detector.core.features.feature import Feature
from detector.core.features.moments import Moments
from detector.core.features.surprise import (
    LOG10,
    MAX_SURPRISE,
    Reason,
    signed_log,
    type_prefix,
    unlog,
)
from detector.core.features.value import ValueFeature


class Drift:
    """A slow reference level of one numeric field and a two-sided CUSUM against it.

    The reference is an exponentially weighted mean and variance whose memory is a span of
    event time (``horizon_ms``), not a count of events, so a busy producer's reference is as
    slow as a quiet one's. Each value adds its standardised distance from the reference
    (clipped to ``clip``, so one outlier cannot look like a drift), less a slack ``k``, to the
    CUSUM (``hi`` upwards, ``lo`` downwards; floored at 0). Under no change the statistic
    ``S`` stays small (P(S > s) ~ exp(-2ks)); a level creeping away by a fraction of a
    standard deviation per hour makes it climb without bound.

    The CUSUM advances with every event (:meth:`step`: how far values are from the reference
    is a fact), the reference only with accepted ones (:meth:`learn`), so a drift keeps
    accumulating evidence while its events are held back from the baselines.

    Examples:
        >>> d = Drift()
        >>> for i in range(400):
        ...     d.step(5.0 + 0.1 * (i % 3), 0.5, 0.05, 3.0)
        ...     d.learn(5.0 + 0.1 * (i % 3), 1000 * i, 3_600_000, 30.0)
        >>> d.statistic(5.1, 0.5, 0.05, 3.0) < 1 < 2 < d.statistic(7.0, 0.5, 0.05, 3.0) < 3
        True
        >>> for _ in range(20):
        ...     d.step(7.0, 0.5, 0.05, 3.0)
        >>> d.statistic(7.0, 0.5, 0.05, 3.0) > 50
        True
    """

    __slots__ = ("count", "first_ms", "hi", "last_ms", "lo", "mean", "var")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.var = 0.0
        self.hi = 0.0
        self.lo = 0.0
        self.first_ms = -1
        self.last_ms = -1

    def dump(self, w: Writer) -> None:
        w.i64(self.count)
        for v in (self.mean, self.var, self.hi, self.lo):
            w.f64(v)
        w.i64(self.first_ms)
        w.i64(self.last_ms)

    @classmethod
    def load(cls, r: Reader) -> Drift:
        d = cls()
        d.count, d.mean, d.var, d.hi, d.lo = r.i64(), r.f64(), r.f64(), r.f64(), r.f64()
        d.first_ms, d.last_ms = r.i64(), r.i64()
        return d

    def z(self, y: float, min_sd: float) -> float:
        """Standardised distance of ``y`` from the reference."""
        return (y - self.mean) / max(math.sqrt(max(self.var, 0.0)), min_sd)

    def clipped_z(self, y: float, min_sd: float, clip: float) -> float:
        """:meth:`z` clipped to ``±clip`` (inlined: per numeric field per event)."""
        z = (y - self.mean) / max(math.sqrt(max(self.var, 0.0)), min_sd)
        return min(max(z, -clip), clip)

    def statistic(self, y: float, k: float, min_sd: float, clip: float) -> float:
        """The CUSUM statistic this value would give, without taking the step."""
        return self.statistic_of(self.clipped_z(y, min_sd, clip), k)

    def statistic_of(self, z: float, k: float) -> float:
        """:meth:`statistic` from the value's :meth:`clipped_z`."""
        return max(self.hi + z - k, self.lo - z - k, 0.0)

    def step(self, y: float, k: float, min_sd: float, clip: float) -> None:
        """Advance the CUSUM by one value (every event, whatever its verdict)."""
        self.step_by(self.clipped_z(y, min_sd, clip), k)

    def step_by(self, z: float, k: float) -> None:
        """:meth:`step` from the value's :meth:`clipped_z`."""
        self.hi = max(self.hi + z - k, 0.0)
        self.lo = max(self.lo - z - k, 0.0)

    def learn(self, y: float, t_ms: int, horizon_ms: float, restart: float) -> None:
        """Fold an accepted value into the reference."""
        if self.count == 0:  # first value, or a restart: the variance is kept
            self.mean, self.first_ms, self.last_ms, self.count = y, t_ms, t_ms, 1
            return
        if max(self.hi, self.lo) > restart:
            # Accepting a large statistic means a new normal (or a drift the calibration finds
            # usual): the reference starts afresh from here.
            self.count, self.hi, self.lo = 0, 0.0, 0.0
            return
        # Each value stands for the time since the previous one (a flood's hundred events in
        # a second weigh one second), relative to the time covered so far: a young reference
        # is a time-weighted average from its start, an old one forgets over the horizon.
        dt = max(t_ms - self.last_ms, 0)
        covered = -math.expm1(-max(t_ms - self.first_ms, 0) / horizon_ms)
        w = -math.expm1(-dt / horizon_ms) / covered if covered > 0 else 1.0 / (self.count + 1)
        # At most 1: event time may go backwards (late or hostile timestamps), and a weight
        # above 1 would overshoot and make the reference diverge.
        w = min(w, 1.0)
        d = y - self.mean
        self.mean += w * d
        self.var = (1.0 - w) * (self.var + w * d * d)
        self.count += 1
        self.last_ms = max(self.last_ms, t_ms)


class DriftFeature(Feature[dict[str, Drift]]):
    """Per numeric field (per event type), a :class:`Drift`; the surprise is the largest
    CUSUM statistic among the event's fields. Tracks the fields the value feature tracks."""

    name = "drift"

    def __init__(self, cfg: FeatureConfig, clock: Clock, value: ValueFeature) -> None:
        super().__init__(cfg, clock)
        self.value = value

    def new(self) -> dict[str, Drift]:
        return {}

    def _best(self, slot: int, event: Event) -> tuple[float, str]:
        cfg = self.cfg
        drifts = self.slots[slot]
        if not drifts:
            return 0.0, ""
        return best_drift(
            drifts, type_prefix(event.type), event.numbers, cfg.min_count, cfg.min_sd,
            cfg.drift_clip, cfg.drift_slack,
        )  # fmt: skip

    def judge(self, slot: int, event: Event) -> float:
        return self._best(slot, event)[0]

    def explain(self, slot: int, event: Event) -> Reason | None:
        s, name = self._best(slot, event)
        if not name:
            return None
        x = event.numbers[name]
        d = self.slots[slot][type_prefix(event.type) + name]
        m = self.value.slots[slot].get(type_prefix(event.type) + name)
        level = unlog(m.mean) if m is not None else x
        hours = self.cfg.drift_horizon_s / 3600
        return Reason(
            "drift", name, f"recent level {level:.4g}",
            f"{unlog(d.mean):.4g} (reference over ~{hours:g} h)", s,
        )  # fmt: skip

    def advance(self, slot: int, event: Event) -> None:
        """The CUSUMs of judged fields advance with every event."""
        cfg = self.cfg
        drifts = self.slots[slot]
        if drifts:
            step_drifts(
                drifts, type_prefix(event.type), event.numbers, cfg.min_count, cfg.min_sd,
                cfg.drift_clip, cfg.drift_slack,
            )  # fmt: skip

    def learn(self, slot: int, event: Event) -> None:
        cfg = self.cfg
        if cfg.drift_horizon_s <= 0:
            return
        learn_drifts(
            self.slots[slot], self.value.slots[slot].numeric, type_prefix(event.type),
            event.numbers, event.event_time_ms, cfg.drift_horizon_s * 1000, cfg.drift_restart,
        )  # fmt: skip

    def dump(self, slot: int, w: Writer) -> None:
        drifts = self.slots[slot]
        w.count(len(drifts))
        for key, d in drifts.items():
            w.text(key)
            d.dump(w)

    def load(self, slot: int, r: Reader) -> None:
        self.slots[slot] = {sys.intern(r.text()): Drift.load(r) for _ in range(r.count())}


def best_drift(
    drifts: dict[str, Drift], prefix: str, numbers: dict[str, float], min_count: int,
    min_sd: float, clip: float, k: float,
) -> tuple[float, str]:  # fmt: skip
    """(surprise, field) of the field whose CUSUM statistic this event would raise most."""
    best, best_name = 0.0, ""
    for name, x in numbers.items():
        d = drifts.get(prefix + name)
        if d is None or d.count < min_count:
            continue
        z = d.clipped_z(signed_log(x), min_sd, clip)
        # P(S > s) ~ exp(-2 k s) for a CUSUM under no change: -log10 of that.
        s = min(2.0 * k * d.statistic_of(z, k) / LOG10, MAX_SURPRISE)
        if s > 0 and (not best_name or s > best):
            best, best_name = s, name
    return best, best_name


def step_drifts(
    drifts: dict[str, Drift], prefix: str, numbers: dict[str, float], min_count: int,
    min_sd: float, clip: float, k: float,
) -> None:  # fmt: skip
    """Advance the CUSUM of every judged field by the event's value."""
    for name, x in numbers.items():
        d = drifts.get(prefix + name)
        if d is not None and d.count >= min_count:
            d.step_by(d.clipped_z(signed_log(x), min_sd, clip), k)


def learn_drifts(
    drifts: dict[str, Drift], numeric: dict[str, Moments], prefix: str, numbers: dict[str, float],
    t_ms: int, horizon_ms: float, restart: float,
) -> None:  # fmt: skip
    """Fold an accepted event's values into the references of its fields, for the fields the
    value feature tracks (``numeric``: its moments)."""
    for name, x in numbers.items():
        key = prefix + name
        d = drifts.get(key)
        if d is None:
            if key not in numeric:
                continue  # the value feature's cap: untracked field
            d = drifts[sys.intern(key)] = Drift()
        d.learn(signed_log(x), t_ms, horizon_ms, restart)
