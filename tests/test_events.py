"""Decoding and validation of raw stream entries (detector/core/events.py) against the contract."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from detector.core.errors import InvalidEventError
from detector.core.events import Decoder, Event, entry_id_ms, parse_time_ms
from detector.core.settings import EventFormat
from detector.runtime.metrics import REJECT_REASONS

MAX_EPOCH_MS = 253_402_300_799_999
DEFAULT = EventFormat()
# A tight format, so that generated entries hit every cap often.
TIGHT = EventFormat(
    max_entry_bytes=2048,
    max_fields=12,
    max_json_depth=4,
    max_string_len=40,
    max_name_len=12,
)


def decode(fields: dict[bytes, bytes], fmt: EventFormat | None = None) -> Event:
    return Decoder(fmt).decode("orders", "1700000000000-3", fields)


def reject(fields: dict[bytes, bytes], fmt: EventFormat | None = None) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as info:
        decode(fields, fmt)
    return info.value


def payload(obj: Any) -> dict[bytes, bytes]:
    return {b"data": json.dumps(obj).encode()}


def nested(depth: int, open_: str = '{"a":', close: str = "}") -> bytes:
    """A JSON object whose containers nest ``depth`` levels (the top object is level 1)."""
    return ('{"a":' + open_ * (depth - 1) + "1" + close * (depth - 1) + "}").encode()


# --------------------------------------------------------------------------------------------
# Producer, time, type


def test_producer_from_field() -> None:
    assert decode({b"producer": b"cart-1", b"x": b"1"}).producer == "cart-1"


def test_producer_falls_back_to_stream_name() -> None:
    e = decode({b"x": b"1"})
    assert e.producer == "orders"
    assert e.stream == "orders"
    assert e.entry_id == "1700000000000-3"


def test_empty_producer_rejected() -> None:
    assert reject({b"producer": b"", b"x": b"1"}).reason == "empty_producer"


def test_producer_longer_than_name_cap_rejected() -> None:
    err = reject({b"producer": b"p" * (DEFAULT.max_name_len + 1)})
    assert err.reason == "string_too_long"
    assert decode({b"producer": b"p" * DEFAULT.max_name_len}).producer == "p" * 256


def test_time_from_epoch_ms() -> None:
    assert decode({b"ts": b"1700000000123"}).event_time_ms == 1_700_000_000_123


def test_time_falls_back_to_entry_id_ms() -> None:
    assert decode({b"x": b"1"}).event_time_ms == 1_700_000_000_000
    assert entry_id_ms("42-7") == 42


@pytest.mark.parametrize(
    ("raw", "ms"),
    [
        (b"2023-11-14T22:13:20.123Z", 1_700_000_000_123),
        (b"2023-11-14T22:13:20+00:00", 1_700_000_000_000),
        (b"2023-11-14T23:13:20.5+01:00", 1_700_000_000_500),
        (b"2023-11-14T17:13:20-05:00", 1_700_000_000_000),
        # Without a zone the time is UTC, whatever the machine's local zone.
        (b"2023-11-14T22:13:20", 1_700_000_000_000),
        (b"2023-11-14T22:13:20.123", 1_700_000_000_123),
        (b"1970-01-01T00:00:00Z", 0),
    ],
)
def test_time_from_iso8601(raw: bytes, ms: int) -> None:
    assert decode({b"ts": raw}).event_time_ms == ms
    assert parse_time_ms(raw) == ms


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"yesterday",
        b"-1",
        b"1e400",
        b"nan",
        str(MAX_EPOCH_MS + 1).encode(),
        b"1969-12-31T23:59:59Z",
        b"2023-13-01T00:00:00",
        b"2023-11-14T22:13:20+25:00",
        b"\xff\xfe",
        b"1_700_000_000_000",
    ],
)
def test_invalid_time_rejected(raw: bytes) -> None:
    assert reject({b"ts": raw, b"x": b"1"}).reason == "invalid_time"


def test_time_bounds_are_inclusive() -> None:
    assert decode({b"ts": b"0"}).event_time_ms == 0
    assert decode({b"ts": str(MAX_EPOCH_MS).encode()}).event_time_ms == MAX_EPOCH_MS


def test_type_is_optional() -> None:
    assert decode({b"x": b"1"}).type is None
    e = decode({b"type": b"paid", b"x": b"1"})
    assert e.type == "paid"
    # Meta fields are not payload.
    assert e.strings == {}
    assert e.numbers == {"x": 1.0}


def test_meta_fields_are_not_payload() -> None:
    e = decode({b"producer": b"p", b"ts": b"5", b"type": b"t", b"data": b"{}"})
    assert (e.producer, e.event_time_ms, e.type) == ("p", 5, "t")
    assert e.numbers == {}
    assert e.strings == {}


def test_size_counts_names_and_values() -> None:
    fields = {b"producer": b"p", b"qty": b"3", b"data": b'{"a": 1}'}
    assert decode(fields).size_bytes == sum(len(k) + len(v) for k, v in fields.items())


# --------------------------------------------------------------------------------------------
# Payload: flat fields and the JSON object


@pytest.mark.parametrize(
    ("raw", "number"),
    [
        (b"3", 3.0),
        (b"-2.5", -2.5),
        (b"+3", 3.0),
        (b"1.", 1.0),
        (b".5", 0.5),
        (b"12e4", 120_000.0),
        (b"1E-3", 0.001),
        (b"007", 7.0),
        (b"1e-400", 0.0),
    ],
)
def test_flat_decimal_numbers_are_numbers(raw: bytes, number: float) -> None:
    e = decode({b"x": raw})
    assert e.numbers == {"x": number}
    assert e.strings == {}


def test_flat_negative_zero_is_a_number() -> None:
    e = decode({b"x": b"-0"})
    assert e.numbers == {"x": 0.0}
    assert math.copysign(1.0, e.numbers["x"]) == -1.0


@pytest.mark.parametrize(
    "raw",
    [b"1_000", b" 5", b"5 ", b"0x10", b"1,5", b"--1", b"1e", b"e5", b"", b"\xd9\xa3", b"12e4x"],
)
def test_flat_non_decimal_values_are_strings(raw: bytes) -> None:
    # Python's float() takes "1_000" and " 5"; the contract does not.
    e = decode({b"x": raw})
    assert e.strings == {"x": raw.decode()}
    assert e.numbers == {}


@pytest.mark.parametrize(
    "raw",
    [
        b"nan",
        b"NaN",
        b"inf",
        b"-inf",
        b"+Infinity",
        b"-Infinity",
        b"INF",
        b"1e400",
        b"-1e400",
        b"1e999",
        b"9" * 400,
        # A hex event id that reads as an overflowing decimal float (issue 13).
        b"03875656161940159e78230871415040",
    ],
)
def test_flat_non_finite_values_are_strings(raw: bytes) -> None:
    # A flat value has no type: one that is not a finite number is a category, and the event
    # is kept (it was dead-lettered as non_finite_number, losing a valid event).
    e = decode({b"producer": b"svc-04", b"event_id": raw, b"qty": b"2"})
    assert e.strings == {"event_id": raw.decode()}
    assert e.numbers == {"qty": 2.0}


def test_flat_finite_lookalike_stays_a_number() -> None:
    # Only values beyond a double become strings: a hex id that happens to read as a finite
    # decimal number is still a number (flat fields carry no type to tell otherwise).
    assert decode({b"x": b"1234e56"}).numbers == {"x": 1.234e59}
    assert decode({b"x": b"1e-999"}).numbers == {"x": 0.0}


def test_flat_booleans_are_strings() -> None:
    assert decode({b"ok": b"true"}).strings == {"ok": "true"}


def test_json_payload_is_flattened_with_dotted_names() -> None:
    e = decode(
        {
            b"qty": b"3",
            b"data": b'{"sku": "A1", "price": {"eur": 9.5, "tax": {"rate": 20}}, "n": -0.0}',
        }
    )
    assert e.numbers == {"qty": 3.0, "price.eur": 9.5, "price.tax.rate": 20.0, "n": 0.0}
    assert e.strings == {"sku": "A1"}
    assert all(type(v) is float for v in e.numbers.values())


def test_json_keeps_json_types() -> None:
    # A JSON string stays a string even when it reads as a number; a JSON number is a number.
    e = decode(payload({"s": "12e4", "n": 12e4, "i": 7, "neg": "-0", "nan": "nan"}))
    assert e.strings == {"s": "12e4", "neg": "-0", "nan": "nan"}
    assert e.numbers == {"n": 120_000.0, "i": 7.0}


def test_json_booleans_and_nulls_are_categories() -> None:
    e = decode(payload({"t": True, "f": False, "z": None}))
    assert e.strings == {"t": "true", "f": "false", "z": "null"}
    assert e.numbers == {}


def test_json_arrays_are_kept_as_their_length() -> None:
    e = decode(payload({"items": [1, 2, 3], "empty": [], "o": {"tags": ["a", {"b": 1}]}}))
    assert e.numbers == {"items[]": 3.0, "empty[]": 0.0, "o.tags[]": 2.0}
    assert e.strings == {}


def test_json_large_integers_become_floats() -> None:
    e = decode({b"data": b'{"big": 18446744073709551616, "neg": -9223372036854775809}'})
    assert e.numbers == {"big": 2.0**64, "neg": -(2.0**63)}


def test_empty_json_object_gives_no_leaves() -> None:
    e = decode({b"data": b"{}", b"x": b"a"})
    assert e.numbers == {}
    assert e.strings == {"x": "a"}


# --------------------------------------------------------------------------------------------
# Custom field names


def test_custom_field_names() -> None:
    fmt = EventFormat(
        producer_field="src", time_field="when", type_field="kind", payload_field="body"
    )
    e = decode(
        {
            b"src": b"sensor-9",
            b"when": b"2023-11-14T22:13:20Z",
            b"kind": b"reading",
            b"body": b'{"temp": {"c": 21.5}}',
            # The default names are ordinary payload under this format.
            b"producer": b"nobody",
            b"ts": b"5",
            b"data": b'{"a": 1}',
        },
        fmt,
    )
    assert e.producer == "sensor-9"
    assert e.event_time_ms == 1_700_000_000_000
    assert e.type == "reading"
    assert e.numbers == {"temp.c": 21.5, "ts": 5.0}
    assert e.strings == {"producer": "nobody", "data": '{"a": 1}'}


def test_custom_producer_field_falls_back_to_stream() -> None:
    fmt = EventFormat(producer_field="src")
    e = decode({b"producer": b"p"}, fmt)
    assert e.producer == "orders"
    assert e.strings == {"producer": "p"}


def test_custom_caps_apply() -> None:
    fmt = EventFormat(max_string_len=3, max_fields=2)
    assert decode({b"a": b"abc", b"b": b"1"}, fmt).strings == {"a": "abc"}
    assert reject({b"a": b"abcd"}, fmt).reason == "string_too_long"
    assert reject({b"a": b"1", b"b": b"2", b"c": b"3"}, fmt).reason == "too_many_fields"


# --------------------------------------------------------------------------------------------
# Every reject reason


def test_empty_entry_rejected() -> None:
    assert reject({}).reason == "empty_entry"


def test_too_many_entry_fields_rejected() -> None:
    fields = {f"f{i}".encode(): b"1" for i in range(DEFAULT.max_fields + 1)}
    assert reject(fields).reason == "too_many_fields"
    del fields[b"f0"]
    assert len(decode(fields).numbers) == DEFAULT.max_fields


def test_too_many_json_leaves_rejected() -> None:
    obj = {f"k{i}": i for i in range(DEFAULT.max_fields + 1)}
    assert reject(payload(obj)).reason == "too_many_fields"
    assert reject(payload({"o": obj})).reason == "too_many_fields"


def test_flat_and_json_leaves_count_together() -> None:
    half = DEFAULT.max_fields // 2
    flat = {f"f{i}".encode(): b"1" for i in range(half)}
    ok = {**flat, **payload({f"j{i}": i for i in range(DEFAULT.max_fields - half)})}
    assert len(decode(ok).numbers) == DEFAULT.max_fields
    over = {**flat, **payload({f"j{i}": i for i in range(DEFAULT.max_fields - half + 1)})}
    assert reject(over).reason == "too_many_fields"


def test_entry_too_large_rejected() -> None:
    limit = DEFAULT.max_entry_bytes
    assert reject({b"x": b"a" * limit}).reason == "entry_too_large"
    # Exactly at the cap is fine as far as size goes (the value then breaks the string cap).
    fmt = EventFormat(max_entry_bytes=10)
    assert decode({b"x": b"a" * 9}, fmt).size_bytes == 10
    assert reject({b"x": b"a" * 10}, fmt).reason == "entry_too_large"


@pytest.mark.parametrize(
    "fields",
    [
        {b"x": b"\xff"},
        {b"\xfe\xff": b"1"},
        {b"producer": b"\xc3"},
        {b"type": b"\x80abc"},
        {b"x": b"\xed\xa0\x80"},  # an encoded surrogate is not UTF-8
    ],
)
def test_invalid_utf8_rejected(fields: dict[bytes, bytes]) -> None:
    assert reject(fields).reason == "invalid_utf8"


@pytest.mark.parametrize(
    "fields",
    [
        {b"x": b"a" * (DEFAULT.max_string_len + 1)},
        {b"k" * (DEFAULT.max_name_len + 1): b"1"},
        {b"type": b"t" * (DEFAULT.max_string_len + 1)},
        payload({"s": "a" * (DEFAULT.max_string_len + 1)}),
        payload({"k" * (DEFAULT.max_name_len + 1): 1}),
        payload({"o": {"k" * (DEFAULT.max_name_len + 1): 1}}),
        payload({"arr": ["a" * (DEFAULT.max_string_len + 1)]}),
        payload({"arr": [{"s": "a" * (DEFAULT.max_string_len + 1)}]}),
    ],
)
def test_string_too_long_rejected(fields: dict[bytes, bytes]) -> None:
    assert reject(fields).reason == "string_too_long"


def test_string_cap_counts_characters_not_bytes() -> None:
    fmt = EventFormat(max_string_len=3)
    assert decode({b"x": "äöü".encode()}, fmt).strings == {"x": "äöü"}
    assert reject({b"x": "äöüß".encode()}, fmt).reason == "string_too_long"


@pytest.mark.parametrize(
    "raw",
    [b"{", b"{'a': 1}", b'{"a": NaN}', b'{"a": Infinity}', b"", b"\xff", b'{"a": "\xff"}'],
)
def test_invalid_json_rejected(raw: bytes) -> None:
    assert reject({b"data": raw}).reason == "invalid_json"


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"x"', b"3", b"null", b"true"])
def test_payload_not_object_rejected(raw: bytes) -> None:
    assert reject({b"data": raw}).reason == "payload_not_object"


def test_json_depth_cap_objects() -> None:
    depth = DEFAULT.max_json_depth
    ok = decode({b"data": nested(depth)})
    assert ok.numbers == {"a." * (depth - 1) + "a": 1.0}
    assert reject({b"data": nested(depth + 1)}).reason == "json_too_deep"


def test_json_depth_cap_counts_arrays() -> None:
    depth = DEFAULT.max_json_depth
    assert decode({b"data": nested(depth, "[", "]")}).numbers == {"a[]": 1.0}
    assert reject({b"data": nested(depth + 1, "[", "]")}).reason == "json_too_deep"
    # Objects inside arrays count too.
    assert reject({b"data": nested(depth + 1, '[{"a":', "}]")}).reason == "json_too_deep"


def test_very_deep_json_is_rejected_not_crashing() -> None:
    assert reject({b"data": nested(5000)}).reason in {"json_too_deep", "invalid_json"}


def test_json_non_finite_numbers_rejected() -> None:
    # JSON is typed: a number literal beyond a double is a number the producer meant, not a
    # category, so the entry is rejected with its own reason; NaN and Infinity are not JSON.
    for raw in (b'{"a": 1e400}', b'{"a": -1e400}', b'{"a": ' + b"9" * 400 + b"}"):
        err = reject({b"data": raw})
        assert err.reason == "non_finite_number"
        assert "infinity" in err.detail
    for raw in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}'):
        assert reject({b"data": raw}).reason == "invalid_json"
    # As JSON strings they are ordinary categories.
    e = decode({b"data": b'{"a": "1e400", "b": "NaN"}'})
    assert e.strings == {"a": "1e400", "b": "NaN"}


def test_json_lone_surrogate_rejected() -> None:
    assert reject({b"data": b'{"a": "\\ud800"}'}).reason == "invalid_json"
    # A proper surrogate pair is a valid character.
    assert decode({b"data": b'{"a": "\\ud83d\\ude00"}'}).strings == {"a": "\U0001f600"}


# --------------------------------------------------------------------------------------------
# Property: hostile input either decodes within the caps or raises InvalidEventError


def assert_within_caps(e: Event, fields: dict[bytes, bytes], fmt: EventFormat) -> None:
    assert isinstance(e, Event)
    assert e.size_bytes == sum(len(k) + len(v) for k, v in fields.items())
    assert e.size_bytes <= fmt.max_entry_bytes
    assert 0 < len(e.producer) <= max(fmt.max_name_len, len("orders"))
    assert 0 <= e.event_time_ms <= MAX_EPOCH_MS
    assert e.type is None or len(e.type) <= fmt.max_string_len
    assert len(e.numbers) + len(e.strings) <= fmt.max_fields
    for name, x in e.numbers.items():
        assert isinstance(name, str)
        assert type(x) is float
        assert math.isfinite(x)
    for name, s in e.strings.items():
        assert isinstance(name, str)
        assert isinstance(s, str)
        assert len(s) <= fmt.max_string_len
    # Everything downstream encodes names and values (schema keys, alerts): no surrogates.
    for text in (e.producer, e.type or "", *e.numbers, *e.strings, *e.strings.values()):
        text.encode()


def check(fields: dict[bytes, bytes], fmt: EventFormat) -> None:
    try:
        e = Decoder(fmt).decode("orders", "1700000000000-0", fields)
    except InvalidEventError as exc:
        event(exc.reason)
        # Decoding rejects: every metric reason but those the worker adds itself.
        assert exc.reason in set(REJECT_REASONS) - {"poison", "error"}
    else:
        event("decoded")
        assert_within_caps(e, fields, fmt)


META_KEYS = st.sampled_from([b"producer", b"ts", b"type", b"data"])
KEYS = st.one_of(
    META_KEYS,
    st.binary(max_size=16),
    st.text(max_size=16).map(str.encode),
    st.integers(0, 300).map(lambda n: b"k" * n),
)
NUMBERISH = st.from_regex(r"\A[ +-]?(\d{0,5}[._]?\d{0,5})([eE][+-]?\d{1,4})?\Z").map(str.encode)
VALUES = st.one_of(
    st.binary(max_size=32),
    st.text(max_size=32).map(str.encode),
    NUMBERISH,
    st.sampled_from([b"nan", b"-inf", b"Infinity", b"1e400", b"-0", b"12e4", b"1_000", b" 5"]),
    st.integers(0, 70_000).map(lambda n: b"7" * n),
    st.integers(0, 70_000).map(lambda n: b"a" * n),
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat().encode()),
    st.integers(-(10**20), 10**20).map(lambda n: str(n).encode()),
)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    fields=st.dictionaries(KEYS, VALUES, max_size=12),
    many=st.integers(0, 300),
    fmt=st.sampled_from([DEFAULT, TIGHT]),
)
def test_hostile_entries_decode_or_reject(
    fields: dict[bytes, bytes], many: int, fmt: EventFormat
) -> None:
    wide = {f"w{i}".encode(): str(i).encode() for i in range(many)}
    check({**wide, **fields}, fmt)
    check(fields, fmt)


@settings(max_examples=300, deadline=None)
@given(raw=VALUES)
def test_flat_value_is_its_finite_number_or_its_text(raw: bytes) -> None:
    # A flat value never costs the event unless it breaks a text rule (UTF-8, length).
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        assert reject({b"x": raw}).reason == "invalid_utf8"
        return
    if len(text) > DEFAULT.max_string_len:
        if len(raw) + 1 <= DEFAULT.max_entry_bytes:
            assert reject({b"x": raw}).reason == "string_too_long"
        return
    e = decode({b"x": raw})
    decimal = re.fullmatch(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", text)
    if decimal and math.isfinite(float(text)):
        assert e.numbers == {"x": float(text)}
        assert e.strings == {}
    else:
        assert e.strings == {"x": text}
        assert e.numbers == {}


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([10**400, -(10**400), 2**64, -(2**63) - 1, 2**1100]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.sampled_from(["12e4", "nan", "-0", "a" * 50]),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=14), children, max_size=5),
        ),
        max_leaves=40,
    )


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    obj=json_values(),
    ascii_only=st.booleans(),
    extra=st.dictionaries(st.sampled_from([b"x", b"producer", b"ts"]), VALUES, max_size=2),
    fmt=st.sampled_from([DEFAULT, TIGHT]),
)
def test_hostile_json_payloads_decode_or_reject(
    obj: Any, ascii_only: bool, extra: dict[bytes, bytes], fmt: EventFormat
) -> None:
    # Python's json writes huge ints as digits and non-finite floats as NaN/Infinity.
    text = json.dumps(obj, ensure_ascii=ascii_only).encode()
    check({**extra, b"data": text}, fmt)
    check({b"data": json.dumps({"wrap": obj}).encode()}, fmt)


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(1, 1500), kind=st.sampled_from(["obj", "arr", "mixed"]))
def test_deep_nesting_decodes_or_rejects(depth: int, kind: str) -> None:
    open_, close = {"obj": ('{"a":', "}"), "arr": ("[", "]"), "mixed": ('[{"a":', "}]")}[kind]
    fields = {b"data": nested(depth, open_, close)}
    for fmt in (DEFAULT, TIGHT):
        check(fields, fmt)


@settings(max_examples=150, deadline=None)
@given(raw=st.one_of(st.binary(max_size=40), VALUES))
def test_parse_time_ms_returns_in_range_or_rejects(raw: bytes) -> None:
    try:
        ms = parse_time_ms(raw)
    except InvalidEventError as exc:
        assert exc.reason == "invalid_time"
    else:
        assert isinstance(ms, int)
        assert 0 <= ms <= MAX_EPOCH_MS


@settings(max_examples=100, deadline=None)
@given(
    when=st.datetimes(
        min_value=datetime(1971, 1, 1),  # noqa: DTZ001 (hypothesis wants naive bounds)
        max_value=datetime(9998, 1, 1),  # noqa: DTZ001
        timezones=st.timezones(),
    )
)
def test_iso8601_round_trip(when: datetime) -> None:
    when = when.replace(microsecond=when.microsecond // 1000 * 1000)
    expected = round(when.timestamp() * 1000)
    assert parse_time_ms(when.isoformat(timespec="milliseconds").encode()) == expected
    naive = when.astimezone(UTC).replace(tzinfo=None)
    assert parse_time_ms(naive.isoformat(timespec="milliseconds").encode()) == expected
