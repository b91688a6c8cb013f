"""End-to-end throughput of ``detector run --until-idle`` against two references, same run.

python -m benchmarks.throughput            # 200k events, 1k producers, 3 interleaved rounds
python -m benchmarks.throughput --quick    # 20k events, 1k producers, 1 round (smoke run)

One embedded redis-server (no persistence) holds one input stream of shop events (see
:mod:`benchmarks.workloads`). Every consumer reads the whole stream through its own consumer
group, so all of them see exactly the same entries; their outputs go to their own streams,
and everything they wrote is deleted after them. Each round runs, in a rotating order:

- ``raw``: the raw consume limit, in this process: XREADGROUP COUNT 500, orjson-decode each
  entry's ``data`` field, one XACK per batch. No features, no model.
- ``river``: a plain River consumer, in this process, as River's documentation shows it: per
  event, a dict of the payload's numeric fields, ``MinMaxScaler() | HalfSpaceTrees(seed=42)``
  ``score_one`` then ``learn_one``, an alert XADD when the score exceeds a running
  ``stats.Quantile(0.999)``, one pipeline of alert XADDs + XACK per batch.
- ``detector-<model>``: the real CLI, ``detector run --until-idle`` in a subprocess, started
  warm from a baseline of the workload's history (``detector train``'s code; cached), with
  alerts, dead letters and checkpoint commits as in production.

Events/s run from the first read to the last ack. For the references both are timed in
process. For the detector, this process polls ``XINFO GROUPS`` every 10 ms (``entries-read``
and ``pending``): first read = first poll with entries read, last ack = first poll with every
entry read and none pending. The CLI's own figure (which also counts loading the baseline,
but not the final commit) is reported beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path

import click
import orjson
import redis

from benchmarks.workloads import (
    BENCH_KEY,
    Workload,
    append,
    baseline_for,
    delete_matching,
    shop_workload,
)
from detector.gateway.embedded import EmbeddedRedis
from detector.gateway.streams import connect

STREAM = "bench"
POLL_S = 0.01
_CLI_LINE = re.compile(
    r"processed (\d+) events \((\d+) dead-lettered\) in ([\d.]+)s: ([\d,]+) events/s, (\d+) alerts"
)


@dataclass(slots=True)
class Result:
    """One consumer's pass over the stream."""

    consumer: str
    round: int
    events: int
    seconds: float
    alerts: int = 0
    extra: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


# -- references, in this process ---------------------------------------------------------


def raw_consumer(client: redis.Redis, group: str, count: int = 500) -> Result:
    """XREADGROUP COUNT 500 + orjson decode of ``data`` + one XACK per batch."""
    client.xgroup_create(STREAM, group, id="0")
    events = 0
    started = time.perf_counter()
    finished = started
    loads = orjson.loads
    while True:
        reply = client.xreadgroup(group, "raw", {STREAM: ">"}, count=count)
        if not reply:
            break
        ids = []
        for _stream, items in reply:  # type: ignore[union-attr]
            for entry_id, fields in items:
                loads(fields[b"data"])
                ids.append(entry_id)
        client.xack(STREAM, group, *ids)
        events += len(ids)
        finished = time.perf_counter()
    return Result("raw", 0, events, finished - started)


def river_consumer(
    client: redis.Redis, group: str, alerts_stream: str, count: int = 500, q: float = 0.999
) -> Result:
    """A plain per-event River consumer, written the way River's documentation shows."""
    from river import anomaly, preprocessing, stats

    model = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=42)
    quantile = stats.Quantile(q)
    client.xgroup_create(STREAM, group, id="0")
    events = alerts = 0
    started = time.perf_counter()
    finished = started
    while True:
        reply = client.xreadgroup(group, "river", {STREAM: ">"}, count=count)
        if not reply:
            break
        pipe = client.pipeline(transaction=False)
        ids = []
        for _stream, items in reply:  # type: ignore[union-attr]
            for entry_id, fields in items:
                ids.append(entry_id)
                payload = orjson.loads(fields[b"data"])
                x = {
                    k: float(v)
                    for k, v in payload.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                }
                score = model.score_one(x)
                model.learn_one(x)
                limit = quantile.get()
                if limit is not None and score > limit:
                    pipe.xadd(
                        alerts_stream,
                        {"producer": fields[b"producer"], "source_id": entry_id, "score": score},
                    )
                    alerts += 1
                quantile.update(score)
        pipe.xack(STREAM, group, *ids)
        pipe.execute()
        events += len(ids)
        finished = time.perf_counter()
    return Result("river", 0, events, finished - started, alerts)


# -- the detector, as a subprocess ---------------------------------------------------------


class GroupWatcher:
    """Polls XINFO GROUPS for one group: when the first entry was read, when the last acked."""

    def __init__(self, url: str, group: str, total: int) -> None:
        self.client = redis.Redis.from_url(url)
        self.group = group.encode()
        self.total = total
        self.first_read: float | None = None
        self.last_ack: float | None = None
        self.samples: list[tuple[float, int, int]] = []  # (time, entries read, pending)
        self.pid: int | None = None  # set once the worker is started: its peak RSS is polled
        self.peak_rss_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait_s: float = 2.0) -> None:
        """Stop polling, after up to ``wait_s`` for the last ack to be seen."""
        self._thread.join(timeout=wait_s)
        self._stop.set()
        self._thread.join()
        self.client.close()

    def _run(self) -> None:
        previous = None
        while not self._stop.is_set():
            now = time.perf_counter()
            try:
                groups = self.client.xinfo_groups(STREAM)
            except redis.ResponseError:  # the group does not exist yet
                groups = []
            for g in groups:
                if g["name"] != self.group:
                    continue
                read = int(g.get("entries-read") or 0)
                pending = int(g["pending"])
                self.samples.append((now, read, pending))
                if self.first_read is None and (read > 0 or pending > 0):
                    # Between the previous poll (nothing read) and this one.
                    self.first_read = now if previous is None else (previous + now) / 2
                if read >= self.total and pending == 0 and self.last_ack is None:
                    self.last_ack = now if previous is None else (previous + now) / 2
                    return
            previous = now
            self._poll_rss()
            time.sleep(POLL_S)

    def _poll_rss(self) -> None:
        # VmHWM: the process's peak RSS since exec (ru_maxrss from wait4 would also count the
        # forked copy of this big benchmark process before the exec).
        if self.pid is None:
            return
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))


def detector_consumer(
    url: str,
    group: str,
    model: str,
    baseline: Path | None,
    total: int,
    extra_args: list[str],
    tree: Path | None = None,
) -> Result:
    """``detector run --until-idle`` in a subprocess, timed from the group's state; with
    ``tree``, the detector of that tree (``PYTHONPATH``), named ``detector-<model>@<tree>``."""
    env = {**os.environ, "DETECTOR_CHECKPOINT_KEY": BENCH_KEY}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    args = [*detector_command(), "--log-format", "json", *run_args(url, group, model, baseline)]
    args += extra_args
    watcher = GroupWatcher(url, group, total)
    watcher.start()
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watcher.pid = proc.pid
    try:
        _, stderr_bytes = proc.communicate()
    finally:
        if proc.poll() is None:  # interrupted: do not leave a worker behind
            proc.kill()
            proc.wait()
    exited = time.perf_counter()
    stderr = stderr_bytes.decode()
    watcher.stop()
    if proc.returncode != 0 or watcher.first_read is None or watcher.last_ack is None:
        msg = f"detector run failed (exit {proc.returncode}):\n{stderr[-3000:]}"
        raise RuntimeError(msg)
    stats = _worker_stats(stderr)
    cli = _CLI_LINE.search(stderr)
    extra: dict[str, float | int | str] = {
        "cli_events_per_s": int(cli.group(4).replace(",", "")) if cli else 0,
        "startup_s": round(watcher.first_read - started, 3),
        "process_s": round(exited - started, 3),
        "peak_rss_mb": round(watcher.peak_rss_kb / 1024, 1),
        "checkpoints": int(stats.get("checkpoints", 0)),
        "dead_lettered": int(stats.get("invalid", 0)),
        "scored": int(stats.get("scored", 0)),
        "warmup": int(stats.get("warmup", 0)),
    }
    events = int(stats.get("events", total))
    return Result(
        f"detector-{model}" + (f"@{tree.name}" if tree is not None else ""),
        0,
        events,
        watcher.last_ack - watcher.first_read,
        int(stats.get("alerts", 0)),
        extra,
    )


def run_args(url: str, group: str, model: str, baseline: Path | None) -> list[str]:
    """``detector run`` arguments the benchmarks share: one group, its own output streams."""
    args = [
        "run", "--redis-url", url, "--stream", STREAM, "--group", group, "--consumer", "bench",
        "--alerts-stream", f"{group}:alerts", "--dead-letter-stream", f"{group}:dead",
        "--model", model, "--until-idle", "--idle-timeout-ms", "200",
    ]  # fmt: skip
    return args + (["--baseline", str(baseline)] if baseline is not None else [])


def detector_command() -> list[str]:
    """The installed ``detector`` console script (next to this Python), else ``-m``."""
    script = Path(sys.executable).with_name("detector")
    return [str(script)] if script.exists() else [sys.executable, "-m", "detector.cli"]


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: the embedded redis-server and the children are stopped."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _worker_stats(stderr: str) -> dict[str, float]:
    for line in reversed(stderr.splitlines()):
        if line.startswith("{") and '"worker stopped"' in line:
            return dict(orjson.loads(line).get("stats", {}))
    return {}


# -- the benchmark -------------------------------------------------------------------------


def _cleanup(client: redis.Redis, group: str) -> None:
    with contextlib.suppress(redis.ResponseError):
        client.xgroup_destroy(STREAM, group)
    client.delete(f"{group}:alerts", f"{group}:dead")
    delete_matching(client, f"{group}:*")  # what a --variant wrote under its group's name
    delete_matching(client, f"detector:checkpoint:{group}:*")
    delete_matching(client, f"detector:health:{group}:*")
    # The guards would refuse the next round's alerts (same entries, same alert ids).
    delete_matching(client, f"{{{group}:alerts}}:guard:*")
    delete_matching(client, f"{{{group}:dead}}:guard:*")


def versions() -> dict[str, str]:
    """Machine and versions, for the record."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis_server": next((w[2:] for w in redis_version if w.startswith("v=")), "?"),
    }
    from benchmarks.snapshot import detector_source

    out["detector"] = detector_source()
    for pkg in ("river", "redis", "hiredis", "orjson", "numpy"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = "-"
    return out


def summarise(results: list[Result], reference: str, others: list[str]) -> list[str]:
    """Median and spread per consumer, and paired (same-round) ratios against the references."""
    lines = []
    by: dict[str, list[Result]] = {}
    for r in results:
        by.setdefault(r.consumer, []).append(r)
    lines.append(
        f"{'consumer':<16} {'median ev/s':>12} {'min':>9} {'max':>9} {'rounds':>6} {'alerts':>7}"
    )
    for name, rs in by.items():
        rates = [r.rate for r in rs]
        lines.append(
            f"{name:<16} {statistics.median(rates):>12,.0f} {min(rates):>9,.0f} "
            f"{max(rates):>9,.0f} {len(rs):>6} {rs[0].alerts:>7}"
        )
    lines.append("")
    lines.append("paired ratios (same round), median [min, max]:")
    for name in others:
        for ref in (reference, "river"):
            ratios = []
            for a in by.get(name, []):
                b = next((r for r in by.get(ref, []) if r.round == a.round), None)
                if b is not None and b.rate > 0:
                    ratios.append(a.rate / b.rate)
            if ratios:
                lines.append(
                    f"  {name} / {ref}: {statistics.median(ratios):.3f} "
                    f"[{min(ratios):.3f}, {max(ratios):.3f}]"
                )
    for name in others:  # against another tree (--against), or a --variant, round by round
        plain = name.partition("@")[0].partition("+")[0]
        if name == plain:
            continue
        # This tree / that tree; with the variant / without.
        first, second = (plain, name) if "@" in name else (name, plain)
        ratios = [
            a.rate / b.rate
            for a in by.get(first, [])
            for b in by.get(second, [])
            if a.round == b.round and b.rate > 0
        ]
        if ratios:
            lines.append(
                f"  {first} / {second}: {statistics.median(ratios):.3f} "
                f"[{min(ratios):.3f}, {max(ratios):.3f}]"
            )
    return lines


def foreign_baseline(tree: Path, sizes: tuple[int, int, int], model: str, tmp: Path) -> Path:
    """The workload's baseline as ``tree``'s detector trains it (its checkpoint format may
    differ from this one's), by that tree's ``benchmarks.workloads`` in a subprocess."""
    code = (
        "import sys; from pathlib import Path; "
        "from benchmarks.workloads import baseline_for, shop_workload; "
        "w = shop_workload(*map(int, sys.argv[1:4])); "
        "print(baseline_for(w, sys.argv[4], Path(sys.argv[5]))[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, sizes), model, str(tmp)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@click.command()
@click.option("--events", default=200_000, show_default=True, help="Live events to drain.")
@click.option("--producers", default=1000, show_default=True)
@click.option(
    "--history-per-producer",
    default=500,
    show_default=True,
    help="Average history events per producer (the baseline).",
)
@click.option("--rounds", default=3, show_default=True)
@click.option(
    "--models",
    default="stats,hst",
    show_default=True,
    help="Detector models to run (comma-separated spec names).",
)
@click.option("--cold", is_flag=True, help="Also run the default model without a baseline.")
@click.option(
    "--detector-args",
    default="",
    help="More `detector run` options, e.g. '--checkpoint-every 50000' (default: none).",
)
@click.option(
    "--against",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Another detector tree (a benchmarks.snapshot): its `detector run` joins the same "
    "rounds, for paired this/that ratios of the same data and the same minutes.",
)
@click.option(
    "--variant",
    "variants",
    multiple=True,
    help="NAME=ARGS: the first model's detector again with these more `detector run` options, "
    "in the same rounds, as detector-<model>+NAME, with its paired ratio to the plain one; "
    "{group} in ARGS is the round's group (its keys are deleted after it), e.g. "
    "'scores=--scores-stream {group}:scores'.",
)
@click.option("--no-cache", is_flag=True, help="Retrain the baselines even if cached.")
@click.option("--quick", is_flag=True, help="20k events, 150 history/producer, one round.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path))
def main(
    events: int,
    producers: int,
    history_per_producer: int,
    rounds: int,
    models: str,
    cold: bool,
    detector_args: str,
    against: Path | None,
    variants: tuple[str, ...],
    no_cache: bool,
    quick: bool,
    json_out: Path | None,
) -> None:
    """Drain one stream with the raw consumer, plain River and the detector; compare."""
    exit_on_sigterm()
    if quick:
        events, history_per_producer, rounds = min(events, 20_000), 150, 1
    model_names = [m for m in models.split(",") if m]
    info = versions()
    click.echo(" ".join(f"{k}={v}" for k, v in info.items()))
    started = time.perf_counter()
    workload = shop_workload(events, producers, history_per_producer)
    click.echo(f"workload: {workload.describe()} ({time.perf_counter() - started:.1f}s)")
    with tempfile.TemporaryDirectory(prefix="detector-bench-") as tmp, EmbeddedRedis() as server:
        results = run_rounds(
            server.url,
            workload,
            Path(tmp),
            model_names,
            rounds,
            cold,
            not no_cache,
            shlex.split(detector_args),
            (against.resolve(), (events, producers, history_per_producer)) if against else None,
            dict(_variant(v) for v in variants),
        )
    lines = summarise(
        results,
        "raw",
        [r for r in dict.fromkeys(x.consumer for x in results) if r.startswith("detector")],
    )
    click.echo("")
    click.echo("\n".join(lines))
    detail = [r for r in results if r.extra]
    if detail:
        click.echo("")
        click.echo("detector runs:")
        for r in detail:
            click.echo(
                f"  round {r.round} {r.consumer}: {r.rate:,.0f} ev/s, {r.alerts} alerts, "
                + ", ".join(f"{k}={v}" for k, v in r.extra.items())
            )
    click.echo(f"\ntotal {time.perf_counter() - started:.0f}s")
    if json_out is not None:
        json_out.write_text(
            json.dumps(
                {
                    "versions": info,
                    "workload": workload.describe(),
                    "results": [asdict(r) | {"rate": r.rate} for r in results],
                },
                indent=1,
            )
        )


def _variant(text: str) -> tuple[str, list[str]]:
    """``NAME=ARGS`` as (name, arguments)."""
    name, sep, args = text.partition("=")
    if not sep or not name:
        msg = f"--variant {text!r}: write NAME=ARGS"
        raise click.BadParameter(msg)
    return name, shlex.split(args)


def run_rounds(
    url: str,
    workload: Workload,
    tmp: Path,
    models: list[str],
    rounds: int,
    cold: bool,
    use_cache: bool,
    extra: list[str] | None = None,
    against: tuple[Path, tuple[int, int, int]] | None = None,
    variants: dict[str, list[str]] | None = None,
) -> list[Result]:
    client = connect(url, block_ms=1000)
    baselines: dict[str, Path] = {}
    for model in models:
        path, trained_s = baseline_for(workload, model, tmp, use_cache=use_cache)
        baselines[model] = path
        how = f"trained in {trained_s:.0f}s" if trained_s else "cached"
        click.echo(f"baseline {model}: {path.stat().st_size / 1e6:.1f} MB ({how})")
    theirs: dict[str, Path] = {}
    if against is not None:
        for model in models:
            theirs[model] = foreign_baseline(against[0], against[1], model, tmp)
            click.echo(f"baseline {model} of {against[0]}: {theirs[model].name}")
    t = time.perf_counter()
    total = append(client, STREAM, workload.live)
    click.echo(f"appended {total:,} entries to {STREAM!r} in {time.perf_counter() - t:.1f}s")

    runs: list[tuple[str, Callable[[str], Result]]] = [
        ("raw", lambda g: raw_consumer(client, g)),
        ("river", lambda g: river_consumer(client, g, f"{g}:alerts")),
    ]
    for model in models:
        runs.append(
            (
                f"detector-{model}",
                lambda g, m=model: detector_consumer(url, g, m, baselines[m], total, extra or []),
            )  # type: ignore[misc]
        )
        if against is not None:
            runs.append(
                (
                    f"detector-{model}@{against[0].name}",
                    lambda g, m=model, t=against[0]: detector_consumer(
                        url, g, m, theirs[m], total, extra or [], t
                    ),
                )  # type: ignore[misc]
            )

    def variant_run(name: str, args: list[str], g: str) -> Result:
        more = [*(extra or []), *(x.replace("{group}", g) for x in args)]
        result = detector_consumer(url, g, models[0], baselines[models[0]], total, more)
        return _renamed(result, f"+{name}")

    for name, args in (variants or {}).items():
        runs.append((f"detector-{models[0]}+{name}", partial(variant_run, name, args)))
    if cold and models:
        runs.append(
            (
                f"detector-{models[0]}-cold",
                lambda g: _renamed(
                    detector_consumer(url, g, models[0], None, total, extra or []), "-cold"
                ),
            )
        )
    results = _play(client, runs, rounds, total)
    client.close()
    return results


def _play(
    client: redis.Redis, runs: list[tuple[str, Callable[[str], Result]]], rounds: int, total: int
) -> list[Result]:
    """Every run in every round, in an order rotating with the round (they share the noise)."""
    results = []
    for rnd in range(rounds):
        order = runs[rnd % len(runs) :] + runs[: rnd % len(runs)]
        for name, run in order:
            group = f"g-{name}-{rnd}"
            result = run(group)
            result.round = rnd
            if result.consumer in ("raw", "river") or result.alerts == 0:
                result.alerts = result.alerts or int(client.xlen(f"{group}:alerts"))
            _cleanup(client, group)
            if result.events != total:
                msg = f"{name} processed {result.events} of {total} entries"
                raise RuntimeError(msg)
            click.echo(
                f"round {rnd} {name:<18} {result.rate:>9,.0f} events/s "
                f"({result.events:,} in {result.seconds:.2f}s, {result.alerts} alerts)"
            )
            results.append(result)
    return results


def _renamed(result: Result, suffix: str) -> Result:
    result.consumer += suffix
    return result


if __name__ == "__main__":
    main()
