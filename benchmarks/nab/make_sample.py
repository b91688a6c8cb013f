"""Rebuild ``benchmarks/nab/data-sample/`` (the extract the default tests use) from a NAB checkout.

    python -m benchmarks.nab.make_sample [--root NAB] [--out DIR]

``--root`` is a NAB root laid out as ``shared/datasets/nab`` (NAB commit ea702d7, MIT licensed),
by default :func:`benchmarks.nab.scorer.default_root`. For the files in
:data:`~benchmarks.nab.scorer.SAMPLE_FILES` it copies, unchanged:

* ``data/<category>/<file>.csv`` and ``config/{profiles,thresholds}.json`` (byte for byte);
* ``labels/combined_windows.json``: those files' entries only;
* ``reference_results/<det>/<det>_<profile>_scores.csv``: the header and those files' rows
  (the corpus-wide ``Totals`` row is dropped, it is not the sample's);
* ``reference_results/<det>/<category>/<det>_<file>.csv``: the columns
  ``timestamp,value,anomaly_score,label`` (cells as written; the ``raw_score`` and ``S(t)_*``
  columns are dropped: the scorer reads ``anomaly_score`` only).

``README.md`` and ``LICENSE.txt`` (the attribution) are written by hand and left alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from benchmarks.nab.scorer import PROFILE_NAMES, SAMPLE_FILES, SAMPLE_ROOT, default_root

DETECTORS: Final = ("numenta", "windowedGaussian")
RESULT_COLUMNS: Final = ("timestamp", "value", "anomaly_score", "label")


def make_sample(root: Path, out: Path, names: Sequence[str] = SAMPLE_FILES) -> None:
    """Write the extract of ``root`` for ``names`` under ``out``."""
    for name in names:
        _copy(root / "data" / name, out / "data" / name)
    for config in ("profiles.json", "thresholds.json"):
        _copy(root / "config" / config, out / "config" / config)
    windows = json.loads((root / "labels" / "combined_windows.json").read_text())
    subset = {name: windows[name] for name in sorted(names)}
    _write(out / "labels" / "combined_windows.json", json.dumps(subset, indent=4) + "\n")
    for det in DETECTORS:
        for profile in PROFILE_NAMES:
            scores = f"reference_results/{det}/{det}_{profile}_scores.csv"
            lines = (root / scores).read_text().splitlines(keepends=True)
            kept = [ln for ln in lines[1:] if ln.split(",")[2] in names]
            if len(kept) != len(names):
                msg = f"{scores}: {len(kept)} rows for {len(names)} files"
                raise ValueError(msg)
            _write(out / scores, "".join([lines[0], *kept]))
        for name in names:
            category, _, file_name = name.partition("/")
            rel = f"reference_results/{det}/{category}/{det}_{file_name}"
            _trim_columns(root / rel, out / rel)


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _trim_columns(src: Path, dst: Path) -> None:
    with src.open(newline="") as fh:
        rows = list(csv.reader(fh))
    cols = [rows[0].index(c) for c in RESULT_COLUMNS]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dst.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerows([row[c] for c in cols] for row in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nab.make_sample")
    parser.add_argument("--root", type=Path, default=None, help="the full NAB data (or $NAB_ROOT)")
    parser.add_argument("--out", type=Path, default=SAMPLE_ROOT)
    args = parser.parse_args(argv)
    make_sample(default_root() if args.root is None else args.root, args.out)
    print(f"wrote the NAB sample ({len(SAMPLE_FILES)} files) under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
