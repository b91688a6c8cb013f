"""River estimators from a spec, and the ``river`` model kind that scores events with them.

A spec of ``kind = "river"`` names River classes in its ``[river]`` table; a parameter that is
itself an estimator is a nested ``{ class = ... }`` table (``args`` for positional ones, as
``river.compose.Pipeline`` takes its steps):

.. code-block:: toml

    [river]
    pipeline = [
      { class = "river.preprocessing.StandardScaler" },
      { class = "river.anomaly.QuantileFilter", q = 0.995,
        anomaly_detector = { class = "river.anomaly.OneClassSVM", nu = 0.02 } },
    ]
    scope = "producer"   # one clone per producer, or "shared" by all
    inputs = ["fields"]  # the event's numeric fields, and/or "surprises" (the features')

Only River classes deriving from River's estimator bases (:data:`BASES`) may be named, from
River's model packages (``checkpoint.river_module``: those a checkpoint may restore too): a
spec cannot name ``river.datasets`` or ``os.system``. River is
imported when a spec is built, not with this module.

Examples:
    >>> from detector.core.features.judgements import Judgements
    >>> m = RiverModel([{"class": "river.anomaly.HalfSpaceTrees", "seed": 1, "window_size": 20}],
    ...                inputs=["surprises"], features=["value"])
    >>> usual = Judgements.of({"value": 0.1}, 10)
    >>> for _ in range(60):
    ...     m.learn(usual, 0)
    >>> m.score(Judgements.of({"value": 40.0}, 10), 0) > m.score(usual, 0)
    True
"""

from __future__ import annotations

import importlib
import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

from detector.core.checkpoint import restricted_loads, river_module
from detector.core.codec import Reader, Writer
from detector.core.errors import ConfigError
from detector.core.features.config import FEATURES
from detector.core.features.judgements import Judgements
from detector.core.features.surprise import Reason

#: The bases a class named in a spec must derive from (dotted, resolved when a spec is built):
#: estimators (detectors, transformers, regressors, forecasters, pipelines) and the parts
#: their parameters take (statistics, optimisers, schedulers, initialisers, losses).
BASES = (
    "river.base.Estimator", "river.stats.base.Statistic", "river.optim.base.Optimizer",
    "river.optim.base.Scheduler", "river.optim.base.Initializer", "river.optim.losses.Loss",
)  # fmt: skip
SCOPES = ("shared", "producer")
INPUTS = ("fields", "surprises")
# A score beyond this is a score this high (inf would stop the calibration's arithmetic).
_MAX_SCORE = 1e300


def _resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def estimator_class(path: object, where: str) -> type:
    """The River class a spec names, if it may be named.

    Raises:
        ConfigError: not a public River class of a model package, or not an estimator (or
            a part of one).

    >>> estimator_class("river.anomaly.HalfSpaceTrees", "x").__name__
    'HalfSpaceTrees'
    >>> estimator_class("river.datasets.CreditCard", "x")
    Traceback (most recent call last):
    ...
    detector.core.errors.ConfigError: x: river.datasets.CreditCard is not a River estimator: ...
    """
    module, _, name = str(path).rpartition(".")
    refused = (
        f"{where}: {path} is not a River estimator: a spec names classes of River's model "
        "packages derived from river.base.Estimator (or a statistic, optimiser, scheduler, "
        "initialiser or loss for a parameter)"
    )
    public = all(p and not p.startswith("_") for p in f"{module}.{name}".split("."))
    if not isinstance(path, str) or not public or not river_module(module):
        raise ConfigError(refused)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        msg = f"{where}: no class {name!r} in {module}"
        raise ConfigError(msg) from None
    bases = tuple(_resolve(b) for b in BASES)
    if not isinstance(cls, type) or not issubclass(cls, bases):
        raise ConfigError(refused)
    return cls


def build_estimator(table: Mapping[str, Any], where: str) -> Any:
    """A River object from a ``{ class = ..., args = [...], param = ... }`` table; a value
    that is such a table (or a list of them) is built first.

    Raises:
        ConfigError: a class that may not be named, or parameters it does not take.
    """
    cls = estimator_class(table.get("class"), where)
    args = table.get("args", [])
    if not isinstance(args, list):
        msg = f"{where}: args must be an array"
        raise ConfigError(msg)
    params = {k: _value(v, f"{where}.{k}") for k, v in table.items() if k not in ("class", "args")}
    try:
        return cls(*[_value(v, f"{where}.args") for v in args], **params)
    except (TypeError, ValueError) as exc:
        msg = f"{where}: {table['class']}: {exc}"
        raise ConfigError(msg) from None


def _value(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        if "class" in value:
            return build_estimator(value, where)
        return {k: _value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_value(v, where) for v in value]
    return value


def build_pipeline(steps: object, where: str) -> Any:
    """The anomaly detector a spec's ``pipeline`` describes: its one step, or River's
    ``compose.Pipeline`` of its steps (transformers, then an anomaly detector).

    Raises:
        ConfigError: no steps, a step that is not a table, or a last step that is not an
            anomaly detector.
    """
    from river import base, compose

    if not isinstance(steps, list) or not steps or not all(isinstance(s, dict) for s in steps):
        msg = f"{where}: pipeline must be a non-empty array of {{ class = ... }} tables"
        raise ConfigError(msg)
    built = [build_estimator(s, f"{where}.pipeline[{k}]") for k, s in enumerate(steps)]
    last = built[-1]
    detectors = (base.AnomalyDetector, base.SupervisedAnomalyDetector, base.AnomalyFilter)
    if not isinstance(last, detectors):
        msg = f"{where}: the pipeline's last step must be an anomaly detector, not {last!r}"
        raise ConfigError(msg)
    if len(built) > 1 and _supervised(last):
        # River's Pipeline routes no target to score_one: a supervised detector takes the
        # event's fields itself (transformers go into its predictive model).
        msg = f"{where}: a supervised detector ({type(last).__name__}) must be the only step"
        raise ConfigError(msg)
    return last if len(built) == 1 else compose.Pipeline(*built)


def _supervised(detector: Any) -> bool:
    """Whether the detector scores and learns (x, y) (a filter as the detector it wraps)."""
    from river import base

    inner = getattr(detector, "anomaly_detector", detector)
    return isinstance(inner, base.SupervisedAnomalyDetector)


class EstimatorSlots:
    """One clone of a River estimator per producer slot: a part of the store's slots (reset
    with its producer, so it is bounded and evicted like every producer state), written in the
    producer's checkpoint record as a pickle that only the restricted unpickler reads."""

    def __init__(self, template: Any) -> None:
        self.template = template
        self.slots: list[Any] = []

    def of(self, slot: int) -> Any:
        """The slot's estimator, cloned from the template (River's ``clone``: the same
        parameters and seed, nothing learned) at its producer's first event."""
        est = self.slots[slot]
        if est is None:
            est = self.slots[slot] = self.template.clone()
        return est

    def reset(self, slot: int) -> None:
        if slot == len(self.slots):
            self.slots.append(None)
        else:
            self.slots[slot] = None

    def dump(self, slot: int, w: Writer) -> None:
        est = self.slots[slot]
        w.blob(b"" if est is None else pickle.dumps(est, protocol=pickle.HIGHEST_PROTOCOL))

    def load(self, slot: int, r: Reader) -> None:
        raw = r.blob()
        self.slots[slot] = restricted_loads(raw, "producer record") if raw else None


class RiverModel:
    """Any River anomaly detector or pipeline, shared by all producers or one per producer.

    Args:
        pipeline: the steps, as ``{ class = ..., params... }`` tables (see the module).
        scope: ``"shared"``: one estimator learns from every producer's events (pickled as
            the checkpoint's model); ``"producer"``: a clone per producer (in its record).
        inputs: what an event gives the estimator as ``x``: ``"fields"`` (its numeric payload
            fields by dotted name, less ``target``) and/or ``"surprises"`` (each feature's
            ``-log10(p)``, by feature name, squashed by ``surprise_scale``).
        target: the numeric field a supervised detector (``PredictiveAnomalyDetection``,
            ``GaussianScorer``) predicts or models as ``y``; an event without it scores 0 and
            teaches nothing.
        features: the features whose surprises are given (default: all but ``joint``).
        surprise_scale: a surprise ``s`` is given as ``1 - exp(-s / scale)``, in [0, 1), as
            River's bounded-input detectors (HalfSpaceTrees) need; 0 gives ``s`` itself.
        score_range: the [low, high] of the detector's usual scores, for the calibration's
            histogram (scores beyond it are extrapolated): [0, 1] for most of River's
            detectors; unbounded ones (OneClassSVM, LocalOutlierFactor) need theirs.
    """

    river_objects = True  # its checkpoints hold River objects: restored by that River only

    def __init__(
        self,
        pipeline: Sequence[Mapping[str, Any]],
        scope: str = "shared",
        inputs: Sequence[str] = ("surprises",),
        target: str | None = None,
        features: Sequence[str] | None = None,
        surprise_scale: float = 8.0,
        score_range: Sequence[float] = (0.0, 1.0),
    ) -> None:
        where = "[river]"
        if scope not in SCOPES:
            msg = f"{where}: scope must be one of {list(SCOPES)}, not {scope!r}"
            raise ConfigError(msg)
        if not inputs or any(k not in INPUTS for k in inputs):
            msg = f"{where}: inputs must be some of {list(INPUTS)}, not {inputs!r}"
            raise ConfigError(msg)
        if len(score_range) != 2 or not score_range[0] < score_range[1]:
            msg = f"{where}: score_range must be [low, high] with low < high"
            raise ConfigError(msg)
        unknown = sorted(set(features or ()) - set(FEATURES))
        if unknown:
            msg = f"{where}: unknown features {unknown} (known: {list(FEATURES)})"
            raise ConfigError(msg)
        self.estimator = build_pipeline(list(pipeline), where)
        self.supervised = _supervised(self.estimator)
        if self.supervised != (target is not None):
            msg = (
                f"{where}: a supervised detector needs a target field, and only one takes it"
                if self.supervised
                else f"{where}: target is for supervised detectors (the last step is not one)"
            )
            raise ConfigError(msg)
        self.scope = scope
        self.fields = "fields" in inputs
        self.target = target
        self.surprise_scale = float(surprise_scale)
        if features is not None and "surprises" not in inputs:
            msg = f'{where}: features choose surprises: add "surprises" to inputs'
            raise ConfigError(msg)
        # By default the features as measured before ``joint`` came (a new column would
        # change every seeded River model); a spec lists ``joint`` to give its surprise.
        names = (features or FEATURES[: FEATURES.index("joint")]) if "surprises" in inputs else ()
        self.columns = [(name, FEATURES.index(name)) for name in names]
        self.low = float(score_range[0])
        self.max_raw = float(score_range[1]) - self.low
        # Per producer: the clones are a store part; the model itself holds only the template.
        self.per_slot = EstimatorSlots(self.estimator) if scope == "producer" else None
        self.stateful = self.per_slot is None
        self.name = type(getattr(self.estimator, "anomaly_detector", self.estimator)).__name__
        if self.name == "Pipeline":
            self.name = " | ".join(type(s).__name__ for s in self.estimator.steps.values())

    def inputs(self, judged: Judgements, i: int) -> tuple[dict[str, float], float | None]:
        """Event ``i``'s ``x`` for the estimator, and its target ``y`` (None: none, or the
        event lacks it)."""
        numbers = judged.fields(i) if self.fields or self.target is not None else {}
        x = dict(numbers) if self.fields else {}
        y = None
        if self.target is not None:
            y = numbers.get(self.target)
            x.pop(self.target, None)
        scale = self.surprise_scale
        for name, k in self.columns:
            s = judged.get(i, k)
            x[name] = 1.0 - math.exp(-s / scale) if scale else s  # as the trees model's
        return x, y

    def _of(self, judged: Judgements, i: int) -> Any:
        return self.estimator if self.per_slot is None else self.per_slot.of(judged.slot[i])

    def score(self, judged: Judgements, i: int) -> float:
        x, y = self.inputs(judged, i)
        if self.supervised:
            if y is None:
                return 0.0  # nothing to judge: no target value
            s = self._of(judged, i).score_one(x, y)
        else:
            s = self._of(judged, i).score_one(x)
        raw = float(s) - self.low
        # NaN or below the range: as low as it gets; beyond it: extrapolated by the calibration.
        return min(raw, _MAX_SCORE) if raw >= 0.0 else 0.0

    def learn(self, judged: Judgements, i: int) -> None:
        x, y = self.inputs(judged, i)
        if not self.supervised:
            self._of(judged, i).learn_one(x)
        elif y is not None:
            self._of(judged, i).learn_one(x, y)

    def reason(self, judged: Judgements, i: int, raw: float, score: float) -> Reason:
        """Why the model flagged event ``i`` when no feature finds it surprising: its score
        and its inputs (``score``: the calibrated score)."""
        x, y = self.inputs(judged, i)
        shown = [f"{k}={v:.4g}" for k, v in x.items()]
        if y is not None:
            shown.insert(0, f"{self.target}={y:.4g}")
        rarity = 1.0 / max(1.0 - score, 1e-300)
        return Reason(
            "model", self.name,
            f"score {raw + self.low:.4g} on {', '.join(shown[:8]) or 'no input'}"
            + (f" (+{len(shown) - 8} more)" if len(shown) > 8 else ""),
            f"no feature surprising; the model's scores reach this 1 in {rarity:.3g}",
            -math.log10(max(1.0 - score, 1e-300)),
        )  # fmt: skip
