"""Calibration: raw model scores to one [0, 1] scale, per producer.

A calibrated score is ``1 - tail``, where ``tail`` estimates how often this producer's past
events scored at least this high: the empirical tail from a histogram of its own raw scores,
extended beyond the data by an exponential (peaks-over-threshold) fit of its top scores. A
threshold of 0.999 then means "rarer than one in a thousand of this producer's events",
whatever the model and whatever the producer.

Examples:
    >>> cal = Calibrator(max_raw=32.0, bins=128)
    >>> counts = cal.new()
    >>> for i in range(1000):
    ...     cal.learn(counts, (i % 10) / 10)
    >>> round(cal.score(counts, 0.0), 3), cal.score(counts, 0.95) < 0.99 < cal.score(counts, 6.0)
    (0.0, True)
"""

from __future__ import annotations

import math
from array import array

import numpy as np
import numpy.typing as npt

from detector.core.codec import Reader, Writer
from detector.core.features.categories import (
    Pool,
    grown_block,
    pickled,
    regrow,
    resized,
    unpickled,
)
from detector.core.features.columns import capacity

MAX_COUNT = 2**31 - 1  # scores a histogram's 4-byte bins count (then it counts no more)


class TailCounts:
    """One producer's histogram of past raw scores.

    The bins are held up to the highest one used so far (``grow`` extends them): most
    producers' scores fill a few dozen low bins, and the empty ones above them cost 4 bytes
    each per producer. ``full()`` gives all ``bins`` of them. An ``array`` of int32, not a
    numpy one: every event reads a few bins and counts one, and numpy's per-call cost was
    most of that. 4-byte bins: a histogram that counted :data:`MAX_COUNT` scores counts no
    more (it keeps its shape).
    """

    __slots__ = ("bins", "counts", "n")

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.counts = array("i")
        self.n = 0

    def grow(self, used: int) -> None:
        """Hold at least the first ``used`` bins."""
        if used > len(self.counts):
            self.counts.frombytes(bytes(4 * (min(used, self.bins) - len(self.counts))))

    def full(self) -> npt.NDArray[np.int64]:
        counts = np.zeros(self.bins, dtype=np.int64)
        counts[: len(self.counts)] = self.counts
        return counts

    def dump(self, w: Writer) -> None:
        # The bins held (up to the last non-empty one: a bin is only held once counted).
        w.i64s(self.counts)
        w.i64(self.n)

    @classmethod
    def load(cls, r: Reader, bins: int) -> TailCounts:
        tc = cls(bins)
        tc.counts = array("i", r.i64s().tolist())
        tc.n = r.i64()
        return tc


class Tails:
    """Every slot's histogram (a :class:`TailCounts`' bins and count) in one pool: a slot's
    held bins are a block of the int32 column ``counts`` (from a :class:`Pool`, moved and
    compacted with ``categories.regrow`` as the categorical blocks are), ``used`` of them
    held (up to the highest bin counted, as a ``TailCounts`` holds them), ``n`` its scores
    counted (-1: no histogram yet). No object and no 64-byte ``array`` header per producer,
    and a checkpoint's base writes the columns as they are (no loop over slots)."""

    def __init__(self, bins: int) -> None:
        self.nbins = bins
        self.slots = 0  # slots reset so far (the slot columns hold state up to here)
        self.pool = Pool()
        self.counts = array("i")
        self.start = array("i")
        self.size = array("i")
        self.used = array("i")
        self.n = array("i")

    def __reduce__(self) -> tuple[object, ...]:
        columns = dict.fromkeys(_TAIL_COLUMNS, "i")
        return (Tails, (0,), pickled(self, columns, ("nbins", "slots", "pool")))

    def __setstate__(self, state: dict[str, object]) -> None:
        unpickled(self, state)

    def extents(self) -> dict[str, int]:
        """How much of each column holds state (a checkpoint writes no more)."""
        return {"counts": self.pool.top} | dict.fromkeys(_TAIL_COLUMNS[1:], self.slots)

    def reset(self, slot: int) -> None:
        """Slot ``slot`` afresh: no histogram (its block let go)."""
        if slot >= len(self.n):
            size = capacity(len(self.n), slot + 1)
            self.start = resized(self.start, "i", size)
            self.size = resized(self.size, "i", size)
            self.used = resized(self.used, "i", size)
            self.n = resized(self.n, "i", size)
        if slot >= self.slots:
            self.slots = slot + 1
        self.pool.release(self.start[slot], self.size[slot])
        self.start[slot] = 0
        self.size[slot] = 0
        self.used[slot] = 0
        self.n[slot] = -1

    def new(self, slot: int) -> None:
        """An empty histogram for ``slot`` (which has none)."""
        self.n[slot] = 0

    def grow(self, slot: int, used: int) -> None:
        """Hold at least the slot's first ``used`` bins (the new ones empty); its block grows
        by half again, so a histogram filling its bins one by one moves a few times only."""
        used = min(used, self.nbins)
        while used > self.size[slot]:  # (twice when a compaction left it a block too small)
            (self.counts,) = regrow(
                self.pool, self.start, self.size, self.used, self.slots, slot,
                min(max(used, grown_block(self.size[slot])), self.nbins), [(self.counts, "i")],
            )  # fmt: skip
        # The bins past a block's used ones are zero: a block is given from the pool's top
        # (never written) or cut by a compaction (zeros after its used), never reused.
        if used > self.used[slot]:
            self.used[slot] = used

    def get(self, slot: int) -> TailCounts | None:
        """A copy of the slot's histogram (None: none yet)."""
        if self.n[slot] < 0:
            return None
        tc = TailCounts(self.nbins)
        start = self.start[slot]
        tc.counts = array("i", self.counts[start : start + self.used[slot]])
        tc.n = self.n[slot]
        return tc

    def put(self, slot: int, tc: TailCounts | None) -> None:
        """The slot's histogram set to a copy of ``tc``."""
        self.reset(slot)
        if tc is None:
            return
        self.new(slot)
        self.grow(slot, len(tc.counts))
        start = self.start[slot]
        for i in range(len(tc.counts)):
            self.counts[start + i] = tc.counts[i]
        self.n[slot] = tc.n


# The pooled bins, then the slot columns; and a base's record of a Tails (its attributes, in
# order: a change here is a change of the checkpoint format).
_TAIL_COLUMNS = ("counts", "start", "size", "used", "n")
TAILS = ("nbins", "slots", "pool", *_TAIL_COLUMNS)


def counted_from(counts: array[int], start: int, used: int, n: int, b: int) -> int:
    """Past scores in bin ``b`` or higher of the histogram held in ``counts[start:start +
    used]`` that counted ``n`` (a loop: compiled, a C loop over the held bins)."""
    below = 0
    for i in range(start, start + min(b, used)):
        below += counts[i]
    return n - below


def fitted_tail(
    counts: array[int], start: int, used: int, n: int, raw: float, width: float, bins: int,
    tail_points: int, min_excess: float,
) -> float:  # fmt: skip
    """The tail at ``raw`` from a peaks-over-threshold fit (the histogram as in
    :func:`counted_from`): ``u`` is the lowest bin edge with ``tail_points`` past scores at or
    above it (there must be), the excess over ``u`` of the scores above it is exponential with
    the mean excess as its scale (bin mid-points; at least ``min_excess``)."""
    # The bins above the held ones are empty: j, the highest bin with tail_points scores in
    # it or above, is a held one.
    above = 0
    j = used - 1
    while j > 0:
        above += counts[start + j]
        if above >= tail_points:
            break
        j -= 1
    else:
        above += counts[start]
    u = j * width
    # The last bin also holds everything beyond max_raw, whose true values are unknown: one
    # extreme past score there would inflate the fitted scale for good, so the scale comes
    # from the bins below it (when there are any).
    end = min(bins - 1 if j < bins - 1 else bins, used)
    total = 0
    excess = 0.0
    for i in range(j, end):
        total += counts[start + i]
        excess += counts[start + i] * ((i + 0.5) * width - u)
    scale = max(excess / total if total else 0.0, min_excess)
    return above / (n + 1) * math.exp(-(raw - u) / scale)


class Calibrator:
    """Maps raw scores in ``[0, max_raw]`` to calibrated scores in ``[0, 1]``.

    A histogram is a slot's of a :class:`Tails` (``*_at``: the pipeline's) or one
    :class:`TailCounts` (a producer's record, a view).

    Args:
        max_raw: top of the histogram (higher raw scores land in the last bin).
        bins: histogram resolution.
        tail_points: past scores needed above a value to trust the empirical tail there.
        min_excess: floor on the fitted tail's scale, so a narrow past never over-extrapolates.
    """

    def __init__(
        self, max_raw: float, bins: int = 64, tail_points: int = 10, min_excess: float = 0.1
    ) -> None:
        self.max_raw = max_raw
        self.bins = bins
        self.width = max_raw / bins
        self.tail_points = tail_points
        self.min_excess = min_excess * max_raw / 32.0

    def new(self) -> TailCounts:
        return TailCounts(self.bins)

    def _bin(self, raw: float) -> int:
        # Compared as floats first: compiled, a double beyond the integers is no C integer.
        x = raw / self.width
        if x != x:
            msg = "raw score is NaN"
            raise ValueError(msg)
        if x >= self.bins - 1:
            return self.bins - 1
        return int(x) if x > 0 else 0

    def learn(self, tc: TailCounts, raw: float) -> None:
        if tc.n >= MAX_COUNT:
            return  # 4-byte bins, full: the histogram keeps its shape
        b = self._bin(raw)
        if b >= len(tc.counts):
            tc.grow(b + 1)
        tc.counts[b] += 1
        tc.n += 1

    def learn_at(self, tails: Tails, slot: int, raw: float) -> None:
        """:meth:`learn` into the slot's histogram (which must exist: ``tails.new``)."""
        if tails.n[slot] >= MAX_COUNT:
            return
        b = self._bin(raw)
        if b >= tails.used[slot]:
            tails.grow(slot, b + 1)
        tails.counts[tails.start[slot] + b] += 1
        tails.n[slot] += 1

    def _tail(self, counts: array[int], start: int, used: int, n: int, raw: float) -> float:
        b = self._bin(raw)
        # Most events score in the lowest bins: count what lies below them (no cumulative
        # sum over every bin per event); the fitted tail below needs the whole picture.
        at_or_above = counted_from(counts, start, used, n, b)
        if at_or_above >= self.tail_points or n < self.tail_points:
            return (at_or_above + 1) / (n + 1)
        # Rare (a score beyond the producer's few highest): the tail above the lowest bin
        # edge with tail_points scores above it, fitted (a loop: compiled, in C).
        return fitted_tail(
            counts, start, used, n, raw, self.width, self.bins, self.tail_points, self.min_excess
        )

    def tail(self, tc: TailCounts, raw: float) -> float:
        """Estimated probability of a past score at least ``raw`` (in ``(0, 1]``)."""
        return self._tail(tc.counts, 0, len(tc.counts), tc.n, raw)

    def score(self, tc: TailCounts, raw: float) -> float:
        return 1.0 - self.tail(tc, raw)

    def score_at(self, tails: Tails, slot: int, raw: float) -> float:
        """:meth:`score` against the slot's histogram (which must exist)."""
        return 1.0 - self._tail(
            tails.counts, tails.start[slot], tails.used[slot], tails.n[slot], raw
        )


class RarityTrend:
    """One producer's recent rarities and the long-run moments of their moving average."""

    __slots__ = ("count", "filled", "mean", "pos", "recent", "var")

    def __init__(self, window: int) -> None:
        self.recent: npt.NDArray[np.float64] = np.zeros(window, dtype=np.float64)
        self.pos = 0
        self.filled = 0
        self.count = 0
        self.mean = 0.0
        self.var = 0.0

    def dump(self, w: Writer) -> None:
        w.f64s(self.recent)
        for v in (self.pos, self.filled, self.count):
            w.i64(v)
        w.f64(self.mean)
        w.f64(self.var)

    @classmethod
    def load(cls, r: Reader) -> RarityTrend:
        rt = cls(0)
        rt.recent = r.f64s()
        rt.pos, rt.filled, rt.count = r.i64(), r.i64(), r.i64()
        rt.mean, rt.var = r.f64(), r.f64()
        return rt


class Likelihood:
    """Anomaly likelihood over calibrated scores, after HTM's (Ahmad et al. 2017).

    A calibrated score ``c`` has the rarity ``r = -log10(1 - c)`` (3 for 1 in 1,000). The mean
    rarity of the producer's last ``window`` events is compared with the long-run mean and
    spread of that moving average (exponentially weighted, ``fading`` per event): a run of
    moderately rare events, none rare enough alone, makes the mean climb far above its usual
    level. The likelihood score is ``1 - 4 Q(z)`` of that climb (``Q``: the one-sided normal
    tail of its z-score; conservative), and the event's score is the larger of the two. An
    isolated spike moves the mean by ``r/window`` only; it still counts through its own
    calibrated score. With ``max_rarity`` (> 0), each rarity enters the mean capped at it, so
    one extreme value (rarity 12) does not read as a run of moderately rare ones.

    Examples:
        >>> lk = Likelihood(window=20, fading=0.005)
        >>> t = lk.new()
        >>> quiet = [lk.update(t, 0.5 + 0.4 * (i % 3 == 0))[0] for i in range(600)]
        >>> max(quiet[200:]) < 0.99
        True
        >>> burst = [lk.update(t, 0.995)[0] for _ in range(15)]
        >>> burst[-1] > 0.9999
        True
    """

    def __init__(
        self,
        window: int,
        fading: float,
        min_count: int = 100,
        min_sd: float = 0.05,
        max_rarity: float = 0.0,
    ) -> None:
        self.window = window
        self.fading = fading
        self.max_rarity = max_rarity if max_rarity > 0 else math.inf
        self.min_count = min_count
        self.min_sd = min_sd

    def new(self) -> RarityTrend:
        return RarityTrend(self.window)

    def update(self, rt: RarityTrend, calibrated: float) -> tuple[float, float, float]:
        """Fold in one calibrated score; returns (likelihood score in [0, 1], the moving mean
        rarity, its usual level). The likelihood judges the moments *before* this event."""
        rarity = min(-math.log10(max(1.0 - calibrated, 1e-12)), self.max_rarity)
        rt.recent[rt.pos] = rarity
        rt.pos = (rt.pos + 1) % len(rt.recent)
        rt.filled = min(rt.filled + 1, len(rt.recent))
        m = float(rt.recent[: rt.filled].mean())
        score = 0.0
        usual = rt.mean
        if rt.count >= self.min_count:
            sd = max(math.sqrt(max(rt.var, 0.0)), self.min_sd)
            z = (m - rt.mean) / sd
            if z > 0:  # conservative: 1 - 4 x the one-sided normal tail
                score = max(1.0 - 2.0 * math.erfc(z / math.sqrt(2.0)), 0.0)
        rt.count += 1
        if rt.count == 1:
            rt.mean = m
        else:
            d = m - rt.mean
            inc = self.fading * d
            rt.mean += inc
            rt.var = (1.0 - self.fading) * (rt.var + d * inc)
        return score, m, usual
