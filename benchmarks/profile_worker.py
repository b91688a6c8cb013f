"""Where the worker's time goes, per event and by stage, on the throughput workload.

python -m benchmarks.profile_worker                   # py-spy on the real CLI if installed
python -m benchmarks.profile_worker --quick           # 20k events
python -m benchmarks.profile_worker --sampler thread  # without py-spy: an in-process sampler

With ``py-spy`` on PATH (``pip install py-spy``; not a project dependency), the real
``detector run --until-idle`` process is sampled from outside (``--idle``, so time spent
waiting on Redis counts too). Without it, a :class:`~detector.runtime.worker.Worker` runs in this
process and a thread samples its stack (``sys._current_frames``), each sample weighted by the
time since the previous one, so long C calls (pickle, hiredis) are not under-counted.

Each stack is charged to the **innermost** stage anchor on it (below), so nested work lands
where it belongs: a ``pickle.dumps`` under ``encode_fields`` is checkpoint serialisation, a
socket read under ``Streams.read`` is Redis input. µs per event = stage share x (profiled
wall time of the consume loop) / events. An unprofiled run of the same data is timed first
(group-state timing, as in the throughput benchmark) to show the profiler's overhead.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import click
import redis

from benchmarks.throughput import (
    STREAM,
    GroupWatcher,
    detector_command,
    detector_consumer,
    exit_on_sigterm,
    run_args,
    versions,
)
from benchmarks.workloads import BENCH_KEY, append, baseline_for, shop_workload, worker_settings
from detector.gateway.embedded import EmbeddedRedis

# (file name, function) -> stage. The innermost match on a stack wins.
ANCHORS: dict[tuple[str, str], str] = {
    ("events.py", "decode"): "decode",
    ("worker.py", "_decode_all"): "decode",
    ("features.py", "state"): "features",
    ("features.py", "evidence"): "features",
    ("features.py", "advance_clock"): "features",
    ("features.py", "learn"): "features",
    ("features.py", "expire"): "features",
    ("calibration.py", "score"): "calibration",
    ("calibration.py", "tail"): "calibration",
    ("calibration.py", "learn"): "calibration",
    ("calibration.py", "new"): "calibration",
    ("scoring.py", "raw_score"): "model",
    ("scoring.py", "learn"): "model",
    ("pipeline.py", "_decide"): "decision + alert",
    ("pipeline.py", "_one"): "pipeline glue",
    ("pipeline.py", "process"): "pipeline glue",
    ("streams.py", "read"): "redis read (XREADGROUP + parse)",
    ("streams.py", "emit"): "redis alert append",
    ("pipeline.py", "snapshot"): "checkpoint serialise (pickle + HMAC)",
    ("checkpoint.py", "encode_fields"): "checkpoint serialise (pickle + HMAC)",
    ("streams.py", "commit"): "checkpoint redis (HSET + XACK)",
    ("worker.py", "_count"): "metrics + counters",
    ("worker.py", "_report_health"): "housekeeping",
    ("worker.py", "_report_group"): "housekeeping",
    ("worker.py", "_claim"): "housekeeping",
    ("worker.py", "_handle"): "worker glue",
    ("worker.py", "run"): "worker glue",
    ("worker.py", "_restore"): "startup",
    ("worker.py", "_drain_own_pending"): "startup",
}
LOOP_STAGES = (
    "redis read (XREADGROUP + parse)",
    "decode",
    "features",
    "model",
    "calibration",
    "decision + alert",
    "pipeline glue",
    "redis alert append",
    "checkpoint serialise (pickle + HMAC)",
    "checkpoint redis (HSET + XACK)",
    "metrics + counters",
    "housekeeping",
    "worker glue",
)
IDLE_S = 0.2  # --idle-timeout-ms of the profiled run
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")

Stack = tuple[str, ...]  # frames root first, each "function (file:line)"


def parse_frame(frame: str) -> tuple[str, str]:
    """(file base name, bare function name) of a py-spy frame label."""
    m = _FRAME.match(frame)
    if not m:
        return "", frame
    return os.path.basename(m["file"]), m["func"].rsplit(".", 1)[-1]


def stage_of(stack: Stack) -> str:
    in_worker = False
    for frame in stack:
        f, fn = parse_frame(frame)
        if f == "worker.py" and fn == "run":
            in_worker = True
    for frame in reversed(stack):
        stage = ANCHORS.get(parse_frame(frame))
        if stage is not None:
            return stage
    return "worker glue" if in_worker else "startup (imports, CLI)"


def read_raw(path: Path) -> dict[Stack, float]:
    """py-spy ``--format raw`` (collapsed stacks): ``f1;f2;...;fn count``."""
    out: dict[Stack, float] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            out[tuple(stack.split(";"))] += float(count)
    return out


class Sampler:
    """Samples one thread's stack from another thread, time-weighted."""

    def __init__(self, thread_id: int, interval_s: float = 0.001) -> None:
        self.thread_id = thread_id
        self.interval_s = interval_s
        self.stacks: dict[Stack, float] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(self.interval_s)
            frame: types.FrameType | None = sys._current_frames().get(self.thread_id)
            now = time.perf_counter()
            stack = []
            while frame is not None:
                code = frame.f_code
                stack.append(f"{code.co_qualname} ({code.co_filename}:{frame.f_lineno})")
                frame = frame.f_back
            self.stacks[tuple(reversed(stack))] += now - last
            last = now


def profile_pyspy(
    url: str, group: str, model: str, baseline: Path, total: int, rate: int, tmp: Path
) -> tuple[dict[Stack, float], float]:
    """Sample the real CLI; returns stacks and the consume loop's wall time."""
    out = tmp / "pyspy.txt"
    env = {**os.environ, "DETECTOR_CHECKPOINT_KEY": BENCH_KEY}
    args = [
        "py-spy",
        "record",
        "--format",
        "raw",
        "--idle",
        "--rate",
        str(rate),
        "--output",
        str(out),
        "--",
        *detector_command(),
        *run_args(url, group, model, baseline),
    ]
    watcher = GroupWatcher(url, group, total)
    watcher.start()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    watcher.stop()
    if proc.returncode != 0 or watcher.first_read is None or watcher.last_ack is None:
        msg = f"py-spy run failed ({proc.returncode}): {proc.stderr[-3000:]}"
        raise RuntimeError(msg)
    return read_raw(out), watcher.last_ack - watcher.first_read


def profile_thread(
    url: str, group: str, model: str, baseline: Path, total: int
) -> tuple[dict[Stack, float], float]:
    """Run a Worker (CLI defaults) in this process under the sampling thread."""
    from detector.runtime.worker import Worker

    settings = worker_settings(url, STREAM, group, "bench", model, baseline, int(IDLE_S * 1000))
    watcher = GroupWatcher(url, group, total)
    watcher.start()
    sampler = Sampler(threading.get_ident())
    sampler.start()
    Worker(settings).run()
    sampler.stop()
    watcher.stop()
    if watcher.first_read is None or watcher.last_ack is None:
        msg = "the profiled worker did not drain the stream"
        raise RuntimeError(msg)
    return sampler.stacks, watcher.last_ack - watcher.first_read


def report(
    stacks: dict[Stack, float], loop_s: float, events: int, top: int, units_per_s: float
) -> list[str]:
    by_stage: dict[str, float] = collections.Counter()
    for stack, w in stacks.items():
        by_stage[stage_of(stack)] += w
    # The run ends with an idle read of IDLE_S before the final commit: not per-event work.
    read = "redis read (XREADGROUP + parse)"
    by_stage[read] = max(by_stage[read] - IDLE_S * units_per_s, 0.0)
    loop_s -= IDLE_S
    loop_w = sum(by_stage[s] for s in LOOP_STAGES)
    us_per_w = loop_s / loop_w * 1e6 / events if loop_w else 0.0
    lines = [f"{'stage':<40} {'share':>6} {'us/event':>9}"]
    for stage in sorted(LOOP_STAGES, key=lambda s: -by_stage[s]):
        lines.append(
            f"{stage:<40} {by_stage[stage] / loop_w:>6.1%} {by_stage[stage] * us_per_w:>9.2f}"
        )
    lines.append(f"{'total (consume loop)':<40} {1:>6.0%} {loop_w * us_per_w:>9.2f}")
    lines.append(f"(the final {IDLE_S:.1f}s idle read before the last commit is left out)")
    lines.append(
        f"(outside the loop, not per event: startup {sum(by_stage.values()) - loop_w:.0f} "
        "samples/weight units)"
    )
    # Functions: self time (leaf) and inclusive time, within the loop.
    self_t: dict[str, float] = collections.Counter()
    incl: dict[str, float] = collections.Counter()
    for stack, w in stacks.items():
        if stage_of(stack) not in LOOP_STAGES:
            continue
        self_t[_short(stack[-1])] += w
        for frame in set(stack):
            incl[_short(frame)] += w
    lines.append("")
    lines.append(f"top {top} functions by self time (us/event, inclusive us/event):")
    for name, w in sorted(self_t.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {w * us_per_w:>7.2f} {incl[name] * us_per_w:>7.2f}  {name}")
    return lines


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


@click.command()
@click.option("--model", default="stats", show_default=True)
@click.option("--events", default=200_000, show_default=True)
@click.option("--producers", default=1000, show_default=True)
@click.option("--history-per-producer", default=500, show_default=True)
@click.option(
    "--sampler", type=click.Choice(["auto", "py-spy", "thread"]), default="auto", show_default=True
)
@click.option("--rate", default=250, show_default=True, help="py-spy samples per second.")
@click.option("--top", default=25, show_default=True)
@click.option("--quick", is_flag=True)
def main(
    model: str,
    events: int,
    producers: int,
    history_per_producer: int,
    sampler: str,
    rate: int,
    top: int,
    quick: bool,
) -> None:
    """Profile the worker on the throughput workload; time per event by stage."""
    exit_on_sigterm()
    if quick:
        events, history_per_producer = min(events, 20_000), 150
    if sampler == "auto":
        sampler = "py-spy" if shutil.which("py-spy") else "thread"
    info = versions()
    click.echo(" ".join(f"{k}={v}" for k, v in info.items()) + f" sampler={sampler}")
    workload = shop_workload(events, producers, history_per_producer)
    click.echo(f"workload: {workload.describe()}")
    with tempfile.TemporaryDirectory(prefix="detector-prof-") as d, EmbeddedRedis() as server:
        tmp = Path(d)
        path, _ = baseline_for(workload, model, tmp)
        client = redis.Redis.from_url(server.url)
        total = append(client, STREAM, workload.live)
        del workload
        plain = detector_consumer(server.url, "plain", model, path, total, [])
        _clean(client)
        run: Callable[[], tuple[dict[Stack, float], float]]
        if sampler == "py-spy":
            run = lambda: profile_pyspy(server.url, "prof", model, path, total, rate, tmp)  # noqa: E731
        else:
            run = lambda: profile_thread(server.url, "prof", model, path, total)  # noqa: E731
        stacks, loop_s = run()
        _clean(client)
        client.close()
    click.echo(
        f"unprofiled: {plain.rate:,.0f} events/s ({1e6 / plain.rate:.1f} us/event); "
        f"profiled: {total / loop_s:,.0f} events/s ({loop_s * 1e6 / total:.1f} us/event)"
    )
    units_per_s = float(rate) if sampler == "py-spy" else 1.0  # samples or seconds
    click.echo("\n".join(report(stacks, loop_s, total, top, units_per_s)))


def _clean(client: redis.Redis) -> None:
    for key in list(client.scan_iter(match="detector:*", count=1000)):
        client.delete(key)
    for group in (b"plain", b"prof"):
        with contextlib.suppress(redis.ResponseError):
            client.xgroup_destroy(STREAM, group)


if __name__ == "__main__":
    main()
