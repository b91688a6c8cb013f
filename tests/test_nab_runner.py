"""The NAB replay (benchmarks/nab/run.py): offline and Redis modes give the same row scores.

The runner starts its own embedded redis-server. The NAB files come from the extract shipped in
the repository (``benchmarks/nab/data-sample``), never from ``$NAB_ROOT`` or ``../shared``: the
tests run the same in a bare clone.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from benchmarks.nab import run
from benchmarks.nab.scorer import SAMPLE_FILES, SAMPLE_ROOT
from detector.core.scoring import load_spec

# Three short files from three categories (3,908 rows), with 9 windows between them.
FILES = (
    "realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv",
    "realAdExchange/exchange-3_cpc_results.csv",
    "realTraffic/speed_7578.csv",
)


@pytest.fixture(scope="module")
def root() -> Path:
    assert set(FILES) <= set(SAMPLE_FILES)
    return SAMPLE_ROOT


def _row_count(path: Path) -> int:
    with path.open(newline="") as fh:
        return sum(1 for _ in csv.reader(fh)) - 1


def _series(name: str, stamps: list[str]) -> run.Series:
    return run.Series(
        name=name,
        timestamps=tuple(stamps),
        ts_ms=tuple(run.epoch_ms(s) for s in stamps),
        values=tuple(str(i).encode() for i in range(len(stamps))),
    )


# --------------------------------------------------------------------------------------------
# Units (no dataset)


def test_epoch_ms_reads_nab_timestamps_as_utc() -> None:
    assert run.epoch_ms("1970-01-01 00:00:01") == 1000
    assert run.epoch_ms("2014-07-01 00:30:00") == 1_404_174_600_000


def test_interleave_merges_by_time_and_keeps_each_files_row_order() -> None:
    a = _series("c/a.csv", ["2014-01-01 00:00:00", "2014-01-01 00:10:00", "2014-01-01 00:05:00"])
    b = _series("c/b.csv", ["2014-01-01 00:00:00", "2014-01-01 00:07:00"])
    order = run.interleave([a, b])
    # a's backward step stays after its predecessor; ties go to the earlier file.
    assert order == [(0, 0), (1, 0), (1, 1), (0, 1), (0, 2)]


def test_entry_fields_are_producer_epoch_ms_and_the_raw_value() -> None:
    s = run.Series("c/a.csv", ("2014-01-01 00:00:00",), (1_388_534_400_000,), (b"12.50",))
    assert run.entry_fields(s, 0) == {
        b"producer": b"c/a.csv",
        b"ts": b"1388534400000",
        b"value": b"12.50",
    }


def test_warmup_scores_zero_and_others_pass_through() -> None:
    out = run.nab_scores({"c/a.csv": [None, 0.25, None, 1.0]})
    assert out["c/a.csv"].tolist() == [0.0, 0.25, 0.0, 1.0]


def test_first_difference_finds_the_row() -> None:
    assert run.first_difference({"a": [None, 0.5]}, {"a": [None, 0.5]}) is None
    assert run.first_difference({"a": [None, 0.5]}, {"a": [None, 0.6]}) == "a row 1: 0.5 vs 0.6"


def test_select_accepts_short_names_and_rejects_unknown_ones() -> None:
    names = ["realKnownCause/nyc_taxi.csv", "realTraffic/speed_7578.csv"]
    assert run.select(names, ["speed_7578", "realKnownCause/nyc_taxi.csv"]) == names
    with pytest.raises(ValueError, match="matches 0"):
        run.select(names, ["nope"])


# --------------------------------------------------------------------------------------------
# Both modes on real NAB files


@pytest.mark.parametrize("model", ["stats", "hst"])
def test_offline_and_redis_modes_score_every_row_identically(root: Path, model: str) -> None:
    series = run.load_series(root, FILES)
    spec = load_spec(model)
    offline = run.run_offline(series, spec)
    redis_run = run.run_redis(series, spec)  # its own embedded redis-server

    total = 0
    for name in FILES:
        n = _row_count(root / "data" / name)
        total += n
        assert len(offline.scores[name]) == n
        assert len(redis_run.scores[name]) == n
    assert offline.events == redis_run.events == total
    assert offline.invalid == redis_run.invalid == 0
    assert run.first_difference(offline.scores, redis_run.scores) is None
    # No look-ahead and no restarts here: a plain warm-up, then a score for every row.
    warmup = spec.decision.warmup_events
    for name, xs in offline.scores.items():
        # The first row of a series starting after others are established may be news
        # (the spec's new_producer rule: score 1.0); the rest of the warm-up is unscored.
        assert xs[0] is None or (spec.decision.new_producer and xs[0] == 1.0), name
        assert all(x is None for x in xs[1:warmup]), name
        assert all(x is not None and 0.0 <= x <= 1.0 for x in xs[warmup:]), name


def test_command_line_writes_nab_results_and_scores(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run.main(
        [
            "--model", "stats", "--mode", "both", "--root", str(root), "--files", *FILES,
            "--write", "--results-dir", str(tmp_path), "--plot", "speed_7578", "--details",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "offline == redis: identical per-row scores for all 3,908 rows" in out
    assert "reward_low_FN_rate" in out

    expected = run.nab_scores(
        run.run_offline(run.load_series(root, FILES), load_spec("stats")).scores
    )
    for name in FILES:
        category, _, file_name = name.partition("/")
        path = tmp_path / "stats" / category / f"stats_{file_name}"
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == _row_count(root / "data" / name)
        assert set(rows[0]) == {"timestamp", "value", "anomaly_score", "label"}
        got = np.array([float(r["anomaly_score"]) for r in rows])
        assert np.array_equal(got, expected[name])  # repr() round-trips exactly
        assert any(r["label"] == "1" for r in rows)

    png = tmp_path / "stats" / "plots" / "realTraffic__speed_7578.png"
    if "matplotlib is not installed" in out:
        assert not png.exists()
    else:
        assert png.stat().st_size > 0


def test_command_line_rejects_an_unknown_file(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run.main(["--root", str(root), "--files", "no_such_series"]) == 2
    assert "matches 0 corpus files" in capsys.readouterr().err


def test_command_line_replays_the_whole_sample_as_a_subset(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No --files: every file under --root. The sample has no scoreboard (final_results.json).
    assert run.main(["--model", "stats", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{len(SAMPLE_FILES)} series, 13,255 rows" in out
    assert "(subset of the corpus: not comparable to the scoreboard)" in out
    assert "> stats (this run)" in out


def test_two_fold_scores_each_half_at_the_other_halfs_threshold(root: Path) -> None:
    series = run.load_series(root, FILES)
    corpus = run.subset_corpus(series, root)
    # A perfect detector: 1.0 on the first row of every window, 0.0 elsewhere.
    results = {}
    for name, f in corpus.files.items():
        scores = np.zeros(f.n_rows)
        for k in set(f.window_id[f.window_id >= 0].tolist()):
            scores[int(np.flatnonzero(f.window_id == k)[0])] = 1.0
        results[name] = scores
    lines = run.two_fold(results, corpus)
    assert len(lines) == 1 + 2 * 3  # header, then (odd, even) per profile
    for line in lines[1:]:
        _, fold, own, own_score, other, other_score = line.split()
        assert fold in ("odd", "even")
        assert float(own) == float(other) == 1.0
        assert float(own_score) == float(other_score) == 100.0


def test_alerts_mode_scores_the_alert_column_as_emitted(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The alerts the pipeline emits (the `alert` column of `detector score`), 1.0 or 0.0 per
    # row: what NAB scores with --alerts, and what the runner reports beside the sweep.
    series = run.load_series(root, FILES)
    offline = run.run_offline(series, load_spec("metrics"))
    assert sum(map(sum, offline.alerted.values())) > 0
    for name, flags in offline.alerted.items():
        held = offline.held[name]
        assert not any(a and h for a, h in zip(flags, held, strict=True)), name
    code = run.main(
        [
            "--model", "metrics", "--root", str(root), "--files", *FILES, "--alerts",
            "--write", "--results-dir", str(tmp_path),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "alerts: a row scores 1.0 if the detector alerted on it" in out
    for name in FILES:
        category, _, file_name = name.partition("/")
        with (tmp_path / "metrics" / category / f"metrics_{file_name}").open(newline="") as fh:
            got = [float(r["anomaly_score"]) for r in csv.DictReader(fh)]
        assert got == [float(a) for a in offline.alerted[name]]


def test_the_alert_column_is_printed_beside_the_sweep(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run.main(["--model", "metrics", "--root", str(root), "--files", *FILES]) == 0
    assert "the alerts as emitted (the alert column, 1 for an alert; nothing swept):" in (
        capsys.readouterr().out
    )
