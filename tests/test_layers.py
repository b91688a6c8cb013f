"""The layers of docs/design.md's module table hold, each importing only those below it:
the core (detector.core: no Redis client), the Redis layer (detector.gateway), the runtime
(detector.runtime), the applications at the top of the package."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import detector

FEATURES = ("store", "feature", "config", "surprise", "judgements", "columns", "clock", "moments",
            "categories", "rate", "value", "size", "types", "category", "schema", "replay",
            "drift", "joint", "peers", "sequence", "resonance", "tables")  # fmt: skip
CORE = ("settings", "errors", "events", *(f"features.{m}" for m in FEATURES), "codec",
        "fingerprints", "admission", "calibration", "scoring", "estimators", "trees", "pipeline",
        "alerts", "checkpoint", "feedback")  # fmt: skip
GATEWAY = ("streams", "ownership", "partitions", "connection", "secrets", "embedded",
           "alert_reader", "feedback")  # fmt: skip
RUNTIME = ("worker", "consumer", "checkpointer", "status", "metrics", "peering")
# Loaded by the package itself (detector/__init__.py); imports nothing of the package.
PACKAGE = ("compiled",)
APPS = ("cli", "options", "offline", "timeline", "plot", "baselines", "router", "producer", "acl",
        "demo", "logs", "console", "notifier", "river", "shop.simulator")  # fmt: skip


def _loaded_after(imports: list[str], watched: list[str], *, block_redis: bool) -> list[str]:
    """The watched modules that importing `imports` (in a fresh interpreter) loads."""
    code = (
        "import sys\n"
        + ("sys.modules['redis'] = None  # any import of redis fails\n" if block_redis else "")
        + f"for m in {imports!r}:\n"
        "    __import__(m)\n"
        f"print(','.join(sorted(m for m in {watched!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return [m for m in out.stdout.strip().split(",") if m]


def _names(package: str, modules: tuple[str, ...]) -> list[str]:
    return [f"detector.{package}{m}" for m in modules]


def test_the_core_imports_no_redis_and_nothing_above_it() -> None:
    above = _names("gateway.", GATEWAY) + _names("runtime.", RUNTIME) + _names("", APPS)
    assert _loaded_after(_names("core.", CORE), above, block_redis=True) == []


def test_the_package_loads_only_its_own_module() -> None:
    """`import detector` stays light: the compiled-core switch, no layer."""
    every = _names("core.", CORE) + _names("gateway.", GATEWAY) + _names("runtime.", RUNTIME)
    assert _loaded_after(["detector"], every + _names("", APPS), block_redis=True) == []


def test_the_redis_layer_imports_only_the_core() -> None:
    above = _names("runtime.", RUNTIME) + _names("", APPS)
    assert _loaded_after(_names("gateway.", GATEWAY), above, block_redis=False) == []


def test_the_runtime_imports_no_application() -> None:
    assert _loaded_after(_names("runtime.", RUNTIME), _names("", APPS), block_redis=False) == []


def test_every_module_has_its_layer() -> None:
    """A module added to the package without a place in the layers above, or in the module
    table of docs/design.md, fails here."""
    root = Path(detector.__path__[0])
    found = {
        ".".join(path.relative_to(root).with_suffix("").parts)
        for path in root.rglob("*.py")
        if path.name != "__init__.py"
    }
    listed = {f"core.{m}" for m in CORE} | {f"runtime.{m}" for m in RUNTIME}
    listed |= {f"gateway.{m}" for m in GATEWAY} | set(APPS) | set(PACKAGE)
    assert found == listed
    design = (Path(__file__).parent.parent / "docs" / "design.md").read_text()
    section = design.split("## Modules", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    rows = {m.replace("/", ".") for m in re.findall(r"`([\w/]+)\.py`", table)}
    assert rows == found  # docs/design.md's module table names every module by its path


def test_the_wheel_ships_every_subpackage() -> None:
    """pyproject.toml lists the packages by hand: a subpackage missing there is missing from
    the wheel (an import error after `pip install`, not in this checkout)."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    root = Path(detector.__path__[0])
    packages = {
        ".".join(("detector", *init.parent.relative_to(root).parts))
        for init in root.rglob("__init__.py")
    }
    assert packages <= set(pyproject["tool"]["setuptools"]["packages"])
