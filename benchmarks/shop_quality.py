"""Moved: detection quality on the simulated shop is ``python -m benchmarks.scenarios``.

    python -m benchmarks.shop_quality ...   # the same as python -m benchmarks.scenarios ...

The scenarios benchmark injects every incident kind (``--kinds`` picks some), reports the
alerts the worker would raise at the spec's threshold, and simulates other thresholds in the
same pass (``--sweep 0.9999,0.99999``), with one matching rule
(:mod:`benchmarks.scenarios.matching`).
"""

from __future__ import annotations

from benchmarks.scenarios.__main__ import main

if __name__ == "__main__":
    main()
