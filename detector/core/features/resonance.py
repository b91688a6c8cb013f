"""Resonance: an Adaptive Resonance Theory (ART) memory of a numeric field's recent shapes,
whose news is a shape that resonates with none it has learned (a first category).

Fuzzy ART (Carpenter, Grossberg & Rosen 1991) keeps categories as hyperboxes of complement
coded inputs; a category *resonates* with an input when the box needs to grow little to hold
it (the match passes the vigilance). Dual-vigilance fuzzy ART (Brito da Silva et al. 2019)
uses two vigilances: above the upper one the categories in resonance learn the input (each
box shrinks to its overlap with it: fast learning), between the two a
new category joins the same cluster (a variant of a known shape), below the lower one for
every category the input starts a new cluster: a shape unlike any seen. That last event is
what this feature reports, once the memory is past its learning period and has been quiet
for a while (a run of new shapes is one piece of news, not many).

Per field the memory sees one *step* per ``resonance_step`` values: of the step's values it
keeps the one that departs most from a moving average (a spike survives the downsampling),
scales it by the field's range, rounds it to one of ``LEVELS`` levels and snaps it to the
running median when it is close (the usual level reads as one value). The input is the last
``WINDOW`` steps as their Haar wavelet coefficients (the window's form, whatever its level)
beside the steps themselves (its level).

What comes from the stream, not from look-ahead: the range is that of the learning period's
steps, widened whenever a value falls outside it (NAB's own detectors are handed each file's
minimum and maximum in advance); the learning period is a fixed count of steps; the step is
a fixed count of values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.clock import Clock
from detector.core.features.config import FeatureConfig
from detector.core.features.feature import Feature
from detector.core.features.surprise import MAX_SURPRISE, Reason, type_prefix

WINDOW = 8  # steps per input (a power of 2: the Haar transform halves it down to 1)
LEVELS = 80  # the scaled value's resolution
SNAP = 0.075  # a level this close to the running median (in units of the range) is the median
INITIAL_VIGILANCE = 0.8  # of the learning period's own pass, which sets the first vigilances
MAX_UPPER = 0.97  # the upper vigilance at most (a category must be able to learn)
GAIN = 0.2  # how fast the lower vigilance follows the recent least resonance
LEARN_RATE = 1.0  # fast learning: a resonating category shrinks to the input's overlap
# The learning period's range, widened by this share of it on each side: later values may
# leave it (a detector handed the whole series' range in advance would not need it).
PAD = 0.5
NOW_WEIGHT = 4.0  # weight of the newest step (and its complement) in the match
# The weight of each dimension of an input: [form, steps, 1 - form, 1 - steps].
DIMS = np.ones(4 * WINDOW, dtype=np.float64)
DIMS[2 * WINDOW - 1] = DIMS[4 * WINDOW - 1] = NOW_WEIGHT


def haar(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The full orthonormal Haar decomposition of ``x`` (length a power of 2): the overall
    average first, then the details from the coarsest to the finest.

    >>> haar(np.array([1.0, 1.0, 1.0, 1.0])).round(6).tolist()
    [2.0, 0.0, 0.0, 0.0]
    >>> haar(np.array([0.0, 0.0, 1.0, 1.0])).round(6).tolist()
    [1.0, -1.0, 0.0, 0.0]
    """
    parts = []
    a = x
    while len(a) > 1:
        even, odd = a[0::2], a[1::2]
        parts.append((even - odd) / math.sqrt(2.0))
        a = (even + odd) / math.sqrt(2.0)
    parts.append(a)
    return np.concatenate(parts[::-1])


def unit(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``x`` scaled to [0, 1] by its own minimum and maximum (all 0 when flat)."""
    lo, span = float(x.min()), float(x.max() - x.min())
    return (x - lo) / span if span > 0 else np.zeros_like(x)


class ShapeMemory:
    """The ART memory of one numeric field (see the module docstring).

    Examples:
        A wave learned, then the same wave (no news), then a new shape (news):

        >>> m = ShapeMemory(step=1, learn=64, capacity=256)
        >>> wave = [10.0, 30.0, 50.0, 30.0]
        >>> novel = [m.push(wave[i % 4]) for i in range(400)]
        >>> sum(novel[200:])
        0
        >>> novel = [m.push(x) for x in [10.0, 30.0, 50.0, 30.0] * 5 + [90.0, 90.0, 90.0]]
        >>> sum(novel[:20]), sum(novel[20:])
        (0, 1)
    """

    def __init__(self, step: int, learn: int, capacity: int, mask: int = 12) -> None:
        self.step, self.learn, self.capacity, self.mask = step, learn, capacity, mask
        self.n = 0  # values seen
        self.steps = 0  # steps taken
        # The step being gathered: its values' sum, least and largest.
        self.acc, self.acc_lo, self.acc_hi = 0.0, math.inf, -math.inf
        self.average = 0.0  # moving average of the steps' means (spikes depart from it)
        self.lo, self.hi = math.inf, -math.inf  # the range seen (from the learning period on)
        self.raw: list[float] = []  # the learning period's steps, unscaled
        self.median = np.zeros(LEVELS + 1, dtype=np.int64)  # steps per level
        self.recent = np.zeros(WINDOW, dtype=np.float64)  # the last steps, scaled
        self.weights = np.zeros((0, 4 * WINDOW), dtype=np.float64)  # a category per row
        self.used = np.zeros(0, dtype=np.int64)  # the step each category last resonated
        self.upper, self.lower = INITIAL_VIGILANCE, INITIAL_VIGILANCE
        self.matches = np.ones(learn, dtype=np.float64)  # the last best matches (a ring)
        self.quiet = 0  # steps since the last new cluster
        self.since = 1 << 30  # steps since the last novelty reported
        self.novel_match = 0.0  # the best match of the last novelty reported
        self.last_match = 1.0  # the best match of the last step

    # -- the steps --------------------------------------------------------------------------

    def push(self, x: float) -> int:
        """Take one value; 1 when it completes a step whose shape is news, else 0."""
        self.n += 1
        self.acc += x
        self.acc_lo, self.acc_hi = min(self.acc_lo, x), max(self.acc_hi, x)
        if self.n % self.step:
            return 0
        mean = self.acc / self.step
        lo, hi = self.acc_lo, self.acc_hi
        self.acc, self.acc_lo, self.acc_hi = 0.0, math.inf, -math.inf
        self.average = mean if self.steps == 0 else 0.5 * (self.average + mean)
        # The step's value: its extreme on the side that departs more from the average,
        # unless that departs little from the step's own mean.
        y = lo if abs(lo - self.average) > abs(hi - self.average) else hi
        if abs(y - mean) < 0.1 * abs(mean):
            y = mean
        self.steps += 1
        if self.steps <= self.learn:
            self.raw.append(y)
            if self.steps == self.learn:
                self._learned()
            return 0
        return int(self._take(y))

    def _scaled(self, y: float) -> float:
        """``y`` scaled by the range (widened to hold it), on a level, snapped to the median."""
        if y < self.lo or y > self.hi:
            self._widen(min(self.lo, y), max(self.hi, y))
        span = self.hi - self.lo
        u = (y - self.lo) / span if span > 0 else 0.0
        if not 0.0 <= u <= 1.0:  # inf / inf: a range wider than a float (hostile values)
            u = 1.0 if y >= self.hi else 0.0
        level = round(u * LEVELS)
        self.median[level] += 1
        below = np.cumsum(self.median)
        med = int(np.searchsorted(below, (below[-1] + 1) // 2))
        if abs(level - med) < SNAP * LEVELS:
            level = med
        return level / LEVELS

    def _widen(self, lo: float, hi: float) -> None:
        """The range becomes [lo, hi]: what was learned in the old one is re-expressed in it
        (the steps of the window, of every category's box and of the levels; the form is
        scale-free), so a shape learned before a widening is still known after it."""
        old, span = self.hi - self.lo, hi - lo
        if math.isfinite(old) and span > 0:
            a, b = old / span, (self.lo - lo) / span  # new = a * old + b, a <= 1
            steps, upper = slice(WINDOW, 2 * WINDOW), slice(3 * WINDOW, 4 * WINDOW)
            self.weights[:, steps] = a * self.weights[:, steps] + b
            self.weights[:, upper] = 1.0 - (a * (1.0 - self.weights[:, upper]) + b)
            self.recent = a * self.recent + b
            moved = np.rint(a * np.arange(LEVELS + 1) + b * LEVELS).astype(np.int64)
            median = np.zeros_like(self.median)
            np.add.at(median, np.clip(moved, 0, LEVELS), self.median)
            self.median = median
        self.lo, self.hi = lo, hi

    def _input(self, v: float) -> npt.NDArray[np.float64]:
        """The complement-coded input of the window ending with the scaled step ``v``."""
        self.recent[:-1] = self.recent[1:]
        self.recent[-1] = v
        form = unit(haar(unit(self.recent)))
        x = np.concatenate((form, self.recent))
        return np.concatenate((x, 1.0 - x))

    def _learned(self) -> None:
        """End of the learning period: the range, then the period's steps learned in order
        at the initial vigilance; the vigilances start from the matches seen."""
        lo, hi = min(self.raw), max(self.raw)
        self.lo, self.hi = lo - PAD * (hi - lo), hi + PAD * (hi - lo)
        found = []
        for k, y in enumerate(self.raw):
            i = self._input(self._scaled(y))
            if k + 1 >= WINDOW:
                found.append(self._resonate(i)[0])
        self.raw = []
        seen = np.array(found[len(found) // 2 :] or [1.0])
        self.upper = min(float(seen.mean()), MAX_UPPER)
        self.lower = min(float(seen.min()), self.upper)
        self.matches[:] = self.upper
        self.quiet = 0

    def _match(self, i: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], Any]:
        """Each category's match and the overlaps I ^ w. The match is the share of the
        category's box the input covers, |I ^ w| / |w| (fuzzy subsethood: 1 for an input
        inside the box), with the newest step's dimensions weighing ``NOW_WEIGHT`` each: a
        window whose last step leaves every box is news even if its earlier steps fit."""
        overlap = np.minimum(self.weights, i)
        held = overlap @ DIMS
        return held / np.maximum(self.weights @ DIMS, 1e-12), overlap

    def _resonate(self, i: npt.NDArray[np.float64]) -> tuple[float, bool]:
        """Present input ``i``: (the best match, whether it started a new cluster)."""
        if not len(self.weights):
            self._add(i)
            return 1.0, False
        match, overlap = self._match(i)
        best = float(match.max())
        if best >= self.upper:  # every category in resonance learns, not only the best
            on = match >= self.upper
            w = self.weights[on]
            self.weights[on] = LEARN_RATE * overlap[on] + (1.0 - LEARN_RATE) * w
            self.used[on] = self.steps
            return best, False
        self._add(i)  # a variant of a known shape (lower <= best) or a new cluster
        return best, best < self.lower

    def _add(self, i: npt.NDArray[np.float64]) -> None:
        if len(self.weights) >= self.capacity:  # bounded: the least recently resonating goes
            j = int(np.argmin(self.used))
            self.weights[j], self.used[j] = i, self.steps
            return
        self.weights = np.vstack((self.weights, i))
        self.used = np.append(self.used, self.steps)

    def _take(self, y: float) -> bool:
        i = self._input(self._scaled(y))
        best, new_cluster = self._resonate(i)
        self.last_match = best
        self.matches[self.steps % self.learn] = best
        self.since += 1
        self.quiet += 1
        novel = new_cluster and (
            (self.quiet > self.mask and self.since > self.mask)
            or best < self.novel_match * (0.9 if self.since <= self.mask else 0.7)
        )
        if novel:
            self.since, self.novel_match = 0, best
        if new_cluster:
            self.quiet = 0
        if self.steps % (self.learn // 2) == 0 or self.since == self.mask:
            self._adapt()
        return novel

    def _adapt(self) -> None:
        """The vigilances follow the recent matches: the upper their mean, the lower their
        least (a step that resonates less than any recent one is news)."""
        self.upper = min(float(self.matches.mean()), MAX_UPPER)
        least = float(self.matches.min())
        lower = self.lower + GAIN * (least - self.lower)
        if self.novel_match > 0:
            lower = max(lower, self.novel_match)
        self.lower = min(lower, self.upper)

    # -- checkpoints ------------------------------------------------------------------------

    def dump(self, w: Writer) -> None:
        for v in (self.step, self.learn, self.capacity, self.mask, self.n, self.steps):
            w.i64(v)
        for v in (self.quiet, self.since):
            w.i64(v)
        for f in (self.acc, self.acc_lo, self.acc_hi, self.average, self.lo, self.hi):
            w.f64(f)
        for f in (self.upper, self.lower, self.novel_match, self.last_match):
            w.f64(f)
        w.f64s(self.raw)
        w.i64s(self.median)
        w.f64s(self.recent)
        w.count(len(self.weights))
        w.f64s(self.weights.ravel())
        w.i64s(self.used)
        w.f64s(self.matches)

    @classmethod
    def load(cls, r: Reader) -> ShapeMemory:
        step, learn, capacity, mask = r.i64(), r.i64(), r.i64(), r.i64()
        m = cls(step, learn, capacity, mask)
        m.n, m.steps, m.quiet, m.since = r.i64(), r.i64(), r.i64(), r.i64()
        m.acc, m.acc_lo, m.acc_hi, m.average = r.f64(), r.f64(), r.f64(), r.f64()
        m.lo, m.hi = r.f64(), r.f64()
        m.upper, m.lower, m.novel_match, m.last_match = r.f64(), r.f64(), r.f64(), r.f64()
        m.raw = r.f64s().tolist()
        m.median = r.i64s()
        m.recent = r.f64s()
        rows = r.count()
        m.weights = r.f64s().reshape(rows, 4 * WINDOW)
        m.used = r.i64s()
        m.matches = r.f64s()
        return m


class ResonanceFeature(Feature):
    """Per numeric field (per event type; at most ``max_profiled_fields`` per producer) a
    :class:`ShapeMemory`. It judges nothing (its surprise stays 0): a step whose shape
    starts a new cluster is :meth:`decisive`, an alert by itself even inside the producer's
    cooldown. Every value enters its memory, whatever the verdict (a shape is a fact). Off
    (no state, nothing checkpointed) unless ``resonance_step`` > 0."""

    name = "resonance"

    def __init__(self, cfg: FeatureConfig, clock: Clock) -> None:
        super().__init__(cfg, clock)
        self.on = cfg.resonance_step > 0
        # The event stepped last and its news: decisive (asked first, for established
        # producers only) and advance (every event) step each event's memories once.
        self._event: Event | None = None
        self._news: Reason | None = None

    def new(self) -> dict[str, ShapeMemory] | None:
        # Off: None (shared), not an empty dict per slot (64 bytes a producer).
        return {} if self.on else None

    def judge(self, slot: int, event: Event) -> float:
        return 0.0

    def explain(self, slot: int, event: Event) -> Reason | None:
        return None

    def decisive(self, slot: int, event: Event) -> Reason | None:
        if not self.on:
            return None
        if event is not self._event:
            self._step(slot, event)
        return self._news

    def advance(self, slot: int, event: Event) -> None:
        if self.on and event is not self._event:
            self._step(slot, event)
        self._event = None

    def _step(self, slot: int, event: Event) -> None:
        """Each of the event's values enters its field's memory; the first shape that is news
        becomes the event's reason."""
        cfg, memories = self.cfg, self.slots[slot]
        self._event, self._news = event, None
        prefix = type_prefix(event.type)
        for name, x in event.numbers.items():
            key = prefix + name
            m = memories.get(key)
            if m is None:
                if len(memories) >= cfg.max_profiled_fields:
                    continue
                m = memories[key] = ShapeMemory(
                    cfg.resonance_step, cfg.resonance_learn, cfg.resonance_capacity
                )
            if m.push(x) and self._news is None:
                self._news = Reason(
                    "resonance", name,
                    f"last {WINDOW * m.step} values unlike every learned shape "
                    f"(best match {m.last_match:.3f})",
                    f"a match of at least {m.lower:.3f} with one of {len(m.weights)} shapes",
                    MAX_SURPRISE,
                )  # fmt: skip

    def dump(self, slot: int, w: Writer) -> None:
        if not self.on:
            return  # no state: records stay as they were without the feature
        memories = self.slots[slot]
        w.count(len(memories))
        for key, m in memories.items():
            w.text(key)
            m.dump(w)

    def load(self, slot: int, r: Reader) -> None:
        if not self.on:
            return
        memories = self.slots[slot] = {}
        for _ in range(r.count()):
            key = r.text()
            memories[key] = ShapeMemory.load(r)
