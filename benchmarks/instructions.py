"""Instructions per event, counted by valgrind's callgrind: an A/B of trees that load cannot move.

python -m benchmarks.instructions --against /tmp/snap        # this tree and a snapshot
python -m benchmarks.instructions --model hst --seed 8

Each tree (this one, and each ``--against`` directory: a ``benchmarks.snapshot --compile``
of another revision) runs :mod:`benchmarks.same_verdicts` (the scenario stream decoded and
scored by ``Pipeline.process``) under ``valgrind --tool=callgrind`` in its own process, the
trees side by side. The figure is the instructions executed inside ``Pipeline.process``
(inclusive, read with ``callgrind_annotate``) per event, next to the whole process's; the
verdict digests show that the trees computed the same thing.

Why: on this project's shared 2-core VMs, wall-clock and CPU-time figures of one tree vary
by 30% from run to run with the load (benchmarks/README.md), so a change worth 10% needs many
paired rounds to be seen; an instruction count varies by well under 1%. It is not time:
cache misses, branch mispredictions and memory traffic count for nothing, so a gain is then
confirmed in events/s with :mod:`benchmarks.throughput` when the machine is quiet. Needs
``valgrind`` (Debian package ``valgrind``); ~3 minutes per tree at the default 3 hours.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
# Cython's wrapper of the compiled method (its number follows the class's method order).
_PROCESS = re.compile(r"__pyx_pw_\w*Pipeline_\d+process\b")
_COUNT = re.compile(r"^\s*([\d,]+)\s")
_OUTCOME = re.compile(r"^events (\d+) alerts (\d+) verdicts ([0-9a-f]+)$", re.MULTILINE)


@dataclass(frozen=True)
class Count:
    """One tree's run: its verdicts and the instructions it took."""

    tree: str
    events: int
    alerts: int
    digest: str
    process: int  # inside Pipeline.process (inclusive)
    total: int  # the whole process (start-up, imports, the simulator, decoding...)


def instructions(annotated: str) -> tuple[int, int]:
    """(inside ``Pipeline.process``, program total) from ``callgrind_annotate --inclusive=yes``.

    >>> text = '''
    ... 9,000 (100.0%)  PROGRAM TOTALS
    ... 7,500 (83.33%)  pipeline.c:__pyx_pw_8detector_4core_8pipeline_8Pipeline_3process [x.so]
    ... 7,400 (82.22%)  pipeline.c:__pyx_pw_8detector_4core_8pipeline_8Pipeline_7_one [x.so]
    ... '''
    >>> instructions(text)
    (7500, 9000)
    """
    total = process = 0
    for line in annotated.splitlines():
        m = _COUNT.match(line)
        if m is None:
            continue
        n = int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = n
        elif not process and _PROCESS.search(line):
            process = n
    if not (total and process):
        msg = "no Pipeline.process in the annotation: is the tree compiled?"
        raise click.ClickException(msg)
    return process, total


def count(tree: Path, args: list[str], out: Path) -> Count:
    """Run ``benchmarks.same_verdicts args`` of ``tree`` under callgrind."""
    # One hash seed: string hashes move dict probes and set orders, a few % of the count.
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    cmd = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, "-m", "benchmarks.same_verdicts", *args,
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    m = _OUTCOME.search(run.stdout)
    if run.returncode or m is None:
        msg = f"{tree}: exit {run.returncode}\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
        raise click.ClickException(msg)
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", str(out)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    process, total = instructions(annotated)
    return Count(str(tree), int(m.group(1)), int(m.group(2)), m.group(3), process, total)


@click.command()
@click.option("--model", default="stats", show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--hours", default=3.0, show_default=True)
@click.option(
    "--against",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Another tree (a compiled snapshot) to count beside this one; repeatable.",
)
def main(model: str, seed: int, hours: float, against: tuple[Path, ...]) -> None:
    """Instructions per event of Pipeline.process, for this tree and the others."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        msg = "valgrind is not installed (Debian: apt install valgrind)"
        raise click.ClickException(msg)
    args = ["--model", model, "--seed", str(seed), "--hours", f"{hours:g}"]
    trees = [ROOT, *against]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(len(trees)) as pool:
        outs = [Path(tmp) / f"callgrind.{k}" for k in range(len(trees))]
        counts = list(pool.map(lambda t, o: count(t, args, o), trees, outs))
    click.echo(f"same_verdicts {' '.join(args)}")
    first = counts[0]
    for c in counts:
        ratio = "" if c is first else f"  x{c.process / first.process:.3f} of this tree's"
        click.echo(
            f"{c.tree}: {c.process / c.events:,.0f} instructions/event in Pipeline.process"
            f" ({c.total / c.events:,.0f} in all), events {c.events} alerts {c.alerts}"
            f" verdicts {c.digest}{ratio}"
        )
    if len({c.digest for c in counts}) > 1:
        click.echo("the verdicts differ: the trees did not compute the same thing")


if __name__ == "__main__":
    main()
