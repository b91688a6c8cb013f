"""Judgements: the features' verdict on a batch of events, as columns the model reads.

Per event of a batch, one row: each feature's surprise (in :data:`FEATURES` order), the
producer's slot and its history (events seen before this one). The store fills row ``i`` just
before the model scores event ``i`` (each producer's events are judged, scored and learned in
order), and the model reads the row by index: no object per event. One ``Judgements`` serves a
pipeline batch after batch; a batch of one (:meth:`Judgements.of`) serves tests and tools.

Examples:
    >>> j = Judgements.of({"value": 7.5, "rate": 0.2}, history=300)
    >>> j.largest(0), j.history[0], j.surprises(0)["value"]
    (7.5, 300, 7.5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from detector.core.events import Event
from detector.core.features.columns import capacity, column, grown
from detector.core.features.config import FEATURES

_WIDTH = len(FEATURES)
_INDEX = {name: k for k, name in enumerate(FEATURES)}


class Judgements:
    """Rows of a batch's judgements (see the module's docstring).

    Attributes:
        surprise: ``-log10(p)`` per (event, feature), row-major, ``_WIDTH`` per event.
        history: events the producer had before each event (0: a first sight, not judged).
        slot: the producer's slot in the store, per event.
        events: the batch's events (their fields, for models that read them).
    """

    def __init__(self) -> None:
        self.surprise = column("d", 0)
        self.history = column("q", 0)
        self.slot = column("q", 0)
        self.events: Sequence[Event] = ()
        self._bind()

    def _bind(self) -> None:
        """Typed views of the columns (compiled: memoryviews; see judgements.pxd)."""
        self._surprise = self.surprise
        self._history = self.history
        self._slot = self.slot

    @classmethod
    def of(
        cls, surprise: Mapping[str, float], history: int, event: Event | None = None
    ) -> Judgements:
        """A batch of one event judged ``surprise`` (features not named: 0)."""
        j = cls()
        j.start((event,) if event is not None else ())
        j.reserve(1)
        j.clear(0, 0, history)
        for name, s in surprise.items():
            j.surprise[_INDEX[name]] = s
        return j

    def start(self, events: Sequence[Event]) -> None:
        """Make room for a batch of ``events`` (rows are filled by :meth:`clear` and the
        store)."""
        self.events = events
        self.reserve(len(events))

    def reserve(self, n: int) -> None:
        if len(self.history) >= n:
            return
        rows = capacity(len(self.history), n)
        self.surprise = grown(self.surprise, rows * _WIDTH)
        self.history = grown(self.history, rows)
        self.slot = grown(self.slot, rows)
        self._bind()

    def clear(self, i: int, slot: int, history: int) -> None:
        """Row ``i`` for a producer in ``slot`` with ``history`` events: every surprise 0."""
        base = i * _WIDTH
        for k in range(_WIDTH):
            self._surprise[base + k] = 0.0
        self._history[i] = history
        self._slot[i] = slot

    def put(self, i: int, feature: int, surprise: float) -> None:
        """Feature number ``feature``'s surprise about event ``i``."""
        self._surprise[i * _WIDTH + feature] = surprise

    def get(self, i: int, feature: int) -> float:
        s: float = self._surprise[i * _WIDTH + feature]
        return s

    def largest(self, i: int) -> float:
        """The largest surprise of event ``i``."""
        base = i * _WIDTH
        top = 0.0
        for k in range(_WIDTH):
            s = self._surprise[base + k]
            if s > top:
                top = s
        return top

    def surprises(self, i: int) -> dict[str, float]:
        """Event ``i``'s surprise per feature name (for explanations and models that take
        dicts, such as River's)."""
        base = i * _WIDTH
        return {name: self._surprise[base + k] for k, name in enumerate(FEATURES)}

    def fields(self, i: int) -> dict[str, float]:
        """Event ``i``'s numeric payload fields by dotted name."""
        return self.events[i].numbers

    def __reduce__(self) -> tuple[Any, ...]:
        # Scratch columns, refilled every batch: a pickled pipeline keeps none of them.
        return (Judgements, ())
