"""Surprise: the features' common unit, ``-log10(p)``, and what explains it.

Every feature judges an event by the probability ``p`` of something at least this unusual given
the producer's own past; ``-log10(p)`` is comparable across features and producers, and the
models combine it. A :class:`Reason` says what was seen against what is usual.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_SURPRISE = 64.0
LOG10 = math.log(10.0)
_SQRT2 = math.sqrt(2.0)
_SQRT_PI = math.sqrt(math.pi)


@dataclass(slots=True, unsafe_hash=True)  # not frozen: several per flagged event, and a frozen
class Reason:  # __init__ sets each field through object.__setattr__
    """Why a feature is surprising: what was seen against what is usual.

    Attributes:
        feature: feature name (one of ``FEATURES``).
        field: payload field, type or shape concerned ("" when not field specific).
        observed: what the event showed.
        expected: the producer's usual range or values.
        surprise: ``-log10(p)`` of this observation.
    """

    feature: str
    field: str
    observed: str
    expected: str
    surprise: float


@dataclass(slots=True)
class Evidence:
    """What one event looks like against its producer's past.

    Attributes:
        surprise: ``-log10(p)`` per feature name, 0 for usual.
        history: events the producer had before this one.
        reasons: one explanation per surprising feature, largest surprise first; only for
            events that were explained (:meth:`FeatureStore.explain`), else empty.
    """

    surprise: dict[str, float]
    history: int
    reasons: list[Reason] = field(default_factory=list)


def signed_log(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


def unlog(y: float) -> float:
    return math.copysign(math.expm1(min(abs(y), 700.0)), y)


def two_sided(z: float) -> float:
    """-log10 of the two-sided normal tail probability of z.

    Beyond z = 8 erfc loses precision: use its asymptote, erfc(x) ~ exp(-x^2) / (x sqrt(pi)).
    """
    z = abs(z)
    if z < 8.0:
        return -math.log10(math.erfc(z / _SQRT2))
    x = z / _SQRT2
    return min((x * x + math.log(x * _SQRT_PI)) / LOG10, MAX_SURPRISE)


def duration(ms: float) -> str:
    """A span of event time as a reason states it.

    Examples:
        >>> duration(25_300), duration(12 * 60_000), duration(4 * 3_600_000)
        ('25.3 s', '12 min', '4 h')
    """
    s = ms / 1000
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    return f"{s / 3600:.3g} h"


def type_prefix(etype: str | None) -> str:
    """Payload statistics are kept per event type: one type's fields say little of another's."""
    return f"{etype}\x1f" if etype is not None else ""


def new_producer_reason(producer: str, known: int) -> Reason:
    """Why a producer's first event is news: its id was never seen (or forgotten after the
    idle TTL) while others are established (the pipeline decides when that holds).

    Examples:
        >>> new_producer_reason("pay-9", 14).expected
        'one of the 14 known producers'
    """
    expected = f"one of the {known} known producers"
    return Reason("new_producer", "", producer, expected, MAX_SURPRISE)
