"""detector.river.Detector: the detector as a River anomaly detector, in River's own loops."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest
from river import base, evaluate, metrics

from detector.core.events import Decoder
from detector.core.features.store import FeatureStore
from detector.core.pipeline import Pipeline
from detector.core.scoring import load_spec
from detector.river import Detector
from tests.helpers import order_events, outlier


def _dataset(per_producer: int = 300, seed: int = 4) -> list[tuple[dict[str, Any], bool]]:
    """Shop order events as River's (x, y): flat dicts with producer and ts; y = an outlier."""
    raw = order_events(producers=3, per_producer=per_producer, seed=seed)
    t = int(raw[-1]["ts"])
    outliers = [outlier(f"svc-{k % 3}", t + 1000 * k, amount=1e4 * (k + 1)) for k in range(6)]
    out = []
    for f in raw + outliers:
        x: dict[str, Any] = {"producer": f["producer"], "ts": int(f["ts"]), "type": f["type"]}
        x |= orjson.loads(f["data"])
        out.append((x, f in outliers))
    return out


def test_it_is_a_river_anomaly_detector_that_clones_fresh() -> None:
    det = Detector(model="stats")
    assert isinstance(det, base.AnomalyDetector)
    for x, _ in _dataset(30):
        det.learn_one(x)
    twin = det.clone()
    assert isinstance(twin, Detector) and twin.model == "stats"
    assert len(det.pipeline.store) == 3 and len(twin.pipeline.store) == 0


def test_a_plain_river_loop_scores_as_the_pipeline_judging_each_event_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _dataset()
    judged = 0
    judge = FeatureStore.judge

    def counting(self: FeatureStore, *args: Any) -> None:
        nonlocal judged
        judged += 1
        judge(self, *args)

    monkeypatch.setattr(FeatureStore, "judge", counting)
    det = Detector(model="stats")
    scores = []
    for x, _ in data:  # River's loop: score, then learn
        scores.append(det.score_one(x))
        det.learn_one(x)
    assert judged == len(data)  # score_one judged, learn_one reused it
    # The same events through the worker's pipeline: the same scores (0.0 in warm-up).
    d = Decoder()
    events = [
        d.decode("river", f"0-{i + 1}", {k.encode(): str(v).encode() for k, v in x.items()})
        for i, (x, _) in enumerate(data)
    ]
    verdicts = Pipeline(load_spec("stats")).process(events)
    assert scores == [v.score or 0.0 for v in verdicts]
    assert det.alerts == sum(v.alert is not None for v in verdicts) > 0
    assert all(s > 0.9999 for s, (_, y) in zip(scores, data, strict=True) if y)


def test_score_one_alone_learns_nothing() -> None:
    det = Detector(model="stats")
    data = _dataset(100)
    for x, _ in data[:250]:
        det.learn_one(x)
    record = {p: det.pipeline.store.record(s) for p, s in det.pipeline.store.producers.items()}
    probe = [det.score_one(x) for x, _ in data[250:]]
    assert {p: det.pipeline.store.record(s) for p, s in det.pipeline.store.producers.items()} == (
        record
    )
    assert probe == [det.score_one(x) for x, _ in data[250:]]
    x = data[250][0]
    seen = det.pipeline.view(x["producer"]).n
    det.learn_one(x)  # not the x scored last: judged afresh, and learned
    assert det.pipeline.view(x["producer"]).n == seen + 1


@pytest.mark.parametrize("model", ["stats", "hst"])
def test_rivers_progressive_validation(model: str) -> None:
    """River's own evaluation loop for anomaly detectors (score_one, then learn_one)."""
    data = _dataset()
    auc = evaluate.progressive_val_score(data, Detector(model=model), metrics.ROCAUC())
    assert auc.get() > 0.9  # the six outliers outrank nearly every usual event


def test_import_detector_and_the_core_leave_river_out() -> None:
    """River is imported when a River spec is built or the adapter is used, not before."""
    code = (
        "import sys, detector, detector.core.pipeline, detector.core.scoring\n"
        "from detector.core.scoring import load_spec\n"
        "load_spec('stats').build(); load_spec('hst').build()\n"
        "print('river' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    assert out.stdout.strip() == "False"
