"""Events: decode and validate raw stream entries.

An entry arrives as ``{bytes: bytes}``. Decoding applies the contract in the README: producer
from a field (falling back to the stream name), event time from a field (epoch ms or ISO-8601,
falling back to the entry id), an optional type, and a payload made of the flat fields plus one
JSON object field flattened with dotted names. A flat value is a number only when it reads as a
finite decimal number; anything else ("NaN", "inf", "1e999", a hex id such as "0387e7823") is a
string, never a reason to lose the event. Anything that breaks a cap, unparsable JSON, or a JSON
number literal outside the range of a double raises :class:`InvalidEventError`; the worker
dead-letters it.

Examples:
    >>> d = Decoder()
    >>> e = d.decode("orders", "1700000000000-0", {b"producer": b"cart-1", b"qty": b"3",
    ...     b"data": b'{"sku": "12e4", "price": {"eur": 9.5}}'})
    >>> e.producer, e.event_time_ms, e.numbers, e.strings
    ('cart-1', 1700000000000, {'qty': 3.0, 'price.eur': 9.5}, {'sku': '12e4'})
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from detector.core.errors import InvalidEventError
from detector.core.settings import EventFormat

# Strict decimal number syntax for flat fields: Python's float() also takes "1_000", " 5",
# "nan" and "infinity", none of which a producer should get away with as a number.
_NUMBER = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# orjson's message for a number literal that overflows a double ("1e999").
_JSON_OVERFLOW = "number is infinity"
_MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_EPOCH_DIGITS = len(str(_MAX_EPOCH_MS))


@dataclass  # with slots, below (Cython's dataclass takes no `slots` argument)
class Event:
    """A validated event (treat as immutable: not frozen only because a frozen dataclass's
    ``__init__`` costs a microsecond per event, a tenth of decoding). Compiled, an extension
    type (events.pxd): compiled code typed on it reads its fields as C members.

    Attributes:
        stream: source stream name.
        entry_id: source entry id (``<ms>-<seq>``).
        producer: producer id.
        event_time_ms: event time in epoch milliseconds.
        type: event type, if the entry has one.
        numbers: numeric payload leaves by dotted name.
        strings: other payload leaves (strings, booleans, nulls) by dotted name.
        size_bytes: bytes of field names and values in the raw entry.
    """

    __slots__ = (
        "entry_id", "event_time_ms", "numbers", "producer", "size_bytes", "stream", "strings",
        "type",
    )  # fmt: skip

    stream: str
    entry_id: str
    producer: str
    event_time_ms: int
    type: str | None
    numbers: dict[str, float]
    strings: dict[str, str]
    size_bytes: int


def entry_id_ms(entry_id: str) -> int:
    """Milliseconds part of a stream entry id.

    >>> entry_id_ms("1700000000123-7")
    1700000000123
    """
    ms, _, _ = entry_id.partition("-")
    return int(ms)


class Decoder:
    """Turns raw entries into :class:`Event` under one :class:`EventFormat`."""

    __slots__ = (
        "_fmt", "_max_bytes", "_max_depth", "_max_fields", "_max_name", "_max_string",
        "_payload", "_producer", "_time", "_type",
    )  # fmt: skip

    def __init__(self, fmt: EventFormat | None = None) -> None:
        self._fmt = fmt = fmt or EventFormat()
        self._producer = fmt.producer_field.encode()
        self._time = fmt.time_field.encode()
        self._type = fmt.type_field.encode()
        self._payload = fmt.payload_field.encode()
        # The caps as plain attributes: compiled (events.pxd), C integers read per leaf.
        self._max_bytes = fmt.max_entry_bytes
        self._max_fields = fmt.max_fields
        self._max_depth = fmt.max_json_depth
        self._max_name = fmt.max_name_len
        self._max_string = fmt.max_string_len

    def decode(self, stream: str, entry_id: str, fields: dict[bytes, bytes]) -> Event:
        """Validate one entry.

        Raises:
            InvalidEventError: the entry breaks the contract or a cap; ``reason`` says how.
        """
        size = self.check_shape(fields)

        numbers: dict[str, float] = {}
        strings: dict[str, str] = {}
        producer = stream
        event_time_ms = -1
        etype: str | None = None
        for raw_key, raw_value in fields.items():
            # The format's own field names are valid text: only other names need decoding.
            if raw_key == self._producer:
                producer = self.check_producer(raw_value)
            elif raw_key == self._time:
                event_time_ms = parse_time_ms(raw_value)
            elif raw_key == self._type:
                etype = _text(raw_value, self._fmt.type_field, self._max_string)
            elif raw_key == self._payload:
                self._flatten_json(raw_value, numbers, strings)
            else:
                key = _text(raw_key, "field name", self._max_name)
                self._flat(key, raw_value, numbers, strings)
        if len(numbers) + len(strings) > self._max_fields:
            raise InvalidEventError("too_many_fields", f"payload leaves > {self._max_fields}")
        if event_time_ms < 0:
            event_time_ms = entry_id_ms(entry_id)
        return Event(stream, entry_id, producer, event_time_ms, etype, numbers, strings, size)

    def check_producer(self, raw: bytes) -> str:
        """The producer field's value as text.

        Raises:
            InvalidEventError: ``empty_producer``, ``invalid_utf8`` or ``string_too_long``.
        """
        producer = _text(raw, "producer", self._max_name)
        if not producer:
            raise InvalidEventError("empty_producer", self._fmt.producer_field)
        return producer

    def check_shape(self, fields: dict[bytes, bytes]) -> int:
        """Reject empty, too wide or too large entries before parsing; returns the size."""
        if not fields:
            raise InvalidEventError("empty_entry", "no fields (deleted or trimmed entry)")
        if len(fields) > self._max_fields:
            raise InvalidEventError("too_many_fields", f"{len(fields)} > {self._max_fields}")
        size = 0
        for k, v in fields.items():
            size += len(k) + len(v)
        if size > self._max_bytes:
            raise InvalidEventError("entry_too_large", f"{size} bytes > {self._max_bytes}")
        return size

    def _flat(
        self, key: str, raw: bytes, numbers: dict[str, float], strings: dict[str, str]
    ) -> None:
        """A flat field: a number if it reads as a finite decimal number, else a string.

        Flat values carry no type: "NaN", "inf" or an overflow such as a hex id
        "03875656161940159e78230871415040" only look like numbers, so they are categories.
        """
        if _NUMBER.fullmatch(raw):
            number = float(raw)
            if math.isfinite(number):
                numbers[key] = number
                return
        strings[key] = _text(raw, key, self._max_string)

    def _flatten_json(self, raw: bytes, numbers: dict[str, float], strings: dict[str, str]) -> None:
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # JSON is typed: a number literal is a number the producer meant, so one beyond a
            # double (1e999) is rejected, not turned into a category. NaN and Infinity are not
            # JSON at all (invalid_json).
            message = str(exc)[:200]
            if _JSON_OVERFLOW in message:
                raise InvalidEventError("non_finite_number", message) from None
            raise InvalidEventError("invalid_json", message) from None
        if not isinstance(payload, dict):
            raise InvalidEventError("payload_not_object", type(payload).__name__)
        self._walk(payload, "", 1, numbers, strings)

    def _walk(
        self,
        node: dict[str, Any],
        prefix: str,
        depth: int,
        numbers: dict[str, float],
        strings: dict[str, str],
    ) -> None:
        if depth > self._max_depth:
            raise InvalidEventError("json_too_deep", f"depth > {self._max_depth}")
        max_name, max_string = self._max_name, self._max_string
        # orjson yields exact types only, so `type(v) is` dispatch is safe and fast.
        for key, value in node.items():
            if len(key) > max_name:
                raise InvalidEventError("string_too_long", f"field name: {len(key)}")
            name = prefix + key
            kind = type(value)
            if kind is str:
                if len(value) > max_string:
                    raise InvalidEventError("string_too_long", f"{name}: {len(value)}")
                strings[name] = value
            elif kind is float:
                # bool is checked apart below: true/false are categories here, not 1/0.
                if not math.isfinite(value):
                    raise InvalidEventError("non_finite_number", name)
                numbers[name] = value
            elif kind is int:
                numbers[name] = float(value)
            else:
                self._rare(name, value, depth, numbers, strings)
        # Checked per object, not per leaf: the entry size cap already bounds the work.
        if len(numbers) + len(strings) > self._max_fields:
            raise InvalidEventError("too_many_fields", f"payload leaves > {self._max_fields}")

    def _rare(
        self, name: str, value: Any, depth: int, numbers: dict[str, float], strings: dict[str, str]
    ) -> None:
        """Booleans, nulls, objects and arrays (the common leaves stay inline in `_walk`)."""
        if value is True or value is False:
            strings[name] = "true" if value else "false"
        elif type(value) is dict:
            self._walk(value, name + ".", depth + 1, numbers, strings)
        elif type(value) is list:
            # Arrays are kept as their length; their content is still checked for caps.
            self._check_array(value, name, depth + 1)
            numbers[name + "[]"] = float(len(value))
        else:
            strings[name] = "null"

    def _check_array(self, items: list[Any], name: str, depth: int) -> None:
        if depth > self._max_depth:
            raise InvalidEventError("json_too_deep", f"depth > {self._max_depth}")
        for item in items:
            if isinstance(item, dict):
                self._walk(item, name + "[].", depth + 1, {}, {})
            elif isinstance(item, list):
                self._check_array(item, name, depth + 1)
            elif isinstance(item, str) and len(item) > self._max_string:
                raise InvalidEventError("string_too_long", f"{name}[]: {len(item)}")


def _text(raw: bytes, what: str, limit: int) -> str:
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise InvalidEventError("invalid_utf8", what) from None
    if len(text) > limit:
        raise InvalidEventError("string_too_long", f"{what}: {len(text)} > {limit}")
    return text


def parse_time_ms(raw: bytes) -> int:
    """Event time from epoch milliseconds or ISO-8601 (naive means UTC).

    >>> parse_time_ms(b"1700000000123"), parse_time_ms(b"2023-11-14T22:13:20.123Z")
    (1700000000123, 1700000000123)
    """
    if 0 < len(raw) <= _EPOCH_DIGITS and raw.isdigit():
        # The common case, plain epoch ms: the same value as the float path below, since
        # every integer up to _MAX_EPOCH_MS is exact in a double.
        ms = int(raw)
        if ms > _MAX_EPOCH_MS:
            raise InvalidEventError("invalid_time", raw[:64].decode(errors="replace"))
        return ms
    if _NUMBER.fullmatch(raw):
        value = float(raw)
        if not 0 <= value <= _MAX_EPOCH_MS:
            raise InvalidEventError("invalid_time", raw[:64].decode(errors="replace"))
        return int(value)
    try:
        parsed = datetime.fromisoformat(raw.decode())
    except (UnicodeDecodeError, ValueError):
        raise InvalidEventError("invalid_time", raw[:64].decode(errors="replace")) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    ms = round(parsed.timestamp() * 1000)
    if not 0 <= ms <= _MAX_EPOCH_MS:
        raise InvalidEventError("invalid_time", raw[:64].decode(errors="replace"))
    return ms
