"""The resonance feature: an ART memory of a metric's shapes, whose news (a shape that
resonates with none learned) alerts by itself."""

from __future__ import annotations

import math
import pickle
import random
from importlib.resources import files

from detector.core.codec import Reader, Writer
from detector.core.events import Event
from detector.core.features import FeatureConfig, FeatureStore
from detector.core.features.resonance import ResonanceFeature, ShapeMemory
from detector.core.pipeline import Pipeline
from detector.core.scoring import parse_spec

MINUTE = 60_000
ART = FeatureConfig(min_count=20, resonance_step=2, resonance_learn=64)


def value(i: int, rng: random.Random, change: int) -> float:
    """A wave of 48 minutes between 10 and 90, lightly noisy; from ``change`` on, a square
    wave of the same period and range (a new shape, every value still in range)."""
    phase = 2 * math.pi * i / 48
    v = math.sin(phase) if i < change else math.copysign(1.0, math.sin(phase))
    return 50.0 + 40.0 * v + rng.gauss(0.0, 0.5)


def series(n: int = 2400, change: int = 2000) -> list[Event]:
    rng = random.Random(7)
    return [
        Event("s", f"{i}-0", "cpu-1", i * MINUTE, "m", {"cpu": value(i, rng, change)}, {}, 20)
        for i in range(n)
    ]


def news(m: ShapeMemory, xs: list[float]) -> list[int]:
    """The indices of ``xs`` whose step was news."""
    return [i for i, x in enumerate(xs) if m.push(x)]


def test_a_learned_wave_is_no_news_and_a_new_shape_is() -> None:
    rng = random.Random(3)
    m = ShapeMemory(step=2, learn=64, capacity=256)
    assert not news(m, [value(i, rng, 10**9) for i in range(2000)][300:])  # learned
    assert not news(m, [value(i, rng, 10**9) for i in range(2000, 2200)])  # a repeat
    found = news(m, [value(i, rng, 0) for i in range(2200, 2400)])  # square: news
    assert found and found[0] < 48  # within a period of the change
    assert len(found) <= 3  # one piece of news, not one per step


def test_a_repeated_burst_is_news_once() -> None:
    m = ShapeMemory(step=1, learn=64, capacity=256)
    calm = [50.0 + (i % 3) for i in range(600)]
    burst = [50.0, 51.0, 52.0, 95.0, 95.0, 50.0, 51.0, 52.0]
    assert not news(m, calm[100:])
    first = news(m, burst + calm[:100])
    assert first and first[0] < 5
    assert not news(m, burst + calm[:100])  # learned: the same burst again


def metrics_spec(step: int) -> str:
    """The shipped ``metrics`` spec with ``resonance_step = step``."""
    text = files("detector.models").joinpath("metrics.toml").read_text()
    assert "resonance_step = 4 " in text  # (shipped on)
    return text.replace("resonance_step = 4 ", f"resonance_step = {step} ", 1)


def test_a_spec_with_resonance_alerts_on_a_change_of_shape() -> None:
    events = series()
    verdicts = Pipeline(parse_spec(metrics_spec(2), "spec.toml")).process(events)
    alerts = [(i, v.alert) for i, v in enumerate(verdicts) if v.alert is not None]
    found = [(i, a) for i, a in alerts if a.reasons[0].feature == "resonance"]
    assert found and 2000 <= found[0][0] < 2048
    assert not [i for i, _ in found if i < 2000]
    assert found[0][1].reasons[0].field == "cpu"
    plain = Pipeline(parse_spec(metrics_spec(0), "spec.toml")).process(events)
    assert not [v for v in plain if v.alert and v.alert.reasons[0].feature == "resonance"]


def test_resonance_is_off_by_default() -> None:
    store = FeatureStore(FeatureConfig())
    feature = store.by_name["resonance"]
    assert isinstance(feature, ResonanceFeature) and not feature.on
    for e in series(600, 300):
        assert store.decisive(0, e) is None
        store.observe(e, learn=True)
    slot = store.slot_of("cpu-1")
    assert slot is not None and feature.slots[slot] is None  # off: no state, not even a dict


def test_resonance_state_round_trips() -> None:
    store = FeatureStore(ART)
    events = series()
    for e in events[:1500]:
        store.observe(e, learn=True)
    slot = store.slot_of("cpu-1")
    assert slot is not None
    copy = FeatureStore(ART)
    copy.restore({"cpu-1": store.record(slot)}, store.counters(), shared=store.shared(full=True))
    twin = pickle.loads(pickle.dumps(store))  # noqa: S301 (our own bytes)
    seen = []
    for e in events[1500:]:
        a, b, c = (s.decisive(slot, e) for s in (store, copy, twin))
        assert a == b == c
        seen.append(a is not None)
        for s in (store, copy, twin):
            s.observe(e, learn=True)
    assert any(seen)


def test_extreme_values_are_steps_like_any() -> None:
    m = ShapeMemory(step=1, learn=16, capacity=8)
    xs = [1.0, -1e308, 1e308, 0.0, 1e-300, 5.0] * 20
    assert sum(m.push(x) for x in xs) >= 0  # no overflow error, no NaN level
    assert len(m.weights) <= 8 and 0.0 <= m.lower <= m.upper <= 1.0


def test_shapes_dump_and_load_agree() -> None:
    rng = random.Random(5)
    m = ShapeMemory(step=3, learn=32, capacity=16)
    xs = [value(i, rng, 900) for i in range(1200)]
    for x in xs[:700]:
        m.push(x)
    w = Writer()
    m.dump(w)
    back = ShapeMemory.load(Reader(w.bytes()))
    assert len(m.weights) <= 16  # bounded
    assert [m.push(x) for x in xs[700:]] == [back.push(x) for x in xs[700:]]
