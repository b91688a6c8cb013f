"""The compiled core: which modules Cython compiles at install, whether they run compiled here.

The listed modules are plain Python, compiled as they are (Cython's pure Python mode) by
``setup.py`` when the package is installed on a machine with a C compiler; without one the
install still succeeds and the same modules run as Python, slower. ``detector run``, ``score``,
``train`` and ``demo`` then log one warning, and ``detector --version`` says which it is.

``DETECTOR_PURE_PYTHON=1`` runs the Python sources even where the extension modules exist (CI
runs both paths; debugging and profiling want the source). In a source checkout
(``pip install -e .``) a module edited after its build runs from its source too, with the
same warning, until ``pip install -e .`` builds it again, and so do the modules that cimport
it (their .pxd files: a kernel calling its C functions or typed on its classes). All this is
decided by :class:`Sources`, which ``detector/__init__.py`` puts in front of the import system.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

#: The files Cython compiles (glob patterns, ``**`` for any depth, from the project root);
#: setup.py reads them from this file. Only numeric inner loops gain much, but compiling the
#: whole core unchanged made the worker 1.37x faster (issue 15).
COMPILED = ("detector/core/**/*.py",)
#: Never compiled (fnmatch patterns): package markers, and modules that only hold declarations.
NOT_COMPILED = ("*/__init__.py", "detector/core/errors.py", "detector/core/settings.py")

PURE_ENVVAR = "DETECTOR_PURE_PYTHON"
# The directory holding the `detector` package: the project root in a source checkout.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compiled_sources(root: str = _ROOT) -> list[str]:
    """The files of :data:`COMPILED` less :data:`NOT_COMPILED`, relative to ``root``, sorted."""
    import fnmatch  # here and below: `import detector` loads this module, and stays light
    import glob

    found = {p for pat in COMPILED for p in glob.glob(pat, root_dir=root, recursive=True)}
    return sorted(p for p in found if not any(fnmatch.fnmatch(p, x) for x in NOT_COMPILED))


def compiled_modules() -> list[str]:
    """The dotted names of the modules meant to run compiled."""
    return [p.removesuffix(".py").replace(os.sep, ".") for p in compiled_sources()]


def _why_source(extension: str, source: str) -> str | None:
    """Why the Python ``source`` runs instead of its built ``extension``, or None."""
    if os.environ.get(PURE_ENVVAR) == "1":
        return f"{PURE_ENVVAR}=1"
    # A source checkout (editable install) keeps the build beside the sources: a module edited
    # since is stale. Installed wheels are exempt: pip does not keep the files' times.
    in_checkout = os.path.exists(os.path.join(_ROOT, "pyproject.toml"))
    if in_checkout and os.path.getmtime(source) > os.path.getmtime(extension):
        return "edited since its build, which pip install -e . renews"
    return None


def _built(source: str) -> str | None:
    """The extension module built from ``source``, if there is one beside it."""
    built = [source.removesuffix(".py") + s for s in importlib.machinery.EXTENSION_SUFFIXES]
    return next((b for b in built if os.path.exists(b)), None)


def _cimported(source: str) -> list[str]:
    """The package modules whose C functions and types the module of ``source`` takes: the
    ``cimport`` lines of the .pxd beside it (the kernels' declarations)."""
    pxd = source.removesuffix(".py") + ".pxd"
    if not os.path.exists(pxd):
        return []
    with open(pxd, encoding="utf-8") as f:
        return re.findall(r"^from (detector(?:\.\w+)+) cimport ", f.read(), re.MULTILINE)


def _why_runs_source(extension: str, source: str) -> str | None:
    """:func:`_why_source`, or why a module it cimports runs as Python: the extension module
    would fail to import without the C functions and types it takes from theirs."""
    why = _why_source(extension, source)
    if why is not None:
        return why
    for name in _cimported(source):
        dep = os.path.join(_ROOT, *name.split(".")) + ".py"
        built = _built(dep)
        if built is None or _why_runs_source(built, dep) is not None:
            return f"cimports {name}, which runs as Python"
    return None


class Sources:
    """Finds a package module's Python source where the import system would take the
    extension module built from it, when :func:`_why_runs_source` says so."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith("detector."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return None
        extension = str(spec.origin)
        source = os.path.join(os.path.dirname(extension), fullname.rpartition(".")[2] + ".py")
        if not os.path.exists(source) or _why_runs_source(extension, source) is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def install() -> None:
    """Put :class:`Sources` first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, Sources) for finder in sys.meta_path):
        sys.meta_path.insert(0, Sources())


def pure_modules() -> dict[str, str]:
    """The modules meant to run compiled that run as Python here, each with the reason."""
    out: dict[str, str] = {}
    for path in compiled_sources():
        name = path.removesuffix(".py").replace(os.sep, ".")
        spec = importlib.util.find_spec(name)  # the import system decides, as for an import
        if spec and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            continue
        source = os.path.join(_ROOT, path)
        extension = _built(source)
        why = _why_runs_source(extension, source) if extension else None
        out[name] = why or "not compiled at install: no C compiler, or no Cython"
    return out


def describe() -> str:
    """One line: is the core compiled here, and if not, why."""
    pure = pure_modules()
    total = len(compiled_modules())
    if not pure:
        return f"core compiled ({total} modules)"
    reasons = "; ".join(sorted(set(pure.values())))
    return f"core runs as pure Python, slower: {len(pure)} of {total} modules, {reasons}"


@functools.cache
def warn_if_pure() -> None:
    """Log once that the core runs as Python (the commands that process events call this)."""
    import logging

    pure = pure_modules()
    if pure:
        logging.getLogger(__name__).warning("%s (%s)", describe(), ", ".join(pure))


def require_compiled() -> None:
    """Exit 1 unless every listed module runs compiled (the Docker build's check)."""
    status = describe()
    print(status)
    if pure_modules():
        raise SystemExit(1)
