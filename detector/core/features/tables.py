"""Tables: a columnar part's whole state (every slot at once) as typed fields, for the
checkpoint's base (:meth:`FeatureStore.base`).

A part's state is a few attributes: typed columns (``array``, or compiled code's typed
memoryviews of them), scalars, lists and dicts of strings and numbers, and nested state
objects of the classes listed in :func:`_state_classes` (a ``MomentsTable``, a ``Counts``,
...). Each attribute is written as its name, a kind and its value: a column in one copy of
its buffer (no loop over slots), the rest item by item. Reading writes the attributes back
into the live objects (the features keep references to their tables) and binds their typed
views again (``_bind``). Only the classes listed here are made, without calling any code of
the record's choosing: nothing in a record names code to run.

Examples:
    >>> from detector.core.codec import Reader, Writer
    >>> from detector.core.features.moments import MomentsTable
    >>> t = MomentsTable(0.1); t.reserve(3); t.update(1, 2.0)
    >>> w = Writer(); dump(w, t, ("count", "mean", "sq"))
    >>> u = MomentsTable(0.1); load(Reader(w.bytes()), u, ("count", "mean", "sq"))
    >>> list(u.count)[:3], list(u.mean)[:3]  # (compiled, columns have room to grow)
    ([0, 1, 0], [0.0, 2.0, 0.0])
"""

from __future__ import annotations

import itertools
import sys
from array import array
from collections.abc import Iterable
from typing import Any, cast

import numpy as np

from detector.core.codec import Reader, Writer

# Kinds of value.
_NONE, _FALSE, _TRUE, _INT, _FLOAT, _TEXT, _COLUMN, _LIST, _TUPLE, _DICT, _OBJECT, _RECORD = range(
    12
)
# Lists written at once rather than item by item (a list per slot or per interned string):
# of ints (an int64 column), of strings or None (their lengths, -1 for None, and one blob),
# of tuples of ints (their lengths and one int64 column of all their items), of floats (a
# float64 column), and of other tuples (of strings: few distinct ones, each written once and
# an int32 column of which one each item is; read back, the items share them).
_INTS, _TEXTS, _INT_TUPLES, _FLOATS, _DISTINCT = range(12, 17)


def _state_classes() -> tuple[dict[type, tuple[str, ...]], tuple[type, ...]]:
    # Here: the features' modules import this one.
    from detector.core.features.categories import Counts, Novelty, Pool, Vocab
    from detector.core.features.category import Fields
    from detector.core.features.drift import DriftTable
    from detector.core.features.moments import MomentsTable
    from detector.core.features.peers import Levels
    from detector.core.features.replay import IdCounts
    from detector.core.features.value import FieldRows, Keys, Seasonal, ValueWindow

    counts = (
        "values", "vfp", "rows", "free_rows", "n", "sat", "ostart", "osize", "oused", "mstart",
        "msize", "mused", "once_pool", "multi_pool", "fp", "cnt", "vid",
    )  # fmt: skip
    fields = (
        "counts", "keys", "by_type", "pairs", "pool", "names", "npool", "key", "row", "start",
        "size", "used", "name", "recent", "last_ms", "nstart", "nsize", "nused",
    )  # fmt: skip
    rows = (
        "keys", "moments", "key", "next", "seasonal", "windows", "head", "tail", "fields",
        "profiles", "windowed", "used", "free",
    )  # fmt: skip
    tables = {
        MomentsTable: ("count", "mean", "sq"),
        DriftTable: ("count", "first_ms", "last_ms", "mean", "var", "hi", "lo", "seen"),
        FieldRows: rows,
        Keys: ("ids", "names", "by_type"),
        Counts: counts,
        Vocab: ("ids", "strs", "refs", "free"),
        Pool: ("top", "garbage"),
        Novelty: ("has", "recent", "last_ms"),
        Fields: fields,
        Levels: ("keys", "pool", "key", "level", "var", "start", "size", "used"),
    }
    # Objects that write their own record (``dump(w)``, ``cls.load(r)``).
    records = (Seasonal, ValueWindow, IdCounts)
    return tables, records


_TABLES: dict[type, tuple[str, ...]] = {}
_RECORDS: dict[str, type] = {}
_BY_NAME: dict[str, type] = {}


def _known() -> dict[type, tuple[str, ...]]:
    """The state classes: each table's attributes, in their order in a record (its layout:
    a change here is a change of the checkpoint format)."""
    if not _TABLES:
        tables, records = _state_classes()
        _TABLES.update(tables)
        _BY_NAME.update({cls.__name__: cls for cls in tables})
        _RECORDS.update({cls.__name__: cls for cls in records})
    return _TABLES


def _put_scalar(w: Writer, v: Any) -> bool:
    """``v`` if it is None, a bool, an int, a float or a string."""
    if v is None:
        w.count(_NONE)
    elif v is True or v is False:
        w.count(_TRUE if v else _FALSE)
    elif isinstance(v, int):
        w.count(_INT)
        w.i64(v)
    elif isinstance(v, float):
        w.count(_FLOAT)
        w.f64(v)
    elif isinstance(v, str):
        w.count(_TEXT)
        w.text(v)
    else:
        return False
    return True


def put(w: Writer, v: Any) -> None:
    """One value of a known kind."""
    if _put_scalar(w, v) or (isinstance(v, list) and _put_list(w, v)):
        return
    if isinstance(v, list | tuple):
        w.count(_LIST if isinstance(v, list) else _TUPLE)
        w.count(len(v))
        for item in v:
            put(w, item)
    elif isinstance(v, dict):
        w.count(_DICT)
        w.count(len(v))
        for key, item in v.items():
            put(w, key)
            put(w, item)
    elif type(v) in _known():
        w.count(_OBJECT)
        w.text(type(v).__name__)
        dump(w, v, _TABLES[type(v)])
    elif _RECORDS.get(type(v).__name__) is type(v):
        w.count(_RECORD)
        w.text(type(v).__name__)
        cast(Any, v).dump(w)
    elif isinstance(v, np.ndarray):
        msg = "a numpy array in a table: keep it in an object that writes its own record"
        raise TypeError(msg)
    else:  # an array or a typed memoryview: a column
        w.count(_COLUMN)
        w.column(v)


def _put_list(w: Writer, v: list[Any]) -> bool:
    """``v`` in one of the list kinds written at once, if it is one of them."""
    try:
        ints = array("q", v)
    except (TypeError, OverflowError):
        pass
    else:
        w.count(_INTS)
        w.column(ints)
        return True
    try:
        texts = [None if s is None else s.encode() for s in v]
    except AttributeError:
        pass
    else:
        w.count(_TEXTS)
        w.column(array("q", [-1 if b is None else len(b) for b in texts]))
        w.blob(b"".join([b for b in texts if b is not None]))
        return True
    if all(type(x) is float for x in v):
        w.count(_FLOATS)
        w.column(array("d", v))
        return True
    if all(type(t) is tuple for t in v):
        try:
            items = array("q", itertools.chain.from_iterable(v))
        except (TypeError, OverflowError):
            return _put_distinct(w, v)
        w.count(_INT_TUPLES)
        w.column(array("q", map(len, v)))
        w.column(items)
        return True
    return False


def _put_distinct(w: Writer, v: list[tuple[Any, ...]]) -> bool:
    ids: dict[tuple[Any, ...], int] = {}
    try:
        which = array("i", [ids.setdefault(t, len(ids)) for t in v])
    except TypeError:  # unhashable
        return False
    w.count(_DISTINCT)
    w.count(len(ids))
    for t in ids:
        put(w, t)
    w.column(which)
    return True


def _take_list(r: Reader, kind: int) -> list[Any]:
    if kind in (_INTS, _FLOATS):
        return r.column().tolist()
    if kind == _DISTINCT:
        distinct = [take(r) for _ in range(r.count())]
        return [distinct[i] for i in r.column()]
    lengths = r.column()
    if kind == _TEXTS:
        raw, at = r.blob(), 0
        out: list[Any] = []
        for n in lengths:
            if n < 0:
                out.append(None)
            else:
                out.append(sys.intern(raw[at : at + n].decode()))
                at += n
        return out
    items, at = r.column().tolist(), 0
    tuples = []
    for n in lengths:
        tuples.append(tuple(items[at : at + n]))
        at += n
    return tuples


_SCALARS: dict[int, Any] = {
    _NONE: lambda r: None,
    _FALSE: lambda r: False,
    _TRUE: lambda r: True,
    _INT: Reader.i64,
    _FLOAT: Reader.f64,
    # Interned, as the live state's strings are: a table's lists and dicts share them.
    _TEXT: lambda r: sys.intern(r.text()),
    _COLUMN: Reader.column,
}


def take(r: Reader, current: Any = None) -> Any:
    """One value written by :func:`put`; a nested object is read into ``current`` when it
    is one of the same class (the live one, which others reference).

    Raises:
        ValueError: an unknown kind or class (another layout).
    """
    kind = r.count()
    scalar = _SCALARS.get(kind)
    if scalar is not None:
        return scalar(r)
    if kind in (_LIST, _TUPLE):
        items = [take(r) for _ in range(r.count())]
        return items if kind == _LIST else tuple(items)
    if kind in (_INTS, _TEXTS, _INT_TUPLES, _FLOATS, _DISTINCT):
        return _take_list(r, kind)
    if kind == _DICT:
        out = {}
        for _ in range(r.count()):
            key = take(r)
            out[key] = take(r)
        return out
    if kind in (_OBJECT, _RECORD):
        return _take_object(r, kind, current)
    msg = f"unknown kind {kind} in a table"
    raise ValueError(msg)


def _take_object(r: Reader, kind: int, current: Any) -> Any:
    _known()
    name = r.text()
    if kind == _RECORD:
        made = _RECORDS.get(name)
        if made is None:
            msg = f"a table holds a record of an unknown class {name!r}"
            raise ValueError(msg)
        return made.load(r)  # type: ignore[attr-defined]
    cls = _BY_NAME.get(name)
    if cls is None:
        msg = f"a table holds an object of an unknown class {name!r}"
        raise ValueError(msg)
    obj = current if type(current) is cls else cls.__new__(cls)  # type: ignore[call-overload]
    load(r, obj, _TABLES[cls])
    return obj


def dump(w: Writer, obj: object, names: Iterable[str]) -> None:
    """The attributes ``names`` of ``obj`` (a part), each with its name; a column only as
    far as ``obj.extents()`` says it holds state, if it says."""
    extents = getattr(obj, "extents", None)
    held: dict[str, int] = {} if extents is None else extents()
    for name in names:
        w.text(name)
        v = getattr(obj, name)
        if name in held:
            w.count(_COLUMN)
            w.column(memoryview(v)[: held[name]])
        else:
            put(w, v)


def load(r: Reader, obj: object, names: Iterable[str]) -> None:
    """The attributes ``names`` of ``obj`` back from :func:`dump` (typed views bound again).

    Raises:
        ValueError: the record holds other attributes (another layout).
    """
    for name in names:
        found = r.text()
        if found != name:
            msg = f"table record has {found!r} where {name!r} belongs"
            raise ValueError(msg)
        setattr(obj, name, take(r, getattr(obj, name, None)))
    bind = getattr(obj, "_bind", None)
    if bind is not None:
        bind()
