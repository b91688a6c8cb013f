"""A seeded synthetic event stream from a fictional shop, with labelled incidents.

Five services (``cart``, ``payment``, ``inventory``, ``shipping``, ``auth``) run a few instances
each; every instance is one producer (``cart-1``, ``payment-2``...). Each service has its own
event types, type mix, per-instance rate and daily rate curve (quiet at night, busy in the
afternoon, hours in UTC), with a little minute-to-minute jitter on top. Arrivals are a Poisson
process in event time. Payloads are compact JSON objects with a stable schema per type: a unique
``event_id``, high-cardinality ids (``order_id``, ``user_id``, ``sku``...), numbers (log-normal
amounts and latencies, small quantities) and categoricals from small vocabularies.

Each event is the field map of one Redis stream entry, and the events of all producers come
merged in event-time order (ties: producer order, then emission order)::

    {"producer": "payment-2", "ts": "1767229200123", "type": "payment.authorized",
     "data": '{"event_id":"...","order_id":"o3fa0...","amount":61.2,"currency":"EUR",...}'}

Incidents are placed after a clean warm-up, on producers picked by the seeded RNG, never two at
once (or closer than ten minutes) on one producer; see :data:`INCIDENT_KINDS`. The same
arguments give the same events byte for byte: every producer and every incident draws from its
own ``random.Random`` seeded from ``seed`` and its name, so an incident only changes the events
of its own producer.

Examples:
    >>> shop = generate(duration_s=2 * 3600, warmup_s=1800, rate_scale=0.2)
    >>> sorted(i.kind for i in shop.incidents) == sorted(DEMO_KINDS)
    True
    >>> sorted(shop.events[0])
    ['data', 'producer', 'ts', 'type']
"""

from __future__ import annotations

import gc
import itertools
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple, TypeAlias, TypeVar

import orjson

__all__ = [
    "DEFAULT_GRACE_MS",
    "DEFAULT_INSTANCES",
    "DEMO_KINDS",
    "INCIDENT_KINDS",
    "SERVICES",
    "Incident",
    "ShopStream",
    "generate",
    "incident_for",
    "iter_events",
]

INCIDENT_KINDS: tuple[str, ...] = (
    "flood",
    "value_outlier",
    "foreign_type",
    "schema_drift",
    "oversized_payload",
    "new_categorical_value",
    "replayed_ids",
    "new_producer",
    "off_hours_burst",
    "silence",
    "slow_poisoning",
    "new_type",
    "new_type_shape",
    "stream_pause",
    "release",
    "correlation_break",
    "group_departure",
    "group_rate_departure",
)
"""Every incident kind :func:`generate` can inject.

- ``flood``: the producer's rate jumps x20-x50 for one to two minutes (normal-looking events).
- ``value_outlier``: a few events carry a numeric field far outside its range (amount x100...).
- ``foreign_type``: the producer emits a few events of another service's types.
- ``schema_drift``: for 5-15 minutes payload keys change (camelCased, or one field dropped and
  new ones added).
- ``oversized_payload``: a few entries of 20-58 KB (debug dumps or ~150 extra attributes).
- ``new_categorical_value``: a few events carry a never-seen category (currency ``XMR``...).
- ``replayed_ids``: a burst of 8-25 events re-sent verbatim, ``event_id`` included, from 5-30
  minutes earlier (fewer if the producer sent fewer in that window: only at tiny rates).
- ``new_producer``: a never-seen instance (``payment-9``) emits for 5-15 minutes.
- ``off_hours_burst``: 10-20 minutes of daytime-peak traffic (x1.5-x2.5 the peak rate) in the
  dead of night.
- ``silence``: no event at all from the producer for 10-30 minutes.
- ``slow_poisoning``: ``latency_ms`` creeps up by about 1%/minute for two to three hours (x4-x8
  at the end), then recovers.
- ``new_type``: one event of a type the producer (and its service) never sent, carrying the
  fields of one of its usual types (``cart.price_overridden``...).
- ``new_type_shape``: one event of a type no producer ever sent, with fields never seen either
  (``admin.drop_table`` with ``table``, ``database``, ``actor``, ``rows_affected``...).
- ``stream_pause``: *not* an incident of any producer: every producer stops for two to five
  minutes (a deploy, a network cut), then resumes as before. Its producer is ``""``, like the
  detector's own alerts: the stream going quiet is news, but no producer did anything.
- ``release``: every instance of one service starts sending a type none sent before (a new
  release rolled out: ``cart.saved_for_later`` with the fields of a usual type), each within
  five minutes of the first, a few per minute for 20-40 minutes. Its producer is the group,
  ``cart-*``: one alert on any of its instances catches it, and it must page once (every
  further alert on the group inside it is false).
- ``correlation_break``: for 10-30 minutes a cart's checkout ``total`` stops following its
  ``items`` (the total of another, independent item count): each field keeps its usual
  distribution, only their relation breaks (a pricing bug, a tampered basket).
- ``group_departure``: one instance of a service with at least three (its peers)
  has its ``latency_ms`` creep up for 11-14 hours, to x1.4-x1.6 at the end, then recover:
  so slowly that its own 4-hour drift reference lags it by less than the drift CUSUM's
  slack (half an sd), but its level ends well away from its peers', which stay put.
- ``group_rate_departure``: one instance of a service with at least three has its event rate
  creep, a little more each minute for 3-5 hours, to x3-x4 or to a third to a quarter of
  its own (up or down by a coin), then recover: slow enough that its rate reference
  follows, while its peers keep their rate (a producer losing or taking over traffic, or
  emitting for something else).
"""

DEMO_KINDS: tuple[str, ...] = (
    "flood",
    "value_outlier",
    "foreign_type",
    "schema_drift",
    "oversized_payload",
    "new_categorical_value",
)
"""The kinds a detector can see from single events or a short window: the live demo's set."""

DEFAULT_INSTANCES: Mapping[str, int] = {
    "cart": 4,
    "payment": 3,
    "inventory": 2,
    "shipping": 2,
    "auth": 3,
}
"""Instances (producers) per service."""

JsonScalar: TypeAlias = str | int | float
Payload: TypeAlias = dict[str, JsonScalar]
Fields: TypeAlias = dict[str, str]
Builder: TypeAlias = Callable[[random.Random, str], Payload]
Mutator: TypeAlias = Callable[[int, str, Payload], Payload]
Hook: TypeAlias = Callable[[int, Fields], None]
Maker: TypeAlias = Callable[[], "Fields | None"]
_T = TypeVar("_T")

_MINUTE_MS = 60_000
_HOUR_MS = 3_600_000
_CHUNK_MS = 5 * _MINUTE_MS  # a multiple of the minute grid, so no segment straddles chunks
_SAME_PRODUCER_GAP_MS = 10 * _MINUTE_MS
DEFAULT_GRACE_MS = 60_000
"""How long after an incident's end an alert on its producer still belongs to it."""
_MAX_ENTRY_BYTES = 60_000  # below the decoder's 64 KiB cap
_MAX_STRING_LEN = 15_000  # below the decoder's 16 Ki character cap per string
_TAU = 2.0 * math.pi
_M64 = (1 << 64) - 1
_EID_MUL = 0x9E3779B97F4A7C15  # odd, so seq -> id is a bijection: ids never repeat
_USERS = 2_000_000
_SKUS = 20_000


@dataclass(frozen=True, slots=True)
class Incident:
    """One labelled anomaly.

    Attributes:
        kind: one of :data:`INCIDENT_KINDS`.
        producer: the producer it happens on (for ``new_producer``, the new one).
        start_ms: first anomalous event time (epoch ms); for rate incidents, the period start.
        end_ms: inclusive end of the anomalous period (event time, epoch ms).
        detail: human-readable description, e.g. ``"amount ~30000 (x500 typical) ..."``.
    """

    kind: str
    producer: str
    start_ms: int
    end_ms: int
    detail: str


@dataclass(frozen=True, slots=True)
class ShopStream:
    """A generated stream.

    Attributes:
        events: entries' field maps in append order (sorted by ``ts``).
        incidents: the injected incidents, sorted by start.
    """

    events: list[dict[str, str]]
    incidents: list[Incident]


# --------------------------------------------------------------------------------------------
# Random values
# --------------------------------------------------------------------------------------------


def _table(weights: Mapping[_T, float]) -> tuple[_T, ...]:
    """A 256-entry lookup table (index with ``getrandbits(8)``) approximating the weights."""
    total = sum(weights.values())
    raw = {k: 256.0 * w / total for k, w in weights.items()}
    counts = {k: max(1, int(v)) for k, v in raw.items()}
    by_remainder = sorted(raw, key=lambda k: raw[k] - int(raw[k]), reverse=True)
    i = 0
    while sum(counts.values()) < 256:
        counts[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(counts.values()) > 256:
        biggest = max(counts, key=lambda k: counts[k])
        counts[biggest] -= 1
    return tuple(k for k, n in counts.items() for _ in range(n))


def _std_normal(r: random.Random) -> float:
    """Box-Muller on ``r.random()``, whose stream Python keeps stable across versions."""
    return math.sqrt(-2.0 * math.log(1.0 - r.random())) * math.cos(_TAU * r.random())


def _lognormal(r: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(sigma * _std_normal(r))


def _user_id(r: random.Random) -> str:
    idx = int(_USERS * r.random() ** 2)  # a few heavy users, a long tail
    return f"u{((idx * 0x9E3779B1) & 0xFFFFFFFFFF) ^ 0x5BD1E995:010x}"


def _sku(r: random.Random) -> str:
    idx = int(_SKUS * r.random() ** 3)  # popular products dominate
    return f"sku-{(idx * 0x2545F491) & 0xFFFFFF:06x}"


def _order_id(r: random.Random) -> str:
    return f"o{r.getrandbits(48):012x}"


def _cart_id(r: random.Random) -> str:
    return f"c{r.getrandbits(40):010x}"


def _tracking_id(r: random.Random) -> str:
    return f"t{r.getrandbits(56):014x}"


_CURRENCY = _table({"EUR": 0.55, "USD": 0.2, "GBP": 0.12, "PLN": 0.08, "SEK": 0.05})
_REGION = _table(
    {"eu-west": 0.35, "eu-central": 0.3, "us-east": 0.2, "us-west": 0.1, "ap-south": 0.05}
)
_QTY = _table({1: 0.55, 2: 0.22, 3: 0.1, 4: 0.06, 5: 0.04, 6: 0.02, 8: 0.01})
_ITEMS = _table({1: 0.3, 2: 0.24, 3: 0.16, 4: 0.1, 5: 0.07, 6: 0.05, 7: 0.03, 8: 0.02, 10: 0.02,
                 12: 0.01})  # fmt: skip
_PAY_METHOD = _table(
    {"card": 0.6, "paypal": 0.18, "apple_pay": 0.1, "google_pay": 0.07, "bank_transfer": 0.05}
)
_DECLINE = _table(
    {"insufficient_funds": 0.45, "do_not_honor": 0.25, "card_expired": 0.15,
     "fraud_suspected": 0.15}
)  # fmt: skip
_WAREHOUSE = _table({"ams-1": 0.4, "fra-2": 0.35, "waw-1": 0.25})
_RELEASE = _table({"cart_expired": 0.6, "payment_failed": 0.25, "order_cancelled": 0.15})
_SUPPLIER = _table({"acme": 0.4, "globex": 0.3, "initech": 0.2, "umbrella": 0.1})
_CARRIER = _table({"dhl": 0.35, "ups": 0.2, "postnl": 0.2, "dpd": 0.15, "fedex": 0.1})
_SERVICE_LEVEL = _table({"standard": 0.7, "express": 0.2, "economy": 0.1})
_DELIVERY = _table({"delivered": 0.75, "left_at_door": 0.15, "pickup_point": 0.1})
_AUTH_METHOD = _table({"password": 0.55, "sso": 0.25, "passkey": 0.15, "magic_link": 0.05})
_CLIENT = _table({"web": 0.5, "ios": 0.28, "android": 0.22})
_LOGIN_FAIL = _table({"bad_password": 0.7, "unknown_user": 0.15, "mfa_failed": 0.1, "locked": 0.05})
_TTL = _table({900: 0.7, 3600: 0.3})


# --------------------------------------------------------------------------------------------
# Payload builders: one per event type, a stable key order per type
# --------------------------------------------------------------------------------------------


def _cart_item_added(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "cart_id": _cart_id(r),
        "user_id": _user_id(r),
        "sku": _sku(r),
        "quantity": _QTY[r.getrandbits(8)],
        "unit_price": round(_lognormal(r, 25.0, 0.8), 2),
        "currency": _CURRENCY[r.getrandbits(8)],
        "region": _REGION[r.getrandbits(8)],
    }


def _cart_item_removed(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "cart_id": _cart_id(r),
        "user_id": _user_id(r),
        "sku": _sku(r),
        "quantity": _QTY[r.getrandbits(8)],
        "region": _REGION[r.getrandbits(8)],
    }


def _cart_checked_out(r: random.Random, eid: str) -> Payload:
    cart, user, order = _cart_id(r), _user_id(r), _order_id(r)
    items = _ITEMS[r.getrandbits(8)]
    # The total follows the item count (about 25 a item): a relation a correlation_break
    # breaks. The draws are as many and in the same order as with an independent total.
    return {
        "event_id": eid,
        "cart_id": cart,
        "user_id": user,
        "order_id": order,
        "items": items,
        "total": round(items * _lognormal(r, 25.0, 0.25), 2),
        "currency": _CURRENCY[r.getrandbits(8)],
        "region": _REGION[r.getrandbits(8)],
        "latency_ms": int(_lognormal(r, 140.0, 0.35)),
    }


def _payment_authorized(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "order_id": _order_id(r),
        "user_id": _user_id(r),
        "amount": round(_lognormal(r, 60.0, 0.9), 2),
        "currency": _CURRENCY[r.getrandbits(8)],
        "method": _PAY_METHOD[r.getrandbits(8)],
        "region": _REGION[r.getrandbits(8)],
        "latency_ms": int(_lognormal(r, 220.0, 0.35)),
    }


def _payment_captured(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "order_id": _order_id(r),
        "amount": round(_lognormal(r, 60.0, 0.9), 2),
        "currency": _CURRENCY[r.getrandbits(8)],
        "latency_ms": int(_lognormal(r, 180.0, 0.35)),
    }


def _payment_declined(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "order_id": _order_id(r),
        "user_id": _user_id(r),
        "amount": round(_lognormal(r, 60.0, 0.9), 2),
        "currency": _CURRENCY[r.getrandbits(8)],
        "method": _PAY_METHOD[r.getrandbits(8)],
        "reason": _DECLINE[r.getrandbits(8)],
        "latency_ms": int(_lognormal(r, 240.0, 0.35)),
    }


def _inventory_reserved(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "order_id": _order_id(r),
        "sku": _sku(r),
        "quantity": _QTY[r.getrandbits(8)],
        "warehouse": _WAREHOUSE[r.getrandbits(8)],
        "stock_level": int(_lognormal(r, 350.0, 0.6)),
        "latency_ms": int(_lognormal(r, 35.0, 0.4)),
    }


def _inventory_released(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "order_id": _order_id(r),
        "sku": _sku(r),
        "quantity": _QTY[r.getrandbits(8)],
        "warehouse": _WAREHOUSE[r.getrandbits(8)],
        "reason": _RELEASE[r.getrandbits(8)],
    }


def _inventory_restocked(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "sku": _sku(r),
        "quantity": int(_lognormal(r, 120.0, 0.5)),
        "warehouse": _WAREHOUSE[r.getrandbits(8)],
        "supplier": _SUPPLIER[r.getrandbits(8)],
        "stock_level": int(_lognormal(r, 600.0, 0.5)),
    }


def _shipping_label_created(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "order_id": _order_id(r),
        "carrier": _CARRIER[r.getrandbits(8)],
        "service_level": _SERVICE_LEVEL[r.getrandbits(8)],
        "weight_kg": round(_lognormal(r, 1.5, 0.7), 2),
        "region": _REGION[r.getrandbits(8)],
        "latency_ms": int(_lognormal(r, 450.0, 0.4)),
    }


def _shipping_dispatched(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "order_id": _order_id(r),
        "carrier": _CARRIER[r.getrandbits(8)],
        "tracking_id": _tracking_id(r),
        "warehouse": _WAREHOUSE[r.getrandbits(8)],
    }


def _shipping_delivered(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "order_id": _order_id(r),
        "carrier": _CARRIER[r.getrandbits(8)],
        "tracking_id": _tracking_id(r),
        "transit_h": round(_lognormal(r, 40.0, 0.45), 1),
        "status": _DELIVERY[r.getrandbits(8)],
    }


def _auth_login_succeeded(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "user_id": _user_id(r),
        "method": _AUTH_METHOD[r.getrandbits(8)],
        "client": _CLIENT[r.getrandbits(8)],
        "region": _REGION[r.getrandbits(8)],
        "latency_ms": int(_lognormal(r, 90.0, 0.4)),
    }


def _auth_login_failed(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "user_id": _user_id(r),
        "method": _AUTH_METHOD[r.getrandbits(8)],
        "client": _CLIENT[r.getrandbits(8)],
        "region": _REGION[r.getrandbits(8)],
        "reason": _LOGIN_FAIL[r.getrandbits(8)],
        "latency_ms": int(_lognormal(r, 110.0, 0.4)),
    }


def _auth_token_refreshed(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "user_id": _user_id(r),
        "client": _CLIENT[r.getrandbits(8)],
        "ttl_s": _TTL[r.getrandbits(8)],
        "latency_ms": int(_lognormal(r, 25.0, 0.4)),
    }


class _Outlier(NamedTuple):
    """How ``value_outlier`` corrupts one numeric field: a value in [lo, hi]."""

    field: str
    lo: float
    hi: float
    is_int: bool
    typical: float  # the field's median, for the incident detail


class _Service(NamedTuple):
    name: str
    peak_rate: float  # events/s per instance at the daily peak (before rate_scale)
    peak_hour: float  # UTC hour of the daily peak; the trough is 12 h away
    floor: float  # rate multiplier at the trough
    types: tuple[str, ...]
    type_table: tuple[int, ...]  # 256 entries of indexes into types
    builders: tuple[Builder, ...]
    outliers: tuple[_Outlier, ...]
    novel: tuple[tuple[str, tuple[str, ...]], ...]  # categorical field -> never-seen values


def _service(
    name: str,
    rates: tuple[float, float, float],
    mix: Mapping[str, tuple[float, Builder]],
    outliers: tuple[_Outlier, ...],
    novel: tuple[tuple[str, tuple[str, ...]], ...],
) -> _Service:
    types = tuple(f"{name}.{t}" for t in mix)
    weights = {i: w for i, (w, _) in enumerate(mix.values())}
    return _Service(
        name=name,
        peak_rate=rates[0],
        peak_hour=rates[1],
        floor=rates[2],
        types=types,
        type_table=_table(weights),
        builders=tuple(b for _, b in mix.values()),
        outliers=outliers,
        novel=novel,
    )


SERVICES: Mapping[str, _Service] = {
    s.name: s
    for s in (
        _service(
            "cart",
            (6.0, 16.0, 0.08),
            {
                "item_added": (0.58, _cart_item_added),
                "item_removed": (0.22, _cart_item_removed),
                "checked_out": (0.20, _cart_checked_out),
            },
            (
                _Outlier("unit_price", 9_000.0, 30_000.0, False, 25.0),
                _Outlier("total", 20_000.0, 90_000.0, False, 70.0),
                _Outlier("quantity", 500.0, 5_000.0, True, 1.0),
            ),
            (("currency", ("XMR", "BTC")), ("region", ("tor-exit", "zz-unknown"))),
        ),
        _service(
            "payment",
            (2.5, 16.0, 0.08),
            {
                "authorized": (0.50, _payment_authorized),
                "captured": (0.45, _payment_captured),
                "declined": (0.05, _payment_declined),
            },
            (
                _Outlier("amount", 10_000.0, 60_000.0, False, 60.0),
                _Outlier("latency_ms", 15_000.0, 30_000.0, True, 200.0),
            ),
            (("currency", ("XMR", "BTC")), ("method", ("crypto", "wire_legacy"))),
        ),
        _service(
            "inventory",
            (4.0, 14.0, 0.12),
            {
                "reserved": (0.60, _inventory_reserved),
                "released": (0.30, _inventory_released),
                "restocked": (0.10, _inventory_restocked),
            },
            (
                _Outlier("quantity", 20_000.0, 90_000.0, True, 1.0),
                _Outlier("stock_level", -90_000.0, -20_000.0, True, 350.0),
            ),
            (("warehouse", ("tmp-overflow", "test-wh-9")), ("reason", ("manual_override",))),
        ),
        _service(
            "shipping",
            (1.5, 13.0, 0.05),
            {
                "label_created": (0.36, _shipping_label_created),
                "dispatched": (0.34, _shipping_dispatched),
                "delivered": (0.30, _shipping_delivered),
            },
            (
                _Outlier("weight_kg", 800.0, 5_000.0, False, 1.5),
                _Outlier("transit_h", 4_000.0, 9_000.0, False, 40.0),
            ),
            (
                ("carrier", ("acme-drones", "unknown-carrier")),
                ("status", ("lost_in_transit", "returned_to_sender")),
            ),
        ),
        _service(
            "auth",
            (4.0, 15.0, 0.15),
            {
                "login_succeeded": (0.40, _auth_login_succeeded),
                "login_failed": (0.05, _auth_login_failed),
                "token_refreshed": (0.55, _auth_token_refreshed),
            },
            (
                _Outlier("latency_ms", 20_000.0, 60_000.0, True, 60.0),
                _Outlier("ttl_s", 31_536_000.0, 31_536_000.0, True, 900.0),
            ),
            (("client", ("curl/8.5.0", "python-requests/2.31")), ("region", ("tor-exit",))),
        ),
    )
}
"""The shop's services: rates, daily curve, event types and payload builders."""

# Payload keys per event type, for incidents that need to know which types carry a field.
_KEYS: dict[str, tuple[str, ...]] = {
    t: tuple(b(random.Random(0), "0").keys())  # noqa: S311 - synthetic data, not security
    for s in SERVICES.values()
    for t, b in zip(s.types, s.builders, strict=True)
}


def _diurnal(svc: _Service, abs_ms: float) -> float:
    """Rate multiplier in [floor, 1] at a UTC time: trough 12 h before/after ``peak_hour``."""
    hour = (abs_ms / _HOUR_MS) % 24.0
    c = (1.0 + math.cos(_TAU * (hour - svc.peak_hour) / 24.0)) / 2.0
    return svc.floor + (1.0 - svc.floor) * c * math.sqrt(c)


def _fields(producer: str, ts: int, etype: str, payload: Payload) -> Fields:
    return {
        "producer": producer,
        "ts": str(ts),
        "type": etype,
        "data": orjson.dumps(payload).decode(),
    }


# --------------------------------------------------------------------------------------------
# Producers
# --------------------------------------------------------------------------------------------


class _Segment(NamedTuple):
    start: int  # ms relative to the stream start, inclusive
    end: int  # exclusive
    rate: float  # events per ms
    mutators: tuple[Mutator, ...]
    hooks: tuple[Hook, ...]


class _RateMod(NamedTuple):
    start: int  # relative ms, inclusive
    end: int  # exclusive
    mul: float
    floor: float  # events per ms; the rate is max(rate * mul, floor)


class _Producer:
    """One instance: its RNG, event ids, incident effects and emission state."""

    def __init__(self, name: str, svc: _Service, seed: int, base_ms: int) -> None:
        self.name = name
        self.service = svc
        self.seed = seed
        self.rng = random.Random(f"shop:{seed}:producer:{name}")  # noqa: S311
        self.salt = self.rng.getrandbits(64)
        self.seq = 0
        self.base_ms = base_ms
        self.window: tuple[int, int] | None = None  # only emits inside (new producers)
        self.rate_mods: list[_RateMod] = []
        self.mutators: list[tuple[int, int, Mutator]] = []
        self.hooks: list[tuple[int, int, Hook]] = []
        self.injections: list[tuple[int, int, Maker]] = []
        self.segments: list[_Segment] = []
        self._seg_i = 0
        self._inj_i = 0

    def next_event_id(self) -> str:
        """A fresh event id, unique for this producer."""
        z = ((self.seq ^ self.salt) * _EID_MUL) & _M64
        self.seq += 1
        return f"{z ^ (z >> 31):016x}"

    def build_segments(self, duration_ms: int, jitter: Sequence[float], rate_scale: float) -> None:
        """Split time at minutes and incident edges; fix the rate and effects per piece."""
        edges = set(range(0, duration_ms, _MINUTE_MS))
        edges.add(duration_ms)
        spans = [(m.start, m.end) for m in self.rate_mods]
        spans += [(a, b) for a, b, _ in self.mutators]
        spans += [(a, b) for a, b, _ in self.hooks]
        for span in spans:
            edges.update(e for e in span if 0 < e < duration_ms)
        if self.window is not None:
            edges.update(e for e in self.window if 0 < e < duration_ms)
        cuts = sorted(edges)
        svc = self.service
        peak = svc.peak_rate * rate_scale / 1000.0
        own = random.Random(f"shop:{self.seed}:instance-jitter:{self.name}")  # noqa: S311
        inst = [math.exp(0.05 * _std_normal(own)) for _ in range(len(jitter))]
        for a, b in itertools.pairwise(cuts):
            minute = a // _MINUTE_MS
            mid = self.base_ms + (a + b) / 2.0
            rate = peak * _diurnal(svc, mid) * jitter[minute] * inst[minute]
            if self.window is not None and not self.window[0] <= a < self.window[1]:
                rate = 0.0
            for m in self.rate_mods:
                if m.start <= a < m.end:
                    rate = max(rate * m.mul, m.floor)
            muts = tuple(f for s, e, f in self.mutators if s <= a < e)
            hooks = tuple(f for s, e, f in self.hooks if s <= a < e)
            self.segments.append(_Segment(a, b, rate, muts, hooks))
        self.injections.sort(key=itemgetter(0, 1))

    def emit(self, c0: int, c1: int, out: list[tuple[int, Fields]]) -> None:
        """Append this producer's events with relative time in [c0, c1) to ``out``."""
        segs = self.segments
        i = self._seg_i
        while i < len(segs) and segs[i].start < c1:
            if segs[i].rate > 0.0:
                self._run(segs[i], out)
            i += 1
        self._seg_i = i
        inj = self.injections
        j = self._inj_i
        limit = self.base_ms + c1
        while j < len(inj) and inj[j][0] < limit:
            fields = inj[j][2]()
            if fields is not None:
                out.append((inj[j][0], fields))
            j += 1
        self._inj_i = j

    def _run(self, seg: _Segment, out: list[tuple[int, Fields]]) -> None:
        # The hot loop: keep everything in locals.
        rng = self.rng
        rnd = rng.random
        bits = rng.getrandbits
        log = math.log
        dumps = orjson.dumps
        svc = self.service
        table = svc.type_table
        types = svc.types
        builders = svc.builders
        name = self.name
        base = self.base_ms
        salt = self.salt
        seq = self.seq
        mutators = seg.mutators
        hooks = seg.hooks
        append = out.append
        inv = 1.0 / seg.rate
        end = seg.end
        t = float(seg.start)
        while True:
            t -= log(1.0 - rnd()) * inv
            if t >= end:
                break
            ts = base + int(t)
            k = table[bits(8)]
            z = ((seq ^ salt) * _EID_MUL) & _M64
            seq += 1
            payload = builders[k](rng, f"{z ^ (z >> 31):016x}")
            etype = types[k]
            for mutate in mutators:
                payload = mutate(ts, etype, payload)
            fields = {
                "producer": name,
                "ts": str(ts),
                "type": etype,
                "data": dumps(payload).decode(),
            }
            for hook in hooks:
                hook(ts, fields)
            append((ts, fields))
        self.seq = seq


def _service_jitter(seed: int, svc: str, minutes: int) -> list[float]:
    """Per-minute rate multipliers shared by a service's instances (AR(1) in log space)."""
    r = random.Random(f"shop:{seed}:jitter:{svc}")  # noqa: S311
    phi, sd = 0.95, 0.12
    x = sd * _std_normal(r)
    out = []
    for _ in range(minutes):
        out.append(math.exp(x))
        x = phi * x + math.sqrt(1.0 - phi * phi) * sd * _std_normal(r)
    return out


# --------------------------------------------------------------------------------------------
# Incidents
# --------------------------------------------------------------------------------------------

# Event-time extent of each kind, seconds (before the planner shrinks a long one to fit).
_EXTENT_S: dict[str, tuple[float, float]] = {
    "flood": (60, 120),
    "value_outlier": (10, 90),
    "foreign_type": (30, 180),
    "schema_drift": (300, 900),
    "oversized_payload": (10, 60),
    "new_categorical_value": (20, 120),
    "replayed_ids": (5, 30),
    "new_producer": (300, 900),
    "off_hours_burst": (600, 1200),
    "silence": (600, 1800),
    "slow_poisoning": (7200, 10800),
    "new_type": (10, 30),  # one event at the start; the rest keeps the producer clear
    "new_type_shape": (10, 30),
    "stream_pause": (120, 300),
    "release": (1200, 2400),
    "correlation_break": (600, 1800),
    "group_departure": (39600, 50400),
    "group_rate_departure": (10800, 18000),
}


def _spread(r: random.Random, start: int, end: int, n: int) -> list[int]:
    """``n`` sorted times in [start, end], the first at ``start`` and the last at ``end``."""
    if n <= 1:
        return [start]
    inner = sorted(r.randint(start, end) for _ in range(n - 2))
    return [start, *inner, end]


def _pick_type(r: random.Random, svc: _Service, field: str | None = None) -> int:
    """A type index drawn from the service's mix, restricted to types carrying ``field``."""
    ok = [i for i, t in enumerate(svc.types) if field is None or field in _KEYS[t]]
    while True:
        k = svc.type_table[r.getrandbits(8)]
        if k in ok:
            return k


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p.title() for p in rest)


class _Planner:
    """Places incidents and wires their effects into the producers."""

    def __init__(
        self,
        seed: int,
        start_ms: int,
        duration_ms: int,
        warmup_ms: int,
        rate_scale: float,
        instances: Mapping[str, int],
    ) -> None:
        self.seed = seed
        self.start_ms = start_ms
        self.duration_ms = duration_ms
        self.rate_scale = rate_scale
        self.rng = random.Random(f"shop:{seed}:plan")  # noqa: S311
        self.producers: list[_Producer] = []
        for svc_name, n in instances.items():
            for i in range(1, n + 1):
                name = f"{svc_name}-{i}"
                self.producers.append(_Producer(name, SERVICES[svc_name], seed, start_ms))
        self.regular = list(self.producers)  # incident candidates (not the new producers)
        self.by_name = {p.name: p for p in self.producers}
        self.instances = dict(instances)
        self.reserved: dict[str, list[tuple[int, int]]] = {}
        # Incidents live in [lo, hi] (absolute ms), leaving a minute of tail at the end.
        self.lo = start_ms + warmup_ms
        self.hi = start_ms + duration_ms - _MINUTE_MS
        self._counter = 0
        self.novel_used: set[tuple[str, str, str]] = set()
        self.pauses: list[tuple[int, int]] = []  # stream-wide pauses (absolute ms, inclusive)
        # Reservations a pause may overlap: hours-long creeps (a pause inside one is no clue).
        self.pausable: set[tuple[str, int, int]] = set()

    # -- placement ---------------------------------------------------------------------------

    def _free(self, producer: str, a: int, b: int) -> bool:
        gap = _SAME_PRODUCER_GAP_MS
        taken = (*self.reserved.get(producer, ()), *self.pauses)  # a pause is everyone's
        return all(b + gap <= s or e + gap <= a for s, e in taken)

    def _extent_ms(self, kind: str, r: random.Random) -> int:
        lo, hi = _EXTENT_S[kind]
        ext = int(r.uniform(lo, hi) * 1000)
        if kind in _CREEPS:
            ext = min(ext, int(0.6 * (self.hi - self.lo)))
            if ext < 30 * _MINUTE_MS:
                ext = self.hi - self.lo + 1  # not slow any more: too short
        if ext > self.hi - self.lo:
            msg = f"duration too short for a {kind} incident after the warm-up"
            raise ValueError(msg)
        return ext

    def place(
        self, ext: int, slot: tuple[int, int] | None, candidates: Sequence[_Producer], pre: int = 0
    ) -> tuple[_Producer, int]:
        """Pick a producer and a start for an incident lasting ``ext`` ms.

        The first try starts inside ``slot``; later tries anywhere. ``pre`` ms before the start
        are reserved too (a replay's source window).
        """
        r = self.rng
        for attempt in range(50):
            lo, hi = slot if slot is not None and attempt == 0 else (self.lo, self.hi)
            top = min(self.hi - ext, max(lo, hi - ext))
            start = r.randint(min(max(self.lo, lo), top), top)
            order = list(candidates)
            r.shuffle(order)
            for p in order:
                if self._free(p.name, start - pre, start + ext):
                    self.reserve(p.name, start - pre, start + ext)
                    return p, start
        msg = "cannot place the incidents without overlap: fewer incidents or a longer stream"
        raise ValueError(msg)

    def _pausable(self, producer: str, a: int, b: int) -> bool:
        """Whether every producer may pause in [a, b]: no incident near it but a creep."""
        gap = _SAME_PRODUCER_GAP_MS
        taken = [(s, e) for s, e in self.reserved.get(producer, ()) if (producer, s, e) not in
                 self.pausable]  # fmt: skip
        return all(b + gap <= s or e + gap <= a for s, e in (*taken, *self.pauses))

    def reserve(self, producer: str, a: int, b: int) -> None:
        self.reserved.setdefault(producer, []).append((a, b))

    def pause_everyone(self) -> None:
        """Silence every producer (the new ones too) during the stream-wide pauses."""
        for p in self.producers:
            for a, b in self.pauses:
                p.rate_mods.append(_RateMod(self.rel(a), self.rel(b) + 1, 0.0, 0.0))

    def rel(self, abs_ms: int) -> int:
        return abs_ms - self.start_ms

    def inject(self, p: _Producer, ts: int, maker: Maker) -> None:
        self._counter += 1
        p.injections.append((ts, self._counter, maker))

    def incident_rng(self, kind: str, k: int) -> random.Random:
        return random.Random(f"shop:{self.seed}:incident:{kind}:{k}")  # noqa: S311

    # -- kinds -------------------------------------------------------------------------------

    def flood(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        ext = self._extent_ms("flood", r)
        p, start = self.place(ext, slot, self.regular)
        factor = r.randint(20, 50)
        p.rate_mods.append(_RateMod(self.rel(start), self.rel(start + ext) + 1, factor, 0.0))
        detail = f"rate x{factor} for {ext // 1000} s on {p.name}"
        return Incident("flood", p.name, start, start + ext, detail)

    def silence(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        ext = self._extent_ms("silence", r)
        p, start = self.place(ext, slot, self.regular)
        p.rate_mods.append(_RateMod(self.rel(start), self.rel(start + ext) + 1, 0.0, 0.0))
        detail = f"no events for {ext // 60_000} min from {p.name}"
        return Incident("silence", p.name, start, start + ext, detail)

    def off_hours_burst(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        del slot  # placed at night, wherever that is
        ext = self._extent_ms("off_hours_burst", r)
        order = list(self.regular)
        r.shuffle(order)
        for p in order:
            starts = self._night_starts(p, ext)
            if starts:
                start = r.choice(starts)
                self.reserve(p.name, start, start + ext)
                break
        else:
            msg = "cannot place an off_hours_burst: no free night-time slot"
            raise ValueError(msg)
        svc = p.service
        factor = r.uniform(1.5, 2.5)
        floor = svc.peak_rate * self.rate_scale * factor / 1000.0
        p.rate_mods.append(_RateMod(self.rel(start), self.rel(start + ext) + 1, 1.0, floor))
        usual = _diurnal(svc, start + ext / 2)
        clock = (start // _MINUTE_MS) % (24 * 60)
        detail = (
            f"{ext // 60_000} min burst at {clock // 60:02d}:{clock % 60:02d} UTC on {p.name}: "
            f"x{factor:.1f} its peak-hour rate, x{factor / usual:.0f} the usual rate at that hour"
        )
        return Incident("off_hours_burst", p.name, start, start + ext, detail)

    def _night_starts(self, p: _Producer, ext: int) -> list[int]:
        """Minute-aligned starts where the producer is near its daily trough (or the quietest
        tenth of the stream if it never gets there) and free."""
        svc = p.service
        first = -(-self.lo // _MINUTE_MS) * _MINUTE_MS
        grid = list(range(first, self.hi - ext + 1, _MINUTE_MS))
        if not grid:
            return []
        level = {s: max(_diurnal(svc, s), _diurnal(svc, s + ext)) for s in grid}
        night = svc.floor + 0.12 * (1.0 - svc.floor)
        quiet = [s for s in grid if level[s] <= night]
        if not quiet:
            quiet = sorted(grid, key=level.__getitem__)[: max(1, len(grid) // 10)]
            quiet.sort()
        return [s for s in quiet if self._free(p.name, s, s + ext)]

    def slow_poisoning(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        del slot  # hours long: anywhere it fits
        ext = self._extent_ms("slow_poisoning", r)
        p, start = self.place(ext, None, self.regular)
        final = r.uniform(4.0, 8.0)
        detail = self._creep(p, start, ext, final)
        return Incident("slow_poisoning", p.name, start, start + ext, detail)

    def group_departure(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        del slot  # many hours long: anywhere it fits
        ext = self._extent_ms("group_departure", r)
        p, start = self.place(ext, None, self._flock("group_departure"))
        final = r.uniform(1.4, 1.6)
        detail = self._creep(p, start, ext, final)
        detail += f", away from the other {p.service.name} instances"
        return Incident("group_departure", p.name, start, start + ext, detail)

    def group_rate_departure(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        del slot  # hours long: anywhere it fits
        ext = self._extent_ms("group_rate_departure", r)
        p, start = self.place(ext, None, self._flock("group_rate_departure"))
        final = r.uniform(3.0, 4.0)
        if r.random() < 0.5:
            final = 1.0 / final
        self.pausable.add((p.name, start, start + ext))
        minutes = -(-ext // _MINUTE_MS)
        for m in range(minutes):  # the rate a little further each minute
            a = self.rel(start) + m * _MINUTE_MS
            b = min(a + _MINUTE_MS, self.rel(start + ext) + 1)
            p.rate_mods.append(_RateMod(a, b, final ** ((m + 0.5) / minutes), 0.0))
        detail = (
            f"rate creeping to x{final:.2f} its own over {minutes} min on {p.name}, away from "
            f"the other {p.service.name} instances"
        )
        return Incident("group_rate_departure", p.name, start, start + ext, detail)

    def _flock(self, kind: str) -> list[_Producer]:
        """The producers of services with at least three instances (a kind to depart from)."""
        flock = [p for p in self.regular if self.instances[p.service.name] >= 3]
        if not flock:
            msg = f"a {kind} needs a service with at least three instances"
            raise ValueError(msg)
        return flock

    def _creep(self, p: _Producer, start: int, ext: int, final: float) -> str:
        """``p``'s ``latency_ms`` growing geometrically to ``final`` times its own over ``ext``
        ms from ``start``, then back (a creep: a pause inside it is no clue)."""
        self.pausable.add((p.name, start, start + ext))
        minutes = ext / _MINUTE_MS
        growth = final ** (1.0 / minutes)

        def creep(ts: int, etype: str, payload: Payload) -> Payload:
            del etype
            v = payload.get("latency_ms")
            if isinstance(v, int):
                payload["latency_ms"] = int(v * growth ** ((ts - start) / _MINUTE_MS))
            return payload

        p.mutators.append((self.rel(start), self.rel(start + ext) + 1, creep))
        return (
            f"latency_ms creeping +{(growth - 1) * 100:.2f}%/min for {minutes:.0f} min "
            f"(x{final:.1f} at the end) on {p.name}"
        )

    def schema_drift(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        ext = self._extent_ms("schema_drift", r)
        p, start = self.place(ext, slot, self.regular)
        svc = p.service
        if r.random() < 0.5:
            mutate, what = _camel_case_drift()
        else:
            mutate, what = _dropped_field_drift(r, svc)
        p.mutators.append((self.rel(start), self.rel(start + ext) + 1, mutate))
        detail = f"payload schema changed for {ext // 60_000} min on {p.name}: {what}"
        return Incident("schema_drift", p.name, start, start + ext, detail)

    def new_producer(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        ext = self._extent_ms("new_producer", r)
        svc_name = r.choice(sorted(self.instances))
        n = self.instances[svc_name] + r.randint(3, 7)
        while f"{svc_name}-{n}" in self.by_name:
            n += 1
        name = f"{svc_name}-{n}"
        p = _Producer(name, SERVICES[svc_name], self.seed, self.start_ms)
        self.producers.append(p)
        self.by_name[name] = p
        _, start = self.place(ext, slot, [p])
        p.window = (self.rel(start), self.rel(start + ext) + 1)
        detail = f"unknown instance {name} emitting {svc_name} events for {ext // 60_000} min"
        return Incident("new_producer", name, start, start + ext, detail)

    def value_outlier(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        ext = self._extent_ms("value_outlier", r)
        p, start = self.place(ext, slot, self.regular)
        svc = p.service
        spec = r.choice(svc.outliers)
        times = _spread(r, start, start + ext, r.randint(3, 6))
        values: list[JsonScalar] = []
        for ts in times:
            v = r.uniform(spec.lo, spec.hi)
            value: JsonScalar = round(v) if spec.is_int else round(v, 2)
            values.append(value)
            k = _pick_type(r, svc, spec.field)
            self.inject(p, ts, _override_maker(p, r, ts, k, {spec.field: value}))
        mid = sorted(float(v) for v in values)[len(values) // 2]
        scale = f"x{mid / spec.typical:.0f} typical" if mid > 0 else f"typical {spec.typical:.0f}"
        detail = f"{spec.field} ~{mid:.0f} ({scale}) in {len(times)} events on {p.name}"
        return Incident("value_outlier", p.name, times[0], times[-1], detail)

    def new_categorical_value(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        ext = self._extent_ms("new_categorical_value", r)
        p, start = self.place(ext, slot, self.regular)
        svc = p.service
        options = [(f, v) for f, values in svc.novel for v in values]
        fresh = [o for o in options if (svc.name, *o) not in self.novel_used]
        field, value = r.choice(fresh or options)  # a value new to the whole shop if possible
        self.novel_used.add((svc.name, field, value))
        times = _spread(r, start, start + ext, r.randint(3, 8))
        for ts in times:
            k = _pick_type(r, svc, field)
            self.inject(p, ts, _override_maker(p, r, ts, k, {field: value}))
        detail = f"{field}={value!r} (never seen) in {len(times)} events on {p.name}"
        return Incident("new_categorical_value", p.name, times[0], times[-1], detail)

    def foreign_type(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        ext = self._extent_ms("foreign_type", r)
        p, start = self.place(ext, slot, self.regular)
        other = SERVICES[r.choice(sorted(set(SERVICES) - {p.service.name}))]
        times = _spread(r, start, start + ext, r.randint(5, 12))
        types = set()
        for ts in times:
            k = _pick_type(r, other)
            types.add(other.types[k])
            self.inject(p, ts, _foreign_maker(p, r, ts, other, k))
        detail = f"{len(times)} {other.name} events ({', '.join(sorted(types))}) from {p.name}"
        return Incident("foreign_type", p.name, times[0], times[-1], detail)

    def oversized_payload(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        ext = self._extent_ms("oversized_payload", r)
        p, start = self.place(ext, slot, self.regular)
        times = _spread(r, start, start + ext, r.randint(2, 4))
        dumps = r.random() < 0.5
        sizes = []
        for ts in times:
            target = r.randint(20_000, 55_000)
            extra = _debug_dump(r, p, target) if dumps else _many_attributes(r, target)
            sizes.append(len(orjson.dumps(extra)) // 1000)
            k = _pick_type(r, p.service)
            self.inject(p, ts, _override_maker(p, r, ts, k, extra))
        what = "debug dumps" if dumps else f"{len(extra)} extra attributes"
        detail = (
            f"{len(times)} entries of {min(sizes)}-{max(sizes) + 1} KB ({what}, usual < 0.5 KB) "
            f"on {p.name}"
        )
        return Incident("oversized_payload", p.name, times[0], times[-1], detail)

    def new_type(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        ext = self._extent_ms("new_type", r)
        p, start = self.place(ext, slot, self.regular)
        svc = p.service
        etype, k = _NEW_TYPES[svc.name]

        def make() -> Fields:
            return _fields(p.name, start, etype, svc.builders[k](r, p.next_event_id()))

        self.inject(p, start, make)
        detail = f"one {etype} event (never sent, the fields of {svc.types[k]}) from {p.name}"
        return Incident("new_type", p.name, start, start, detail)

    def new_type_shape(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        ext = self._extent_ms("new_type_shape", r)
        p, start = self.place(ext, slot, self.regular)
        etype, build = r.choice(_ROGUE_TYPES)

        def make() -> Fields:
            return _fields(p.name, start, etype, build(r, p.next_event_id()))

        self.inject(p, start, make)
        fields = ",".join(_ROGUE_KEYS[etype][1:])
        detail = f"one {etype} event (never seen, with new fields {fields}) from {p.name}"
        return Incident("new_type_shape", p.name, start, start, detail)

    def stream_pause(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        """No event from any producer for a while, then the same traffic as before: placed
        where every producer is free of incidents (which then keep clear of it)."""
        ext = self._extent_ms("stream_pause", r)
        for attempt in range(50):
            lo, hi = slot if slot is not None and attempt == 0 else (self.lo, self.hi)
            top = min(self.hi - ext, max(lo, hi - ext))
            start = r.randint(min(max(self.lo, lo), top), top)
            if all(self._pausable(p.name, start, start + ext) for p in self.producers):
                self.pauses.append((start, start + ext))
                detail = f"every producer paused for {ext // 1000} s, then resumed (no incident)"
                return Incident("stream_pause", "", start, start + ext, detail)
        msg = "cannot place a stream_pause clear of the other incidents: a longer stream"
        raise ValueError(msg)

    def release(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        """Every instance of one service adopts a new type within minutes (placed where all
        are free)."""
        services = sorted(s for s, n in self.instances.items() if n >= 2)
        ext, placed = self._extent_ms("release", r), False
        while not placed and ext >= 2 * _MINUTE_MS:  # a crowded short stream: shorter ones
            for attempt in range(50):
                svc_name = r.choice(services)
                group = [p for p in self.regular if p.service.name == svc_name]
                lo, hi = slot if slot is not None and attempt == 0 else (self.lo, self.hi)
                top = min(self.hi - ext, max(lo, hi - ext))
                start = r.randint(min(max(self.lo, lo), top), top)
                if all(self._free(p.name, start, start + ext) for p in group):
                    placed = True
                    break
            else:
                ext //= 2
        if not placed:
            msg = "cannot place a release clear of the other incidents: a longer stream"
            raise ValueError(msg)
        etype, k = _RELEASE_TYPES[svc_name]
        end, first = start + ext, start + ext
        for p in group:
            self.reserve(p.name, start, end)
            ts = start + int(r.uniform(0, min(300_000, ext // 2)))
            first = min(first, ts)
            while ts <= end:
                self.inject(p, ts, _typed_maker(p, r, ts, etype, k))
                ts += int(r.uniform(20_000, 90_000))
        detail = (
            f"{len(group)} {svc_name} instances ({svc_name}-*) adopting {etype} within 5 min, for "
            f"{ext // 60_000} min (a release: one alert)"
        )
        return Incident("release", f"{svc_name}-*", first, end, detail)

    def correlation_break(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        ext = self._extent_ms("correlation_break", r)
        carts = [p for p in self.regular if p.service.name == "cart"]
        if not carts:
            msg = "a correlation_break needs a cart producer"
            raise ValueError(msg)
        p, start = self.place(ext, slot, carts)
        shuffled = random.Random(r.getrandbits(64))  # noqa: S311 (seeded by the incident's)

        def unrelate(ts: int, etype: str, payload: Payload) -> Payload:
            del ts
            items, total = payload.get("items"), payload.get("total")
            if etype == "cart.checked_out" and isinstance(items, int) and items > 0:
                assert isinstance(total, float)  # noqa: S101 (the builder's)
                other = _ITEMS[shuffled.getrandbits(8)]
                payload["total"] = round(total / items * other, 2)
            return payload

        p.mutators.append((self.rel(start), self.rel(start + ext) + 1, unrelate))
        detail = (
            f"checkout total independent of items for {ext // 60_000} min on {p.name} "
            "(each field as usual alone)"
        )
        return Incident("correlation_break", p.name, start, start + ext, detail)

    def replayed_ids(self, r: random.Random, slot: tuple[int, int] | None) -> Incident:
        ext = self._extent_ms("replayed_ids", r)
        back = int(r.uniform(5, 30) * _MINUTE_MS)
        p, start = self.place(ext, slot, self.regular, pre=back)
        n = r.randint(8, 25)
        times = _spread(r, start, start + ext, n)
        captured: list[Fields] = []

        def capture(ts: int, fields: Fields) -> None:
            del ts
            if len(captured) < n:
                captured.append(fields)

        src = max(0, self.rel(start - back))
        p.hooks.append((src, self.rel(start), capture))
        for j, ts in enumerate(times):
            self.inject(p, ts, _replay_maker(p.name, ts, captured, j, n))
        detail = (
            f"{n} events from {back // _MINUTE_MS} min earlier re-sent verbatim "
            f"(same event_id) by {p.name}"
        )
        return Incident("replayed_ids", p.name, times[0], times[-1], detail)


_Kind = Callable[[_Planner, random.Random, "tuple[int, int] | None"], Incident]
_KINDS: dict[str, _Kind] = {
    "flood": _Planner.flood,
    "value_outlier": _Planner.value_outlier,
    "foreign_type": _Planner.foreign_type,
    "schema_drift": _Planner.schema_drift,
    "oversized_payload": _Planner.oversized_payload,
    "new_categorical_value": _Planner.new_categorical_value,
    "replayed_ids": _Planner.replayed_ids,
    "new_producer": _Planner.new_producer,
    "off_hours_burst": _Planner.off_hours_burst,
    "silence": _Planner.silence,
    "slow_poisoning": _Planner.slow_poisoning,
    "new_type": _Planner.new_type,
    "new_type_shape": _Planner.new_type_shape,
    "stream_pause": _Planner.stream_pause,
    "release": _Planner.release,
    "correlation_break": _Planner.correlation_break,
    "group_departure": _Planner.group_departure,
    "group_rate_departure": _Planner.group_rate_departure,
}
# Placed first and outside the even spread: they need hours, or a night.
_UNSLOTTED = ("slow_poisoning", "group_departure", "group_rate_departure", "off_hours_burst")
# Creeps of a level over hours: in a short stream, a shorter creep (at most 0.6 of it).
_CREEPS = ("slow_poisoning", "group_departure", "group_rate_departure")
# Placed next, where every producer is still free: the others keep clear of them.
_STREAM_WIDE = ("stream_pause",)

# ``new_type``: per service, a type name it never sends and the usual type whose fields it has.
_NEW_TYPES: dict[str, tuple[str, int]] = {
    "cart": ("cart.price_overridden", 0),
    "payment": ("payment.refund_forced", 1),
    "inventory": ("inventory.stock_zeroed", 2),
    "shipping": ("shipping.address_changed", 0),
    "auth": ("auth.password_reset_forced", 0),
}


# ``release``: per service, the new type its instances adopt and the usual type whose fields
# it has.
_RELEASE_TYPES: dict[str, tuple[str, int]] = {
    "cart": ("cart.saved_for_later", 0),
    "payment": ("payment.installments_offered", 0),
    "inventory": ("inventory.reservation_extended", 0),
    "shipping": ("shipping.slot_booked", 0),
    "auth": ("auth.passkey_registered", 0),
}


def _typed_maker(p: _Producer, r: random.Random, ts: int, etype: str, k: int) -> Maker:
    """An extra event of type ``etype`` with the fields of the service's type ``k``."""
    build = p.service.builders[k]

    def make() -> Fields:
        return _fields(p.name, ts, etype, build(r, p.next_event_id()))

    return make


def _admin_drop_table(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "table": r.choice(("orders", "users", "payments")),
        "database": "shop",
        "actor": f"svc-admin-{r.randint(1, 9)}",
        "rows_affected": r.randint(100_000, 9_000_000),
    }


def _debug_env_dumped(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "host": f"ip-10-0-{r.randint(0, 255)}-{r.randint(0, 255)}",
        "variables": r.randint(80, 400),
        "secrets_included": "true",
    }


def _user_bulk_exported(r: random.Random, eid: str) -> Payload:
    return {
        "event_id": eid,
        "export_id": f"x{r.getrandbits(40):010x}",
        "requested_by": _user_id(r),
        "records": r.randint(500_000, 2_000_000),
        "format": r.choice(("csv", "jsonl")),
    }


# ``new_type_shape``: types no service sends, with fields no service sends.
_ROGUE_TYPES: tuple[tuple[str, Builder], ...] = (
    ("admin.drop_table", _admin_drop_table),
    ("debug.env_dumped", _debug_env_dumped),
    ("user.bulk_exported", _user_bulk_exported),
)
_ROGUE_KEYS = {t: tuple(b(random.Random(0), "0")) for t, b in _ROGUE_TYPES}  # noqa: S311


def _override_maker(p: _Producer, r: random.Random, ts: int, k: int, changes: Payload) -> Maker:
    """An extra event of type ``k`` of the producer's service with some fields overridden."""
    svc = p.service

    def make() -> Fields:
        payload = svc.builders[k](r, p.next_event_id())
        payload.update(changes)
        return _fields(p.name, ts, svc.types[k], payload)

    return make


def _foreign_maker(p: _Producer, r: random.Random, ts: int, other: _Service, k: int) -> Maker:
    def make() -> Fields:
        return _fields(p.name, ts, other.types[k], other.builders[k](r, p.next_event_id()))

    return make


def _replay_maker(name: str, ts: int, captured: list[Fields], j: int, n: int) -> Maker:
    """The ``j``-th of ``n`` replays; if fewer were captured, the last one keeps the end time."""

    def make() -> Fields | None:
        k = len(captured)
        if k == 0:
            return None
        if j == n - 1:
            src = captured[k - 1]
        elif j < k - 1:
            src = captured[j]
        else:
            return None
        return {"producer": name, "ts": str(ts), "type": src["type"], "data": src["data"]}

    return make


def _camel_case_drift() -> tuple[Mutator, str]:
    cache: dict[str, str] = {}

    def mutate(ts: int, etype: str, payload: Payload) -> Payload:
        del ts, etype
        out: Payload = {}
        for key, value in payload.items():
            new = cache.get(key)
            if new is None:
                new = cache[key] = _camel(key)
            out[new] = value
        out["schemaVersion"] = 2
        return out

    return mutate, "keys camelCased (event_id -> eventId...), schemaVersion added"


def _dropped_field_drift(r: random.Random, svc: _Service) -> tuple[Mutator, str]:
    dropped = {t: r.choice(_KEYS[t][1:]) for t in svc.types}

    def mutate(ts: int, etype: str, payload: Payload) -> Payload:
        del ts
        payload.pop(dropped.get(etype, ""), None)
        payload["trace_id"] = f"{r.getrandbits(128):032x}"
        payload["api_version"] = "v2"
        return payload

    gone = ", ".join(f"{t.split('.')[1]}.{f}" for t, f in dropped.items())
    return mutate, f"fields missing ({gone}), trace_id and api_version added"


def _debug_dump(r: random.Random, p: _Producer, target: int) -> Payload:
    """A traceback of a runaway recursion, split over string fields of < 15k characters."""
    svc = p.service.name
    frames = [
        f'  File "/srv/{svc}/app/{mod}.py", line {r.randint(20, 900)}, in {fn}'
        for mod, fn in (("handlers", "handle"), ("pipeline", "process"), ("retry", "call"))
    ]
    head = f"Traceback (most recent call last):\n{frames[0]}\n"
    body = "\n".join(frames[1:]) + "\n"
    text = head + body * ((target - len(head)) // len(body)) + "RecursionError: max depth"
    out: Payload = {}
    for i in range(0, len(text), _MAX_STRING_LEN):
        out[f"debug_dump_{i // _MAX_STRING_LEN}"] = text[i : i + _MAX_STRING_LEN]
    out["debug_host"] = f"{p.name}.prod.internal"
    return out


def _many_attributes(r: random.Random, target: int) -> Payload:
    """Extra ``attr_NNN`` fields (fewer than the decoder's 256 leaves) adding ~target bytes."""
    n = r.randint(150, 200)
    width = max(16, target // n - 14)
    return {f"attr_{i:03d}": f"{r.getrandbits(width * 4):0{width}x}" for i in range(n)}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def iter_events(
    *,
    seed: int = 7,
    start_ms: int = 1_767_225_600_000,
    duration_s: float = 6 * 3600,
    rate_scale: float = 1.0,
    kinds: Sequence[str] = DEMO_KINDS,
    incidents_per_kind: int = 1,
    warmup_s: float = 3600,
    instances: Mapping[str, int] = DEFAULT_INSTANCES,
) -> tuple[list[Incident], Iterator[dict[str, str]]]:
    """Plan a shop stream and return its incidents and a lazy iterator over its events.

    Same arguments as :func:`generate`, whose ``events`` equal ``list(iterator)``. Memory
    stays bounded by five minutes of events, so this also serves multi-million-event runs.

    Returns:
        ``(incidents, events)``: incidents sorted by start, events sorted by ``ts``.

    Raises:
        ValueError: an unknown kind or service, a bad count or duration, or more incidents
            than the stream has room for.
    """
    duration_ms = int(duration_s * 1000)
    _check(kinds, incidents_per_kind, duration_ms, rate_scale, instances)
    planner = _Planner(seed, start_ms, duration_ms, int(warmup_s * 1000), rate_scale, instances)
    incidents = _plan(planner, kinds, incidents_per_kind)
    planner.pause_everyone()
    minutes = -(-duration_ms // _MINUTE_MS)
    jitter = {s: _service_jitter(seed, s, minutes) for s in SERVICES}
    for p in planner.producers:
        p.build_segments(duration_ms, jitter[p.service.name], rate_scale)
    return incidents, _emit(planner.producers, duration_ms)


def generate(
    *,
    seed: int = 7,
    start_ms: int = 1_767_225_600_000,
    duration_s: float = 6 * 3600,
    rate_scale: float = 1.0,
    kinds: Sequence[str] = DEMO_KINDS,
    incidents_per_kind: int = 1,
    warmup_s: float = 3600,
    instances: Mapping[str, int] = DEFAULT_INSTANCES,
) -> ShopStream:
    """Generate a shop stream with labelled incidents.

    The defaults (six hours from 2026-01-01 00:00 UTC, the quiet part of the day) give about
    150k events; rates scale linearly with ``rate_scale``.

    Args:
        seed: everything is a function of it (and the other arguments).
        start_ms: event time of the stream start, epoch ms.
        duration_s: event-time length of the stream.
        rate_scale: multiplies every producer's rate.
        kinds: incident kinds to inject, from :data:`INCIDENT_KINDS`.
        incidents_per_kind: incidents of each kind.
        warmup_s: clean history before the first incident.
        instances: producers per service, from :data:`SERVICES`.

    Returns:
        The events in append order and the incidents sorted by start.

    Raises:
        ValueError: an unknown kind or service, a bad count or duration, or more incidents
            than the stream has room for.
    """
    incidents, events = iter_events(
        seed=seed,
        start_ms=start_ms,
        duration_s=duration_s,
        rate_scale=rate_scale,
        kinds=kinds,
        incidents_per_kind=incidents_per_kind,
        warmup_s=warmup_s,
        instances=instances,
    )
    # Millions of fresh dicts make the cyclic GC rescan the growing list over and over; the
    # events hold no cycles, so pause it while collecting them.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return ShopStream(events=list(events), incidents=incidents)
    finally:
        if was_enabled:
            gc.enable()


def _member(producer: str, of: str) -> bool:
    """Whether ``producer`` is the incident's producer, or one of its group (``cart-*``)."""
    return producer == of or (of.endswith("-*") and producer.startswith(of[:-1]))


def incident_for(
    producer: str,
    event_time_ms: int,
    incidents: Sequence[Incident],
    grace_ms: int | Mapping[str, int] = DEFAULT_GRACE_MS,
) -> Incident | None:
    """The incident an alert on ``producer`` at ``event_time_ms`` belongs to, if any.

    An alert matches an incident on the same producer when its time is within
    ``[start_ms, end_ms + grace]``; one inside ``[start_ms, end_ms]`` wins over one that
    only matches thanks to the grace period. ``grace_ms`` is one grace for every kind, or a
    grace per kind (kinds it lacks get :data:`DEFAULT_GRACE_MS`).

    Examples:
        >>> inc = Incident("flood", "cart-1", 1_000, 2_000, "")
        >>> incident_for("cart-1", 62_000, [inc]) is inc, incident_for("cart-1", 62_001, [inc])
        (True, None)
        >>> incident_for("cart-1", 62_001, [inc], {"flood": 70_000}) is inc
        True
    """
    late: Incident | None = None
    for inc in incidents:
        grace = grace_ms if isinstance(grace_ms, int) else grace_ms.get(inc.kind, DEFAULT_GRACE_MS)
        if not _member(producer, inc.producer) or not (
            inc.start_ms <= event_time_ms <= inc.end_ms + grace
        ):
            continue
        if event_time_ms <= inc.end_ms:
            return inc
        if late is None:
            late = inc
    return late


def _check(
    kinds: Sequence[str],
    per_kind: int,
    duration_ms: int,
    rate_scale: float,
    instances: Mapping[str, int],
) -> None:
    unknown = [k for k in kinds if k not in _KINDS]
    if unknown:
        msg = f"unknown incident kinds {unknown}; choose from {list(INCIDENT_KINDS)}"
        raise ValueError(msg)
    bad = [s for s, n in instances.items() if s not in SERVICES or n < 0]
    if bad or not any(instances.values()):
        msg = f"instances must map services from {list(SERVICES)} to counts >= 0 (some > 0)"
        raise ValueError(msg)
    if per_kind < 0 or duration_ms <= 0 or rate_scale <= 0:
        msg = "incidents_per_kind must be >= 0, duration_s and rate_scale > 0"
        raise ValueError(msg)


def _plan(planner: _Planner, kinds: Sequence[str], per_kind: int) -> list[Incident]:
    """Place ``per_kind`` incidents of each kind; the short ones get one even slot each."""
    jobs = [(kind, k) for kind in dict.fromkeys(kinds) for k in range(per_kind)]
    first = [j for j in jobs if j[0] in _UNSLOTTED] + [j for j in jobs if j[0] in _STREAM_WIDE]
    rest = [j for j in jobs if j[0] not in (*_UNSLOTTED, *_STREAM_WIDE)]
    planner.rng.shuffle(rest)
    incidents = []
    for kind, k in first:
        incidents.append(_KINDS[kind](planner, planner.incident_rng(kind, k), None))
    width = (planner.hi - planner.lo) // max(1, len(rest))
    for i, (kind, k) in enumerate(rest):
        slot = (planner.lo + i * width, planner.lo + (i + 1) * width)
        incidents.append(_KINDS[kind](planner, planner.incident_rng(kind, k), slot))
    incidents.sort(key=lambda inc: (inc.start_ms, inc.producer))
    return incidents


def _emit(producers: list[_Producer], duration_ms: int) -> Iterator[dict[str, str]]:
    """Merge the producers' events chunk by chunk (stable sort: ties keep producer order)."""
    by_ts = itemgetter(0)
    for c0 in range(0, duration_ms, _CHUNK_MS):
        c1 = min(c0 + _CHUNK_MS, duration_ms)
        batch: list[tuple[int, Fields]] = []
        for p in producers:
            p.emit(c0, c1, batch)
        batch.sort(key=by_ts)
        for _, fields in batch:
            yield fields
