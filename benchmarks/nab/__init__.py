"""Numenta Anomaly Benchmark (NAB) scoring, see ``benchmarks.nab.scorer``."""

from __future__ import annotations
