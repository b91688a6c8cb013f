"""Joint: a producer's numeric fields (per event type) judged together, so that values each
usual alone but unusual together (a correlation breaking: latency up while the request count
falls, a total that no longer follows its item count) are news.

Per (producer, event type), a fading mean and covariance of up to ``joint_fields`` fields in
signed-log space, and Hotelling's T² of each event against them: the squared Mahalanobis
distance of the event's standardised values under the fields' correlation matrix shrunk
towards the identity (``joint_ridge``: a near-singular pair, or two fields always equal, must
not make every rounding error infinitely surprising). Under the baseline, T² is about
chi-square with ``k`` degrees of freedom; the surprise is ``-log10`` of its tail.

A value far out in one field is the value feature's to name; T² counts it too, but with
``k`` degrees of freedom its surprise stays below the value feature's, so the joint reason
leads only when the combination is rarer than any of its parts.

A relation that breaks for a while (a total no longer following its item count) makes many
events each only a little unusual, and a busy producer's fading model would learn them within
minutes. So each row also keeps a CUSUM of T² (:meth:`JointTable.run_after`): the log
likelihood ratio of "the fields' spread about their relation is ``_SPREAD`` times its usual"
against "as usual", ``(1 - 1/v) T²/2 - (k/2) ln v`` per event of values each usual alone
(within ``_RUN_Z`` sds: a value far out is the value feature's), clipped (one unusual
combination is not a run) and capped (so it falls back within tens of events once the relation
holds again). Under no change it drifts down (T² averages ``k``) and ``P(S > s) <= e^-s``
(Wald), so its surprise is ``S / ln 10``; the event's surprise is the larger of its own and the
run's. It advances with every judged event, learned or not (:meth:`JointFeature.advance`), so a
break keeps accumulating evidence while its events are held back from the model. An event
learned while its run is high (``_RUN_RESTART``) was accepted as a new normal: the model
restarts from it (as the drift feature's reference does), or the run would stay high while a
slow model caught up.
"""

from __future__ import annotations

import math
import sys
from array import array
from typing import Any

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features.clock import Clock
from detector.core.features.columns import capacity, chain, column, grown, restored
from detector.core.features.config import FeatureConfig
from detector.core.features.feature import Feature
from detector.core.features.surprise import LOG10, MAX_SURPRISE, Reason, signed_log

# A pair whose correlation is weaker than this is "unrelated" in reasons.
_RELATED = 0.3
# The run's alternative: the fields' spread about their relation this many times its usual
# (variance), as when one field follows another value than the one it relates to.
_SPREAD = 4.0
_RUN_GAIN = 0.5 * (1.0 - 1.0 / _SPREAD)  # per unit of T²
_RUN_COST = 0.5 * math.log(_SPREAD)  # per field
_RUN_CLIP = 3.0 * LOG10  # one event moves the run by at most a surprise of 3
_RUN_Z = 4.0  # an event with a field further out (in sds) is the value feature's: not counted
_RUN_CAP = 20.0 * LOG10  # the run's surprise stops at 20: beyond any threshold, and brief
# An event learned with a run this high was accepted as a new normal (a run the pipeline
# adapted to, or a producer whose calibration finds it usual): the model starts afresh.
_RUN_RESTART = 0.5 * _RUN_CAP


def chi2_surprise(x: float, k: int) -> float:
    """``-log10`` of the chi-square tail ``P(X >= x)`` with ``k`` degrees of freedom.

    The closed forms for integer ``k`` (a finite sum of Poisson terms; an odd ``k`` adds the
    normal tail of one degree of freedom), summed from the largest term down, in logs.

    Examples:
        >>> round(chi2_surprise(3.841, 1), 3), round(chi2_surprise(5.991, 2), 3)
        (1.301, 1.301)
        >>> round(chi2_surprise(11.07, 5), 3), chi2_surprise(0.0, 3)
        (1.301, 0.0)
    """
    if x <= 0.0:
        return 0.0
    h = 0.5 * x
    if k % 2 == 0:
        # P = exp(-h) * sum_{i < k/2} h^i / i!
        term, total = 1.0, 1.0
        for i in range(1, k // 2):
            term *= h / i
            total += term
        s = (h - math.log(total)) / LOG10
    else:
        # P = erfc(sqrt(h)) + exp(-h) * sum_{i=1}^{(k-1)/2} h^(i-1/2) / Gamma(i+1/2)
        total = 0.0
        term = math.sqrt(h) / math.gamma(1.5)
        for i in range(1, (k - 1) // 2 + 1):
            total += term
            term *= h / (i + 0.5)
        p = math.erfc(math.sqrt(h)) + math.exp(-h) * total
        # Beyond doubles (p == 0), the largest Poisson term is the order of magnitude.
        s = -math.log10(p) if p > 0.0 else (h - math.log(max(total, 1e-300))) / LOG10
    return min(max(s, 0.0), MAX_SURPRISE)


class JointTable:
    """Every producer's joint models as rows: one per (slot, event type), chained per slot in
    the order the types came, at most ``max_types`` per slot.

    Columns: ``count`` (int64), ``next`` (int32: the slot's next row), ``nf`` (int8: the
    row's fields), ``run`` (float64: the CUSUM of T², see the module), ``mean`` (``k``
    float64 per row) and ``cov`` (the lower triangle of the covariance, ``k(k+1)/2`` float64
    per row), with ``k`` = ``joint_fields``; per row the
    event type and the names of its fields (the first ``k`` numeric fields, sorted by name, of
    the first event of the type with at least two), shared by the rows that have them (the
    type interned, the names one tuple per distinct one, counted in :attr:`shapes`: not a
    string and a tuple per row). Freed rows (a slot reset) are reused.
    """

    def __init__(self, k: int, max_types: int) -> None:
        self.k = k
        self.tri = k * (k + 1) // 2
        self.max_types = max_types
        self.count: array[int] = column("q", 0)
        self.next: array[int] = column("i", 0)
        self.nf: array[int] = column("b", 0)
        self.run: array[float] = column("d", 0)
        self.mean: array[float] = column("d", 0)
        self.cov: array[float] = column("d", 0)
        self.etype: list[str | None] = []
        self.names: list[tuple[str, ...]] = []
        # Each distinct tuple of names held by rows: [the tuple the rows share, rows holding it].
        self.shapes: dict[tuple[str, ...], list[Any]] = {}
        self.head: array[int] = column("i", 0)
        self.types: array[int] = column("i", 0)
        self.used = 0
        self.free = -1
        # Scratch of one judgement: the event's values, standardised, and a Cholesky factor.
        self.y: array[float] = column("d", k)
        self.z: array[float] = column("d", k)
        self.chol: array[float] = column("d", k * k)
        self._bind()

    def _bind(self) -> None:
        # joint.pxd types these as memoryviews of the columns (the .py: the same arrays).
        self._count, self._next, self._nf = self.count, self.next, self.nf
        self._run = self.run
        self._mean, self._cov = self.mean, self.cov
        self._head, self._types = self.head, self.types
        self._y, self._z, self._chol = self.y, self.z, self.chol

    def __reduce__(self) -> tuple[Any, ...]:
        names = (
            "k", "tri", "max_types", "count", "next", "nf", "run", "mean", "cov", "etype", "names",
            "shapes", "head", "types", "used", "free", "y", "z", "chol",
        )  # fmt: skip
        return restored, (JointTable, {name: getattr(self, name) for name in names})

    def reset(self, slot: int) -> None:
        """Free ``slot``'s rows (a new producer takes it)."""
        if slot >= len(self.head):
            have, n = len(self.head), capacity(len(self.head), slot + 1)
            self.head, self.types = grown(self.head, n), grown(self.types, n)
            for i in range(have, n):
                self.head[i] = -1
            self._bind()
        else:
            row = self._head[slot]
            while row >= 0:
                after = self._next[row]
                self.etype[row] = None
                self._let_go(self.names[row])
                self.names[row] = ()
                self._next[row] = self.free
                self.free = row
                row = after
        self._head[slot] = -1
        self._types[slot] = 0

    def find(self, slot: int, etype: str | None) -> int:
        """The row of ``etype`` in ``slot``, or -1."""
        row = self._head[slot]
        while row >= 0 and self.etype[row] != etype:
            row = self._next[row]
        return row

    def add(self, slot: int, etype: str | None, names: tuple[str, ...]) -> int:
        """A cleared row for ``etype`` over ``names``, first of ``slot``'s."""
        row = self.free
        if row >= 0:
            self.free = self._next[row]
        else:
            row = self.used
            self.used += 1
            if row >= len(self.count):
                n = capacity(len(self.count), row + 1)
                self.count, self.next, self.nf = (
                    grown(self.count, n),
                    grown(self.next, n),
                    grown(self.nf, n),
                )
                self.run = grown(self.run, n)
                self.mean, self.cov = grown(self.mean, n * self.k), grown(self.cov, n * self.tri)
                self.etype.extend([None] * (n - len(self.etype)))
                self.names.extend([()] * (n - len(self.names)))
                self._bind()
        self._count[row] = 0
        self._run[row] = 0.0
        self._nf[row] = len(names)
        self.etype[row] = None if etype is None else sys.intern(etype)
        if names:
            held = self.shapes.get(names)
            if held is None:
                names = tuple(map(sys.intern, names))
                held = self.shapes[names] = [names, 0]
            held[1] += 1
            names = held[0]
        self.names[row] = names
        for i in range(row * self.k, (row + 1) * self.k):
            self._mean[i] = 0.0
        for i in range(row * self.tri, (row + 1) * self.tri):
            self._cov[i] = 0.0
        # First in the chain: a slot's rows are few (max_types), their order is the record's.
        self._next[row] = self._head[slot]
        self._head[slot] = row
        self._types[slot] += 1
        return row

    def _let_go(self, names: tuple[str, ...]) -> None:
        if not names:
            return
        held = self.shapes[names]
        held[1] -= 1
        if not held[1]:
            del self.shapes[names]

    def count_shapes(self) -> None:
        """:attr:`shapes` counted afresh from the rows (a base read back shares each distinct
        tuple already)."""
        self.shapes = {}
        for names in self.names:
            if names:
                held = self.shapes.setdefault(names, [names, 0])
                held[1] += 1

    def rows(self, slot: int) -> list[int]:
        """``slot``'s rows, newest first (the chain's order)."""
        return chain(self.head, self.next, slot)

    def gather(self, row: int, numbers: dict[str, float]) -> bool:
        """The event's values of the row's fields (signed log) into the scratch ``y``; False
        when the event lacks one of them (it is then neither judged nor learned)."""
        for i, name in enumerate(self.names[row]):
            x = numbers.get(name)
            if x is None:
                return False
            self._y[i] = signed_log(x)
        return True

    def learn(self, row: int, fading: float) -> None:
        """Fold the scratch ``y`` into the row's mean and covariance (exponentially weighted;
        a plain average over the first ``1 / fading`` events)."""
        nf, k, tri = self._nf[row], self.k, self.tri
        n = self._count[row]
        self._count[row] = n + 1
        m0, c0 = row * k, row * tri
        if n == 0:
            for i in range(nf):
                self._mean[m0 + i] = self._y[i]
            return
        a = max(fading, 1.0 / (n + 1))
        for i in range(nf):
            self._z[i] = self._y[i] - self._mean[m0 + i]  # the deviation, before the mean moves
            self._mean[m0 + i] += a * self._z[i]
        for i in range(nf):
            di = self._z[i]
            base = c0 + i * (i + 1) // 2
            for j in range(i + 1):
                self._cov[base + j] = (1.0 - a) * (self._cov[base + j] + a * di * self._z[j])

    def t2(self, row: int, min_sd: float, ridge: float) -> float:
        """Hotelling's T² of the scratch ``y`` against the row, leaving the standardised
        values in ``z``: ``z' R⁻¹ z`` with ``R`` the fields' correlations times
        ``1 - ridge`` off the diagonal (its Cholesky factor in the scratch; ``y`` is spent)."""
        nf, k, tri = self._nf[row], self.k, self.tri
        m0, c0 = row * k, row * tri
        for i in range(nf):
            sd = max(math.sqrt(max(self._cov[c0 + i * (i + 1) // 2 + i], 0.0)), min_sd)
            self._z[i] = (self._y[i] - self._mean[m0 + i]) / sd
            self._y[i] = sd  # the sds, while R is factored
        keep = 1.0 - ridge
        for i in range(nf):
            base = c0 + i * (i + 1) // 2
            for j in range(i + 1):
                if i == j:
                    s = 1.0
                else:
                    r = self._cov[base + j] / (self._y[i] * self._y[j])
                    s = keep * min(max(r, -1.0), 1.0)
                for m in range(j):
                    s -= self._chol[i * k + m] * self._chol[j * k + m]
                if i == j:
                    # R is at least ridge * I (the sds are floored at the fields' own):
                    # positive definite; the floor only guards rounding.
                    self._chol[i * k + i] = math.sqrt(max(s, 1e-12))
                else:
                    self._chol[i * k + j] = s / self._chol[j * k + j]
        # Forward substitution L w = z: T² = |w|² (w in the scratch y).
        t = 0.0
        for i in range(nf):
            w = self._z[i]
            for m in range(i):
                w -= self._chol[i * k + m] * self._y[m]
            w /= self._chol[i * k + i]
            self._y[i] = w
            t += w * w
        return t

    def run_after(self, row: int, t2: float) -> float:
        """The row's CUSUM once an event of Hotelling's T² ``t2`` is counted (not stored);
        right after :meth:`t2`, whose standardised values it reads: an event with a field
        beyond ``_RUN_Z`` sds is not counted."""
        for i in range(self._nf[row]):
            if abs(self._z[i]) > _RUN_Z:
                return self._run[row]
        step = min(_RUN_GAIN * t2 - _RUN_COST * self._nf[row], _RUN_CLIP)
        return min(max(self._run[row] + step, 0.0), _RUN_CAP)

    def step(self, row: int, t2: float) -> None:
        """Count an event of Hotelling's T² ``t2`` in the row's CUSUM."""
        self._run[row] = self.run_after(row, t2)

    def restart(self, row: int) -> None:
        """Forget the row's model and run (a new normal: it learns afresh from the next)."""
        self._count[row] = 0
        self._run[row] = 0.0
        for i in range(row * self.tri, (row + 1) * self.tri):
            self._cov[i] = 0.0

    def dump(self, row: int, w: Writer) -> None:
        nf, m0, c0 = self._nf[row], row * self.k, row * self.tri
        w.i64(self._count[row])
        w.f64(self._run[row])
        for i in range(nf):
            w.f64(self._mean[m0 + i])
        for i in range(nf * (nf + 1) // 2):
            w.f64(self._cov[c0 + i])

    def load(self, row: int, r: Reader) -> None:
        nf, m0, c0 = self.nf[row], row * self.k, row * self.tri
        self.count[row] = r.i64()
        self.run[row] = r.f64()
        for i in range(nf):
            self.mean[m0 + i] = r.f64()
        for i in range(nf * (nf + 1) // 2):
            self.cov[c0 + i] = r.f64()


def joint_row(
    table: JointTable, slot: int, etype: str | None, numbers: dict[str, float], min_count: int
) -> int:
    """The row judging this event (its values gathered in the scratch), or -1: no joint model
    of the type, one still warming up (``min_count`` events), or a field missing."""
    row = table.find(slot, etype)
    if row < 0 or table._count[row] < min_count or not table.gather(row, numbers):
        return -1
    return row


def judge_joint(
    table: JointTable, slot: int, etype: str | None, numbers: dict[str, float],
    min_count: int, min_sd: float, ridge: float,
) -> float:  # fmt: skip
    """The event's joint surprise: the chi-square tail of its T², or its run's if larger (0
    when not judged)."""
    row = joint_row(table, slot, etype, numbers, min_count)
    if row < 0:
        return 0.0
    t = table.t2(row, min_sd, ridge)
    return max(chi2_surprise(t, table._nf[row]), table.run_after(row, t) / LOG10)


def step_joint(
    table: JointTable, slot: int, etype: str | None, numbers: dict[str, float],
    min_count: int, min_sd: float, ridge: float,
) -> None:  # fmt: skip
    """Count a judged event in its row's CUSUM (every event, whatever its verdict)."""
    row = joint_row(table, slot, etype, numbers, min_count)
    if row >= 0:
        table.step(row, table.t2(row, min_sd, ridge))


def learn_joint(
    table: JointTable, slot: int, etype: str | None, numbers: dict[str, float], fading: float
) -> None:
    """Fold an accepted event into its type's joint model, made on the type's first event with
    two numeric fields or more while the producer has fewer than ``max_types`` of them."""
    row = table.find(slot, etype)
    if row < 0:
        if len(numbers) < 2 or table._types[slot] >= table.max_types:
            return
        names = tuple(sorted(numbers))[: table.k]
        row = table.add(slot, etype, names)
    if table.gather(row, numbers):
        if table._run[row] >= _RUN_RESTART:
            table.restart(row)
        table.learn(row, fading)


# The table's state in the checkpoint's base, in this order (the scratch is not state).
_TABLE = (
    "count", "next", "nf", "run", "mean", "cov", "etype", "names", "head", "types", "used", "free",
)  # fmt: skip


class JointFeature(Feature):
    """Hotelling's T² of the event's numeric fields against its producer's joint model of the
    event type (:class:`JointTable`); off while ``joint_fields`` is 0."""

    name = "joint"

    def __init__(self, cfg: FeatureConfig, clock: Clock) -> None:
        super().__init__(cfg, clock)
        self.on = cfg.joint_fields >= 2
        self.table = JointTable(cfg.joint_fields, cfg.joint_max_types)

    def reset(self, slot: int) -> None:
        self.table.reset(slot)

    def judge(self, slot: int, event: Event) -> float:
        if not self.on:
            return 0.0
        cfg = self.cfg
        return judge_joint(
            self.table, slot, event.type, event.numbers, cfg.joint_min_count, cfg.min_sd,
            cfg.joint_ridge,
        )  # fmt: skip

    def explain(self, slot: int, event: Event) -> Reason | None:
        s = self.judge(slot, event)
        if s <= 0:
            return None
        cfg, table = self.cfg, self.table
        row = joint_row(table, slot, event.type, event.numbers, cfg.joint_min_count)
        own = chi2_surprise(table.t2(row, cfg.min_sd, cfg.joint_ridge), table.nf[row])
        return joint_reason(table, row, event.numbers, cfg.min_sd, cfg.joint_ridge, s, s > own)

    def advance(self, slot: int, event: Event) -> None:
        """The run (CUSUM) of a judged row counts every event."""
        if self.on:
            cfg = self.cfg
            step_joint(
                self.table, slot, event.type, event.numbers, cfg.joint_min_count, cfg.min_sd,
                cfg.joint_ridge,
            )  # fmt: skip

    def learn(self, slot: int, event: Event) -> None:
        if self.on:
            learn_joint(self.table, slot, event.type, event.numbers, self.cfg.joint_fading)

    def dump(self, slot: int, w: Writer) -> None:
        table = self.table
        rows = table.rows(slot)
        w.count(len(rows))
        for row in reversed(rows):  # oldest first: loading adds each in front
            etype = table.etype[row]
            w.text("" if etype is None else "\x1f" + etype)  # "" is no type, "\x1f": a type
            w.count(len(table.names[row]))
            for name in table.names[row]:
                w.text(name)
            table.dump(row, w)

    def dump_table(self, w: Writer) -> None:
        """Every slot's models at once: the table's columns and its rows' types and field
        names (each distinct tuple of names once)."""
        from detector.core.features import tables  # (it imports the features' modules)

        table = self.table
        w.count(table.k)
        w.count(table.max_types)
        tables.dump(w, table, _TABLE)

    def load_table(self, r: Reader) -> None:
        from detector.core.features import tables

        table = self.table
        if r.count() != table.k or r.count() != table.max_types:
            msg = "base has joint models of other sizes than this spec's"
            raise ValueError(msg)
        tables.load(r, table, _TABLE)
        table.count_shapes()

    def load(self, slot: int, r: Reader) -> None:
        table = self.table
        for _ in range(r.count()):
            tag = r.text()
            etype = tag[1:] if tag else None
            names = tuple(r.text() for _ in range(r.count()))
            if len(names) > table.k or table.types[slot] >= table.max_types:
                msg = "record has more joint fields or types than this spec allows"
                raise ValueError(msg)
            table.load(table.add(slot, etype, names), r)


def joint_reason(
    table: JointTable, row: int, numbers: dict[str, float], min_sd: float, ridge: float,
    s: float, run: bool = False,
) -> Reason:  # fmt: skip
    """Which two fields break their usual relation most, and how (only for flagged events);
    ``run``: the surprise is the run's (its CUSUM), not this event's alone.

    The pair whose own T² most exceeds what either field explains alone; within it, the field
    further from what the other predicts (its residual given the other, in sds of that
    residual), and the pair's usual correlation.
    """
    names = table.names[row]
    nf, k, tri = len(names), table.k, table.tri
    cov = [float(c) for c in table.cov[row * tri : row * tri + nf * (nf + 1) // 2]]
    mean = [float(m) for m in table.mean[row * k : row * k + nf]]
    sd = [max(math.sqrt(max(cov[i * (i + 1) // 2 + i], 0.0)), min_sd) for i in range(nf)]
    z = [(signed_log(numbers[name]) - mean[i]) / sd[i] for i, name in enumerate(names)]
    keep = 1.0 - ridge
    best = (-math.inf, 0, 1, 0.0)
    for i in range(nf):
        for j in range(i):
            r = min(max(cov[i * (i + 1) // 2 + j] / (sd[i] * sd[j]), -1.0), 1.0)
            q = keep * r
            pair = (z[i] ** 2 - 2 * q * z[i] * z[j] + z[j] ** 2) / (1 - q * q)
            excess = pair - max(z[i] ** 2, z[j] ** 2)
            if excess > best[0]:
                best = (excess, i, j, r)
    _, i, j, r = best
    q = keep * r
    resid = [(z[a] - q * z[b]) / math.sqrt(1 - q * q) for a, b in ((i, j), (j, i))]
    a, b = (i, j) if abs(resid[0]) >= abs(resid[1]) else (j, i)
    e = resid[0] if a == i else resid[1]
    na, nb = names[a], names[b]
    values = f"{na}={numbers[na]:.4g} ({z[a]:+.1f} sd), {nb}={numbers[nb]:.4g} ({z[b]:+.1f} sd)"
    if abs(r) >= _RELATED:
        way = "above" if e > 0 else "below"
        observed = f"{na} {abs(e):.1f} sd {way} what {nb} predicts: {values}"
        expected = f"usually they move {'together' if r > 0 else 'oppositely'} (r={r:.2f})"
    else:
        observed = f"both off at once: {values}"
        expected = f"each usual alone, rarely both (r={r:.2f})"
    if nf > 2:
        expected += f" among {nf} fields"
    if run:
        observed = f"their relation off for a run of events (this one: {observed})"
    return Reason("joint", f"{na}, {nb}", observed, expected, s)
