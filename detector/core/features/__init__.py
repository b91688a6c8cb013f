"""Features: bounded per-producer state and the evidence it gives about each event.

Every feature is a *surprise* in log10 units, ``-log10(p)``, where ``p`` is the probability of
seeing something at least this unusual given the producer's own past. Surprises are comparable
across features and producers, and the models combine them. Judging reads the state before
the event changes it, so a score only sees the past.

One module per feature (its state, judgement and learning; see
:class:`~detector.core.features.feature.Feature`), registered in
:func:`~detector.core.features.store.build_features`; the store gives each tracked producer a
slot in every feature.

The names below load their modules when first used (PEP 562): the alert wire format needs
:class:`Reason` alone, without the features' state and numpy.

Examples:
    >>> from detector.core.events import Event
    >>> from detector.core.features import FeatureConfig, FeatureStore
    >>> store = FeatureStore(FeatureConfig())
    >>> def ev(t, amount, cur="EUR"):
    ...     return Event("s", f"{t}-0", "pay-1", t, "paid", {"amount": amount}, {"cur": cur}, 50)
    >>> for i in range(200):
    ...     _ = store.observe(ev(1000 * i, 10.0 + i % 3), learn=True)
    >>> normal = store.observe(ev(200_000, 11.0), learn=False)
    >>> odd = store.observe(ev(201_000, 900.0, "XMR"), learn=False)
    >>> normal.surprise["value"] < 1 < 5 < odd.surprise["value"], odd.surprise["category"] > 2
    (True, True)
    >>> [r.feature for r in odd.reasons]
    ['value', 'category']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detector.core.features.config import FEATURES, FeatureConfig
    from detector.core.features.store import FeatureStore
    from detector.core.features.surprise import (
        MAX_SURPRISE,
        Evidence,
        Reason,
        new_producer_reason,
    )

_HOMES = {
    "FEATURES": "detector.core.features.config",
    "FeatureConfig": "detector.core.features.config",
    "FeatureStore": "detector.core.features.store",
    "MAX_SURPRISE": "detector.core.features.surprise",
    "Evidence": "detector.core.features.surprise",
    "Reason": "detector.core.features.surprise",
    "new_producer_reason": "detector.core.features.surprise",
}

__all__ = [
    "FEATURES",
    "MAX_SURPRISE",
    "Evidence",
    "FeatureConfig",
    "FeatureStore",
    "Reason",
    "new_producer_reason",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        msg = f"module 'detector.core.features' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(home), name)
