"""Compiles the core with Cython at install; the metadata lives in pyproject.toml.

The modules listed in detector/compiled.py are plain Python, compiled as they are. Without a
working C compiler, or without Cython (a build without isolation), the build still succeeds:
the extensions are optional, the package installs its Python sources, and the detector warns
at start that its core runs as pure Python (docs/design.md, "The compiled core").
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# Read as a file: the package's own imports must not run inside the build.
SOURCES = runpy.run_path(str(ROOT / "detector" / "compiled.py"))["compiled_sources"](str(ROOT))


class BuildCore(build_ext):
    """Cythonizes the modules into the build directory (the source tree gets no generated C),
    then compiles the C in parallel."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:  # the C compiler is the slow part
            self.parallel = os.cpu_count() or 1

    def build_extensions(self) -> None:
        from Cython.Build import cythonize

        # A Cython error is the code's fault: it fails the build. A C compiler's error (or none
        # at all) only skips the module, which then installs as Python (the detector warns).
        translated = cythonize(
            self.extensions,
            build_dir=os.path.join(self.build_temp, "cython"),
            # No `__test__` dict of the docstrings: pytest finds the doctests without it.
            compiler_directives={
                "language_level": 3,
                "autotestdict": False,
                # The .pxd files type the kernels (C ints and doubles); the annotations of the
                # .py are for mypy and the pure path, so they must not type anything here.
                "annotation_typing": False,
            },
            quiet=True,
        )
        for ext, c in zip(self.extensions, translated, strict=True):
            ext.sources, ext.optional = c.sources, True
        super().build_extensions()


def extensions() -> list[Extension]:
    try:
        import Cython  # noqa: F401
    except ImportError:
        print("warning: Cython is missing: the core installs as pure Python", file=sys.stderr)
        return []
    return [Extension(path.removesuffix(".py").replace("/", "."), [path]) for path in SOURCES]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildCore})
