"""Fingerprints (detector.core.fingerprints): compiled, BLAKE2b-64 in C; hashlib is the oracle."""

from __future__ import annotations

import hashlib
import os
import runpy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector import compiled
from detector.core import fingerprints
from detector.core.fingerprints import fingerprint, pair_fingerprint

# Lengths around BLAKE2b's 128-byte block, where the C code's buffering could go wrong.
EDGES = [0, 1, 7, 8, 63, 64, 123, 124, 127, 128, 129, 255, 256, 257, 1000]


def oracle(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def pair_oracle(producer: str, event_id: str) -> int:
    raw = producer.encode()
    return oracle(len(raw).to_bytes(4, "little") + raw + event_id.encode()) or 1


def test_the_module_runs_compiled_where_the_core_does() -> None:
    if os.environ.get(compiled.PURE_ENVVAR) != "1":
        assert not str(fingerprints.__file__).endswith(".py")


@pytest.mark.parametrize("n", EDGES)
def test_block_edges_equal_hashlib(n: int) -> None:
    text = "".join(chr(97 + i % 26) for i in range(n))
    assert fingerprint(text) == oracle(text.encode())
    for cut in {0, n // 3, n}:
        assert pair_fingerprint(text[:cut], text[cut:]) == pair_oracle(text[:cut], text[cut:])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300))
def test_any_text_equals_hashlib(producer: str, event_id: str) -> None:
    """Non-ASCII text too: the C code reads the strings' UTF-8 as str.encode makes it."""
    try:
        expected = pair_oracle(producer, event_id)
    except UnicodeEncodeError:  # a lone surrogate: both raise
        with pytest.raises(UnicodeEncodeError):
            pair_fingerprint(producer, event_id)
        return
    assert pair_fingerprint(producer, event_id) == expected
    assert fingerprint(producer + event_id) == oracle((producer + event_id).encode())


def test_the_python_source_equals_the_build() -> None:
    """The source run as Python (no compiler, DETECTOR_PURE_PYTHON=1) gives the same values."""
    source = runpy.run_path(str(Path(str(fingerprints.__file__)).with_name("fingerprints.py")))
    assert source["_IN_C"] is False
    for text in ("", "EUR", "é" * 200):
        assert source["fingerprint"](text) == fingerprint(text)
        assert source["pair_fingerprint"]("p", text) == pair_fingerprint("p", text)
