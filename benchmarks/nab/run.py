"""Replay the NAB corpus through the detector and score it with the NAB scorer.

    python -m benchmarks.nab.run --model stats [--mode offline|redis|both] [--write]
                                 [--plot FILE_NAME ...] [--details] [--files FILE ...]
                                 [--debounce LEVEL:HOURS] [--cooldown] [--alerts]
                                 [--two-fold]

Each of the 58 series is one producer (producer id = the corpus-relative file name, e.g.
``realKnownCause/nyc_taxi.csv``) and each row one event with the fields ``producer``, ``ts``
(epoch ms of the row's timestamp, read as UTC) and ``value`` (the bytes of the CSV cell). All
series are interleaved by event time into one stream, in the same order in both modes:

* ``offline``: the entries go through :class:`detector.core.events.Decoder` and one
  :class:`detector.core.pipeline.Pipeline`, as ``detector score`` does;
* ``redis``: an embedded ``redis-server`` receives them with pipelined ``XADD`` and a
  :class:`detector.runtime.worker.Worker` (``--until-idle``) consumes them, as ``detector run``
  does.

``both`` runs the two and checks that every row got the same score. A row's NAB anomaly
score is the calibrated score, and 0.0 while its producer warms up (score None) or if the
entry was rejected. With ``--cooldown``, rows that came inside their producer's alert
cooldown (``Verdict.held``: the detector could not alert on them) also score 0.0, so NAB
counts what the detector would have alerted, as CAD OSE's and KNN-CAD's rest periods do. With
``--alerts``, a row scores 1.0 if the detector emitted an alert for it and 0.0 otherwise (the
``alert`` column of ``detector score``): the alerts as emitted, at the spec's own threshold,
cooldown and rules, with nothing for the sweep to choose. Without it, the alert column's
scores are printed beside the sweep's. No look-ahead: nothing about a file (min, max, length)
is given to the detector in advance.

Scoring follows NAB v1.1: one corpus-wide threshold per profile from the exhaustive sweep
(:func:`benchmarks.nab.scorer.optimize_threshold`). The official scoreboard was made with the
older "twiddle" optimiser, which can read up to ~2 points lower for the same detector.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import importlib
import json
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import redis

from benchmarks.nab.scorer import (
    PROFILE_NAMES,
    Corpus,
    CorpusFile,
    ProfileScore,
    default_root,
    load_corpus,
    load_official_scores,
    load_profiles,
    optimize_threshold,
    read_data_rows,
    resolve_windows,
    score_detector,
)
from detector.core.errors import InvalidEventError
from detector.core.events import Decoder, Event
from detector.core.pipeline import Pipeline, Verdicts
from detector.core.scoring import ModelSpec, load_spec
from detector.core.settings import Settings
from detector.gateway.embedded import EmbeddedRedis
from detector.runtime.worker import Worker

STREAM: Final = "nab"
XADD_CHUNK: Final = 5000
RARITY_FLOOR: Final = 1e-9  # plots: a score of 1.0 is drawn as rarity 9
CHECKPOINT_KEY: Final = b"nab-replay-throwaway-key"
RESULTS_DIR: Final = Path(__file__).resolve().parents[1] / "results" / "nab"
PROFILE_LABELS: Final = {
    "standard": "standard",
    "reward_low_FP_rate": "low_FP",
    "reward_low_FN_rate": "low_FN",
}
Scores = dict[str, list[float | None]]
Held = dict[str, list[bool]]


# --------------------------------------------------------------------------------------------
# The corpus as events


@dataclass(frozen=True, slots=True)
class Series:
    """One NAB data file: its rows in file order.

    Attributes:
        name: corpus-relative file name, also the producer id.
        timestamps: the ``timestamp`` cells as written.
        ts_ms: the timestamps as epoch milliseconds (UTC).
        values: the ``value`` cells as written (bytes, sent to the detector untouched).
    """

    name: str
    timestamps: tuple[str, ...]
    ts_ms: tuple[int, ...]
    values: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.ts_ms)


def epoch_ms(stamp: str) -> int:
    """NAB timestamp (``YYYY-MM-DD HH:MM:SS``, no zone: UTC) to epoch milliseconds.

    >>> epoch_ms("2014-07-01 00:30:00")
    1404174600000
    """
    return round(datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp() * 1000)


def read_series(root: Path, name: str) -> Series:
    """Read ``<root>/data/<name>``."""
    rows = read_data_rows(root / "data" / name)
    return Series(
        name=name,
        timestamps=tuple(t for t, _ in rows),
        ts_ms=tuple(epoch_ms(t) for t, _ in rows),
        values=tuple(v.encode() for _, v in rows),
    )


def corpus_names(root: Path) -> list[str]:
    """Every data file, as corpus-relative names in sorted order (the scorer's order)."""
    data = root / "data"
    names = sorted(p.relative_to(data).as_posix() for p in data.glob("*/*.csv"))
    if not names:
        msg = f"no NAB data files under {data} (set NAB_ROOT or pass --root)"
        raise FileNotFoundError(msg)
    return names


def select(names: Sequence[str], wanted: Iterable[str]) -> list[str]:
    """Resolve file names given as ``category/file.csv``, ``file.csv`` or ``file``.

    >>> select(["a/x.csv", "b/y.csv"], ["y", "a/x.csv"])
    ['a/x.csv', 'b/y.csv']
    """
    out: set[str] = set()
    for want in wanted:
        stem = want.removesuffix(".csv")
        hits = [n for n in names if n.removesuffix(".csv") == stem or Path(n).stem == stem]
        if len(hits) != 1:
            msg = f"{want!r} matches {len(hits)} corpus files: {hits[:5]}"
            raise ValueError(msg)
        out.add(hits[0])
    return [n for n in names if n in out]


def load_series(root: Path | None = None, names: Sequence[str] | None = None) -> list[Series]:
    """The series to replay (all 58 if ``names`` is None), in corpus order."""
    base = default_root() if root is None else root
    chosen = corpus_names(base) if names is None else select(corpus_names(base), names)
    return [read_series(base, n) for n in chosen]


def interleave(series: Sequence[Series]) -> list[tuple[int, int]]:
    """(series index, row) of every row, merged by event time.

    Ties go to the earlier series in corpus order; each file keeps its own row order even
    where its timestamps step back (a few NAB files do), since rows count by position.
    """
    merged = heapq.merge(*(_keyed(k, s) for k, s in enumerate(series)))
    return [(k, row) for _, k, row in merged]


def _keyed(k: int, s: Series) -> Iterator[tuple[int, int, int]]:
    for row, ts in enumerate(s.ts_ms):
        yield ts, k, row


def entry_fields(s: Series, row: int) -> dict[bytes, bytes]:
    """The stream entry of one row: ``producer``, ``ts`` (epoch ms), ``value``."""
    return {
        b"producer": s.name.encode(),
        b"ts": str(s.ts_ms[row]).encode(),
        b"value": s.values[row],
    }


# --------------------------------------------------------------------------------------------
# Replay


@dataclass(slots=True)
class Run:
    """Per-row scores of one replay, and what it cost.

    ``scores[name][row]`` is the calibrated score, None while warming up or when the entry
    was rejected or failed to score (``invalid``); ``held[name][row]`` is True when the row
    came inside its producer's alert cooldown (it could not alert); ``alerted[name][row]`` is
    True when the detector emitted an alert for the row (``detector score``'s ``alert``
    column).
    """

    mode: str
    scores: Scores
    events: int
    seconds: float
    invalid: int = 0
    evicted: int = 0
    notes: dict[str, float] = field(default_factory=dict)
    held: Held = field(default_factory=dict)
    alerted: Held = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _empty_scores(series: Sequence[Series]) -> Scores:
    return {s.name: [None] * len(s) for s in series}


def _empty_held(series: Sequence[Series]) -> Held:
    return {s.name: [False] * len(s) for s in series}


def default_settings(spec: ModelSpec) -> Settings:
    """The worker's settings for a replay (defaults of ``detector run`` otherwise)."""
    return Settings(
        streams=(STREAM,),
        consumer="nab",
        model=spec.name,
        until_idle=True,
        idle_timeout_ms=300,
        block_ms=100,
        checkpoint_secret=CHECKPOINT_KEY,  # signs the worker's checkpoints; the server is discarded
    )


def run_offline(series: Sequence[Series], spec: ModelSpec, settings: Settings | None = None) -> Run:
    """Decoder + one Pipeline over the interleaved entries (what ``detector score`` does)."""
    cfg = settings or default_settings(spec)
    scores = _empty_scores(series)
    held, alerted = _empty_held(series), _empty_held(series)
    started = time.perf_counter()
    decoder = Decoder(cfg.event_format)
    pipeline = Pipeline(
        spec,
        threshold=cfg.threshold,
        max_producers=cfg.max_producers,
        idle_ttl_ms=int(cfg.producer_idle_ttl_s * 1000),
    )
    events: list[Event] = []
    slots: list[tuple[int, int]] = []
    invalid = 0
    for n, (k, row) in enumerate(interleave(series)):
        try:
            events.append(decoder.decode(STREAM, f"0-{n + 1}", entry_fields(series[k], row)))
        except InvalidEventError:
            invalid += 1
            continue
        slots.append((k, row))
    for (k, row), v in zip(slots, pipeline.process(events), strict=True):
        invalid += v.error is not None
        scores[series[k].name][row] = v.score
        held[series[k].name][row] = v.held
        alerted[series[k].name][row] = v.alert is not None
    seconds = time.perf_counter() - started
    return Run(
        "offline", scores, len(slots) + invalid, seconds, invalid, pipeline.store.evicted,
        held=held, alerted=alerted,
    )  # fmt: skip


def run_redis(
    series: Sequence[Series],
    spec: ModelSpec,
    settings: Settings | None = None,
    server: EmbeddedRedis | None = None,
) -> Run:
    """XADD the interleaved entries into an embedded redis-server, then drain them with a
    Worker (what ``detector run --until-idle`` does). ``server``: reuse a running one."""
    own = server is None
    srv = EmbeddedRedis() if server is None else server
    if own:
        srv.start()
    try:
        return _run_redis(series, spec, settings or default_settings(spec), srv.url)
    finally:
        if own:
            srv.stop()


def _run_redis(series: Sequence[Series], spec: ModelSpec, settings: Settings, url: str) -> Run:
    cfg = replace(settings, redis_url=url)
    stream = cfg.streams[0]
    client = redis.Redis.from_url(url)
    try:
        client.delete(stream, cfg.alerts_stream, cfg.dead_letter_stream)
        started = time.perf_counter()
        where = _xadd_all(client, stream, series)
        xadd_s = time.perf_counter() - started
    finally:
        client.close()

    scores = _empty_scores(series)
    held, alerted = _empty_held(series), _empty_held(series)
    seen: set[str] = set()
    duplicates = 0

    def collect(verdicts: Verdicts) -> None:
        nonlocal duplicates
        for v in verdicts:
            entry_id = v.event.entry_id
            if entry_id in seen:  # at-least-once: a replayed entry must score the same
                duplicates += 1
            seen.add(entry_id)
            k, row = where[entry_id]
            scores[series[k].name][row] = v.score
            held[series[k].name][row] = v.held
            alerted[series[k].name][row] = v.alert is not None

    worker = Worker(cfg, spec=spec, on_verdicts=collect)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stats = worker.run()
    finally:
        worker.client.close()
        for sig, handler in handlers.items():  # the worker installs its own
            if handler is not None:
                signal.signal(sig, handler)
    if duplicates:
        msg = f"{duplicates} entries were delivered twice in a clean run"
        raise RuntimeError(msg)
    if stats.events != len(where):
        msg = f"the worker read {stats.events} entries, {len(where)} were added"
        raise RuntimeError(msg)
    return Run(
        "redis",
        scores,
        stats.events,
        stats.busy_s,
        stats.invalid,
        worker.pipeline.store.evicted,
        notes={"xadd_s": xadd_s, "alerts": float(stats.alerts), "batches": float(stats.batches)},
        held=held,
        alerted=alerted,
    )


def _xadd_all(
    client: redis.Redis, stream: str, series: Sequence[Series]
) -> dict[str, tuple[int, int]]:
    """Pipelined XADD of every row in interleaved order; entry id -> (series index, row)."""
    order = interleave(series)
    where: dict[str, tuple[int, int]] = {}
    for start in range(0, len(order), XADD_CHUNK):
        chunk = order[start : start + XADD_CHUNK]
        pipe = client.pipeline(transaction=False)
        for k, row in chunk:
            pipe.xadd(stream, entry_fields(series[k], row))  # type: ignore[arg-type]
        for entry_id, slot in zip(pipe.execute(), chunk, strict=True):
            where[entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)] = slot
    return where


def first_difference(a: Scores, b: Scores) -> str | None:
    """None if both runs gave every row the same score (bit for bit), else where they differ."""
    if a.keys() != b.keys():
        return f"different files: {sorted(set(a) ^ set(b))[:5]}"
    for name, xs in a.items():
        ys = b[name]
        if len(xs) != len(ys):
            return f"{name}: {len(xs)} rows vs {len(ys)}"
        for row, (x, y) in enumerate(zip(xs, ys, strict=True)):
            if x != y:
                return f"{name} row {row}: {x!r} vs {y!r}"
    return None


def _held_difference(a: Held, b: Held, what: str = "held") -> str | None:
    for name, xs in a.items():
        if xs != b.get(name):
            ys = b.get(name, [])
            row = next((i for i, (x, y) in enumerate(zip(xs, ys, strict=False)) if x != y), -1)
            return f"{name}: {what} differs (row {row})"
    return None


def alert_scores(alerted: Held) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
    """NAB anomaly scores of the alerts as emitted: 1.0 where the detector alerted, 0.0
    elsewhere (``detector score``'s ``alert`` column). Any threshold in (0, 1] scores them
    alike: nothing is chosen on the corpus.

    >>> alert_scores({"a": [False, True, False]})["a"].tolist()
    [0.0, 1.0, 0.0]
    """
    return {name: np.array(xs, dtype=np.float64) for name, xs in alerted.items()}


def nab_scores(
    scores: Scores, held: Held | None = None
) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
    """NAB anomaly scores in [0, 1]: the calibrated score, 0.0 where there is none, and 0.0
    where ``held`` says the row came inside its producer's alert cooldown.

    >>> nab_scores({"a": [None, 0.5, 0.9]}, {"a": [False, False, True]})["a"].tolist()
    [0.0, 0.5, 0.0]
    """
    out = {}
    for name, xs in scores.items():
        hs = held.get(name) if held is not None else None
        out[name] = np.array(
            [0.0 if x is None or (hs is not None and hs[i]) else x for i, x in enumerate(xs)],
            dtype=np.float64,
        )
    return out


def debounce(scores: Scores, series: Sequence[Series], level: float, hold_ms: int) -> Scores:
    """NAB-side suppression, as KNN-CAD and CAD OSE do it: after a row scoring ``>= level``,
    the producer's rows in the next ``hold_ms`` of event time score None (0.0 for NAB).

    Causal (each row depends only on earlier ones), like the worker's per-producer alert
    cooldown; NAB charges every detected row outside a window, so repeats cost.

    >>> s = Series("a", ("",) * 4, (0, 1000, 2000, 9000), (b"1",) * 4)
    >>> debounce({"a": [0.5, 0.9999, 0.9999, 0.9999]}, [s], 0.999, 5000)
    {'a': [0.5, 0.9999, None, 0.9999]}
    """
    out: Scores = {}
    for s in series:
        xs = scores[s.name]
        ys: list[float | None] = []
        until = -1
        for x, t in zip(xs, s.ts_ms, strict=True):
            if x is not None and t < until:
                ys.append(None)
                continue
            ys.append(x)
            if x is not None and x >= level:
                until = t + hold_ms
        out[s.name] = ys
    return out


# --------------------------------------------------------------------------------------------
# Scoring and output


def subset_corpus(series: Sequence[Series], root: Path) -> Corpus:
    """A corpus of just these files (their windows and NAB's profiles)."""
    windows = json.loads((root / "labels" / "combined_windows.json").read_text())
    files: dict[str, CorpusFile] = {}
    for s in series:
        stamps = np.array(s.timestamps, dtype="datetime64[s]")
        values = np.array([float(v) for v in s.values], dtype=np.float64)
        rows = resolve_windows(s.name, stamps, windows[s.name])
        files[s.name] = CorpusFile.build(s.name, stamps, rows, values)
    return Corpus(files=files, profiles=load_profiles(root), root=root)


def score_profiles(
    results: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]], corpus: Corpus
) -> dict[str, ProfileScore]:
    """The exhaustive-sweep optimum of each profile (one threshold for the whole corpus)."""
    return {p: optimize_threshold(results, corpus, p, exhaustive=True)[1] for p in PROFILE_NAMES}


def write_results(
    results: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]],
    series: Sequence[Series],
    corpus: Corpus,
    out_dir: Path,
    detector: str,
) -> int:
    """NAB's results layout: ``<out_dir>/<category>/<detector>_<file>.csv`` with the columns
    ``timestamp,value,anomaly_score,label`` (label: 1 inside a window). Returns files written."""
    for s in series:
        category, _, file_name = s.name.partition("/")
        path = out_dir / category / f"{detector}_{file_name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = corpus.files[s.name].window_id >= 0
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(("timestamp", "value", "anomaly_score", "label"))
            for row, score in enumerate(results[s.name]):
                writer.writerow(
                    (s.timestamps[row], s.values[row].decode(), repr(float(score)),
                     int(labels[row]))
                )  # fmt: skip
    return len(series)


def two_fold(
    results: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]], corpus: Corpus
) -> list[str]:
    """An out-of-sample check of the corpus-wide threshold: the files (in corpus order) split
    into the odd- and even-numbered; each half is scored at the threshold swept on the other
    half, next to its own optimum. The spec's settings are not refitted per fold."""
    names = list(corpus.files)
    halves = {
        "odd": Corpus({n: corpus.files[n] for n in names[0::2]}, corpus.profiles, corpus.root),
        "even": Corpus({n: corpus.files[n] for n in names[1::2]}, corpus.profiles, corpus.root),
    }
    lines = [f"{'profile':<20}{'fold':>6}{'own θ':>12}{'score':>8}{'other θ':>12}{'score':>8}"]
    part = {h: {n: results[n] for n in c.files} for h, c in halves.items()}
    for p in PROFILE_NAMES:
        best = {h: optimize_threshold(part[h], c, p, exhaustive=True) for h, c in halves.items()}
        for h, other in (("odd", "even"), ("even", "odd")):
            theta = best[other][0]
            held_out = score_detector(part[h], halves[h], p, theta)
            lines.append(
                f"{p:<20}{h:>6}{best[h][0]:>12.6f}{best[h][1].score:>8.2f}"
                f"{theta:>12.6f}{held_out.score:>8.2f}"
            )
    return lines


def scoreboard_table(
    ours: Mapping[str, Mapping[str, ProfileScore]], official: Mapping[str, Mapping[str, float]]
) -> list[str]:
    """Our detectors ranked among the scoreboard's, by the standard profile."""
    rows: list[tuple[str, dict[str, float], bool]] = [
        (name, dict(profiles), False) for name, profiles in official.items()
    ]
    for name, profiles in ours.items():
        rows.append((name, {p: ps.score for p, ps in profiles.items()}, True))
    rows.sort(key=lambda r: -r[1].get("standard", float("-inf")))
    head = f"{'detector':<28}" + "".join(f"{PROFILE_LABELS[p]:>10}" for p in PROFILE_NAMES)
    lines = [head]
    for name, scores, mine in rows:
        cells = "".join(f"{scores.get(p, float('nan')):>10.2f}" for p in PROFILE_NAMES)
        label = f"> {name} (this run)" if mine else f"  {name}"
        lines.append(f"{label:<28}{cells}")
    return lines


def detail_table(scores: Mapping[str, ProfileScore], n_windows: int) -> list[str]:
    lines = [
        f"{'profile':<20}{'threshold':>20}{'score':>9}{'raw':>10}{'windows hit':>13}"
        f"{'TP rows':>9}{'FP rows':>9}"
    ]
    for p, ps in scores.items():
        lines.append(
            f"{p:<20}{ps.threshold!r:>20}{ps.score:>9.2f}{ps.raw_score:>10.2f}"
            f"{f'{ps.windows_detected}/{n_windows}':>13}{ps.tp:>9}{ps.fp:>9}"
        )
    return lines


def file_table(
    run: Run,
    results: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]],
    corpus: Corpus,
    standard: ProfileScore,
) -> list[str]:
    """Per file, at the standard profile's threshold: windows hit, FP rows, raw score,
    the first scored row and warm-up restarts (a producer evicted by the idle TTL)."""
    theta = standard.threshold
    lines = [
        f"{'file':<58}{'rows':>6}{'P':>5}{'1st':>5}{'rst':>4}{'win':>4}{'hit':>4}"
        f"{'FP':>6}{'raw':>8}"
    ]
    for name, cf in corpus.files.items():
        xs = run.scores[name]
        scored = [i for i, x in enumerate(xs) if x is not None]
        first = scored[0] if scored else -1
        restarts = sum(
            1 for i in range(first + 1, len(xs)) if xs[i] is None and xs[i - 1] is not None
        )
        a = results[name]
        live = np.arange(cf.n_rows) >= cf.probation
        det = (a >= theta) & live
        hit = sum(bool(det[lo : hi + 1].any()) for lo, hi in cf.windows)
        fp = int((det & (cf.window_id < 0)).sum())
        lines.append(
            f"{name:<58}{cf.n_rows:>6}{cf.probation:>5}{first:>5}{restarts:>4}"
            f"{len(cf.windows):>4}{hit:>4}{fp:>6}{standard.file_scores[name]:>8.2f}"
        )
    return lines


# --------------------------------------------------------------------------------------------
# Plots (matplotlib is optional)


def _pyplot() -> Any | None:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def rarity(score: np.ndarray[Any, np.dtype[np.float64]] | float) -> Any:
    """``-log10(1 - score)``: 3 is "1 in 1,000 of the producer's events", 4 is 1 in 10,000.

    >>> float(rarity(0.999))
    3.0
    """
    return -np.log10(np.maximum(1.0 - np.asarray(score, dtype=np.float64), RARITY_FLOOR))


def plot_series(
    plt: Any,
    cf: CorpusFile,
    scores: np.ndarray[Any, np.dtype[np.float64]],
    thresholds: Mapping[str, float],
    path: Path,
    title: str,
) -> None:
    """Values with windows and detections (at the standard threshold) above; below, the
    scores as rarity (``-log10(1 - score)``) with each profile's threshold."""
    ts = cf.timestamps.astype("datetime64[s]").astype(object)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(14, 6), sharex=True, height_ratios=(3, 2))
    for ax in (top, bottom):
        ax.axvspan(ts[0], ts[max(cf.probation - 1, 0)], color="0.9", lw=0, label="probation")
        for k, (lo, hi) in enumerate(cf.windows):
            label = "NAB windows" if k == 0 else None
            ax.axvspan(ts[lo], ts[hi], color="tab:green", alpha=0.2, lw=0, label=label)
    top.plot(ts, cf.values, lw=0.6, color="tab:blue")
    theta = thresholds["standard"]
    det = np.flatnonzero((scores >= theta) & (np.arange(cf.n_rows) >= cf.probation))
    top.scatter(ts[det], cf.values[det], s=12, color="tab:red", zorder=3,
                label=f"detections at standard θ ({len(det)} rows)")  # fmt: skip
    top.set_title(title, fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    bottom.plot(ts, rarity(scores), lw=0.6, color="black")
    colors = ("tab:red", "tab:orange", "tab:purple")
    for (profile, t), color in zip(thresholds.items(), colors, strict=False):
        label = f"{PROFILE_LABELS[profile]} θ = {t:.6f}"
        bottom.axhline(float(rarity(t)), color=color, lw=0.8, ls="--", label=label)
    bottom.set_ylabel("-log10(1 - score)")
    bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nab.run",
        description="Replay NAB through the detector (offline and/or via Redis) and score it.",
    )
    parser.add_argument("--model", default="stats", help="spec name or .toml path")
    parser.add_argument("--mode", choices=("offline", "redis", "both"), default="offline")
    parser.add_argument("--root", type=Path, default=None, help="NAB data (or $NAB_ROOT)")
    parser.add_argument(
        "--files", nargs="+", default=None, metavar="FILE",
        help="replay only these files (scores are then not comparable to the scoreboard)",
    )  # fmt: skip
    parser.add_argument("--write", action="store_true", help="write NAB results files")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--plot", action="append", default=[], metavar="FILE_NAME",
        help="write a PNG for this series (repeatable; needs matplotlib)",
    )  # fmt: skip
    parser.add_argument("--details", action="store_true", help="print a per-file table")
    parser.add_argument(
        "--two-fold", action="store_true",
        help="also score each half of the files (odd/even) at the threshold swept on the other",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=500, help="worker XREADGROUP COUNT")
    parser.add_argument(
        "--cooldown", action="store_true",
        help="rows inside a producer's alert cooldown (the spec's cooldown_ms after an alert) "
        "score 0: the detector cannot alert on them (off: every row's calibrated score)",
    )  # fmt: skip
    parser.add_argument(
        "--alerts", action="store_true",
        help="score the alerts as emitted (1 for a row the detector alerted on, else 0) "
        "instead of the calibrated scores: the sweep has nothing to choose",
    )  # fmt: skip
    parser.add_argument(
        "--debounce", type=_debounce_arg, default=None, metavar="LEVEL:HOURS",
        help="before scoring, zero a producer's rows for HOURS of event time after a row "
        "scoring >= LEVEL (causal; off by default, e.g. 0.999:6)",
    )  # fmt: skip
    return parser


def _debounce_arg(text: str) -> tuple[float, int]:
    level, sep, hours = text.partition(":")
    try:
        lvl, hrs = float(level), float(hours)
    except ValueError:
        lvl = hrs = -1.0
    if not sep or not 0.0 < lvl <= 1.0 or hrs <= 0:
        msg = f"expected LEVEL:HOURS with 0 < LEVEL <= 1 and HOURS > 0, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return lvl, round(hrs * 3_600_000)


def _replay(
    args: argparse.Namespace, series: Sequence[Series], spec: ModelSpec, say: Callable[[str], None]
) -> tuple[Run, bool | None]:
    settings = replace(default_settings(spec), batch_size=args.batch_size)
    runs: list[Run] = []
    if args.mode in ("offline", "both"):
        runs.append(run_offline(series, spec, settings))
    if args.mode in ("redis", "both"):
        runs.append(run_redis(series, spec, settings))
    for run in runs:
        extra = ""
        if run.mode == "redis":
            extra = (
                f" (+ XADD {run.notes['xadd_s']:.1f}s; {run.notes['alerts']:.0f} alerts "
                f"written, {run.notes['batches']:.0f} batches)"
            )
        say(
            f"{run.mode:>7}: {run.events:,} events in {run.seconds:.1f}s, "
            f"{run.events_per_s:,.0f} events/s; {run.invalid} invalid, "
            f"{run.evicted} producer evictions{extra}"
        )
    same: bool | None = None
    if len(runs) == 2:
        diff = (
            first_difference(runs[0].scores, runs[1].scores)
            or _held_difference(runs[0].held, runs[1].held)
            or _held_difference(runs[0].alerted, runs[1].alerted, "alerted")
        )
        same = diff is None
        say(
            "offline == redis: identical per-row scores for all "
            f"{sum(len(s) for s in series):,} rows"
            if same
            else f"offline != redis: first difference at {diff}"
        )
    return runs[0], same


def _row_results(
    args: argparse.Namespace,
    run: Run,
    series: Sequence[Series],
    spec: ModelSpec,
    say: Callable[[str], None],
) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
    """The NAB anomaly score of every row, after ``--debounce`` and ``--cooldown``; with
    ``--alerts``, the alert column (1.0 for an alert, else 0.0)."""
    if args.alerts:
        say("alerts: a row scores 1.0 if the detector alerted on it, else 0.0 (as emitted)")
        return alert_scores(run.alerted)
    row_scores = run.scores
    if args.debounce is not None:
        level, hold_ms = args.debounce
        row_scores = debounce(row_scores, series, level, hold_ms)
        say(f"debounced: rows within {hold_ms / 3.6e6:g} h after a score >= {level} score 0")
    if args.cooldown:
        say(
            f"cooldown: rows inside a producer's alert cooldown "
            f"({spec.decision.cooldown_ms / 3.6e6:g} h after an alert at "
            f">= {spec.decision.threshold:g}) score 0"
        )
    return nab_scores(row_scores, run.held if args.cooldown else None)


def _alert_column(run: Run, corpus: Corpus, say: Callable[[str], None]) -> None:
    """The scores of the alerts the detector emitted (``detector score``'s ``alert`` column:
    the spec's own threshold, cooldown and rules; no threshold chosen on the corpus)."""
    alerts = alert_scores(run.alerted)
    fixed = {p: score_detector(alerts, corpus, p, 1.0) for p in PROFILE_NAMES}
    say("the alerts as emitted (the alert column, 1 for an alert; nothing swept):")
    for line in detail_table(fixed, corpus.n_windows)[1:]:
        say(line)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root: Path = default_root() if args.root is None else args.root
    say = print
    t0 = time.perf_counter()
    spec = load_spec(args.model)
    all_names = corpus_names(root)
    try:
        names = None if args.files is None else select(all_names, args.files)
        plots = select(all_names, args.plot)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    series = load_series(root, names)
    say(
        f"NAB replay: model {spec.name!r} ({spec.kind}), {len(series)} series, "
        f"{sum(len(s) for s in series):,} rows, mode {args.mode}"
    )
    run, same = _replay(args, series, spec, say)
    corpus = load_corpus(root) if names is None else subset_corpus(series, root)
    results = _row_results(args, run, series, spec, say)
    if args.write:
        out_dir = args.results_dir / spec.name
        n = write_results(results, series, corpus, out_dir, spec.name)
        say(f"wrote {n} results files under {out_dir}")
    scores: dict[str, ProfileScore] = {}
    if corpus.n_windows:
        scores = score_profiles(results, corpus)
        say(
            f"\nNAB v1.1 scores, {len(corpus.files)} files, {corpus.n_windows} windows; ours: "
            "exhaustive threshold sweep (current NAB), scoreboard: twiddle thresholds"
        )
        # The scoreboard is for the whole corpus; a root without it is an extract (data-sample).
        whole = names is None and (root / "final_results.json").is_file()
        if not whole:
            say("(subset of the corpus: not comparable to the scoreboard)")
        for line in detail_table(scores, corpus.n_windows):
            say(line)
        if not args.alerts:
            _alert_column(run, corpus, say)
        official = load_official_scores(root) if whole else {}
        say("")
        for line in scoreboard_table({spec.name: scores}, official):
            say(line)
        _extra_tables(args, run, results, corpus, scores, say)
    else:
        say("no labelled windows in these files: nothing to score")
    if plots:
        _plots(plots, corpus, results, scores, args.results_dir / spec.name / "plots", spec, say)
    say(f"total {time.perf_counter() - t0:.1f}s")
    return 1 if same is False else 0


def _extra_tables(
    args: argparse.Namespace,
    run: Run,
    results: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]],
    corpus: Corpus,
    scores: Mapping[str, ProfileScore],
    say: Callable[[str], None],
) -> None:
    """``--two-fold`` and ``--details``."""
    if args.two_fold:
        say("\ntwo-fold threshold check (files alternately in corpus order):")
        for line in two_fold(results, corpus):
            say(line)
    if args.details:
        say("")
        for line in file_table(run, results, corpus, scores["standard"]):
            say(line)


def _plots(
    names: Sequence[str],
    corpus: Corpus,
    results: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]],
    scores: Mapping[str, ProfileScore],
    out_dir: Path,
    spec: ModelSpec,
    say: Callable[[str], None],
) -> None:
    plt = _pyplot()
    if plt is None:
        say(
            "--plot: matplotlib is not installed, no plot written "
            "(it is optional: `pip install matplotlib` to get plots)"
        )
        return
    thresholds = {p: ps.threshold for p, ps in scores.items()} or {"standard": 1.1}
    for name in names:
        if name not in corpus.files:
            say(f"--plot: {name} was not replayed (see --files)")
            continue
        path = out_dir / (name.removesuffix(".csv").replace("/", "__") + ".png")
        title = f"{name} — model {spec.name}"
        plot_series(plt, corpus.files[name], results[name], thresholds, path, title)
        say(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
