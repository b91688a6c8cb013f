"""Raw scores to calibrated [0, 1] scores (detector/core/calibration.py)."""

from __future__ import annotations

import itertools
import math
import random
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core import calibration
from detector.core.calibration import Calibrator, Likelihood, RarityTrend, TailCounts
from detector.core.codec import Reader, Writer


def learned(cal: Calibrator, raws: list[float]) -> TailCounts:
    tc = cal.new()
    for r in raws:
        cal.learn(tc, r)
    return tc


def test_no_history_scores_zero() -> None:
    cal = Calibrator(max_raw=32.0)
    tc = cal.new()
    assert tc.n == 0
    assert cal.tail(tc, 0.0) == 1.0
    assert cal.score(tc, 30.0) == 0.0


def test_histogram_counts_and_clamps() -> None:
    cal = Calibrator(max_raw=10.0, bins=10)
    tc = learned(cal, [-5.0, 0.0, 0.99, 1.0, 9.99, 10.0, 1e9])
    assert tc.n == 7
    assert tc.counts.tolist() == [3, 1, 0, 0, 0, 0, 0, 0, 0, 3]


def test_empirical_tail_on_known_distribution() -> None:
    # 100 scores in each unit bin of [0, 10): the tail at bin k is (100 (10 - k) + 1) / 1001.
    cal = Calibrator(max_raw=10.0, bins=10, tail_points=10)
    tc = learned(cal, [i + 0.5 for i in range(10) for _ in range(100)])
    for k in range(10):
        expected = (100 * (10 - k) + 1) / 1001
        assert cal.tail(tc, k + 0.2) == pytest.approx(expected, rel=1e-12)
        assert cal.score(tc, k + 0.7) == pytest.approx(1 - expected, rel=1e-12)


def test_empirical_tail_with_few_points_uses_counts() -> None:
    # Fewer than tail_points scores: always the (smoothed) empirical tail, never a fit.
    cal = Calibrator(max_raw=10.0, bins=10, tail_points=10)
    tc = learned(cal, [1.5, 2.5, 2.5, 7.5])
    assert cal.tail(tc, 0.0) == pytest.approx(5 / 5)
    assert cal.tail(tc, 2.0) == pytest.approx(4 / 5)
    assert cal.tail(tc, 5.0) == pytest.approx(2 / 5)
    assert cal.tail(tc, 9.0) == pytest.approx(1 / 5)


def test_empirical_and_fitted_tail_match_exponential_distribution() -> None:
    # Exponential(1): P(X >= x) = exp(-x). n = 20000 puts the 10th-highest score near x = 7.6,
    # so below that the estimate is empirical and above it the exponential fit takes over.
    rng = random.Random(7)
    cal = Calibrator(max_raw=32.0, bins=128, tail_points=10)
    tc = learned(cal, [rng.expovariate(1.0) for _ in range(20_000)])
    for x in (0.5, 1.0, 2.0, 4.0):
        assert cal.tail(tc, x) == pytest.approx(math.exp(-x), rel=0.05)
    for x in (8.0, 9.0, 10.0):
        ratio = cal.tail(tc, x) / math.exp(-x)
        assert 0.5 < ratio < 2.0


def test_tail_extrapolates_below_one_in_n_beyond_the_data() -> None:
    cal = Calibrator(max_raw=32.0, bins=128)
    raws = [(i % 10) / 10 for i in range(1000)]
    tc = learned(cal, raws)
    floor = 1 / (tc.n + 1)
    # Inside the data the estimate never drops below one in n + 1 ...
    assert cal.tail(tc, 0.0) == 1.0
    assert cal.tail(tc, 0.85) >= floor
    # ... beyond it, the fitted tail goes below and keeps falling.
    tails = [cal.tail(tc, x) for x in (2.0, 3.0, 5.0, 10.0, 20.0, 40.0)]
    assert all(0.0 <= t < floor for t in tails)
    assert tails == sorted(tails, reverse=True)
    assert tails[0] > tails[-1]
    assert cal.score(tc, 3.0) > 1 - 1e-6


def test_min_excess_limits_extrapolation_from_a_narrow_past() -> None:
    # All 500 past scores in bin [1.0, 1.25): the fitted tail starts at u = 1.0 and decays
    # exponentially. A floor of 1.0 on its scale is above any excess seen, so it binds exactly.
    cal = Calibrator(max_raw=32.0, bins=128, min_excess=1.0)
    tc = learned(cal, [1.0] * 500)
    floored = cal.tail(tc, 1.5)
    assert floored == pytest.approx(500 / 501 * math.exp(-0.5 / 1.0), rel=1e-9)
    sharp = Calibrator(max_raw=32.0, bins=128, min_excess=0.01)
    assert 0.0 < sharp.tail(learned(sharp, [1.0] * 500), 1.5) < floored / 5


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_extreme_past_score_barely_moves_the_tail(seed: int) -> None:
    # 1000 ordinary raw scores; then the same plus one extreme score. One more observation
    # can add at most about one count in n + 1 to the tail anywhere below it.
    rng = random.Random(seed)
    raws = [rng.expovariate(1 / 0.4) for _ in range(1000)]
    cal = Calibrator(max_raw=32.0, bins=128)
    quiet = learned(cal, raws)
    after_incident = learned(cal, [*raws, 64.0])
    for x in (3.0, 4.0, 5.0):
        assert cal.tail(after_incident, x) <= cal.tail(quiet, x) + 2 / 1002


def record(state: TailCounts | RarityTrend) -> bytes:
    w = Writer()
    state.dump(w)
    return w.bytes()


def test_counts_record_round_trip() -> None:
    cal = Calibrator(max_raw=32.0, bins=64)
    tc = learned(cal, [i / 7 for i in range(300)])
    r = Reader(record(tc))
    restored = TailCounts.load(r, 64)
    assert r.done() and restored.n == tc.n
    for x in (0.0, 3.3, 30.0, 50.0):
        assert cal.score(restored, x) == cal.score(tc, x)
    assert (restored.full() == tc.full()).all() and restored.bins == 64
    assert restored.counts.tolist() == tc.counts.tolist()  # the bins up to the highest used
    empty = TailCounts.load(Reader(record(cal.new())), 64)
    assert empty.n == 0 and empty.bins == 64 and not empty.full().any()
    cal.learn(empty, 3.3)  # a restored histogram learns on (its bins grow as needed)
    fed = learned(cal, [3.3])
    assert (empty.n, empty.counts.tolist()) == (fed.n, fed.counts.tolist()) and empty.counts[-1]


def test_counts_hold_only_the_bins_up_to_the_highest_score() -> None:
    # Most producers score in a few low bins: the empty ones above are not held, and the
    # scores (the fitted tail too) are those of the full histogram.
    cal = Calibrator(max_raw=32.0, bins=128)
    raws = [(i % 13) / 4 for i in range(500)]
    tc = learned(cal, raws)
    assert len(tc.counts) == 13 and tc.counts[-1] > 0 and tc.full().sum() == 500
    held_full = TailCounts(128)
    held_full.counts, held_full.n = array("i", tc.full().tolist()), tc.n
    for x in (0.0, 1.0, 2.9, 3.0, 3.3, 5.0, 31.0, 40.0):
        assert cal.tail(tc, x) == cal.tail(held_full, x)


def test_a_full_histogram_counts_no_more() -> None:
    # 4-byte bins: a histogram that counted MAX_COUNT scores (2^31 - 1) keeps its shape.
    cal = Calibrator(max_raw=32.0, bins=128)
    tc = learned(cal, [0.0, 1.0, 1.0])
    tc.n = 2**31 - 1
    cal.learn(tc, 1.0)
    assert (tc.n, tc.counts.tolist()) == (2**31 - 1, [1, 0, 0, 0, 2])


def test_the_histograms_are_one_pool_that_scores_as_one_histogram_each() -> None:
    """Each slot of a Tails behaves as the TailCounts it replaces (scores, the bins held, the
    count; a full one counts no more); slots reset, grow past their blocks and compact the
    pool without mixing up each other's; pickled and written as a table they come back equal
    and learn on."""
    import pickle

    from detector.core.features import tables

    cal = Calibrator(max_raw=32.0, bins=128)
    tails, model = calibration.Tails(128), {}
    rng = random.Random(11)
    for slot in range(30):
        tails.reset(slot)
        model[slot] = None
    assert all(tails.get(slot) is None for slot in model)
    compacted, top = False, 0
    for step in range(8000):
        slot = rng.randrange(30)
        if model[slot] is None:
            tails.new(slot)
            model[slot] = cal.new()
        op = rng.random()
        if op < 0.9:  # mostly low scores, sometimes far up (the blocks grow)
            raw = rng.expovariate(1 / (0.5 if rng.random() < 0.9 else 8.0))
            for x in (raw, raw / 2, 40.0 * rng.random()):
                assert cal.score_at(tails, slot, x) == cal.score(model[slot], x)
            cal.learn_at(tails, slot, raw)
            cal.learn(model[slot], raw)
        elif op < 0.97:  # an evicted producer's slot taken afresh
            tails.reset(slot)
            model[slot] = None
        else:  # a producer's record loaded into its slot
            tc = learned(cal, [rng.random() * 4 for _ in range(rng.randrange(30))])
            tails.put(slot, TailCounts.load(Reader(record(tc)), 128))
            model[slot] = tc
        got, want = tails.get(slot), model[slot]
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            assert (got.n, got.counts.tolist()) == (want.n, want.counts.tolist())
        compacted, top = compacted or tails.pool.top < top, tails.pool.top
        if step == 4000:  # a full histogram counts no more, as a TailCounts
            tails.n[slot] = model[slot].n = 2**31 - 1  # type: ignore[union-attr]
    assert compacted  # the pool's garbage was compacted along the way
    w = Writer()
    tables.dump(w, tails, calibration.TAILS)
    read = calibration.Tails(128)
    tables.load(Reader(w.bytes()), read, calibration.TAILS)
    assert len(w.bytes()) < 4 * (tails.pool.top + 4 * 30) + 400  # columns as held, no more
    for copy in (pickle.loads(pickle.dumps(tails)), read):  # noqa: S301 (its own bytes)
        for slot, want in model.items():
            got = copy.get(slot)
            assert (got is None) == (want is None)
            if got is not None and want is not None:
                assert (got.n, got.counts.tolist()) == (want.n, want.counts.tolist())
        copy.reset(29)
        copy.new(29)
        cal.learn_at(copy, 29, 31.0)  # a restored pool grows again
        assert copy.get(29).counts.tolist() == [0] * 124 + [1]  # type: ignore[union-attr]


RAWS = st.lists(
    st.one_of(st.floats(0.0, 40.0), st.sampled_from([0.0, 0.5, 1.0, 31.99, 32.0])),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(
    raws=RAWS,
    queries=st.lists(st.floats(-1.0, 100.0), min_size=2, max_size=30),
    bins=st.sampled_from([8, 50, 64, 128]),
    max_raw=st.sampled_from([1.0, 32.0]),
    tail_points=st.integers(1, 20),
    min_excess=st.sampled_from([0.0, 0.01, 0.1, 1.0]),
)
def test_scores_in_unit_interval_and_monotone(
    raws: list[float],
    queries: list[float],
    bins: int,
    max_raw: float,
    tail_points: int,
    min_excess: float,
) -> None:
    cal = Calibrator(max_raw=max_raw, bins=bins, tail_points=tail_points, min_excess=min_excess)
    tc = learned(cal, [r * max_raw / 32 for r in raws])
    scores = [cal.score(tc, q) for q in sorted(queries)]
    for s in scores:
        assert 0.0 <= s <= 1.0
    for lo, hi in itertools.pairwise(scores):
        assert lo <= hi


# --------------------------------------------------------------------------------------------
# Anomaly likelihood over calibrated scores


def uniform_scores(n: int, seed: int = 5) -> list[float]:
    """What a well calibrated producer's normal events score: uniform on [0, 1)."""
    rng = random.Random(seed)
    return [rng.random() for _ in range(n)]


def test_likelihood_stays_quiet_on_calibrated_noise() -> None:
    lk = Likelihood(window=20, fading=0.005)
    t = lk.new()
    out = [lk.update(t, c)[0] for c in uniform_scores(5000)]
    assert all(0.0 <= x <= 1.0 for x in out)
    # Its own tail is NOT calibrated: moving averages of rarities are skewed and
    # autocorrelated, not normal. On 5000 uniform scores it flags 14 at 0.999 (5 nominal) and
    # 4 at 0.99999 (0.05 nominal). Thresholds over likelihood scores are not "1 in N".
    assert sum(x >= 0.999 for x in out) <= 20
    assert sum(x >= 0.99999 for x in out) <= 8
    assert max(out[:100]) == 0.0  # not judged before min_count events


def test_likelihood_flags_a_run_no_single_event_would() -> None:
    lk = Likelihood(window=20, fading=0.005)
    t = lk.new()
    for c in uniform_scores(1000):
        lk.update(t, c)
    run = [lk.update(t, 0.99)[0] for _ in range(20)]  # each only 1 in 100
    assert max(run) >= 0.9999 > 0.99
    _, mean, usual = lk.update(t, 0.99)
    assert mean == pytest.approx(2.0)  # rarity of 0.99 is 2
    assert usual < 1.0


def test_an_isolated_spike_moves_the_likelihood_little() -> None:
    lk = Likelihood(window=20, fading=0.005)
    t = lk.new()
    for c in uniform_scores(1000):
        lk.update(t, c)
    spike, _, _ = lk.update(t, 1 - 1e-6)
    assert spike < 1 - 1e-6  # the event's own calibrated score stays the larger


def test_likelihood_state_is_small_and_round_trips() -> None:
    lk = Likelihood(window=20, fading=0.005)
    t = lk.new()
    for c in uniform_scores(300):
        lk.update(t, c)
    r = Reader(record(t))
    copy = RarityTrend.load(r)
    assert r.done()
    for c in (0.5, 0.999, 0.2):
        assert lk.update(copy, c) == lk.update(t, c)
    assert len(record(t)) < 20 * 8 + 400


def test_low_bin_fast_path_equals_the_cumulative_count() -> None:
    # tail() counts what lies below the score's bin instead of a cumulative sum over all
    # bins: the empirical tail must be exactly (scores in the bin or above + 1) / (n + 1).
    rng = random.Random(11)
    cal = Calibrator(32.0, 128, tail_points=10)
    tc = cal.new()
    for _ in range(3000):
        raw = rng.expovariate(1.5) * rng.choice([1.0, 1.0, 1.0, 6.0])
        b = min(int(raw / cal.width), cal.bins - 1)
        at_or_above = sum(tc.counts[b:])
        if at_or_above >= cal.tail_points or tc.n < cal.tail_points:
            assert cal.tail(tc, raw) == (at_or_above + 1) / (tc.n + 1)
        cal.learn(tc, raw)
