"""Scoring: declarative model specs, the registry that builds them, and the models.

A spec is a TOML file in ``models/`` (shipped as ``detector.models``) or any path. It names a
model ``kind`` from :data:`MODELS`, its parameters (``[params]``; a River spec's ``[river]``
table names any River anomaly detector or pipeline: :mod:`detector.core.estimators`), the
feature settings, the calibration and the decision rules. Users add detectors by writing a
spec, not code.

Every model turns an event's row of the features' judgements
(:class:`~detector.core.features.judgements.Judgements`: a batch's surprises, slots and events,
read by index) into a raw score (higher is more anomalous); :mod:`detector.core.calibration` puts
raw scores on one [0, 1] scale.
"""

from __future__ import annotations

import hashlib
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Protocol, get_type_hints

import orjson

from detector.core.errors import ConfigError
from detector.core.estimators import RiverModel
from detector.core.features import FEATURES, MAX_SURPRISE, FeatureConfig
from detector.core.features.judgements import Judgements
from detector.core.features.store import Part
from detector.core.features.surprise import Reason
from detector.core.trees import HalfSpaceTrees


class Model(Protocol):
    """What the pipeline needs from a model: the raw score of event ``i`` of a batch's
    judgements, and learning it (each event is scored, then maybe learned, before the next
    one of the batch is judged). ``learn`` returns None, as in River."""

    max_raw: float
    # Whether learning changes the model object itself: a stateless one is rebuilt from its
    # spec, not checkpointed (its state per producer, if any, is in ``per_slot``).
    stateful: bool
    # Whether its checkpoints hold River objects (only the River release that wrote them
    # restores them for sure).
    river_objects: bool

    @property
    def per_slot(self) -> Part | None:
        """State per producer slot (a store part: bounded, evicted and checkpointed with the
        producer), or None."""
        ...

    def score(self, judged: Judgements, i: int) -> float: ...

    def learn(self, judged: Judgements, i: int) -> None: ...

    def reason(self, judged: Judgements, i: int, raw: float, score: float) -> Reason | None:
        """Why the model flagged event ``i`` (calibrated ``score``) when no feature finds it
        surprising, or None when its score is the features' own."""
        ...


class SurpriseModel:
    """Robust per-producer statistics: the raw score is the largest feature surprise.

    Each feature already compares the event with its own producer's running statistics, so
    the combination needs no training of its own.

    Examples:
        >>> m = SurpriseModel()
        >>> m.score(Judgements.of({"rate": 0.2, "value": 7.5}, 100), 0)
        7.5
    """

    max_raw = MAX_SURPRISE / 2  # histogram range; higher raw scores are extrapolated
    stateful = False
    per_slot = None
    river_objects = False

    def score(self, judged: Judgements, i: int) -> float:
        return judged.largest(i)

    def learn(self, judged: Judgements, i: int) -> None:
        return None

    def reason(self, judged: Judgements, i: int, raw: float, score: float) -> Reason | None:
        return None  # the score is the largest surprise: the features explain it


class TreesModel:
    """River's HalfSpaceTrees, shared by all producers, over producer-relative features.

    Inputs are the feature surprises squashed into [0, 1] (HalfSpaceTrees needs bounded
    inputs); one shared model costs the same for 10 or 100k producers. Seeded, so replays
    give identical scores. The trees run on arrays (:mod:`detector.core.trees`), with River's
    scores exactly.

    Examples:
        >>> m = TreesModel(n_trees=5, height=6, window_size=50, seed=1)
        >>> usual = Judgements.of({"value": 0.1, "rate": 0.2}, 10)
        >>> for _ in range(200):
        ...     m.learn(usual, 0)
        >>> m.score(Judgements.of({"value": 9.0, "rate": 0.2}, 10), 0) > m.score(usual, 0)
        True
    """

    max_raw = 1.0
    stateful = True
    per_slot = None
    river_objects = False  # River's trees on arrays: plain values and bytes
    # The trees' inputs: the six per-event features they were measured with (the replay and
    # drift features are off in the hst spec; new inputs would change every seeded split).
    inputs = FEATURES[:6]

    def __init__(
        self,
        n_trees: int = 25,
        height: int = 10,
        window_size: int = 250,
        seed: int = 42,
        scale: float = 8.0,
    ) -> None:
        self.scale = scale
        self.trees = HalfSpaceTrees(self.inputs, n_trees, height, window_size, seed=seed)

    def _x(self, judged: Judgements, i: int) -> list[float]:
        # 1 - exp(-s/scale): monotone, 0 for usual, approaches 1 for extreme surprise. The
        # inputs are the first columns of the judgements (FEATURES order).
        scale = self.scale
        return [1.0 - math.exp(-judged.get(i, k) / scale) for k in range(len(self.inputs))]

    def score(self, judged: Judgements, i: int) -> float:
        return self.trees.score_one(self._x(judged, i))

    def learn(self, judged: Judgements, i: int) -> None:
        self.trees.learn_one(self._x(judged, i))

    def reason(self, judged: Judgements, i: int, raw: float, score: float) -> Reason | None:
        return None  # as measured (the hst verdicts): the features' reasons alone


MODELS: dict[str, Callable[..., Model]] = {
    "surprise": SurpriseModel,
    "trees": TreesModel,
    "river": RiverModel,
}


@dataclass(frozen=True, slots=True)
class Decision:
    """When a calibrated score becomes an alert.

    Attributes:
        threshold: calibrated score at or above which an event is anomalous (alerts).
        protect_threshold: calibrated score at or above which an event is suspect and does
            not teach the baselines (at most ``threshold``: protect more than you alert).
        warmup_events: events a producer needs before it can alert.
        cooldown_ms: after an alert, further anomalies of the producer are counted, not sent.
        adapt_after_events: with ``adapt_after_ms``: how long a run of suspect events must
            last before the producer's baselines learn again, accepting a new normal
            (protection from learning anomalies, without freezing after a real change).
        adapt_after_ms: event time the run must also span.
        suspect_run_gap_ms: suspect events of one event type less than this apart in event
            time (or ten of the type's usual inter-arrivals, if longer: a rare type) form one
            run, whatever normal events come between them (replays among fresh events, a drift
            on the types that carry the field); 0: a run is consecutive suspect events. Only
            a run's first event teaches the calibration (with a gap: even after the run is
            accepted as the new normal), and a run adapts as above.
        rarity_horizon_ms: raise the threshold per producer so that events as rare come
            less than once per this much event time at the producer's usual rate (a false
            alert budget per producer and time, not per event); 0: the threshold alone.
        likelihood_threshold: the anomaly likelihood (a run of moderately rare events, with
            ``likelihood_window``) alerts only at or above this level, an event's own score
            from ``threshold``: a moving mean of rarities has a heavier tail than its nominal
            level says (on uniform scores it passes 0.999 about 3 times as often); 0: from
            ``threshold`` like an event's own score.
        silence_after: a producer is *silent* once the event-time watermark (the latest event
            time of any producer) passes its last event by this many times its usual
            inter-arrival; 0 turns silence detection off. One alert per silence.
        silence_min_ms: never silent sooner than this after its last event.
        new_producer: alert on the first event of a producer never seen (or forgotten after
            the idle TTL) while others are established (past warm-up): a new instance in a
            known fleet. Off for fleets that scale by adding producers.
        new_producer_after_ms: ... and only this long (event time) after the first event the
            detector saw, so that a cold start's late-appearing producers are not news.
    """

    threshold: float = 0.9999
    protect_threshold: float = 0.999
    warmup_events: int = 200
    cooldown_ms: int = 300_000
    adapt_after_events: int = 20
    adapt_after_ms: int = 900_000
    suspect_run_gap_ms: int = 0
    rarity_horizon_ms: int = 0
    likelihood_threshold: float = 0.0
    silence_after: float = 0.0
    silence_min_ms: int = 60_000
    new_producer: bool = False
    new_producer_after_ms: int = 3_600_000


@dataclass(frozen=True, slots=True)
class CalibrationSpec:
    """Histogram resolution and tail fit of :class:`~detector.core.calibration.Calibrator`, and the
    optional anomaly likelihood over calibrated scores
    (:class:`~detector.core.calibration.Likelihood`).

    Attributes:
        likelihood_window: events in the moving average of rarities; 0 = no likelihood.
        likelihood_fading: memory of the moving average's long-run moments, per event.
        likelihood_max_rarity: cap on one event's rarity in the moving average (0 = none):
            an extreme value is judged by its own score; it must not make the next
            ``likelihood_window`` events look like a run.
    """

    bins: int = 64
    tail_points: int = 10
    min_excess: float = 0.1
    likelihood_window: int = 0
    likelihood_fading: float = 0.005
    likelihood_max_rarity: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A named detector configuration, loaded from TOML.

    Attributes:
        name: the name users pass to ``--model``.
        kind: key in :data:`MODELS`.
        params: keyword arguments of the model's factory (``[params]``, or a River spec's
            ``[river]`` table).
        features: feature settings.
        calibration: calibration settings.
        decision: threshold, warm-up, cooldown, protection.
        description: one line for ``detector models``: when to use it.
        digest: sha256 of the parsed spec's settings (goes into checkpoints): comments, the
            layout of the TOML file and the description do not change it, a value does.
    """

    name: str
    kind: str
    params: Mapping[str, Any]
    features: FeatureConfig
    calibration: CalibrationSpec
    decision: Decision
    description: str
    digest: str

    def build(self) -> Model:
        """A fresh, seeded model."""
        try:
            return MODELS[self.kind](**self.params)
        except TypeError as exc:
            msg = f"model {self.name!r}: bad params for kind {self.kind!r}: {exc}"
            raise ConfigError(msg) from None
        except ConfigError as exc:
            msg = f"model {self.name!r}: {exc}"
            raise ConfigError(msg) from None


def _section(cls: Any, data: object, where: str) -> Any:
    """A settings dataclass from a TOML table: unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        msg = f"{where}: must be a table, not {type(data).__name__}"
        raise ConfigError(msg)
    hints = get_type_hints(cls)
    unknown = set(data) - set(hints)
    if unknown:
        msg = f"{where}: unknown keys {sorted(unknown)} (known: {sorted(hints)})"
        raise ConfigError(msg)
    values = dict(data)
    for key, value in data.items():
        want = hints[key]
        if want == tuple[str, ...]:  # a TOML array of strings
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                msg = f"{where}: {key} must be an array of strings, not {value!r}"
                raise ConfigError(msg)
            values[key] = tuple(value)
            continue
        ok = isinstance(value, want) and not isinstance(value, bool)
        if want is float:  # TOML writes 1 for 1.0
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif want is bool:
            ok = isinstance(value, bool)
        if not ok:
            msg = f"{where}: {key} must be {want.__name__}, not {value!r}"
            raise ConfigError(msg)
    try:
        return cls(**values)
    except ValueError as exc:
        msg = f"{where}: {exc}"
        raise ConfigError(msg) from None


def spec_digest(data: dict[str, Any], name: str) -> str:
    """The digest of a parsed spec under its name: its settings, not its text (a comment, the
    layout of the file or the ``description`` does not change it; checkpoints are refused when
    it changes)."""
    settings = {k: v for k, v in data.items() if k != "description"}
    canonical = orjson.dumps({**settings, "name": name}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def parse_spec(text: str, origin: str) -> ModelSpec:
    """Validate a spec's TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"{origin}: {exc}"
        raise ConfigError(msg) from None
    allowed = {"name", "kind", "description", "params", "river", "features", "calibration",
               "decision"}  # fmt: skip
    unknown = set(data) - allowed
    if unknown:
        msg = f"{origin}: unknown sections {sorted(unknown)}"
        raise ConfigError(msg)
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in MODELS:
        msg = f"{origin}: kind must be one of {sorted(MODELS)}, not {kind!r}"
        raise ConfigError(msg)
    # A River spec's parameters are its [river] table; the others' their [params].
    section = "river" if kind == "river" else "params"
    other = "params" if kind == "river" else "river"
    if other in data:
        msg = f"{origin}: [{other}] is not for kind {kind!r} (its settings go in [{section}])"
        raise ConfigError(msg)
    params = data.get(section, {})
    if not isinstance(params, dict):
        msg = f"{origin} [{section}]: must be a table"
        raise ConfigError(msg)
    spec = ModelSpec(
        name=str(data.get("name", Path(origin).stem)),
        kind=kind,
        params=dict(params),
        features=_section(FeatureConfig, data.get("features", {}), f"{origin} [features]"),
        calibration=_section(
            CalibrationSpec, data.get("calibration", {}), f"{origin} [calibration]"
        ),
        decision=_section(Decision, data.get("decision", {}), f"{origin} [decision]"),
        description=str(data.get("description", "")),
        digest=spec_digest(data, str(data.get("name", Path(origin).stem))),
    )
    spec.build()  # fail at startup, not on the first event
    return spec


def available_models() -> dict[str, str]:
    """Names of the shipped specs and their descriptions."""
    out = {}
    for entry in sorted(files("detector.models").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            spec = parse_spec(entry.read_text(), entry.name)
            out[spec.name] = spec.description
    return out


def load_spec(name_or_path: str) -> ModelSpec:
    """A shipped spec by name, or a spec file by path (a value with a slash or ending in
    ``.toml``).

    Raises:
        ConfigError: no such spec or file, or it is invalid.
    """
    path = Path(name_or_path)
    if "/" in name_or_path or os.sep in name_or_path or path.suffix == ".toml":
        try:
            return parse_spec(path.read_text(), str(path))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            msg = f"model spec file not found: {name_or_path}"
            raise ConfigError(msg) from None
        except OSError as exc:
            msg = f"model spec file {name_or_path}: {exc.strerror}"
            raise ConfigError(msg) from None
    entry = files("detector.models").joinpath(f"{name_or_path}.toml")
    if not entry.is_file():
        msg = f"unknown model {name_or_path!r}; shipped: {sorted(available_models())}"
        raise ConfigError(msg)
    return parse_spec(entry.read_text(), f"{name_or_path}.toml")
