"""Model-only micro benchmarks (pytest-benchmark), run on request only.

pip install pytest-benchmark
pytest benchmarks/test_bench_model.py                  # per event and per 500-event batch
pytest benchmarks/test_bench_model.py --benchmark-disable   # just check they run

Not collected by the default ``pytest`` run (its testpaths are tests/ and detector/). The
events are the shop's (24 producers, ~500 events of history each, then the next events);
every benchmark starts from the same warm pipeline state (a pickle copy per round where the
benchmarked code mutates it). Times are per call; per-event figures divide by the batch.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from itertools import cycle
from typing import Any

import pytest

from benchmarks.workloads import as_entry, shop_workload
from detector.core.events import Decoder, Event
from detector.core.features.judgements import Judgements
from detector.core.pipeline import Pipeline
from detector.core.scoring import load_spec

pytest.importorskip("pytest_benchmark")

BATCH = 500


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    w = shop_workload(
        live_events=2 * BATCH, producers=20, history_per_producer=500, incidents_per_kind=0
    )
    decoder = Decoder()
    history = [decoder.decode("s", f"{i}-0", as_entry(f)) for i, f in enumerate(w.history, 1)]
    raw = [as_entry(f) for f in w.live]
    live = [decoder.decode("s", f"{i}-1", e) for i, e in enumerate(raw, 1)]
    warm = {}
    for model in ("stats", "hst"):
        p = Pipeline(load_spec(model))
        p.process(history)
        warm[model] = pickle.dumps(p)
    return {"raw": raw, "live": live, "warm": warm}


def _fresh(data: dict[str, Any], model: str) -> Pipeline:
    p: Pipeline = pickle.loads(data["warm"][model])  # noqa: S301 - our own state
    return p


def _judged(p: Pipeline, events: list[Event]) -> list[Judgements]:
    """Each event's judgement against the trained state, as a batch of one."""
    out = []
    for e in events:
        j = Judgements()
        j.start((e,))
        p.store.judge(p.store.state(e.producer), e, j, 0)
        out.append(j)
    return out


def _events(data: dict[str, Any]) -> Iterator[Event]:
    return cycle(data["live"])


def test_decode_one(benchmark: Any, data: dict[str, Any]) -> None:
    decoder = Decoder()
    entries = cycle(data["raw"])
    benchmark(lambda: decoder.decode("s", "1-0", next(entries)))


def test_decode_batch(benchmark: Any, data: dict[str, Any]) -> None:
    decoder = Decoder()
    raw = data["raw"][:BATCH]
    benchmark(lambda: [decoder.decode("s", "1-0", e) for e in raw])


@pytest.mark.parametrize("model", ["stats", "hst"])
def test_evidence_one(benchmark: Any, data: dict[str, Any], model: str) -> None:
    """Features: the surprises of one event against its producer's state (no learning)."""
    p = _fresh(data, model)
    events = _events(data)

    judged = Judgements()
    judged.reserve(1)

    def one() -> None:
        e = next(events)
        p.store.judge(p.store.state(e.producer), e, judged, 0)

    benchmark(one)


@pytest.mark.parametrize("model", ["stats", "hst"])
def test_raw_score_one(benchmark: Any, data: dict[str, Any], model: str) -> None:
    """Model: judgements -> raw score."""
    p = _fresh(data, model)
    it = cycle(_judged(p, data["live"][:BATCH]))
    benchmark(lambda: p.model.score(next(it), 0))


def test_hst_learn_one(benchmark: Any, data: dict[str, Any]) -> None:
    """Model learning (the shared HalfSpaceTrees; the stats model learns nothing)."""
    p = _fresh(data, "hst")
    it = cycle(_judged(p, data["live"][:BATCH]))
    benchmark(lambda: p.model.learn(next(it), 0))


@pytest.mark.parametrize("model", ["stats", "hst"])
def test_calibrate_one(benchmark: Any, data: dict[str, Any], model: str) -> None:
    """Calibration: raw score -> calibrated score (histogram tail + exponential fit)."""
    p = _fresh(data, model)
    states = [p.view(e.producer) for e in data["live"][:BATCH]]
    raws = [p.model.score(j, 0) for j in _judged(p, data["live"][:BATCH])]
    pairs = cycle(list(zip(states, raws, strict=True)))

    def one() -> float:
        st, raw = next(pairs)
        return p.calibrator.score(st.calibration, raw)  # type: ignore[arg-type]

    benchmark(one)


def test_feature_learn_one(benchmark: Any, data: dict[str, Any]) -> None:
    """Features: fold one event into its producer's baselines."""
    p = _fresh(data, "stats")
    events = _events(data)

    def one() -> None:
        e = next(events)
        p.store.learn(p.store.state(e.producer), e)

    benchmark(one)


@pytest.mark.parametrize("model", ["stats", "hst"])
def test_pipeline_one(benchmark: Any, data: dict[str, Any], model: str) -> None:
    """The whole pipeline (evidence, score, calibration, decision, learning), per event."""
    p = _fresh(data, model)
    events = _events(data)
    benchmark(lambda: p.process([next(events)]))


@pytest.mark.parametrize("model", ["stats", "hst"])
def test_pipeline_batch(benchmark: Any, data: dict[str, Any], model: str) -> None:
    """One 500-event batch through the pipeline, from the same warm state every round."""
    batch = data["live"][:BATCH]
    benchmark.pedantic(
        lambda p: p.process(batch),
        setup=lambda: ((_fresh(data, model),), {}),
        rounds=10,
    )
