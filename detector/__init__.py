"""detector: real-time anomaly detection for Redis Streams."""

from __future__ import annotations

__version__ = "0.1.0"

from detector.alerts import Alert
from detector.errors import DetectorError
from detector.events import Event
from detector.pipeline import Pipeline
from detector.scoring import load_spec
from detector.settings import Settings
from detector.worker import Worker

__all__ = [
    "Alert",
    "DetectorError",
    "Event",
    "Pipeline",
    "Settings",
    "Worker",
    "__version__",
    "load_spec",
]
