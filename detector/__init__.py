"""detector: real-time anomaly detection for Redis Streams.

The public names are imported when first used (PEP 562), so ``import detector`` stays light
and the pure core can be imported without the runtime or a Redis client; reading alerts
(:func:`read_alerts`) needs neither River nor numpy.

Example:
    >>> from detector import read_alerts
    >>> for alert in read_alerts("redis://localhost:6379/0", follow=True):  # doctest: +SKIP
    ...     print(alert.producer, alert.kind, alert.score, alert.why)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from detector import compiled

__version__ = "0.1.0"

# Before any core module is imported: the core's compiled modules give way to their Python
# sources under DETECTOR_PURE_PYTHON=1, or when edited since their build (detector.compiled).
compiled.install()

if TYPE_CHECKING:
    from detector.core.alerts import Alert
    from detector.core.errors import DetectorError
    from detector.core.events import Event
    from detector.core.pipeline import Pipeline
    from detector.core.scoring import load_spec
    from detector.core.settings import Settings
    from detector.gateway.alert_reader import read_alerts
    from detector.runtime.worker import Worker

_HOMES = {
    "Alert": "detector.core.alerts",
    "DetectorError": "detector.core.errors",
    "Event": "detector.core.events",
    "Pipeline": "detector.core.pipeline",
    "load_spec": "detector.core.scoring",
    "Settings": "detector.core.settings",
    "Worker": "detector.runtime.worker",
    "read_alerts": "detector.gateway.alert_reader",
}

__all__ = [
    "Alert",
    "DetectorError",
    "Event",
    "Pipeline",
    "Settings",
    "Worker",
    "__version__",
    "load_spec",
    "read_alerts",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        msg = f"module 'detector' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(home), name)
