"""The sequence feature: the shape of a metric's last values against the shapes it took."""

from __future__ import annotations

import math
import pickle
import random
from importlib.resources import files

from detector.core.events import Event
from detector.core.features import FeatureConfig, FeatureStore
from detector.core.features.sequence import SequenceFeature, Shapes
from detector.core.pipeline import Pipeline
from detector.core.scoring import parse_spec

MINUTE = 60_000
SEQ = FeatureConfig(min_count=20, sequence_window=24)


def wave(i: int, rng: random.Random, period: int = 24) -> Event:
    """One value a minute: a wave of ``period`` minutes between 10 and 90, lightly noisy."""
    v = 50.0 + 40.0 * math.sin(2 * math.pi * i / period) + rng.gauss(0.0, 1.0)
    return Event("s", f"{i}-0", "cpu-1", i * MINUTE, "m", {"cpu": v}, {}, 20)


def changed_period(n: int = 1500, change: int = 1200) -> list[Event]:
    """The wave's period drops from 24 to 16 minutes at ``change``: every value stays within
    the usual range (a change of shape, not of level)."""
    rng = random.Random(7)
    return [wave(i, rng, 24 if i < change else 16) for i in range(n)]


def surprises(cfg: FeatureConfig, events: list[Event]) -> list[dict[str, float]]:
    store = FeatureStore(cfg)
    return [store.observe(e, learn=True).surprise for e in events]


def test_a_changed_period_is_a_sequence_surprise_the_value_judge_misses() -> None:
    out = surprises(SEQ, changed_period())
    before, after = out[600:1200], out[1200:1230]
    assert max(s["value"] for s in after) < 3.0  # every value is usual by itself
    assert max(s["sequence"] for s in before) < 4.0
    assert max(s["sequence"] for s in after) > 8.0


def test_the_sequence_feature_is_off_by_default() -> None:
    out = surprises(FeatureConfig(min_count=20), changed_period())
    assert max(s["sequence"] for s in out) == 0.0
    store = FeatureStore(FeatureConfig())
    feature = store.by_name["sequence"]
    assert isinstance(feature, SequenceFeature) and not feature.on


def metrics_spec(extra: str = "") -> str:
    text = files("detector.models").joinpath("metrics.toml").read_text()
    return text.replace("[features]\n", f"[features]\n{extra}", 1)


def alerted(spec_text: str, events: list[Event]) -> list[int]:
    pipeline = Pipeline(parse_spec(spec_text, "spec.toml"))
    return [i for i, v in enumerate(pipeline.process(events)) if v.alert is not None]


def test_a_spec_with_the_sequence_feature_alerts_on_a_change_of_shape() -> None:
    events = changed_period()
    with_it = alerted(metrics_spec("sequence_window = 24\n"), events)
    without = alerted(metrics_spec(), events)
    assert not [i for i in without if i >= 1200]
    assert [i for i in with_it if 1200 <= i < 1230]
    assert not [i for i in with_it if i < 1200]
    top = Pipeline(parse_spec(metrics_spec("sequence_window = 24\n"), "spec.toml"))
    verdicts = top.process(events[:1230])
    alert = next(v.alert for v in verdicts if v.alert is not None)
    assert alert.reasons[0].feature in ("sequence", "likelihood")
    assert any(r.feature == "sequence" and r.field == "cpu" for r in alert.reasons)


def test_sequence_state_round_trips_and_is_bounded() -> None:
    store = FeatureStore(SEQ)
    for e in changed_period(600, 600):
        store.observe(e, learn=True)
    slot = store.slot_of("cpu-1")
    assert slot is not None
    copy = FeatureStore(SEQ)
    copy.restore({"cpu-1": store.record(slot)}, store.counters(), shared=store.shared(full=True))
    rng = random.Random(3)
    for probe in (wave(600, rng), wave(601, rng, 16), wave(602, rng, 7)):
        a = store.observe(probe, learn=True)
        b = copy.observe(probe, learn=True)
        assert a.surprise == b.surprise and a.reasons == b.reasons
    # The ring of 512 values is the state: 8 bytes a value, plus a few counters.
    without = FeatureStore(FeatureConfig(min_count=20))
    for e in changed_period(600, 600):
        without.observe(e, learn=True)
    plain = without.slot_of("cpu-1")
    assert plain is not None
    extra = len(store.record(slot)) - len(without.record(plain))
    assert 512 * 8 <= extra <= 512 * 8 + 100


def test_a_store_with_shapes_pickles() -> None:
    store = FeatureStore(SEQ)
    for e in changed_period(300, 300):
        store.observe(e, learn=True)
    copy = pickle.loads(pickle.dumps(store))  # noqa: S301 (our own bytes)
    probe = wave(300, random.Random(5), 16)
    assert copy.observe(probe, learn=False).surprise == store.observe(probe, learn=False).surprise


def test_a_repeated_shape_is_near_and_a_new_one_far() -> None:
    s = Shapes(64)
    for i in range(200):
        s.push([0.0, 1.0, 2.0, 1.0][i % 4], 4, 0.05, 0.05)
    assert s.distance(0.0, 4, 0.05) < 0.01
    assert s.distance(2.0, 4, 0.05) > 0.5
    assert math.isnan(Shapes(64).distance(1.0, 4, 0.05))
