"""64-bit fingerprints of texts: BLAKE2b with an 8-byte digest (RFC 7693), read as a
little-endian integer. Not ``hash()``: fingerprints are kept in checkpoints and must be the same
in every process, after a restart and a replay; and not a fast non-cryptographic hash either, so
that nobody can mint an id that collides with another on purpose.

Compiled, both functions hash the strings' UTF-8 in C (fingerprints.pxd: ~2.5k instructions
instead of ~9k for hashlib's object, its digest bytes and ``int.from_bytes``); as Python they
call :mod:`hashlib`, the oracle the tests compare the C code with.

Examples:
    >>> fingerprint("EUR")
    6034696802167399667
    >>> pair_fingerprint("ab", "c") != pair_fingerprint("a", "bc")
    True
"""

from __future__ import annotations

import hashlib

try:  # compiled, `cython.compiled` is a constant True and the import is not run
    import cython  # type: ignore[import-untyped, import-not-found, unused-ignore]

    _IN_C = bool(cython.compiled)
except ImportError:  # Cython is a build-time dependency only: here the module runs as Python
    _IN_C = False


def blake2b_64(data: bytes) -> int:
    """BLAKE2b-64 of ``data`` as a little-endian integer, through hashlib."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def fingerprint(text: str) -> int:
    """The fingerprint of ``text``'s UTF-8."""
    if _IN_C:
        return detector_fp_text(text)  # type: ignore[name-defined, no-any-return]  # noqa: F821
    return blake2b_64(text.encode())


def pair_fingerprint(producer: str, event_id: str) -> int:
    """The fingerprint of a (producer, event id) pair, never 0 (the replay window's empty
    slot). The producer's UTF-8 length comes first (4 bytes), so no two pairs hash the same
    bytes."""
    if _IN_C:
        fp = detector_fp_pair(producer, event_id)  # type: ignore[name-defined]  # noqa: F821
    else:
        raw = producer.encode()
        fp = blake2b_64(len(raw).to_bytes(4, "little") + raw + event_id.encode())
    return fp or 1
