"""Features: bounded per-producer state and the evidence it gives about each event.

Every feature is a *surprise* in log10 units, ``-log10(p)``, where ``p`` is the probability of
seeing something at least this unusual given the producer's own past. Surprises are comparable
across features and producers, and the models combine them. Extraction reads the state before
the event updates it, so a score only sees the past (:meth:`FeatureStore.observe`).

Examples:
    >>> from detector.core.events import Event
    >>> store = FeatureStore(FeatureConfig())
    >>> def ev(t, amount, cur="EUR"):
    ...     return Event("s", f"{t}-0", "pay-1", t, "paid", {"amount": amount}, {"cur": cur}, 50)
    >>> for i in range(200):
    ...     _ = store.observe(ev(1000 * i, 10.0 + i % 3), learn=True)
    >>> normal = store.observe(ev(200_000, 11.0), learn=False)
    >>> odd = store.observe(ev(201_000, 900.0, "XMR"), learn=False)
    >>> normal.surprise["value"] < 1 < 5 < odd.surprise["value"], odd.surprise["category"] > 2
    (True, True)
"""

from __future__ import annotations

import hashlib
import math
import sys
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.core.admission import OVERFLOW, Admission
from detector.core.calibration import RarityTrend, TailCounts
from detector.core.events import Event

FEATURES = ("rate", "value", "size", "type", "category", "schema", "replayed_id", "drift")
_LOG10 = math.log(10.0)
_SQRT2 = math.sqrt(2.0)
_SQRT_PI = math.sqrt(math.pi)
MAX_SURPRISE = 64.0


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """How producer baselines learn and what they may hold.

    Attributes:
        fading_factor: weight of the newest event in running moments (memory ~ 1/fading).
        rate_fading_factor: smoothing of the inter-arrival time, in events.
        rate_horizon_s: memory of the usual (smoothed) inter-arrival in event time, not in
            events (0: ``fading_factor`` per event). A flood packs hundreds of events into
            seconds; a count-based baseline would learn it before it looked unusual.
        min_count: observations of a numeric field before it is judged.
        min_sd: floor on a standard deviation in log space (about a 5% change).
        max_numeric_fields: numeric (type, field) pairs tracked per producer.
        max_categorical_fields: categorical (type, field) pairs tracked per producer.
        max_categories: distinct values per field before it counts as an id (not judged).
        max_schemas: distinct payload shapes tracked per producer.
        novelty_prior: pseudo-count of "new value" observations (Good-Turing smoothing).
        disabled: features never computed (their surprise stays 0), e.g. ``("rate", "size")``
            for univariate metric streams, where irregular sampling and the number of digits
            of a value say nothing about the metric.
        seasonal_buckets: a per-field time-of-period profile of numeric values with this many
            buckets of ``seasonal_period_s / seasonal_buckets`` (UTC, event time); 0 = off.
            A value is also judged against its bucket, so a daily cycle is not "spread".
        seasonal_period_s: the period the buckets divide (86400: time of day).
        seasonal_fading: memory of each bucket, in its own observations.
        seasonal_min_count: observations of a bucket before it is judged.
        seasonal_explains: once a bucket is judged, it replaces the running moments (a value
            usual for its time of day is usual, however far from the overall mean); else the
            larger of the two surprises counts.
        window_values: last values kept per numeric field for an empirical (rank) judgement:
            robust where a normal fit is not (counts, spikes, few distinct values); 0 = off.
        window_tail: values beyond which the window's tail is extrapolated (exponential).
        window_weight: multiplier of the window surprise (its p-values are rank based and
            coarser than the fitted ones; the calibration puts everything on one scale).
        window_floor: a value the window holds ``k >= 1`` values at least as extreme as is
            no rarer than ``k`` in ``n``, whatever the extrapolated tail says (a mix of usual
            values and recurring spikes fits no exponential tail).
        max_profiled_fields: numeric fields per producer with a seasonal profile or window.
        id_field: payload field holding the producer's event id (unique per event).
        replay_window: last event ids remembered per producer (64-bit fingerprints, 8 bytes
            each, allocated as the producer sends them); an id seen again among them is a
            ``replayed_id``; 0 = off.
        burst_s: event time over which novelties (never-seen types, values or shapes) and
            repeated ids count as one burst: each one in the burst multiplies the evidence
            of the next (independent rare events multiply; a broken producer repeats itself).
        novelty_burst: whether novelties multiply within a burst (off: each judged alone).
        drift_horizon_s: memory, in event time, of a slow reference level per numeric field
            (per event type); a CUSUM of values against it reveals a level creeping away
            (``drift``), which the ~100-event baselines follow unnoticed; 0 = off.
        drift_slack: CUSUM allowance per event, in reference standard deviations: shifts
            smaller than this never accumulate.
        drift_clip: largest standardised distance one value adds (one outlier is no drift).
        drift_restart: a CUSUM statistic learned above this (an accepted new normal, or a
            drift the calibration found usual) restarts the reference from the next events.
    """

    fading_factor: float = 0.01
    rate_fading_factor: float = 0.1
    rate_horizon_s: float = 0.0
    min_count: int = 20
    min_sd: float = 0.05
    max_numeric_fields: int = 64
    max_categorical_fields: int = 64
    max_categories: int = 64
    max_schemas: int = 32
    novelty_prior: float = 0.1
    disabled: tuple[str, ...] = ()
    seasonal_buckets: int = 0
    seasonal_period_s: int = 86_400
    seasonal_fading: float = 0.1
    seasonal_min_count: int = 12
    seasonal_explains: bool = False
    window_values: int = 0
    window_tail: int = 20
    window_weight: float = 2.0
    window_floor: bool = False
    max_profiled_fields: int = 8
    id_field: str = "event_id"
    replay_window: int = 0
    burst_s: float = 60.0
    novelty_burst: bool = False
    drift_horizon_s: float = 0.0
    drift_slack: float = 0.5
    drift_clip: float = 3.0
    drift_restart: float = 30.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.disabled) - set(FEATURES))
        if unknown:
            msg = f"disabled: unknown features {unknown} (known: {list(FEATURES)})"
            raise ValueError(msg)
        if self.seasonal_buckets < 0 or self.window_values < 0:
            msg = "seasonal_buckets and window_values must be >= 0"
            raise ValueError(msg)
        if self.seasonal_buckets and self.seasonal_period_s * 1000 < self.seasonal_buckets:
            msg = "seasonal_period_s is shorter than one millisecond per bucket"
            raise ValueError(msg)
        if min(self.replay_window, self.drift_horizon_s, self.rate_horizon_s) < 0:
            msg = "replay_window, drift_horizon_s and rate_horizon_s must be >= 0"
            raise ValueError(msg)
        if min(self.drift_slack, self.drift_clip, self.burst_s) <= 0:
            msg = "drift_slack, drift_clip and burst_s must be > 0"
            raise ValueError(msg)
        if self.window_values and self.window_values < 2 * self.window_tail:
            msg = "window_values must be at least 2 * window_tail"
            raise ValueError(msg)


@dataclass(slots=True, unsafe_hash=True)  # not frozen: several per event, and a frozen
class Reason:  # __init__ sets each field through object.__setattr__
    """Why a feature is surprising: what was seen against what is usual.

    Attributes:
        feature: feature name (one of ``FEATURES``).
        field: payload field, type or shape concerned ("" when not field specific).
        observed: what the event showed.
        expected: the producer's usual range or values.
        surprise: ``-log10(p)`` of this observation.
    """

    feature: str
    field: str
    observed: str
    expected: str
    surprise: float


class Evidence:
    """What one event looks like against its producer's past.

    Attributes:
        surprise: ``-log10(p)`` per feature name, 0 for usual.
        reasons: one explanation per surprising feature, largest surprise first. With
            ``explain``, built on first access: formatting them for every event cost more
            than any other feature work, and only flagged events show them.
        history: events the producer had before this one.
    """

    __slots__ = ("_explain", "_reasons", "history", "surprise")

    def __init__(
        self,
        surprise: dict[str, float],
        reasons: list[Reason],
        history: int,
        explain: Callable[[], list[Reason]] | None = None,
    ) -> None:
        self.surprise = surprise
        self._reasons = reasons
        self.history = history
        self._explain = explain

    @property
    def reasons(self) -> list[Reason]:
        if self._explain is not None:
            self._reasons, self._explain = self._explain(), None
        return self._reasons

    def _fields(self) -> tuple[dict[str, float], list[Reason], int]:
        return self.surprise, self.reasons, self.history

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Evidence) and self._fields() == other._fields()

    def __repr__(self) -> str:
        surprise, reasons, history = self._fields()
        return f"Evidence(surprise={surprise!r}, reasons={reasons!r}, history={history!r})"


class Moments:
    """Exponentially weighted mean and variance, in signed-log space.

    River's ``stats.EWMean`` / ``stats.EWVar`` update formulas (the first value sets the mean;
    ``var = E[x²] - E[x]²``), bit for bit (``tests/test_features.py`` holds River as the oracle),
    kept as three floats: two River objects per field cost ~600 bytes and a pickled class path
    each in every checkpoint.
    """

    __slots__ = ("count", "fading", "mean", "sq")

    def __init__(self, fading_factor: float) -> None:
        self.count = 0
        self.fading = fading_factor
        self.mean = 0.0
        self.sq = 0.0  # weighted mean of x²

    def __getstate__(self) -> tuple[int, float, float, float]:
        return self.count, self.fading, self.mean, self.sq

    def __setstate__(self, state: tuple[int, float, float, float]) -> None:
        self.count, self.fading, self.mean, self.sq = state

    def update(self, x: float) -> None:
        if self.count:
            a = self.fading
            self.mean = a * x + (1.0 - a) * self.mean
            self.sq = a * (x * x) + (1.0 - a) * self.sq
        else:
            self.mean, self.sq = x, x * x
        self.count += 1

    @property
    def var(self) -> float:
        return self.sq - self.mean * self.mean

    def z(self, x: float, min_sd: float) -> float:
        sd = max(math.sqrt(max(self.sq - self.mean * self.mean, 0.0)), min_sd)
        return (x - self.mean) / sd

    def expected(self, min_sd: float) -> str:
        """Usual range (mean ± 3 sd) back in the original units."""
        m = self.mean
        sd = max(math.sqrt(max(self.var, 0.0)), min_sd)
        return f"{_unlog(m - 3 * sd):.4g}..{_unlog(m + 3 * sd):.4g}"


class Categories:
    """Counts of a categorical field's values, until it shows id-like cardinality (then it
    is saturated: its counts are dropped and it no longer changes; see ``ID_FIELD``)."""

    __slots__ = ("counts", "n", "saturated")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.n = 0
        self.saturated = False

    def surprise(self, value: str, prior: float, burst: float = 0.0, min_count: int = 1) -> float:
        """``-log10`` of the chance of a value this rare (Good-Turing for unseen ones; an
        unseen one counts ``1 + burst`` times, ``burst`` being the recent novelties). Not
        judged before ``min_count`` values: a young vocabulary is still growing."""
        if self.saturated or self.n < max(min_count, 1):
            return 0.0
        count = self.counts.get(value, 0)
        if count == 0:
            singletons = list(self.counts.values()).count(1)  # counted in C
            p = (singletons + prior) / (self.n + 1)
            return min(-(1.0 + burst) * math.log10(min(p, 1.0)), MAX_SURPRISE)
        elif count * 20 >= self.n:
            return 0.0  # common value: skip the tail sum
        else:
            p = (sum(c for c in self.counts.values() if c <= count) + 1) / (self.n + 1)
        return min(-math.log10(min(p, 1.0)), MAX_SURPRISE)

    def is_new(self, value: str, min_count: int) -> bool:
        """A value never seen in a field judged (``min_count`` values, not saturated)."""
        return self.n >= max(min_count, 1) and not self.saturated and value not in self.counts

    def update(self, value: str, cap: int) -> None:
        if self.saturated:
            return
        self.n += 1
        counts = self.counts
        count = counts.get(value, 0)
        if count > 1:
            counts[value] = count + 1
        elif count == 1:
            # Seen again: a categorical value, shared among producers from now on. An id is
            # seen once and not interned: the interpreter's table of interned strings would
            # grow with every id held and never shrink.
            del counts[value]
            counts[sys.intern(value)] = 2
        elif len(counts) >= cap:
            self.saturated = True
            counts.clear()
        else:
            counts[value] = 1

    def __getstate__(self) -> tuple[dict[str, int], int, bool]:
        # A flat tuple: the default (None, slots dict) costs a dict and its keys per object.
        return self.counts, self.n, self.saturated

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 3:
            counts, self.n, self.saturated = state
        else:  # (None, slots): checkpoints written before __getstate__
            slots = state[1]
            counts, self.n, self.saturated = slots["counts"], slots["n"], slots["saturated"]
        self.counts = {sys.intern(k) if v > 1 else k: v for k, v in counts.items()}

    def expected(self) -> str:
        top = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        return ",".join(v for v, _ in top)


# The one saturated table every producer's id-like categorical fields share: it holds nothing
# and never changes, and a producer has several (event and order ids, per event type).
ID_FIELD = Categories()
ID_FIELD.saturated = True


class Seasonal:
    """Exponentially weighted mean and variance of a numeric field per time bucket.

    Three float64 arrays of ``buckets`` entries (24 buckets: 576 bytes of data). A bucket's
    first observation sets its mean; each bucket forgets at its own pace (``fading`` per
    observation in that bucket), so a daily profile follows slow changes day by day.

    Examples:
        >>> s = Seasonal(24)
        >>> for day in range(20):
        ...     for hour in range(24):
        ...         s.update(hour, 10.0 * hour + day % 2, 0.1)
        >>> abs(s.z(3, 30.5, 0.05)) < 2 < abs(s.z(3, 130.0, 0.05))
        True
    """

    __slots__ = ("count", "mean", "var")

    def __init__(self, buckets: int) -> None:
        self.count: npt.NDArray[np.int64] = np.zeros(buckets, dtype=np.int64)
        self.mean: npt.NDArray[np.float64] = np.zeros(buckets, dtype=np.float64)
        self.var: npt.NDArray[np.float64] = np.zeros(buckets, dtype=np.float64)

    def update(self, b: int, x: float, fading: float) -> None:
        self.count[b] += 1
        if self.count[b] == 1:
            self.mean[b] = x
            return
        d = x - float(self.mean[b])
        inc = fading * d
        self.mean[b] += inc
        self.var[b] = (1.0 - fading) * (float(self.var[b]) + d * inc)

    def sd(self, b: int, min_sd: float) -> float:
        return max(math.sqrt(max(float(self.var[b]), 0.0)), min_sd)

    def z(self, b: int, x: float, min_sd: float) -> float:
        return (x - float(self.mean[b])) / self.sd(b, min_sd)

    def expected(self, b: int, min_sd: float) -> str:
        m, sd = float(self.mean[b]), self.sd(b, min_sd)
        return f"{_unlog(m - 3 * sd):.4g}..{_unlog(m + 3 * sd):.4g}"


class ValueWindow:
    """The last ``size`` values of a numeric field (a float64 ring: 8 bytes per value), and how
    rare a value is among them: its rank, and beyond the ``tail`` most extreme values an
    exponential tail whose scale is their mean spacing (peaks over threshold).

    Examples:
        >>> w = ValueWindow(200)
        >>> for i in range(400):
        ...     w.update(float(i % 5))
        >>> w.surprise(2.0, 20, 0.05) < 1 < 5 < w.surprise(9.0, 20, 0.05)
        True
    """

    __slots__ = ("n", "pos", "values")

    def __init__(self, size: int) -> None:
        self.values: npt.NDArray[np.float64] = np.zeros(size, dtype=np.float64)
        self.n = 0
        self.pos = 0

    def update(self, x: float) -> None:
        self.values[self.pos] = x
        self.pos = (self.pos + 1) % len(self.values)
        self.n = min(self.n + 1, len(self.values))

    def surprise(self, x: float, tail: int, min_sd: float, floor: bool = False) -> float:
        """``-log10`` of the two-sided chance of a value at least this extreme; with
        ``floor``, the extrapolated tail never reads rarer than the values seen beyond ``x``."""
        n = self.n
        if n < 2 * tail:
            return 0.0
        past = self.values[:n]
        above, below = int((past >= x).sum()), int((past <= x).sum())
        p_up, p_down = (above + 1) / (n + 1), (below + 1) / (n + 1)
        if above < tail:
            top = np.partition(past, n - tail)[n - tail :]  # the tail largest, unordered
            u = float(top.min())
            scale = max((float(top.max()) - u) / tail, min_sd)
            p_up = tail / (n + 1) * math.exp(-(x - u) / scale)
            if floor:
                p_up = max(p_up, above / (n + 1))
        if below < tail:
            low = np.partition(past, tail - 1)[:tail]
            u = float(low.max())
            scale = max((u - float(low.min())) / tail, min_sd)
            p_down = tail / (n + 1) * math.exp(-(u - x) / scale)
            if floor:
                p_down = max(p_down, below / (n + 1))
        p = min(2.0 * min(p_up, p_down), 1.0)
        return min(-math.log10(max(p, 1e-300)), MAX_SURPRISE)

    def expected(self) -> str:
        past = self.values[: self.n]
        lo, hi = np.quantile(past, [0.001, 0.999])
        return f"{_unlog(float(lo)):.4g}..{_unlog(float(hi)):.4g} (last {self.n} values)"


class IdMemory:
    """A producer's last ``size`` event ids as 64-bit fingerprints, its recent repeats, and how
    often it repeated one in accepted events. The ring grows by an eighth (at least 64 ids) up
    to ``size``, so slow producers hold little and at most ~1/9 of it is unused (doubling left
    up to half of it empty: 4 KB per producer at 600 ids); a restored ring holds just its ids.
    64 bits: a fresh id collides with one of 8192 remembered ones about once in 2 * 10^15
    events.

    A bit per fingerprint (8 bits per ring slot, rebuilt from the ring when it grows or wraps;
    not pickled) answers most questions: a fresh id's bit is clear ~88% of the time, and only
    a set bit costs the scan of the ring, the largest per-event cost of the features before.
    Every remembered id has its bit set, so the answers are the scan's.

    Which ids were sent is a fact, remembered for every event (:meth:`remember`); whether
    repeats are usual for this producer is a belief, learned from accepted events only
    (:meth:`learn`), so a replay attack does not teach that replays are normal.

    Examples:
        >>> m = IdMemory(4)
        >>> for i in range(6):
        ...     _ = m.remember(f"id-{i}", 1000 * i, 60_000)
        ...     m.learn()
        >>> m.seen("id-5"), m.seen("id-1"), m.n, m.remember("id-5", 6000, 60_000), m.recent
        (True, False, 4, True, 1.0)
    """

    __slots__ = (
        "asked", "bits", "events", "fp", "last_ms", "n", "pos", "recent", "repeated", "repeats",
        "size",
    )  # fmt: skip

    def __init__(self, size: int) -> None:
        self.fp: npt.NDArray[np.uint64] = np.zeros(min(size, 64), dtype=np.uint64)
        self.size = size
        self.n = 0
        self.pos = 0
        self.events = 0  # accepted events with an id
        self.repeats = 0  # accepted events whose id was a repeat
        self.recent = 0.0  # repeats of any event, decayed over the burst horizon
        self.last_ms = -1
        self.repeated = False  # the last remembered id was a repeat
        # The last seen() question and answer: remember() follows it for the same event, and
        # a scan of up to `size` fingerprints is worth doing once.
        self.asked: tuple[str, int, bool] | None = None
        self.bits: bytearray | None = None  # built on the first question

    def __getstate__(self) -> tuple[bytes, int, int, int, int, int, int, float, int, bool]:
        # Only the filled part of the ring, as bytes: the default pickles the whole array
        # (its unused capacity too) through numpy's reducer, per producer per commit. The
        # capacity is still written (format 3) but not read back.
        fp = self.fp[: self.n].astype("<u8").tobytes()
        return (fp, len(self.fp), self.size, self.n, self.pos, self.events, self.repeats,
                self.recent, self.last_ms, self.repeated)  # fmt: skip

    def __setstate__(self, state: Any) -> None:
        self.asked = self.bits = None  # a question of the event being scored; derived
        if isinstance(state, tuple) and len(state) == 10:
            fp, _, self.size, self.n, self.pos = state[:5]
            self.events, self.repeats, self.recent, self.last_ms, self.repeated = state[5:]
            # Just the ids (a writable copy): until the ring is full, pos == n, and the next
            # id grows it as a fed one would.
            self.fp = np.frombuffer(fp, dtype="<u8").astype(np.uint64)
        else:  # (None, slots): checkpoints written before __getstate__
            for name, value in state[1].items():
                setattr(self, name, value)
            self.asked = self.bits = None

    def seen(self, event_id: str) -> bool:
        return self._ask(event_id)[2]

    def _ask(self, event_id: str) -> tuple[str, int, bool]:
        fp = _fingerprint(event_id)
        bits = self.bits
        if bits is None:
            bits = self._rebuild_bits()
        bit = fp % (len(bits) << 3)
        seen = bool(bits[bit >> 3] >> (bit & 7) & 1) and bool((self.fp[: self.n] == fp).any())
        self.asked = (event_id, fp, seen)
        return self.asked

    def _rebuild_bits(self) -> bytearray:
        """The filter of the ring's ids: 8 bits per slot of its capacity (a restored ring may
        hold none)."""
        size = max(len(self.fp), 1) << 3
        on = np.zeros(size, dtype=bool)
        on[self.fp[: self.n] % np.uint64(size)] = True
        self.bits = bytearray(np.packbits(on, bitorder="little").tobytes())
        return self.bits

    def remember(self, event_id: str, t_ms: int, burst_ms: float) -> bool:
        """Note the id (a fact, whatever the verdict); True if it is a repeat."""
        if self.last_ms >= 0:
            self.recent *= math.exp(-max(t_ms - self.last_ms, 0) / burst_ms)
        self.last_ms = max(self.last_ms, t_ms)
        asked = self.asked
        if asked is None or asked[0] != event_id:
            asked = self._ask(event_id)
        _, fp, self.repeated = asked
        self.asked = None
        if self.repeated:
            self.recent += 1.0
            return True
        if self.pos == len(self.fp):
            if len(self.fp) < self.size:
                capacity = len(self.fp) + max(64, len(self.fp) // 8)
                grown = np.zeros(min(capacity, self.size), dtype=np.uint64)
                grown[: self.n] = self.fp[: self.n]
                self.fp = grown
            else:
                self.pos = 0
            self.bits = None  # sized to the new capacity, or cleared of the ids overwritten
        self.fp[self.pos] = fp
        self.pos += 1
        self.n = max(self.n, self.pos)
        bits = self.bits
        if bits is not None:
            bit = fp % (len(bits) << 3)
            bits[bit >> 3] |= 1 << (bit & 7)
        return False

    def learn(self) -> None:
        """The last remembered event was accepted: count it (and its repeat) as usual."""
        self.events += 1
        self.repeats += self.repeated

    def surprise(self, prior: float, t_ms: int, burst_ms: float) -> float:
        """``-log10`` of the chance of this repeat given the producer's past: one repeat as
        rare as its accepted repeats say, times one more for each repeat in the current
        burst (independent repeats multiply)."""
        one = -math.log10((self.repeats + prior) / (self.events + 1))
        burst = self.recent * math.exp(-max(t_ms - self.last_ms, 0) / burst_ms)
        return min((1.0 + burst) * one, MAX_SURPRISE)


def _fingerprint(event_id: str) -> int:
    # blake2b, not hash(): the same in every process (checkpoints, replays). A Python int
    # below 2^64: numpy compares and stores it as the ring's uint64.
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


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

    def __getstate__(self) -> tuple[int, float, float, float, float, int, int]:
        return self.count, self.mean, self.var, self.hi, self.lo, self.first_ms, self.last_ms

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 7:
            self.count, self.mean, self.var, self.hi, self.lo, self.first_ms, self.last_ms = state
        else:  # (None, slots): checkpoints written before __getstate__
            for name, value in state[1].items():
                setattr(self, name, value)

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


class ProducerState:
    """Everything the detector keeps about one producer (bounded by FeatureConfig caps)."""

    __slots__ = (
        "arrivals",
        "calibration",
        "categorical",
        "cooldown_until_ms",
        "drifts",
        "flagged_since_ms",
        "flagged_streak",
        "gap",
        "ids",
        "last_ms",
        "likelihood",
        "n",
        "novel",
        "numeric",
        "rate",
        "schema_fields",
        "schemas",
        "seasonal",
        "seq",
        "silenced",
        "size",
        "suppressed",
        "suspect_ms",
        "types",
        "windows",
    )

    def __init__(self, cfg: FeatureConfig) -> None:
        self.n = 0
        self.last_ms = -1
        self.gap = Moments(cfg.rate_fading_factor)  # its mean: the smoothed log inter-arrival
        self.rate = Moments(cfg.fading_factor)  # moments of the smoothed log inter-arrival
        # The same moments over a span of event time instead (rate_horizon_s): a flood packs
        # a hundred events into seconds, and must not teach a count-based baseline that fast.
        self.arrivals: Drift | None = Drift() if cfg.rate_horizon_s > 0 else None
        self.size = Moments(cfg.fading_factor)
        self.numeric: dict[str, Moments] = {}
        self.categorical: dict[str, Categories] = {}
        self.types = Categories()
        self.schemas = Categories()
        self.schema_fields: dict[str, tuple[str, ...]] = {}
        # Per numeric field, when the spec asks for them (at most max_profiled_fields each).
        self.seasonal: dict[str, Seasonal] = {}
        self.windows: dict[str, ValueWindow] = {}
        self.drifts: dict[str, Drift] = {}  # per numeric field, with drift_horizon_s
        self.ids: IdMemory | None = None  # with replay_window, from the first id
        # Per type, shape or categorical field name: recent novelties decayed over burst_s, and when
        # the last came (novelty_burst); at most one entry per tracked field.
        self.novel: dict[str, tuple[float, int]] = {}
        # Decision state, kept here so it is bounded and evicted with the producer.
        self.cooldown_until_ms = -1
        self.suppressed = 0
        self.flagged_streak = 0
        self.flagged_since_ms = -1
        self.silenced = False  # a silence alert was raised since the producer's last event
        self.calibration: TailCounts | None = None
        self.suspect_ms = -(2**62)  # event time of its last suspect event
        self.likelihood: RarityTrend | None = None  # only with a likelihood in the spec
        self.seq = 0  # last use, so a restored store keeps its LRU order

    def __getstate__(self) -> tuple[None, dict[str, Any]]:
        """The slots, with the small state objects as their own flat tuples: pickling an
        object costs a ``__reduce_ex__`` round in Python (~1.5 us), a tuple is written in C,
        and a producer holds dozens of them (every commit pickles every changed producer)."""
        slots = {name: getattr(self, name) for name in self.__slots__}
        for name in _FLAT_ONE:
            if slots[name] is not None:
                slots[name] = slots[name].__getstate__()
        for name in _FLAT_MAP:
            slots[name] = {k: v.__getstate__() for k, v in slots[name].items()}
        slots[_FLAT_MARK] = True
        return None, slots

    def __setstate__(self, state: Any) -> None:
        """Unpickle, giving slots added since the checkpoint was written their empty value."""
        self.seasonal, self.windows, self.silenced, self.likelihood = {}, {}, False, None
        self.drifts, self.ids, self.novel, self.arrivals = {}, None, {}, None
        self.suspect_ms = -(2**62)
        _, slots = state if isinstance(state, tuple) else (None, state)
        slots = dict(slots or {})
        if slots.pop(_FLAT_MARK, False):
            for name, cls in _FLAT_ONE.items():
                if slots.get(name) is not None:
                    slots[name] = _unflatten(cls, slots[name])
            for name, cls in _FLAT_MAP.items():
                if name in slots:
                    slots[name] = {k: _unflatten(cls, v) for k, v in slots[name].items()}
        for name, value in slots.items():
            setattr(self, name, value)
        # Share the field names and id fields among producers (pickle copies them per producer).
        self.numeric = {sys.intern(k): v for k, v in self.numeric.items()}
        self.categorical = {
            sys.intern(k): ID_FIELD if v.saturated else v for k, v in self.categorical.items()
        }
        self.schema_fields = {sys.intern(k): _field_list(v) for k, v in self.schema_fields.items()}
        self.drifts = {sys.intern(k): v for k, v in self.drifts.items()}
        self.seasonal = {sys.intern(k): v for k, v in self.seasonal.items()}
        self.windows = {sys.intern(k): v for k, v in self.windows.items()}
        self.novel = {sys.intern(k): v for k, v in self.novel.items()}


# ProducerState slots pickled as their objects' flat states: one object, or a dict of them.
_FLAT_ONE: dict[str, type] = {
    "gap": Moments, "rate": Moments, "size": Moments, "types": Categories,
    "schemas": Categories, "arrivals": Drift, "ids": IdMemory, "calibration": TailCounts,
}  # fmt: skip
_FLAT_MAP: dict[str, type] = {"numeric": Moments, "categorical": Categories, "drifts": Drift}
_FLAT_MARK = "\x00flat"  # in the pickled slots: the above are flat (not in older checkpoints)


# One copy of each schema's field list among producers: every producer learns (and pickle
# restores) its own, though most producers of a service send the same shapes. Shared lists
# live as long as the process, so they are bounded (~1.5 MB; hostile producers' shapes must
# not grow it without end): beyond, lists are kept unshared, as before.
_FIELD_LISTS: dict[tuple[str, ...], tuple[str, ...]] = {}
_MAX_FIELD_LISTS = 10_000


def _field_list(names: tuple[str, ...]) -> tuple[str, ...]:
    shared = _FIELD_LISTS.get(names)
    if shared is None:
        shared = tuple(map(sys.intern, names))
        if len(_FIELD_LISTS) < _MAX_FIELD_LISTS:
            _FIELD_LISTS[shared] = shared
    return shared


def _unflatten(cls: type, state: Any) -> Any:
    obj: Any = object.__new__(cls)
    obj.__setstate__(state)
    return obj


def _signed_log(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


def _unlog(y: float) -> float:
    return math.copysign(math.expm1(min(abs(y), 700.0)), y)


def _two_sided(z: float) -> float:
    """-log10 of the two-sided normal tail probability of z.

    Beyond z = 8 erfc loses precision: use its asymptote, erfc(x) ~ exp(-x^2) / (x sqrt(pi)).
    """
    z = abs(z)
    if z < 8.0:
        return -math.log10(math.erfc(z / _SQRT2))
    x = z / _SQRT2
    return min((x * x + math.log(x * _SQRT_PI)) / _LOG10, MAX_SURPRISE)


# Keys of the type and shape novelty counters (categorical fields use their own key).
_TYPE_KEY, _SCHEMA_KEY = "\x00type", "\x00schema"


def _type_prefix(event: Event) -> str:
    """Payload statistics are kept per event type: one type's fields say little of another's."""
    return f"{event.type}\x1f" if event.type is not None else ""


def _schema_key(event: Event) -> tuple[str, tuple[str, ...]]:
    # A producer sends the same few shapes in the same key order: look them up by the fields
    # as they came (sorting, joining and hashing them cost more than the rest of the shape
    # feature). The table is cleared when full, so hostile shapes cannot grow it.
    raw = (event.type, *event.numbers, "\x00", *event.strings)
    found = _SHAPES.get(raw)
    if found is None:
        names = tuple(sorted((*event.numbers, *event.strings)))
        # crc32, not hash(): the key must be the same in every process (checkpoints, replays).
        found = (f"{event.type}|{zlib.crc32('|'.join(names).encode()):08x}", names)
        if len(_SHAPES) >= _MAX_SHAPES:
            _SHAPES.clear()
        _SHAPES[raw] = found
    return found


_SHAPES: dict[tuple[str | None, ...], tuple[str, tuple[str, ...]]] = {}
_MAX_SHAPES = 4096


class FeatureStore:
    """Per-producer state, bounded by a cap and an idle TTL in event time.

    Beyond the cap: without ``admission``, the least recently seen producer is evicted (LRU);
    with it, established producers stay and refused newcomers share :attr:`overflow` (see
    :mod:`detector.core.admission`; the pipeline always passes one).
    """

    def __init__(
        self,
        cfg: FeatureConfig,
        max_producers: int = 100_000,
        idle_ttl_ms: int = 24 * 3600 * 1000,
        track_changes: bool = False,
        admission: Admission | None = None,
    ) -> None:
        self.cfg = cfg
        self.track_changes = track_changes
        self.max_producers = max_producers
        self.idle_ttl_ms = idle_ttl_ms
        self.producers: OrderedDict[str, ProducerState] = OrderedDict()
        self.admission = admission
        # Producers refused admission are all scored against this one state (never evicted).
        self.overflow = ProducerState(cfg)
        self.evicted = 0
        self.tick = 0
        self.watermark_ms = 0
        self.next_sweep_ms = 0
        self.next_silence_ms = 0  # next silence check, in event time (see Pipeline)
        # Changed and evicted since the last checkpoint commit (if tracking): only those are
        # written. Untracked stores (offline scoring, training) keep no such sets.
        self.dirty: set[str] = set()
        self.removed: set[str] = set()
        # Called before a producer's state changes while a commit is being encoded from the
        # live states (see checkpoint.FrozenCommit).
        self.before_change: Callable[[str], None] | None = None
        # One-event memo: the shape key is needed by the evidence and again by the learning.
        self._schema_event: Event | None = None
        # The drift judge's clipped z per judged field: the CUSUM steps of the same event
        # (advance_clock, before any change to the references) take the same values.
        self._drift_steps: tuple[Event | None, list[tuple[Drift, float]]] = (None, [])
        # Evidence whose reasons are formatted on first read (see evidence): the pipeline's
        # store, which reads them for flagged events only.
        self.lazy_reasons = False
        self._explaining = False  # judges format their reasons' text
        self._schema_memo: tuple[str, tuple[str, ...]] = ("", ())
        # The enabled features' judges, as functions (bound methods would be built per event,
        # and held here they would make a reference cycle).
        judges = {
            "rate": FeatureStore._rate,
            "value": FeatureStore._value,
            "size": FeatureStore._size,
            "type": FeatureStore._type,
            "category": FeatureStore._category,
            "schema": FeatureStore._schema,
            "replayed_id": FeatureStore._replayed,
            "drift": FeatureStore._drift,
        }
        self._judges = [judge for name, judge in judges.items() if name not in cfg.disabled]

    def __len__(self) -> int:
        return len(self.producers)

    def state(self, producer: str, now_ms: int = 0) -> ProducerState:
        """The producer's state, created on first sight; marks it most recently used.

        When the store is full and the admission policy refuses the producer, the shared
        :attr:`overflow` state (check with ``st is store.overflow``). ``now_ms``: the event's
        time, for the admission budget's minute (which follows the watermark).
        """
        st = self.producers.get(producer)
        adm = self.admission
        if st is None:
            if len(self.producers) >= self.max_producers:
                victim = (
                    next(iter(self.producers))
                    if adm is None
                    else adm.victim(self.producers, max(self.watermark_ms, now_ms))
                )
                if victim is None:
                    return self._refuse(producer)
                self._evict(victim)
            st = ProducerState(self.cfg)
            self.producers[producer] = st
            if adm is not None:
                adm.created(producer)
        else:
            self.producers.move_to_end(producer)
            if adm is not None:
                adm.seen(producer, st)
        self.changing(producer)
        self.tick += 1
        st.seq = self.tick
        return st

    def changing(self, producer: str) -> None:
        """Note, before it happens, that ``producer``'s state changes (tracking stores: the
        next commit writes it)."""
        if self.track_changes:
            if self.before_change is not None:
                self.before_change(producer)
            self.dirty.add(producer)
            self.removed.discard(producer)  # evicted, then back before the commit

    def _refuse(self, producer: str) -> ProducerState:
        assert self.admission is not None  # noqa: S101 (only called with a policy)
        self.admission.refuse(producer)
        self.changing(OVERFLOW)
        return self.overflow

    def _evict(self, producer: str) -> None:
        del self.producers[producer]
        self.evicted += 1
        if self.admission is not None:
            self.admission.forget(producer)
        if self.track_changes:
            self.dirty.discard(producer)
            self.removed.add(producer)

    def restore(
        self, producers: dict[str, ProducerState], counters: dict[str, Any], baseline: bool = False
    ) -> None:
        """Replace the state with a checkpoint's, in its LRU order.

        A baseline comes from another time: its producers keep what they learned but forget
        when they were last seen, so live event time does not expire them at once.
        """
        producers = dict(producers)
        overflow = producers.pop(OVERFLOW, None)
        self.overflow = ProducerState(self.cfg) if overflow is None else overflow
        self.producers = OrderedDict(sorted(producers.items(), key=lambda kv: kv[1].seq))
        if baseline:
            for st in (*self.producers.values(), self.overflow):
                st.last_ms = -1
            counters = {"evicted": counters["evicted"], "tick": counters["tick"]}  # time: live
        if self.admission is not None:
            self.admission.restore(counters, self.producers)
        self.evicted = counters["evicted"]
        self.tick = counters["tick"]
        self.watermark_ms = counters.get("watermark_ms", 0)
        self.next_sweep_ms = counters.get("next_sweep_ms", 0)
        self.next_silence_ms = counters.get("next_silence_ms", 0)  # absent before silence
        self.dirty.clear()
        self.removed.clear()

    def counters(self) -> dict[str, int]:
        return {
            "evicted": self.evicted,
            "tick": self.tick,
            "watermark_ms": self.watermark_ms,
            "next_sweep_ms": self.next_sweep_ms,
            "next_silence_ms": self.next_silence_ms,
        }

    def observe(self, event: Event, learn: bool) -> Evidence:
        """Evidence for ``event``; then, if ``learn``, fold it into the producer's baseline.

        The arrival clock (last time, inter-arrival) always advances: time is a fact, not a
        belief to protect. Baselines only learn from events the caller accepts.
        """
        st = self.state(event.producer, event.event_time_ms)
        evidence = self.evidence(st, event)
        self.advance_clock(st, event)
        if learn:
            self.learn(st, event)
        self.expire(event.event_time_ms)
        return evidence

    def evidence(self, st: ProducerState, event: Event) -> Evidence:
        """Surprise per feature and the reasons, from the state before this event.

        With :attr:`lazy_reasons`, the reasons are formatted when first read, by judging the
        event again: read them before the producer's state moves on, or this raises.
        """
        surprise = dict.fromkeys(FEATURES, 0.0)
        if st.n == 0:
            return Evidence(surprise, [], 0)
        n = st.n

        def explain() -> list[Reason]:
            if st.n != n:
                msg = "reasons read after the producer's state moved on"
                raise RuntimeError(msg)
            self._explaining = True
            try:
                reasons = self._judge(st, event)
            finally:
                self._explaining = False
            reasons.sort(key=lambda r: -r.surprise)
            return reasons

        lazy = self.lazy_reasons
        reasons = self._judge(st, event) if lazy else explain()
        for r in reasons:
            surprise[r.feature] = r.surprise
        return Evidence(surprise, [], n, explain) if lazy else Evidence(surprise, reasons, n)

    def _judge(self, st: ProducerState, event: Event) -> list[Reason]:
        """Every feature's reason (text only while ``_explaining``; else just surprises)."""
        return [r for judge in self._judges if (r := judge(self, st, event)) is not None]

    def _rate(self, st: ProducerState, event: Event) -> Reason | None:
        timed = st.arrivals
        count = st.rate.count if timed is None else timed.count
        if count < self.cfg.min_count or st.last_ms < 0:
            return None
        smoothed = self._next_gap(st, event)
        if timed is None:
            z = -st.rate.z(smoothed, self.cfg.min_sd)  # positive: faster than usual
            usual = st.rate.mean
        else:
            z = -timed.z(smoothed, self.cfg.min_sd)
            usual = timed.mean
        s = _two_sided(z) - math.log10(2.0) if z > 0 else 0.0  # one-sided: floods only
        if s <= 0:
            return None
        if not self._explaining:
            return Reason("rate", "", "", "", s)
        observed = f"{_rate_per_s(smoothed):.3g}/s"
        return Reason("rate", "", observed, f"{_rate_per_s(usual):.3g}/s", s)

    def _value(self, st: ProducerState, event: Event) -> Reason | None:
        """Per numeric field, the largest of: the surprise against the field's running moments,
        against its time-of-period bucket, and (weighted) its rank among the last values."""
        cfg = self.cfg
        explain = self._explaining
        best: Reason | None = None
        prefix = _type_prefix(event)
        for name, x in event.numbers.items():
            key = prefix + name
            y = _signed_log(x)
            s, expected = 0.0, ""
            m = st.numeric.get(key)
            if m is not None and m.count >= cfg.min_count:
                s = _two_sided(m.z(y, cfg.min_sd))
                expected = m.expected(cfg.min_sd) if explain else ""
            prof = st.seasonal.get(key)
            if prof is not None:
                b = self._bucket(event.event_time_ms)
                if prof.count[b] >= cfg.seasonal_min_count:
                    ss = _two_sided(prof.z(b, y, cfg.min_sd))
                    if ss > s or cfg.seasonal_explains:
                        s = ss
                        if explain:
                            expected = f"{prof.expected(b, cfg.min_sd)} at this time of day"
            win = st.windows.get(key)
            if win is not None:
                ws = cfg.window_weight * win.surprise(
                    y, cfg.window_tail, cfg.min_sd, cfg.window_floor
                )
                if ws > s:
                    s, expected = min(ws, MAX_SURPRISE), win.expected() if explain else ""
            if s > 0 and (best is None or s > best.surprise):
                best = Reason("value", name, f"{x:.6g}" if explain else "", expected, s)
        return best

    def _bucket(self, t_ms: int) -> int:
        """Time-of-period bucket of an event time (UTC; event time, so replays agree)."""
        cfg = self.cfg
        width = cfg.seasonal_period_s * 1000 // cfg.seasonal_buckets
        return (t_ms // width) % cfg.seasonal_buckets

    def _size(self, st: ProducerState, event: Event) -> Reason | None:
        if st.size.count < self.cfg.min_count:
            return None
        s = _two_sided(st.size.z(math.log(max(event.size_bytes, 1)), self.cfg.min_sd))
        if s <= 0:
            return None
        if not self._explaining:
            return Reason("size", "", "", "", s)
        return Reason("size", "", f"{event.size_bytes}B", st.size.expected(self.cfg.min_sd), s)

    def _type(self, st: ProducerState, event: Event) -> Reason | None:
        if event.type is None:
            return None
        burst = self._burst(st, _TYPE_KEY, event.event_time_ms)
        s = st.types.surprise(event.type, self.cfg.novelty_prior, burst, self.cfg.min_count)
        if not s > 0:
            return None
        expected = st.types.expected() if self._explaining else ""
        return Reason("type", "type", event.type, expected, s)

    def _category(self, st: ProducerState, event: Event) -> Reason | None:
        best, best_field = 0.0, ""
        best_c: Categories | None = None
        prefix = _type_prefix(event)
        for name, value in event.strings.items():
            c = st.categorical.get(prefix + name)
            if c is not None and not c.saturated:  # an id field: never judged, skip the burst
                burst = self._burst(st, name, event.event_time_ms) if st.novel else 0.0
                s = c.surprise(value, self.cfg.novelty_prior, burst, self.cfg.min_count)
                if s > best:
                    best, best_field, best_c = s, name, c
        if best_c is None:
            return None
        observed = event.strings[best_field]
        expected = best_c.expected() if self._explaining else ""
        return Reason("category", best_field, observed, expected, best)

    def _schema_of(self, event: Event) -> tuple[str, tuple[str, ...]]:
        """The event's shape key, computed once for its evidence and its learning."""
        if self._schema_event is not event:
            self._schema_event, self._schema_memo = event, _schema_key(event)
        return self._schema_memo

    def _schema(self, st: ProducerState, event: Event) -> Reason | None:
        key, names = self._schema_of(event)
        burst = self._burst(st, _SCHEMA_KEY, event.event_time_ms)
        s = st.schemas.surprise(key, self.cfg.novelty_prior, burst, self.cfg.min_count)
        if not s > 0:
            return None
        observed = _schema_diff(st, names) if self._explaining else ""
        return Reason("schema", "", observed, "usual shape", s)

    def _burst(self, st: ProducerState, key: str, t_ms: int) -> float:
        """Recent novelties of one type, shape or field, decayed to ``t_ms``."""
        seen = st.novel.get(key)
        if seen is None:
            return 0.0
        count, last_ms = seen
        return count * math.exp(-max(t_ms - last_ms, 0) / (self.cfg.burst_s * 1000))

    def _note_novelties(self, st: ProducerState, event: Event) -> None:
        """Count the event's never-seen type, shape and categorical values, per field."""
        t, least = event.event_time_ms, self.cfg.min_count
        keys = []
        if event.type is not None and st.types.is_new(event.type, least):
            keys.append(_TYPE_KEY)
        if st.schemas.is_new(self._schema_of(event)[0], least):
            keys.append(_SCHEMA_KEY)
        prefix = _type_prefix(event)
        for name, value in event.strings.items():
            c = st.categorical.get(prefix + name)
            if c is not None and not c.saturated and c.is_new(value, least):
                keys.append(name)  # a field's novelties count together over event types
        for key in keys:
            st.novel[sys.intern(key)] = (self._burst(st, key, t) + 1.0, t)

    def _replayed(self, st: ProducerState, event: Event) -> Reason | None:
        """An event id the producer already sent (within its last ``replay_window`` ids)."""
        ids = st.ids
        event_id = event.strings.get(self.cfg.id_field)
        if ids is None or event_id is None or not ids.seen(event_id):
            return None
        cfg = self.cfg
        expected = ""
        if self._explaining:
            expected = f"unique ids ({ids.repeats} repeats in {ids.events} events)"
        s = ids.surprise(cfg.novelty_prior, event.event_time_ms, cfg.burst_s * 1000)
        return Reason("replayed_id", cfg.id_field, event_id, expected, s)

    def _drift(self, st: ProducerState, event: Event) -> Reason | None:
        """The numeric field whose level has crept furthest from its slow reference."""
        cfg = self.cfg
        if not st.drifts:
            return None
        best: Reason | None = None
        prefix = _type_prefix(event)
        k = cfg.drift_slack
        steps: list[tuple[Drift, float]] = []
        self._drift_steps = (event, steps)
        for name, x in event.numbers.items():
            d = st.drifts.get(prefix + name)
            if d is None or d.count < cfg.min_count:
                continue
            z = d.clipped_z(_signed_log(x), cfg.min_sd, cfg.drift_clip)
            steps.append((d, z))
            stat = d.statistic_of(z, k)
            # P(S > s) ~ exp(-2 k s) for a CUSUM under no change: -log10 of that.
            s = min(2.0 * k * stat / _LOG10, MAX_SURPRISE)
            if s > 0 and (best is None or s > best.surprise):
                if not self._explaining:
                    best = Reason("drift", name, "", "", s)
                    continue
                m = st.numeric.get(prefix + name)
                level = _unlog(m.mean) if m is not None else x
                hours = cfg.drift_horizon_s / 3600
                best = Reason(
                    "drift", name, f"recent level {level:.4g}",
                    f"{_unlog(d.mean):.4g} (reference over ~{hours:g} h)", s,
                )  # fmt: skip
        return best

    def _next_gap(self, st: ProducerState, event: Event) -> float:
        """The smoothed log inter-arrival this event would give, without updating."""
        gap = math.log1p(max(event.event_time_ms - st.last_ms, 0))
        a = self.cfg.rate_fading_factor
        return a * gap + (1 - a) * st.gap.mean

    def advance_clock(self, st: ProducerState, event: Event) -> None:
        if st.last_ms >= 0:
            st.gap.update(math.log1p(max(event.event_time_ms - st.last_ms, 0)))
        st.last_ms = max(st.last_ms, event.event_time_ms)
        st.n += 1
        st.silenced = False
        cfg = self.cfg
        if cfg.novelty_burst and st.n > 1:  # novelties are facts, like time
            self._note_novelties(st, event)
        if st.drifts:  # the CUSUMs of judged fields advance with every event
            judged, steps = self._drift_steps
            if judged is event:  # with the z values the judge computed
                for judged_drift, z in steps:
                    judged_drift.step_by(z, cfg.drift_slack)
            else:
                prefix = _type_prefix(event)
                for name, x in event.numbers.items():
                    d = st.drifts.get(prefix + name)
                    if d is not None and d.count >= cfg.min_count:
                        d.step(_signed_log(x), cfg.drift_slack, cfg.min_sd, cfg.drift_clip)
            self._drift_steps = (None, [])
        if cfg.replay_window and (event_id := event.strings.get(cfg.id_field)) is not None:
            if st.ids is None:
                st.ids = IdMemory(cfg.replay_window)
            st.ids.remember(event_id, event.event_time_ms, cfg.burst_s * 1000)

    def learn(self, st: ProducerState, event: Event) -> None:
        """Fold the event into the producer's baselines."""
        cfg = self.cfg
        if st.n > 1:
            if st.arrivals is not None:
                horizon_ms = cfg.rate_horizon_s * 1000
                st.arrivals.learn(st.gap.mean, event.event_time_ms, horizon_ms, math.inf)
            else:
                st.rate.update(st.gap.mean)
        st.size.update(math.log(max(event.size_bytes, 1)))
        prefix = _type_prefix(event)
        for name, x in event.numbers.items():
            self._learn_number(st, prefix + name, _signed_log(x), event.event_time_ms)
        if st.ids is not None and event.strings.get(cfg.id_field) is not None:
            st.ids.learn()  # remembered by advance_clock
        for name, value in event.strings.items():
            field = prefix + name
            c = st.categorical.get(field)
            if c is None:
                if len(st.categorical) >= cfg.max_categorical_fields:
                    continue
                c = st.categorical[sys.intern(field)] = Categories()
            elif c.saturated:
                continue  # an id field: nothing left to count
            c.update(value, cfg.max_categories)
            if c.saturated:
                st.categorical[field] = ID_FIELD
        if event.type is not None:
            st.types.update(event.type, cfg.max_categories)
        key, names = self._schema_of(event)
        st.schemas.update(key, cfg.max_schemas)
        if key not in st.schema_fields and len(st.schema_fields) < cfg.max_schemas:
            st.schema_fields[sys.intern(key)] = _field_list(names)

    def _learn_number(self, st: ProducerState, key: str, y: float, t_ms: int) -> None:
        """One numeric field's moments, and its profiles and drift reference if configured."""
        cfg = self.cfg
        m = st.numeric.get(key)
        if m is None:
            if len(st.numeric) >= cfg.max_numeric_fields:
                return
            m = st.numeric[sys.intern(key)] = Moments(cfg.fading_factor)
        m.update(y)
        if cfg.seasonal_buckets or cfg.window_values:
            self._learn_profiles(st, key, y, t_ms)
        if cfg.drift_horizon_s > 0:
            d = st.drifts.get(key)
            if d is None:
                d = st.drifts[sys.intern(key)] = Drift()
            d.learn(y, t_ms, cfg.drift_horizon_s * 1000, cfg.drift_restart)

    def _learn_profiles(self, st: ProducerState, key: str, y: float, t_ms: int) -> None:
        """Seasonal bucket and value window of one numeric field (if the spec has them)."""
        cfg = self.cfg
        cap = cfg.max_profiled_fields
        if cfg.seasonal_buckets:
            prof = st.seasonal.get(key)
            if prof is None and len(st.seasonal) < cap:
                prof = st.seasonal[sys.intern(key)] = Seasonal(cfg.seasonal_buckets)
            if prof is not None:
                prof.update(self._bucket(t_ms), y, cfg.seasonal_fading)
        if cfg.window_values:
            win = st.windows.get(key)
            if win is None and len(st.windows) < cap:
                win = st.windows[sys.intern(key)] = ValueWindow(cfg.window_values)
            if win is not None:
                win.update(y)

    def expire(self, now_ms: int) -> None:
        """Evict producers idle for longer than the TTL, at most once a minute of event time."""
        if now_ms > self.watermark_ms:
            self.watermark_ms = now_ms
        if self.watermark_ms < self.next_sweep_ms:
            return
        self.next_sweep_ms = self.watermark_ms + 60_000
        horizon = self.watermark_ms - self.idle_ttl_ms
        # LRU order is order of last event: stop at the first producer still fresh. Producers
        # from a baseline not seen live yet (last_ms < 0) only leave under the LRU cap.
        stale = []
        for producer, st in self.producers.items():
            if st.last_ms >= horizon:
                break
            if st.last_ms >= 0:
                stale.append(producer)
        for producer in stale:
            self._evict(producer)


def new_producer_reason(producer: str, known: int) -> Reason:
    """Why a producer's first event is news: its id was never seen (or forgotten after the
    idle TTL) while others are established (the pipeline decides when that holds).

    Examples:
        >>> new_producer_reason("pay-9", 14).expected
        'one of the 14 known producers'
    """
    expected = f"one of the {known} known producers"
    return Reason("new_producer", "", producer, expected, MAX_SURPRISE)


def _rate_per_s(smoothed_log_gap: float) -> float:
    gap_ms = math.expm1(min(smoothed_log_gap, 700.0))
    return 1000.0 / gap_ms if gap_ms > 0 else float("inf")


def _schema_diff(st: ProducerState, names: tuple[str, ...]) -> str:
    """Added and missing fields against the producer's most common shape."""
    if not st.schemas.counts:
        return "unusual shape"
    usual_key = max(st.schemas.counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
    usual = set(st.schema_fields.get(usual_key, ()))
    added = sorted(set(names) - usual)[:5]
    missing = sorted(usual - set(names))[:5]
    parts = []
    if added:
        parts.append("+" + ",".join(added))
    if missing:
        parts.append("-" + ",".join(missing))
    return " ".join(parts) or "known fields, unusual combination"
