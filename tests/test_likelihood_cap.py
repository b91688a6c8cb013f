"""The anomaly likelihood's rarity cap (``likelihood_max_rarity``, the ``metrics`` spec)."""

from __future__ import annotations

from detector.calibration import Likelihood
from detector.scoring import load_spec


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


def test_no_cap_by_default_and_the_metrics_spec_sets_one() -> None:
    assert load_spec("stats").calibration.likelihood_max_rarity == 0.0
    assert load_spec("metrics").calibration.likelihood_max_rarity > 0.0
