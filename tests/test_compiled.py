"""The compiled core (detector.compiled, setup.py): the tests run against the compiled build,
and the pure-Python path gives the same verdicts and says that it is slower."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from detector import compiled
from tests.conftest import TEST_KEY
from tests.helpers import order_events

ROOT = Path(__file__).resolve().parents[1]
PURE = {compiled.PURE_ENVVAR: "1"}
# Prints each compiled module's file, then the digests of one scenario run.
SCENARIO = """
import importlib
from detector.compiled import compiled_modules
from benchmarks.same_verdicts import main
for name in compiled_modules():
    print("file", importlib.import_module(name).__file__)
main(["--hours", "2.5", "--seed", "7"])
"""


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``argv`` in this tree, with ``env`` and no DETECTOR_* variable of this process."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        argv, env={**base, **env}, cwd=ROOT, capture_output=True, text=True, timeout=90,
        check=False,
    )  # fmt: skip


def test_the_core_runs_compiled() -> None:
    """The README's install compiles the core, and CI tests that build: a missing compiler
    fails here. DETECTOR_PURE_PYTHON=1 runs the whole suite on the Python sources instead."""
    if os.environ.get(compiled.PURE_ENVVAR) == "1":
        assert set(compiled.pure_modules()) == set(compiled.compiled_modules())
        return
    assert compiled.pure_modules() == {}, compiled.describe()
    extension = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for name in compiled.compiled_modules():
        assert str(importlib.import_module(name).__file__).endswith(extension), name
    assert compiled.compiled_modules(), "setup.py would compile nothing"


def test_the_pure_path_runs_the_sources_and_gives_the_same_verdicts() -> None:
    runs = {}
    for label, env in (("compiled", {}), ("pure", PURE)):
        out = run([sys.executable, "-c", SCENARIO], env)
        assert out.returncode == 0, out.stderr[-2000:]
        lines = out.stdout.splitlines()
        files = [line.split(" ", 1)[1] for line in lines if line.startswith("file ")]
        assert len(files) == len(compiled.compiled_modules())
        runs[label] = (files, lines[-1])
    assert all(f.endswith(".py") for f in runs["pure"][0]), runs["pure"][0]
    [(_, compiled_digest), (_, pure_digest)] = runs.values()
    assert compiled_digest.startswith("events ") and " verdicts " in compiled_digest
    assert pure_digest == compiled_digest


def test_the_pure_path_warns_once_and_version_says_so(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.csv"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in order_events(2, 20)))
    key = {"DETECTOR_CHECKPOINT_KEY": TEST_KEY.decode()}
    command = [sys.executable, "-m", "detector.cli"]
    score = [*command, "score", "--input", str(src), "--output", str(dst)]
    out = run(score, {**key, **PURE})
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("core runs as pure Python, slower") == 1, out.stderr
    assert f"{compiled.PURE_ENVVAR}=1" in out.stderr
    version = run([*command, "--version"], PURE)
    assert "core runs as pure Python" in version.stdout, version.stdout
    if not compiled.pure_modules():  # and a compiled build stays quiet
        quiet = run(score, key)
        assert quiet.returncode == 0, quiet.stderr
        assert "pure Python" not in quiet.stderr
        assert "core compiled" in run([*command, "--version"], {}).stdout


def test_a_module_edited_since_its_build_runs_from_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a source checkout the build lies beside the sources: an edit must not be hidden by
    the extension module built before it."""
    monkeypatch.delenv(compiled.PURE_ENVVAR, raising=False)
    source, extension = tmp_path / "m.py", tmp_path / "m.so"
    source.write_text("")
    extension.write_text("")
    os.utime(source, (1_000, 1_000))
    os.utime(extension, (2_000, 2_000))
    assert compiled._why_source(str(extension), str(source)) is None
    os.utime(source, (3_000, 3_000))
    assert "edited since its build" in str(compiled._why_source(str(extension), str(source)))


def test_a_module_cimporting_one_that_runs_from_its_source_does_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extension module that cimports another (a kernel calling its C functions, typed on
    its classes) fails to import beside that module's source: it runs from its source too."""
    monkeypatch.delenv(compiled.PURE_ENVVAR, raising=False)
    monkeypatch.setattr(compiled, "_ROOT", str(tmp_path))
    (tmp_path / "pyproject.toml").write_text("")  # a source checkout
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    pkg = tmp_path / "detector" / "k"
    pkg.mkdir(parents=True)
    for name in ("a", "b", "c"):
        (pkg / f"{name}.py").write_text("")
        (pkg / f"{name}{suffix}").write_text("")
        os.utime(pkg / f"{name}.py", (1_000, 1_000))
        os.utime(pkg / f"{name}{suffix}", (2_000, 2_000))
    (pkg / "a.pxd").write_text("from detector.k.b cimport f\n")
    (pkg / "b.pxd").write_text("from detector.k.c cimport C\n")
    a, extension = str(pkg / "a.py"), str(pkg / f"a{suffix}")
    assert compiled._why_runs_source(extension, a) is None
    os.utime(pkg / "c.py", (3_000, 3_000))  # c edited: b, then a, run from their sources
    assert compiled._why_runs_source(extension, a) == "cimports detector.k.b, which runs as Python"
    os.utime(pkg / "c.py", (1_000, 1_000))
    (pkg / f"b{suffix}").unlink()  # b not compiled at install
    assert compiled._why_runs_source(extension, a) == "cimports detector.k.b, which runs as Python"
