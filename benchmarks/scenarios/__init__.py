"""Scenarios benchmark: the simulated shop with every incident kind, through the worker's path.

    python -m benchmarks.scenarios --model stats --seeds 7,8,9 --hours 24

Per incident kind: injected, caught, recall, detection delay and whether the first matching
alert's top reason names the injected cause; overall: alerts, precision and false alerts per
producer per day. The matching rule lives in :mod:`benchmarks.scenarios.matching`; the run
(decode + ``Pipeline.process``, as ``detector run`` does per batch) in
:mod:`benchmarks.scenarios.runner`.
"""

from __future__ import annotations
