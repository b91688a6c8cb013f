"""Model specs, the registry and the model contract (detector/core/scoring.py, models/*.toml)."""

from __future__ import annotations

import math
import pickle
import random
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest

from detector.core.errors import ConfigError
from detector.core.events import Event
from detector.core.features import FEATURES, FeatureConfig
from detector.core.features.judgements import Judgements
from detector.core.scoring import (
    MODELS,
    CalibrationSpec,
    Decision,
    Model,
    ModelSpec,
    SurpriseModel,
    TreesModel,
    available_models,
    load_spec,
    parse_spec,
    spec_digest,
)

SHIPPED = sorted(
    p.name.removesuffix(".toml")
    for p in files("detector.models").iterdir()
    if p.name.endswith(".toml")
)

MINIMAL = 'kind = "surprise"\n'


def _event(i: int, value: float) -> Event:
    return Event("s", f"{i + 1}-0", "p", i * 1000, "t", {"value": value}, {}, 40)


def evidence_stream(n: int, seed: int = 3) -> list[Judgements]:
    """Mostly quiet judgements (batches of one, each of an event with a ``value`` field, which
    River specs read) with occasional large surprises (and values far off)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        surprise = {f: rng.expovariate(3.0) for f in FEATURES}
        value = 10.0 + rng.gauss(0.0, 1.0)
        if rng.random() < 0.05:
            surprise[rng.choice(FEATURES)] = rng.uniform(5.0, 64.0)
            value *= rng.uniform(3.0, 30.0)
        out.append(Judgements.of(surprise, i, _event(i, value)))
    return out


def built(name: str) -> Model:
    """A shipped spec's model, out of a pipeline: slot 0 (every judgement's) given as the
    store gives it."""
    model = load_spec(name).build()
    if model.per_slot is not None:
        model.per_slot.reset(0)
    return model


# --------------------------------------------------------------------------------------------
# Shipped specs


def test_shipped_specs_are_listed() -> None:
    models = available_models()
    assert set(SHIPPED) >= {"stats", "hst"}
    assert sorted(models) == SHIPPED
    assert all(isinstance(d, str) and d for d in models.values())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_spec_loads(name: str) -> None:
    spec = load_spec(name)
    text = files("detector.models").joinpath(f"{name}.toml").read_text()
    assert spec.name == name
    assert spec.kind in MODELS
    assert spec.digest == spec_digest(tomllib.loads(text), name)
    assert spec.description == available_models()[name]
    assert isinstance(spec.features, FeatureConfig)
    assert isinstance(spec.calibration, CalibrationSpec)
    assert isinstance(spec.decision, Decision)
    assert 0.0 < spec.decision.threshold < 1.0
    assert spec.decision.warmup_events >= 0


def test_stats_spec_values() -> None:
    spec = load_spec("stats")
    assert isinstance(spec.build(), SurpriseModel)
    assert spec.features.min_count == 50
    assert spec.calibration.bins == 128
    assert spec.decision.threshold == 0.99999


def test_metrics_spec_values() -> None:
    spec = load_spec("metrics")
    assert isinstance(spec.build(), SurpriseModel)
    assert spec.features.disabled == ("rate", "size")
    assert (spec.features.seasonal_buckets, spec.features.seasonal_period_s) == (24, 86400)
    assert spec.features.window_values == 1000
    assert spec.features.seasonal_explains is True
    assert spec.calibration.likelihood_window == 20
    assert spec.decision.cooldown_ms == 12 * 3600 * 1000
    assert spec.decision.protect_threshold <= spec.decision.threshold == 0.999


def test_stats_spec_keeps_the_new_features_off() -> None:
    f = load_spec("stats").features
    assert (f.disabled, f.seasonal_buckets, f.window_values) == ((), 0, 0)
    assert load_spec("stats").decision.silence_after == 20.0  # silence detection is on


def test_stats_spec_turns_on_replay_drift_bursts_and_timed_rate() -> None:
    f = load_spec("stats").features
    assert (f.id_field, f.replay_horizon_s, f.replay_max_ids) == ("event_id", 1800, 1_000_000)
    assert f.drift_horizon_s > 0 and f.rate_horizon_s > 0 and f.novelty_burst is True


@pytest.mark.parametrize("name", ["metrics", "hst", "forecast"])
def test_other_specs_keep_replay_drift_and_bursts_off(name: str) -> None:
    f = load_spec(name).features
    assert (f.replay_horizon_s, f.drift_horizon_s, f.rate_horizon_s, f.novelty_burst) == (
        0, 0.0, 0.0, False,
    )  # fmt: skip


def test_trees_inputs_are_the_six_per_event_features() -> None:
    m = TreesModel(n_trees=2, height=3, window_size=10, seed=1)
    assert m.inputs == ("rate", "value", "size", "type", "category", "schema")
    assert set(m.inputs) < set(FEATURES)


@pytest.mark.parametrize(
    "line",
    [
        "replay_horizon_s = -1.0",
        "replay_max_ids = 0",
        "replay_window = 8192",  # renamed: replay_horizon_s and replay_max_ids
        "drift_horizon_s = -5.0",
        "drift_slack = 0",
        "burst_s = 0",
    ],
)
def test_invalid_replay_and_drift_settings_raise_config_error(line: str) -> None:
    with pytest.raises(ConfigError, match=r"\[features\]"):
        parse_spec(f'kind = "surprise"\n[features]\n{line}\n', "bad.toml")


def test_disabled_features_are_an_array_of_known_names() -> None:
    spec = parse_spec(MINIMAL + '[features]\ndisabled = ["rate", "size"]\n', "spec.toml")
    assert spec.features.disabled == ("rate", "size")
    with pytest.raises(ConfigError, match="array of strings"):
        parse_spec(MINIMAL + '[features]\ndisabled = "rate"\n', "spec.toml")
    with pytest.raises(ConfigError, match="array of strings"):
        parse_spec(MINIMAL + "[features]\ndisabled = [1]\n", "spec.toml")
    with pytest.raises(ConfigError, match=r"\[features\]: disabled: unknown features \['colour'\]"):
        parse_spec(MINIMAL + '[features]\ndisabled = ["colour"]\n', "spec.toml")


def test_boolean_settings_take_toml_booleans_only() -> None:
    spec = parse_spec(MINIMAL + "[features]\nseasonal_explains = true\n", "s.toml")
    assert spec.features.seasonal_explains is True
    with pytest.raises(ConfigError, match="seasonal_explains must be bool"):
        parse_spec(MINIMAL + "[features]\nseasonal_explains = 1\n", "s.toml")


def test_invalid_profile_settings_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="window_values must be at least"):
        parse_spec(MINIMAL + "[features]\nwindow_values = 10\nwindow_tail = 20\n", "s.toml")
    with pytest.raises(ConfigError, match=">= 0"):
        parse_spec(MINIMAL + "[features]\nseasonal_buckets = -1\n", "s.toml")


def test_hst_spec_builds_seeded_trees() -> None:
    spec = load_spec("hst")
    model = spec.build()
    assert isinstance(model, TreesModel)
    assert spec.params["seed"] == 42


# --------------------------------------------------------------------------------------------
# Specs from text and from a path


def test_minimal_spec_takes_defaults() -> None:
    spec = parse_spec(MINIMAL, "models/mine.toml")
    assert spec.name == "mine"
    assert spec.params == {}
    assert spec.features == FeatureConfig()
    assert spec.calibration == CalibrationSpec()
    assert spec.decision == Decision()
    assert spec.digest == spec_digest(tomllib.loads(MINIMAL), "mine")
    # Comments and layout are not the spec: the digest (and so checkpoints) survive them.
    edited = parse_spec("# tuned on 2026-12-06\n" + MINIMAL.replace(" = ", "   =   "), "mine.toml")
    assert edited.digest == spec.digest
    assert parse_spec(MINIMAL, "yours.toml").digest != spec.digest  # another name


def test_spec_file_by_path(tmp_path: Path) -> None:
    text = (
        'kind = "trees"\ndescription = "mine"\n'
        "[params]\nn_trees = 3\nheight = 4\nwindow_size = 20\nseed = 5\n"
        "[features]\nmin_count = 7\n"
        "[decision]\nthreshold = 0.99\nwarmup_events = 10\n"
    )
    path = tmp_path / "custom.toml"
    path.write_text(text)
    spec = load_spec(str(path))
    assert spec.name == "custom"
    assert spec.kind == "trees"
    assert spec.description == "mine"
    assert spec.features.min_count == 7
    assert spec.decision.threshold == 0.99
    assert spec.decision.warmup_events == 10
    assert spec.decision.cooldown_ms == Decision().cooldown_ms
    assert spec.digest == spec_digest(tomllib.loads(text), "custom")
    changed = text.replace("min_count = 7", "min_count = 8")
    assert parse_spec(changed, str(path)).digest != spec.digest  # a value is the spec
    assert isinstance(spec.build(), TreesModel)


def test_spec_file_name_in_file_wins(tmp_path: Path) -> None:
    path = tmp_path / "file.toml"
    path.write_text('name = "given"\n' + MINIMAL)
    assert load_spec(str(path)).name == "given"


def test_shipped_spec_by_path_equals_by_name() -> None:
    path = Path(str(files("detector.models").joinpath("stats.toml")))
    assert load_spec(str(path)) == load_spec("stats")


@pytest.mark.parametrize(
    ("name", "match"),
    [("no-such-model", "unknown model"), ("missing/dir/spec.toml", "spec file not found")],
)
def test_unknown_spec_raises_config_error(name: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_spec(name)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (MINIMAL + "[features]\nfading = 0.1\n", r"\[features\]: unknown keys \['fading'\]"),
        (MINIMAL + "[decision]\nthreshhold = 0.9\n", r"\[decision\]: unknown keys"),
        (MINIMAL + "[calibration]\nbuckets = 3\n", r"\[calibration\]: unknown keys"),
        (MINIMAL + "[detector]\nx = 1\n", r"unknown sections \['detector'\]"),
        (MINIMAL + "extra = 1\n", r"unknown sections \['extra'\]"),
        ('kind = "forest"\n', "kind must be one of"),
        ('name = "x"\n', "kind must be one of"),
        (MINIMAL + "[params]\nn_trees = 3\n", "bad params"),
        ('kind = "trees"\n[params]\ntrees = 3\n', "bad params"),
        ("kind = ", "spec.toml"),
    ],
)
def test_invalid_specs_raise_config_error(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_spec(text, "spec.toml")


def test_invalid_spec_file_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MINIMAL + "[features]\nnope = 1\n")
    with pytest.raises(ConfigError, match="nope"):
        load_spec(str(path))


@pytest.mark.parametrize(
    "text",
    [
        MINIMAL + "features = 1\n",
        MINIMAL + "params = 3\n",
        MINIMAL + "decision = true\n",
        'kind = ["surprise"]\n',
    ],
)
def test_malformed_spec_types_raise_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_spec(text, "spec.toml")


def test_wrongly_typed_setting_raises_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_spec(MINIMAL + '[decision]\nthreshold = "high"\n', "spec.toml")


# --------------------------------------------------------------------------------------------
# The model contract, over every shipped spec


WARMUP = 200  # every shipped spec's warmup_events


def scores(model: Model, stream: list[Judgements], learn: bool = True) -> list[float]:
    """Each judgement's raw score, then (if ``learn``) learned. As in the pipeline, a model
    that cannot score yet while its producer warms up (a forecaster before its first values)
    scores 0."""
    out = []
    for j in stream:
        try:
            out.append(model.score(j, 0))
        except IndexError:
            assert j.history[0] < WARMUP
            out.append(0.0)
        if learn:
            model.learn(j, 0)
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_finite_score_before_learning(name: str) -> None:
    model = built(name)
    quiet = Judgements.of(dict.fromkeys(FEATURES, 0.0), 0, _event(0, 10.0))
    loud = Judgements.of(dict.fromkeys(FEATURES, 64.0), 0, _event(0, 1e6))
    for raw in scores(model, [quiet, loud, Judgements.of({}, 0, _event(0, 0.0))], learn=False):
        assert isinstance(raw, float)
        assert math.isfinite(raw)
        assert raw >= 0.0


@pytest.mark.parametrize("name", SHIPPED)
def test_scores_finite_and_non_negative_while_learning(name: str) -> None:
    model = built(name)
    for raw in scores(model, evidence_stream(600)):
        assert math.isfinite(raw)
        assert raw >= 0.0


@pytest.mark.parametrize("name", SHIPPED)
def test_input_evidence_not_mutated(name: str) -> None:
    model = built(name)
    stream = evidence_stream(400)
    before = [(list(j.surprise), dict(j.fields(0))) for j in stream]
    scores(model, stream)
    assert [(list(j.surprise), dict(j.fields(0))) for j in stream] == before


@pytest.mark.parametrize("name", SHIPPED)
def test_pickle_round_trip_before_and_after_training(name: str) -> None:
    stream = evidence_stream(700)
    model = built(name)
    fresh = pickle.loads(pickle.dumps(model))  # noqa: S301 (our own bytes)
    first = scores(model, stream[:500])
    assert scores(fresh, stream[:500]) == first
    trained = pickle.loads(pickle.dumps(model))  # noqa: S301 (our own bytes)
    assert scores(trained, stream[500:]) == scores(model, stream[500:])


@pytest.mark.parametrize("name", SHIPPED)
def test_a_model_not_stateful_learns_nothing(name: str) -> None:
    # A checkpoint rebuilds a model that is not ``stateful`` from its spec instead of
    # storing it: learning must then leave nothing a fresh one lacks, but in its state per
    # producer slot (checkpointed with each producer).
    stream = evidence_stream(700)
    model = built(name)
    scores(model, stream[:500])
    learned = scores(model, stream[500:], learn=False)
    try:
        same = learned == scores(built(name), stream[500:], learn=False)
    except AssertionError:  # a fresh forecaster past warm-up cannot score at all
        same = False
    assert same is not (model.stateful or model.per_slot is not None)


@pytest.mark.parametrize("name", SHIPPED)
def test_deterministic_for_the_seed(name: str) -> None:
    stream = evidence_stream(700)
    a = scores(built(name), stream)
    b = scores(built(name), stream)
    assert a == b


@pytest.mark.parametrize("name", SHIPPED)
def test_anomalous_evidence_scores_higher(name: str) -> None:
    model = built(name)
    scores(model, evidence_stream(800))
    quiet = Judgements.of(dict.fromkeys(FEATURES, 0.1), 800, _event(800, 10.0))
    loud = Judgements.of({**dict.fromkeys(FEATURES, 0.1), "value": 40.0}, 800, _event(800, 900.0))
    assert model.score(loud, 0) > model.score(quiet, 0)
    assert model.score(loud, 0) <= max(model.max_raw, 64.0)


def test_trees_seed_matters() -> None:
    stream = evidence_stream(700)
    a = scores(TreesModel(n_trees=5, height=6, window_size=50, seed=1), stream)
    b = scores(TreesModel(n_trees=5, height=6, window_size=50, seed=2), stream)
    assert a != b


def test_surprise_model_is_the_largest_surprise() -> None:
    m = SurpriseModel()
    assert m.score(Judgements.of({"rate": 0.2, "value": 7.5, "size": 3.0}, 1), 0) == 7.5
    assert m.score(Judgements.of({}, 0), 0) == 0.0


def test_build_gives_independent_models() -> None:
    spec = load_spec("hst")
    a, b = spec.build(), spec.build()
    stream = evidence_stream(300)
    scores(a, stream)
    # b never learned: it scores like a fresh model, not like a.
    fresh = spec.build()
    probe = stream[:50]
    assert scores(b, probe, learn=False) == scores(fresh, probe, learn=False)
    assert scores(a, probe, learn=False) != scores(b, probe, learn=False)


def test_spec_is_frozen() -> None:
    spec = load_spec("stats")
    assert isinstance(spec, ModelSpec)
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


def test_shipped_specs_cover_every_model_kind() -> None:
    assert {load_spec(name).kind for name in SHIPPED} == set(MODELS)


@pytest.mark.parametrize("name", SHIPPED)
def test_bounded_memory_growth(name: str) -> None:
    model = built(name)
    stream = evidence_stream(2000)
    scores(model, stream[:1000])
    warm = len(pickle.dumps(model))
    scores(model, stream[1000:])
    assert len(pickle.dumps(model)) <= warm * 1.05
