"""Freeze a revision of the detector for benchmarking, while the work tree keeps changing.

python -m benchmarks.snapshot --rev HEAD --out /tmp/detector-snap
python -m benchmarks.snapshot --rev HEAD --out /tmp/detector-snap --compile  # with its build
cd /tmp/detector-snap && PYTHONPATH=$PWD python -m benchmarks.throughput

The snapshot holds ``detector/`` and the model specs (as ``detector/models``) of ``--rev``
from git, and this work tree's ``benchmarks/``. Run from it with ``PYTHONPATH`` set to it,
the benchmark process and every process it starts (the ``detector`` console script too:
``PYTHONPATH`` comes before the editable install's finder) import that revision, not the
files being edited. Each benchmark prints which detector it measures (see
:func:`detector_source`). With ``--compile``, the revision's own ``setup.py`` builds its
compiled core in place (Cython must be importable here), so compiled trees compare with
compiled trees; without it, a revision that has a compiled core runs as pure Python.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import click

MARKER = "SNAPSHOT"


def detector_source() -> str:
    """Where the imported detector comes from: a snapshot's revision, or git describe."""
    import detector

    root = Path(detector.__file__).resolve().parent.parent
    marker = root / MARKER
    if marker.exists():
        return f"snapshot {marker.read_text().split()[0][:12]} ({root})"
    try:
        describe = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "detector", "models"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return f"{root} (not a git checkout)"
    return f"work tree {describe} ({len(changed)} changed files under detector/, models/)"


@click.command()
@click.option("--rev", default="HEAD", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--compile", "build", is_flag=True, help="Build the revision's compiled core.")
def main(rev: str, out: Path, build: bool) -> None:
    """Write a frozen detector (at REV) plus this work tree's benchmarks to OUT."""
    repo = Path(__file__).resolve().parent.parent
    sha = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", sha, "detector", "models"],
        capture_output=True,
        check=True,
    ).stdout
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(out, filter="data")
    (out / "models").rename(out / "detector" / "models")
    shutil.copytree(
        repo / "benchmarks",
        out / "benchmarks",
        ignore=shutil.ignore_patterns("__pycache__", "results"),
    )
    (out / MARKER).write_text(f"{sha} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    if build:
        _build(repo, sha, out)
    click.echo(f"detector {sha[:12]} in {out}; run: cd {out} && PYTHONPATH=$PWD python -m ...")


def _build(repo: Path, sha: str, out: Path) -> None:
    """Compile the snapshot's core in place with the revision's own setup.py (if it has one)."""
    for name in ("setup.py", "pyproject.toml"):
        shown = subprocess.run(
            ["git", "-C", str(repo), "show", f"{sha}:{name}"], capture_output=True, check=False
        )
        if shown.returncode:
            click.echo(f"{name} not in {sha[:12]}: nothing to compile")
            return
        (out / name).write_bytes(shown.stdout)
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=out, check=True
    )
    built = len(list((out / "detector").rglob("*.so")))
    click.echo(f"compiled {built} modules in {out}")


if __name__ == "__main__":
    main()
