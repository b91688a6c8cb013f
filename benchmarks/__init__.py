"""Offline benchmarks for the detector (not shipped in the wheel)."""

from __future__ import annotations
