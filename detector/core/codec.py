"""Checkpoint records: a producer's state as typed little-endian fields, in a fixed order per
part of the state (clock, each feature, decision state), no pickle: nothing in a record can
name code to run.

A record is written by each part's ``dump`` and read back by its ``load`` in the same order;
the format version in the checkpoint's meta covers the layout.

Examples:
    >>> w = Writer()
    >>> w.i64(-3); w.f64(0.5); w.text("EUR"); w.f64s([1.0, 2.0])
    >>> r = Reader(w.bytes())
    >>> r.i64(), r.f64(), r.text(), r.f64s().tolist(), r.done()
    (-3, 0.5, 'EUR', [1.0, 2.0], True)
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")
# Bound once: a record is dozens of fields, each one call of these.
_pack_i64, _pack_f64, _pack_u32 = _I64.pack, _F64.pack, _U32.pack
# array('q'/'d'/'Q') and numpy arrays hold native byte order: their bytes are the record's
# as they are on a little-endian machine; elsewhere they are converted first.
_NATIVE_LE = sys.byteorder == "little"
_TYPECODES = {"<i8": "q", "<f8": "d", "<u8": "Q"}
_DTYPES = {code: np.dtype(code) for code in _TYPECODES}
# The array type codes a column may have (its items are fixed-size numbers).
_COLUMN_CODES = frozenset("bBhHiIlLqQfd")


def _le_bytes(values: Iterable[Any], dtype: str) -> tuple[int, bytes]:
    """(length, little-endian bytes) of ``values`` as ``dtype``: an array of that type as it
    is (no numpy call: most of a record's arrays are a few dozen numbers)."""
    if _NATIVE_LE:
        if isinstance(values, array) and values.typecode == _TYPECODES[dtype]:
            return len(values), values.tobytes()
        if isinstance(values, np.ndarray) and values.dtype == _DTYPES[dtype]:
            return len(values), values.tobytes()
    a = np.asarray(values, dtype=dtype)
    return len(a), a.tobytes()


class Writer:
    """Appends typed fields to one record."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def i64(self, v: int) -> None:
        self._buf += _pack_i64(v)

    def f64(self, v: float) -> None:
        self._buf += _pack_f64(v)

    def count(self, v: int) -> None:
        """A length or small count (unsigned 32 bits)."""
        self._buf += _pack_u32(v)

    def text(self, s: str) -> None:
        raw = s.encode()
        self._buf += _pack_u32(len(raw))
        self._buf += raw

    def blob(self, raw: bytes) -> None:
        """Opaque bytes (a River estimator's pickle), length-prefixed."""
        self._buf += _pack_u32(len(raw))
        self._buf += raw

    def _many(self, values: Iterable[Any], dtype: str) -> None:
        n, raw = _le_bytes(values, dtype)
        self._buf += _pack_u32(n)
        self._buf += raw

    def f64s(self, values: Iterable[float] | npt.NDArray[np.float64]) -> None:
        self._many(values, "<f8")

    def i64s(self, values: Iterable[int] | npt.NDArray[np.int64]) -> None:
        self._many(values, "<i8")

    def u64s(self, values: Iterable[int] | npt.NDArray[np.uint64]) -> None:
        self._many(values, "<u8")

    def column(self, values: Any) -> None:
        """A whole typed column (an ``array``, a numpy array, or compiled code's typed
        memoryview of one): its type code, length and little-endian items, in one copy
        (straight from the column's buffer into this one)."""
        view = memoryview(values)
        code = view.format[-1]  # "<d" for numpy's float64: the code is the last letter
        self.text(code)
        self._buf += _pack_u32(view.nbytes // max(view.itemsize, 1))
        if _NATIVE_LE and view.c_contiguous:
            self._buf += view.cast("B")
        else:
            swapped = array(code, view.tobytes())
            if not _NATIVE_LE:
                swapped.byteswap()
            self._buf += swapped

    def open_blob(self) -> int:
        """Start a blob written in place (its length is filled in by :meth:`close_blob`):
        a section of the base is written straight into it, not copied in afterwards."""
        at = len(self._buf)
        self._buf += _pack_u32(0)
        return at

    def close_blob(self, at: int) -> None:
        """End the blob :meth:`open_blob` started at ``at``: the same bytes as
        :meth:`blob` of what was written since."""
        _U32.pack_into(self._buf, at, len(self._buf) - at - 4)

    def bytes(self) -> bytes:
        return bytes(self._buf)

    def detach(self) -> bytearray:
        """What was written, without a copy (a full checkpoint's base: hundreds of MB);
        the writer starts empty again."""
        out, self._buf = self._buf, bytearray()
        return out


class Reader:
    """Reads one record's fields back, in the order they were written.

    Raises:
        ValueError: the record ends early (truncated or another layout).
    """

    __slots__ = ("_buf", "_end", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._buf = memoryview(data)
        self._end = len(self._buf)
        self._pos = 0

    def _at(self, n: int) -> int:
        """Where the next ``n`` bytes start (then passed): fixed-size fields are unpacked
        from there, with no view made of each."""
        start = self._pos
        if start + n > self._end:
            msg = "producer record ends early"
            raise ValueError(msg)
        self._pos = start + n
        return start

    def _take(self, n: int) -> memoryview:
        start = self._at(n)
        return self._buf[start : start + n]

    def i64(self) -> int:
        v: int = _I64.unpack_from(self._buf, self._at(8))[0]
        return v

    def f64(self) -> float:
        v: float = _F64.unpack_from(self._buf, self._at(8))[0]
        return v

    def count(self) -> int:
        v: int = _U32.unpack_from(self._buf, self._at(4))[0]
        return v

    def text(self) -> str:
        return str(self._take(self.count()), "utf-8")

    def blob(self) -> bytes:
        return bytes(self._take(self.count()))

    def section(self) -> Reader:
        """A blob read in place: a reader of its bytes, not a copy of them."""
        return Reader(self._take(self.count()))

    def f64s(self) -> npt.NDArray[np.float64]:
        n = self.count()
        return np.frombuffer(self._take(8 * n), dtype="<f8").astype(np.float64)

    def i64s(self) -> npt.NDArray[np.int64]:
        n = self.count()
        return np.frombuffer(self._take(8 * n), dtype="<i8").astype(np.int64)

    def u64s(self) -> npt.NDArray[np.uint64]:
        n = self.count()
        return np.frombuffer(self._take(8 * n), dtype="<u8").astype(np.uint64)

    def column(self) -> array[Any]:
        """A column written by :meth:`Writer.column`, as an ``array`` of its type."""
        code = self.text()
        if code not in _COLUMN_CODES:
            msg = f"unknown column type {code!r}"
            raise ValueError(msg)
        out = array(code)
        out.frombytes(self._take(out.itemsize * self.count()))
        if not _NATIVE_LE:
            out.byteswap()
        return out

    def done(self) -> bool:
        return self._pos == self._end
