"""Options of the ``metrics`` spec (NAB): the likelihood's rarity cap, the window floor."""

from __future__ import annotations

import math

from detector.core.calibration import Likelihood
from detector.core.features.value import ValueWindow
from detector.core.scoring import load_spec


def _after_quiet(lk: Likelihood, tail: list[float]) -> list[float]:
    t = lk.new()
    for i in range(600):
        lk.update(t, 0.5 + 0.4 * (i % 3 == 0))
    return [lk.update(t, c)[0] for c in tail]


def test_one_extreme_value_is_not_a_run_with_the_cap() -> None:
    spike = [1.0 - 1e-12] + [0.5] * 5  # rarity 12, then usual values
    uncapped = _after_quiet(Likelihood(20, 0.005), spike)
    capped = _after_quiet(Likelihood(20, 0.005, max_rarity=6.0), spike)
    assert max(uncapped) > 0.999  # the spike alone lifts the moving mean into "a run"
    assert max(capped) < 0.99


def test_a_run_of_moderately_rare_values_still_counts_with_the_cap() -> None:
    run = [0.995] * 15  # rarity 2.3 each: below the cap, unchanged
    capped = _after_quiet(Likelihood(20, 0.005, max_rarity=6.0), run)
    assert capped == _after_quiet(Likelihood(20, 0.005), run)
    assert capped[-1] > 0.9999


def test_the_window_floor_bounds_a_recurring_spike_by_its_count() -> None:
    w = ValueWindow(1000)
    for i in range(1000):
        w.update(10.0 if i % 300 == 150 else 1.0 + 0.01 * (i % 7))  # 3 spikes among 1000
    unbounded = w.surprise(9.5, 20, 0.05)
    bounded = w.surprise(9.5, 20, 0.05, floor=True)
    assert unbounded > 5  # the exponential tail of the top 20 knows nothing of the spikes
    assert bounded == -math.log10(2 * 3 / 1001)  # 3 values as extreme among 1000
    # Beyond every value seen, the floor says nothing: the tail extrapolates as before.
    assert w.surprise(20.0, 20, 0.05, floor=True) == w.surprise(20.0, 20, 0.05)


def test_both_off_by_default_and_on_in_the_metrics_spec() -> None:
    stats, metrics = load_spec("stats"), load_spec("metrics")
    assert stats.calibration.likelihood_max_rarity == 0.0
    assert not stats.features.window_floor
    assert metrics.calibration.likelihood_max_rarity > 0.0
    assert metrics.features.window_floor
    # The likelihood's own alert level: off (the threshold) in stats, stricter in metrics.
    assert stats.decision.likelihood_threshold == 0.0
    assert metrics.decision.likelihood_threshold > metrics.decision.threshold
