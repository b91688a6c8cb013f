"""Smoke tests: every benchmark script runs end to end in a tiny configuration.

They prove the scripts work against the current code (each starts its own redis-server and
the real CLI); the numbers they print at this size mean nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--producers", "20", "--history-per-producer", "220"]


def _run(tmp_path: Path, module: str, *args: str, timeout: float = 110) -> str:
    # Baselines are cached under XDG_CACHE_HOME: keep the test's out of the user's cache.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{module} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_throughput_runs(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        "benchmarks.throughput",
        "--events",
        "2000",
        "--rounds",
        "1",
        *TINY,
        "--json-out",
        str(tmp_path / "t.json"),
        "--variant",
        "scores=--scores-stream {group}:scores",
    )
    for name in ("raw", "river", "detector-stats", "detector-hst", "detector-stats+scores"):
        assert f"round 0 {name}" in out
    assert "detector-stats / raw" in out
    assert "detector-stats / river" in out
    assert "detector-stats+scores / detector-stats" in out  # with the variant / without
    assert (tmp_path / "t.json").exists()


def test_throughput_against_another_tree(tmp_path: Path) -> None:
    # This tree against itself: the pairing, the other tree's own baseline and the ratio.
    out = _run(
        tmp_path, "benchmarks.throughput", "--events", "2000", "--rounds", "1", *TINY,
        "--models", "stats", "--against", str(ROOT),
    )  # fmt: skip
    assert f"round 0 detector-stats@{ROOT.name}" in out
    assert f"detector-stats / detector-stats@{ROOT.name}" in out


def _digest_line(out: str) -> str:
    found = re.search(r"^events \d+ alerts \d+ verdicts [0-9a-f]{16}$", out, re.MULTILINE)
    assert found is not None, out
    return found.group(0)


def test_same_verdicts_resumes_from_checkpoints(tmp_path: Path) -> None:
    # A full checkpoint, encoded, decoded and restored into a fresh pipeline, continues the
    # run bit-identically: the same wire fields as the run that never stopped.
    plain = _run(tmp_path, "benchmarks.same_verdicts", "--hours", "2.5")
    resumed = _run(
        tmp_path, "benchmarks.same_verdicts", "--hours", "2.5", "--checkpoint-every", "12000"
    )
    checkpoints = re.search(r"checkpoints=(\d+)", resumed)
    assert checkpoints is not None and int(checkpoints.group(1)) >= 3, resumed
    assert _digest_line(resumed) == _digest_line(plain)
    assert " alerts 0 " not in _digest_line(plain)  # the digest covers some alerts


def test_replay_window_runs(tmp_path: Path) -> None:
    out = _run(tmp_path, "benchmarks.replay_window", "--ids", "5000", "--memory-producers", "20")
    assert "window: 5,000 ids, capacity 8,192, 196,608 B (24 B per id of capacity)" in out
    assert re.search(r"without it [\d,]+ B per producer", out)


def test_latency_runs(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        "benchmarks.latency",
        "--events-total",
        "3000",
        "--capacity-events",
        "2000",
        "--levels",
        "0.5",
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--tail",
        "0.5",
        "--idle-timeout-ms",
        "500",
        "--probe-every",
        "50",
        *TINY,
    )
    assert "capacity (stats" in out
    assert "50%" in out


def test_river_state_runs(tmp_path: Path) -> None:
    out = _run(tmp_path, "benchmarks.river_state", "--producers", "20", "--events", "30")
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`forecast`"]  # every shipped one
    heap, pickled = (int(r.split("|")[k].strip(" B").replace(",", "")) for r in rows[:1]
                     for k in (3, 4))  # fmt: skip
    assert heap > pickled > 100  # a clone per producer, measured both ways


def test_memory_runs(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        "benchmarks.memory",
        "--counts",
        "60",
        "--producers",
        "20",
        "--soak-s",
        "3",
        "--soak-rate",
        "300",
        "--worker-events",
        "2000",
        "--history-per-producer",
        "100",
        "--traced",
    )
    rows = re.findall(r"^ +(\d+) +[\d,]+ (stats|stats, replay_horizon_s 0) +[\d,]+ ", out, re.M)
    assert len(rows) == 2, out  # with and without the replay window
    # The traced run's breakdown names the state's structures, the categorical rows among them.
    assert "bytes per producer by structure" in out
    assert re.search(r"^ +[\d,.]+  Counts\.fp$", out, re.M), out
    assert "replay window's share: RSS" in out
    assert "100 events:" in out  # checkpoint bytes by history, up to the history fed
    assert "peak RSS" in out
    assert "soak" in out


def test_profile_runs(tmp_path: Path) -> None:
    out = _run(
        tmp_path, "benchmarks.profile_worker", "--events", "2000", "--sampler", "thread", *TINY
    )
    assert "features" in out
    assert "total (consume loop)" in out


@pytest.mark.skipif(
    importlib.util.find_spec("pytest_benchmark") is None, reason="pytest-benchmark not installed"
)
def test_micro_benchmarks_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--benchmark-disable",
            str(ROOT / "benchmarks" / "test_bench_model.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_scaleout_runs(tmp_path: Path) -> None:
    out = _run(
        tmp_path, "benchmarks.scaleout", "--events", "2000", "--rounds", "1", "--partitions",
        "4", *TINY, "--json-out", str(tmp_path / "s.json"),
    )  # fmt: skip
    for name in ("1 worker", "2 workers", "unpartitioned", "router"):
        assert f"round 0 {name}" in out
    assert "2,000 in" in out  # every run drained every entry (it fails otherwise)
    ratio = re.search(r"2 workers / 1 worker \(paired by round\): ([\d.]+)", out)
    assert ratio is not None and float(ratio.group(1)) > 0, out
    assert "1 worker / unpartitioned (paired by round)" in out
    assert re.search(r"CPU per event \(median of the runs\): worker [\d.]+ us, redis", out)
    assert "N=16 S=2: <=" in out
    runs = json.loads((tmp_path / "s.json").read_text())["runs"]
    assert [r["events"] for r in runs] == [2000] * 4
    assert all(r["redis_cpu_s"] > 0 and r["worker_cpu_s"] > 0 for r in runs)


def test_instructions_reads_the_process_count_from_callgrind_annotate() -> None:
    """benchmarks.instructions (valgrind is not needed here): its reading of the annotation."""
    import click

    from benchmarks.instructions import instructions

    annotated = "\n".join([
        "--------------------------------------------------------------------------------",
        "22,943,815,091 (100.0%)  PROGRAM TOTALS",
        "14,625,843,777 (63.75%)  /tmp/b/pipeline.c:__pyx_pw_8detector_4core_8pipeline_8Pipeline"
        "_3process [/x/pipeline.cpython-311-x86_64-linux-gnu.so]",
        "14,459,177,305 (63.02%)  /tmp/b/pipeline.c:__pyx_pw_8detector_4core_8pipeline_8Pipeline"
        "_7_one [/x/pipeline.cpython-311-x86_64-linux-gnu.so]",
    ])  # fmt: skip
    assert instructions(annotated) == (14_625_843_777, 22_943_815_091)
    with pytest.raises(click.ClickException, match="compiled"):
        instructions("1,000 (100.0%)  PROGRAM TOTALS")


def test_rounds_worker_counts_its_rounds(tmp_path: Path) -> None:
    """benchmarks.rounds' worker role (valgrind is not needed here): the events it read and
    in how many rounds, as the main role parses them."""
    import orjson

    from benchmarks.rounds import _ROUNDS
    from benchmarks.workloads import baseline_for, shop_workload

    workload = shop_workload(200, producers=20, history_per_producer=220)
    baseline, _ = baseline_for(workload, "stats", tmp_path, use_cache=False)
    events = tmp_path / "events.json"
    events.write_bytes(orjson.dumps(workload.live[:60]))
    args = ["--role", "worker", "--baseline", str(baseline), "--events-file", str(events)]
    one = _run(tmp_path, "benchmarks.rounds", *args, "--batch-size", "1")
    many = _run(tmp_path, "benchmarks.rounds", *args, "--batch-size", "500")
    assert [m.groups() for m in map(_ROUNDS.search, (one, many)) if m] == [
        ("60", "60"),
        ("60", "1"),
    ]
