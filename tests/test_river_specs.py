"""River as the model layer: `kind = "river"` specs (detector/core/estimators.py), their models
in the pipeline, and their checkpoints and baselines (no Redis; end to end: test_river_run.py)."""

from __future__ import annotations

import os
import pickle
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
from river import anomaly, compose, time_series

from detector.core.checkpoint import (
    Signer,
    decode_fields,
    encode_fields,
    load_file,
    save_file,
)
from detector.core.errors import CheckpointError, ConfigError, IncompatibleCheckpointError
from detector.core.estimators import EstimatorSlots, RiverModel
from detector.core.events import Decoder, Event
from detector.core.features import FEATURES
from detector.core.pipeline import Pipeline
from detector.core.scoring import ModelSpec, TreesModel, load_spec, parse_spec, spec_digest
from tests.helpers import order_events, outlier

KEY = b"k" * 32
SPECS = Path(__file__).parent / "specs"
PRODUCER = str(SPECS / "river_producer.toml")
SHARED = str(SPECS / "river_shared.toml")

QUANTILE_FILTER = (
    '{ class = "river.anomaly.QuantileFilter", q = 0.995, '
    'anomaly_detector = { class = "river.anomaly.OneClassSVM", nu = 0.02 } }'
)
# The issue's example, as one line per step (TOML 1.0 inline tables are one line) ...
OCSVM_INLINE = f"""
name = "ocsvm"
kind = "river"
[river]
pipeline = [
  {{ class = "river.preprocessing.StandardScaler" }},
  {QUANTILE_FILTER},
]
scope = "producer"     # one clone per producer
inputs = ["fields"]
"""
# ... and as an array of tables: the same parsed spec, so the same digest.
OCSVM_TABLES = """
name = "ocsvm"
kind = "river"

[river]
scope = "producer"
inputs = ["fields"]

[[river.pipeline]]
class = "river.preprocessing.StandardScaler"

[[river.pipeline]]
class = "river.anomaly.QuantileFilter"
q = 0.995
anomaly_detector = { class = "river.anomaly.OneClassSVM", nu = 0.02 }
"""

FORECAST = """
kind = "river"
[river]
scope = "producer"
inputs = ["fields"]
target = "latency_ms"
[[river.pipeline]]
class = "river.anomaly.PredictiveAnomalyDetection"
horizon = 1
predictive_model = """ + (
    '{ class = "river.time_series.SNARIMAX", p = 2, d = 1, q = 1, regressor = '
    '{ class = "river.compose.Pipeline", args = [{ class = "river.preprocessing.StandardScaler" '
    '}, { class = "river.linear_model.LinearRegression" }] } }\n'
)


def _events(
    per_producer: int = 300, producers: int = 3, seed: int = 1, field: str = "amount"
) -> list[Event]:
    """Order events (their numeric field named ``field``) and two outliers at the end."""
    d = Decoder()
    raw = order_events(producers=producers, per_producer=per_producer, seed=seed)
    t = int(raw[-1]["ts"])
    raw += [outlier("svc-1", t + 1000), outlier("svc-2", t + 2000, amount=3.5)]
    for f in raw:
        f["data"] = f["data"].replace('"amount"', f'"{field}"')
    return [
        d.decode("s", f"{i + 1}-0", {k.encode(): v.encode() for k, v in f.items()})
        for i, f in enumerate(raw)
    ]


# --------------------------------------------------------------------------------------------
# Specs


def test_the_issues_example_builds_rivers_pipeline_in_either_toml_form() -> None:
    inline, tables = parse_spec(OCSVM_INLINE, "ocsvm.toml"), parse_spec(OCSVM_TABLES, "o.toml")
    assert inline.digest == tables.digest  # the parsed spec, not its text
    model = inline.build()
    assert isinstance(model, RiverModel) and model.scope == "producer"
    assert isinstance(model.estimator, compose.Pipeline)
    last = list(model.estimator.steps.values())[-1]
    assert isinstance(last, anomaly.QuantileFilter) and last.q == 0.995
    assert isinstance(last.anomaly_detector, anomaly.OneClassSVM)
    assert last.anomaly_detector.nu == 0.02
    assert isinstance(model.per_slot, EstimatorSlots) and not model.stateful


def test_a_supervised_detector_with_a_forecaster_and_a_target() -> None:
    model = parse_spec(FORECAST, "latency.toml").build()
    assert isinstance(model, RiverModel) and model.supervised and model.target == "latency_ms"
    pad = model.estimator
    assert isinstance(pad, anomaly.PredictiveAnomalyDetection)
    assert isinstance(pad.predictive_model, time_series.SNARIMAX)
    assert isinstance(pad.predictive_model.regressor, compose.Pipeline)  # positional args


def _river(body: str) -> str:
    return 'kind = "river"\n[river]\n' + body


PAD = '{ class = "river.anomaly.PredictiveAnomalyDetection" }'


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (_river('pipeline = [{ class = "river.datasets.CreditCard" }]'), "not a River estimator"),
        (_river('pipeline = [{ class = "os.system" }]'), "not a River estimator"),
        (_river('pipeline = [{ class = "river.stream.iter_csv" }]'), "not a River estimator"),
        (_river('pipeline = [{ class = "river.anomaly.hst._walk_score" }]'), "not a River estim"),
        (
            _river(
                'pipeline = [{ class = "river.anomaly.HalfSpaceTrees", seed = { class = '
                '"river.datasets.Phishing" } }]'
            ),
            "not a River estimator",
        ),
        (_river('pipeline = [{ class = "river.anomaly.NoSuchDetector" }]'), "no class"),
        (
            _river('pipeline = [{ class = "river.preprocessing.StandardScaler" }]'),
            "last step must be an anomaly detector",
        ),
        (_river("pipeline = []"), "non-empty array"),
        (
            _river('pipeline = [{ class = "river.anomaly.HalfSpaceTrees", trees = 3 }]'),
            "unexpected keyword",
        ),
        (_river(f"pipeline = [{PAD}]"), "needs a target"),
        (
            _river('pipeline = [{ class = "river.anomaly.HalfSpaceTrees" }]\ntarget = "x"'),
            "target is for supervised",
        ),
        (
            _river(
                'pipeline = [{ class = "river.preprocessing.StandardScaler" }, '
                f'{PAD}]\ntarget = "x"'
            ),
            "must be the only step",
        ),
        (
            _river('pipeline = [{ class = "river.anomaly.HalfSpaceTrees" }]\nscope = "fleet"'),
            "scope must be one of",
        ),
        (
            _river('pipeline = [{ class = "river.anomaly.HalfSpaceTrees" }]\ninputs = ["x"]'),
            "inputs must be some of",
        ),
        (
            _river(
                'pipeline = [{ class = "river.anomaly.HalfSpaceTrees" }]\nfeatures = ["colour"]'
            ),
            "unknown features",
        ),
        (
            _river(
                'pipeline = [{ class = "river.anomaly.HalfSpaceTrees" }]\n'
                'inputs = ["fields"]\nfeatures = ["rate"]'
            ),
            'add "surprises"',
        ),
        (
            _river(
                'pipeline = [{ class = "river.anomaly.HalfSpaceTrees" }]\nscore_range = [1.0, 0.0]'
            ),
            "score_range",
        ),
        ('kind = "river"\n[params]\nn_trees = 3\n', r"\[params\] is not for kind 'river'"),
        ('kind = "surprise"\n[river]\nscope = "shared"\n', r"\[river\] is not for kind"),
    ],
)
def test_what_a_river_spec_may_not_say_is_a_config_error_at_load(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_spec(text, "mine.toml")


def test_the_digest_is_of_the_settings_not_comments_or_the_description() -> None:
    text = (SPECS / "river_producer.toml").read_text()
    spec = parse_spec(text, "river_producer.toml")
    assert spec.digest == spec_digest(tomllib.loads(text), "river_producer")
    commented = "# tuned for the shop\n" + text.replace("n_std = 30.0", "n_std = 30.0  # wide")
    reworded = text.replace("(tests)", "(for tests and the harness)")
    assert parse_spec(commented, "x.toml").digest == spec.digest
    assert parse_spec(reworded, "x.toml").digest == spec.digest
    assert parse_spec(text.replace("n_std = 30.0", "n_std = 3.0"), "x.toml").digest != spec.digest
    nested = text.replace("alpha = 0.5", "alpha = 0.6")  # a nested estimator's parameter
    assert parse_spec(nested, "x.toml").digest != spec.digest


# --------------------------------------------------------------------------------------------
# The models in the pipeline


def _hst_as_a_river_spec() -> ModelSpec:
    """hst's settings, its model written as River's own HalfSpaceTrees over the six surprises."""
    data = tomllib.loads(Path("models/hst.toml").read_text())
    params = dict(data.pop("params"))
    scale = params.pop("scale")
    data["kind"] = "river"
    data["river"] = {
        "pipeline": [{"class": "river.anomaly.HalfSpaceTrees", **params}],
        "inputs": ["surprises"], "features": list(TreesModel.inputs), "surprise_scale": scale,
    }  # fmt: skip
    text = "\n".join(
        [f"{k} = {orjson.dumps(v).decode()}" for k, v in data.items() if not isinstance(v, dict)]
        + [
            f"[{k}]\n" + "\n".join(f"{a} = {_toml(b)}" for a, b in v.items())
            for k, v in data.items()
            if isinstance(v, dict)
        ]
    )
    return parse_spec(text, "hst_river.toml")


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "true" if value is True else "false" if value is False else orjson.dumps(value).decode()


def test_rivers_own_half_space_trees_score_exactly_as_the_hst_spec() -> None:
    """The hst spec's trees on arrays and River's HalfSpaceTrees named in a River spec, over
    the same six surprises: the same verdicts, event for event."""
    events = _events(per_producer=500)
    river_spec = _hst_as_a_river_spec()
    assert isinstance(river_spec.build().estimator, anomaly.HalfSpaceTrees)
    mine = Pipeline(load_spec("hst")).process(events)
    theirs = Pipeline(river_spec).process(events)
    assert [v.score for v in mine] == [v.score for v in theirs]
    assert [v.flagged for v in mine] == [v.flagged for v in theirs]
    assert len({v.score for v in mine}) > 100  # past warm-up, windows turned: scores vary


def test_per_producer_clones_learn_apart_and_go_with_their_producer() -> None:
    p = Pipeline(load_spec(PRODUCER), max_producers=10, idle_ttl_ms=600_000)
    events = _events(per_producer=60)
    p.process(events)
    model = p.model
    assert isinstance(model, RiverModel) and model.per_slot is not None
    clones = {name: model.per_slot.slots[slot] for name, slot in p.store.producers.items()}
    assert len({id(c) for c in clones.values()}) == 3  # one each, each its own
    assert {c.iter for c in clones.values()} == {60, 61}  # learned its own events (+ outlier)
    # svc-9 arrives an hour of event time later: the others are forgotten, clones and all.
    late = events[-1].event_time_ms + 3_600_000
    p.process([Event("s", "9-0", "svc-9", late, None, {"amount": 5.0}, {}, 20)])
    assert list(p.store.producers) == ["svc-9"]
    live = [e for e in model.per_slot.slots if e is not None]
    assert len(live) == 1 and live[0].iter == 1  # the survivor's fresh clone only


def test_an_event_no_feature_finds_surprising_is_explained_by_the_models_score() -> None:
    """Every feature off: the forecaster alone flags the spike, and says why."""
    text = (
        (SPECS / "river_producer.toml")
        .read_text()
        .replace(
            "[features]\n", f"[features]\ndisabled = {orjson.dumps(list(FEATURES)).decode()}\n"
        )
    )
    p = Pipeline(parse_spec(text, "forecaster_only.toml"))
    verdicts = p.process(_events(per_producer=300))
    alerts = [v.alert for v in verdicts if v.alert is not None]
    assert any(a.producer == "svc-1" for a in alerts)  # the outlier
    why = next(a for a in alerts if a.producer == "svc-1").reasons[0]
    assert (why.feature, why.field) == ("model", "PredictiveAnomalyDetection")
    assert why.observed.startswith("score ") and "amount=1e+06" in why.observed
    assert "no feature surprising" in why.expected and why.surprise >= 4.0


def test_the_features_still_explain_what_they_find_surprising() -> None:
    alerts = [v.alert for v in Pipeline(load_spec(PRODUCER)).process(_events()) if v.alert]
    outlier_alert = next(a for a in alerts if a.producer == "svc-1" and a.event_time > 0)
    assert outlier_alert.reasons[0].feature == "value"


def test_a_forecaster_not_ready_in_warm_up_scores_zero_and_no_event_errs() -> None:
    verdicts = Pipeline(load_spec("forecast")).process(
        [
            Event("s", f"{i}-0", "m", i * 300_000, None, {"value": float(i % 5)}, {}, 10)
            for i in range(1, 400)
        ]
    )
    assert not [v.error for v in verdicts if v.error]
    assert verdicts[0].score is None and verdicts[-1].score is not None


# --------------------------------------------------------------------------------------------
# Checkpoints and baselines


def _fields(p: Pipeline, signer: Signer) -> dict[bytes, bytes]:
    snap = p.snapshot({"s": "5-0"}, full=True)
    return {k.encode(): v for k, v in encode_fields(signer, snap).items()}


@pytest.mark.parametrize("spec", [PRODUCER, SHARED, "forecast"])
def test_a_restored_river_pipeline_scores_exactly_like_the_original(spec: str) -> None:
    events = _events(field="value" if spec == "forecast" else "amount")  # forecast's target
    half = len(events) // 2
    original = Pipeline(load_spec(spec))
    original.process(events[:half])
    signer = Signer(KEY)
    fields = _fields(original, signer)
    per_producer = load_spec(spec).build().per_slot is not None
    assert (signer.verify("model", fields[b"model"]) == b"") is per_producer
    restored = Pipeline(load_spec(spec))
    restored.restore(decode_fields(signer, fields))
    a = [v.score for v in original.process(events[half:])]
    assert a == [v.score for v in restored.process(events[half:])]
    assert any(s is not None and s > 0.9 for s in a)


def test_a_baseline_holds_the_clones_and_starts_from_them(tmp_path: Path) -> None:
    events = _events()
    signer, p = Signer(KEY), Pipeline(load_spec(PRODUCER))
    p.process(events[:600])
    save_file(tmp_path / "b.baseline", signer, p.snapshot({}, full=True))
    started = Pipeline(load_spec(PRODUCER))
    started.restore(load_file(tmp_path / "b.baseline", signer), baseline=True)
    model = started.model
    assert isinstance(model, RiverModel) and model.per_slot is not None
    for producer in ("svc-0", "svc-1", "svc-2"):
        slot, before = started.store.slot_of(producer), p.store.slot_of(producer)
        assert slot is not None and before is not None
        clone = model.per_slot.slots[slot]
        assert isinstance(clone, anomaly.PredictiveAnomalyDetection) and clone.iter > 150
        assert pickle.dumps(clone) == pickle.dumps(p.model.per_slot.slots[before])  # type: ignore[union-attr]


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def _with_clone(obj: object) -> dict[bytes, bytes]:
    """A signed checkpoint of the per-producer spec whose svc-0 record holds ``obj``."""
    p = Pipeline(load_spec(PRODUCER))
    p.process(_events(per_producer=30))
    model, slot = p.model, p.store.slot_of("svc-0")
    assert isinstance(model, RiverModel) and model.per_slot is not None and slot is not None
    model.per_slot.slots[slot] = obj
    return _fields(p, Signer(KEY))


@pytest.mark.parametrize(
    "obj",
    [_Exploit(), __import__("river.datasets", fromlist=["Phishing"]).Phishing()],
    ids=["os.system", "river.datasets"],
)
def test_a_signed_record_holding_another_class_is_refused(obj: object) -> None:
    fields = _with_clone(obj)
    with pytest.raises(CheckpointError, match="not allowed") as info:
        Pipeline(load_spec(PRODUCER)).restore(decode_fields(Signer(KEY), fields))
    assert "--reset-state" in str(info.value)


def test_river_objects_are_restored_by_their_river_release_only() -> None:
    signer = Signer(KEY)
    for spec, refused in (("forecast", True), (SHARED, True), ("hst", False), ("stats", False)):
        p = Pipeline(load_spec(spec))
        p.process(_events(per_producer=30))
        fields = _fields(p, signer)
        meta = orjson.loads(signer.verify("meta", fields[b"meta"]))
        assert meta["river_objects"] is refused
        fields[b"meta"] = signer.sign("meta", orjson.dumps({**meta, "river": "0.26.9"}))
        restored = Pipeline(load_spec(spec))
        if refused:
            with pytest.raises(IncompatibleCheckpointError, match=r"River 0\.26\.9"):
                restored.restore(decode_fields(signer, fields))
        else:  # a patch release in range restores what holds no River object
            restored.restore(decode_fields(signer, fields))


def test_the_clones_pickle_holds_only_allowed_classes() -> None:
    """What a real per-producer record holds loads through the restricted unpickler (River's
    model packages), and a plain pickle of it names River classes only."""
    p = Pipeline(load_spec(SHARED))
    p.process(_events(per_producer=50))
    blob = pickle.dumps(p.model)
    signer = Signer(KEY)
    restored = signer.loads("model", signer.sign("model", blob))
    assert isinstance(restored, RiverModel)
