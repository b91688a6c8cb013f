"""Checkpoints: signed, versioned snapshots of a pipeline's state.

Every blob carries an HMAC-SHA256 over its name and content, with a key that never enters
Redis, and is verified before it is read. Producer state is typed records
(:mod:`detector.core.codec`), never pickled; only a stateful model (the trees, River models) is
pickled, and its unpickler resolves classes from an allow-list (defence in depth); so is a
River spec's estimator per producer, inside the producer's record. A checkpoint
from another format, River version or model spec is refused, never loaded.

Layout (one Redis hash per group and consumer, see :mod:`detector.gateway.streams`):

- ``meta``: JSON (format, versions, spec digest, per-stream offsets, pipeline counters);
- ``model``: the pickled model (shared by all producers), empty for a stateless one (the
  default ``stats``: its checkpoints need no unpickler at all);
- ``b:<k>``: the base, in pieces of at most :data:`PIECE_BYTES` (``meta["base_pieces"]`` of
  them): every producer's state as of the last full commit, written as the store's columns
  (``FeatureStore.base``: a typed array per column, no loop over producers);
- ``p:<producer>``: one producer's record, written by the commits since the base for the
  producers they changed (an empty record: removed since); a full commit writes a new base and
  deletes them;
- ``s:<name>``: state shared by all producers (the replayed-id window: ``s:replayed_id`` and
  its blocks ``s:replayed_id.<k>``), written when changed since the previous commit.

A baseline (``detector train``) is the same content in one signed file, without shared state
(it is from another time: a baseline starts it afresh).
"""

from __future__ import annotations

import hmac
import io
import pickle
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson

from detector import __version__
from detector.core.errors import CheckpointError, IncompatibleCheckpointError
from detector.core.events import Event

# 2: running moments as floats, not River objects; 3: producer states pickled as flat tuples;
# 4: producer states as typed records, stateless models not written; 5: spec digests of the
# settings only (not the description), River estimators per producer in their records, meta
# "river_objects", the rate's accepted arrivals in the records (issue 17); 6: the joint
# feature's models (per event type) in the producer records, each producer's peer group (kind,
# flags, usual gap) in its record, the peer summary as a shared record (issue 17), each
# producer's analyst feedback rules at the end of its record (issue 18), and the producers'
# state as a base of columns plus the records of those changed since (issue 15); 7: each joint
# model's run (the CUSUM of its T²) in the producer records (issue 17); 8: the base holds the
# joint models, peer groups, sequence shapes and feedback rules as columns (no part of the
# default spec is written slot by slot), lists of floats and of string tuples as list kinds,
# and the categorical block starts (4 bytes) and flags (1 byte) narrower (issue 15); 9: each
# producer's peer record (and the base's peer columns) ends with its rate's usual offset from
# its kind's and that offset's time (issue 17, departure by rates; the kinds' rate levels are
# a key of their levels, no new layout), and the categorical counts (``Counts.n``, ``cnt``)
# and the decision state's histogram bins are 4-byte columns in the base (issue 15, memory);
# 10: the peers' per-producer levels are pooled typed columns in the base (issue 15, memory);
# 11: the decision state's histograms are one pool of bins in the base (issue 15, memory),
# and its suspect runs are rows per event type (key, events, first time, the time it breaks
# at), pooled, in place of one run per producer (issue 17).
# An older
# detector refuses a newer format by this number, and this one refuses older ones (retrain or
# reset).
FORMAT_VERSION = 11
READABLE_FORMATS = (11,)
_MAGIC = b"DETECTOR-BASELINE-1\n"
_MAC_BYTES = 32
PRODUCER_PREFIX = "p:"
SHARED_PREFIX = "s:"
BASE_PREFIX = "b:"
#: The base is written in fields of at most this many bytes (Redis takes up to 512 MB in one
#: value; smaller pieces are signed and written a slice at a time).
PIECE_BYTES = 16 << 20
# Blobs from this size on are signed by a streamed HMAC (no copy of the blob behind its name).
_STREAMED_BYTES = 1 << 16

# What a pickled model may contain: classes defined in the detector's model modules and in
# River's model packages (``estimators.river_module``: not its datasets or I/O), a few of
# River's distance functions, plus a few exact (module, name) pairs. Dotted names are refused:
# pickle would resolve them attribute by attribute
# (``detector.gateway.embedded.subprocess.check_output``).
_STATE_MODULES = ("detector.core.scoring", "detector.core.trees", "detector.core.estimators")
_RIVER_PACKAGES = ("_river_rust", "active", "anomaly", "bandit", "base", "cluster", "compose",
    "covariance", "drift", "dummy", "ensemble", "facto", "feature_extraction",
    "feature_selection", "forest", "imblearn", "linear_model", "metrics", "misc",
    "model_selection", "multiclass", "multioutput", "naive_bayes", "neighbors", "neural_net",
    "optim", "preprocessing", "proba", "reco", "rules", "sketch", "stats", "time_series",
    "tree", "utils")  # fmt: skip
_BUILTINS = ("tuple", "list", "dict", "set", "frozenset", "bytearray", "complex", "slice",
             "float", "int", "bool", "str", "bytes")  # fmt: skip
_ALLOWED_GLOBALS = {("builtins", name) for name in _BUILTINS} | {
    ("collections", "defaultdict"),
    ("collections", "OrderedDict"),
    ("collections", "Counter"),
    ("collections", "deque"),
    ("functools", "partial"),
    ("random", "Random"),
    ("copyreg", "_reconstructor"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
    # Distances River's neighbour searches keep (LocalOutlierFactor): pure arithmetic.
    ("river._river_rust.vectordict", "euclidean_distance_tuple"),
    ("river.utils.math", "minkowski_distance"),
}


def river_module(module: str) -> bool:
    """Whether ``module`` is one of River's model packages (or inside one): not its datasets,
    streams or evaluation helpers (data and I/O, not models).

    >>> river_module("river.anomaly.hst"), river_module("river.datasets"), river_module("os")
    (True, False, False)
    """
    parts = module.split(".")
    return len(parts) > 1 and parts[0] == "river" and parts[1] in _RIVER_PACKAGES


def river_version() -> str:
    return version("river")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if "." not in name:
            if (module, name) in _ALLOWED_GLOBALS:
                return super().find_class(module, name)
            if module in _STATE_MODULES or river_module(module):
                obj = super().find_class(module, name)
                # Only classes defined right there: no functions, no re-exported names.
                if isinstance(obj, type) and obj.__module__ == module:
                    return obj
        msg = (
            f"checkpoint refers to {module}.{name}, which is not allowed (only River's and the "
            "detector's model classes are restored); if this key wrote it, start over with "
            "--reset-state"
        )
        raise CheckpointError(msg)


def restricted_loads(blob: bytes, name: str) -> Any:
    """Unpickle a model (the checkpoint's ``name`` entry) through the allow-list above.

    Raises:
        CheckpointError: a class outside the allow-list.
        IncompatibleCheckpointError: a pickle this code does not load.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(blob)).load()
    except CheckpointError:
        raise
    except Exception as exc:  # a signed blob that does not load: incompatible code
        msg = f"checkpoint entry {name!r} does not load with this version: {exc}"
        raise IncompatibleCheckpointError(msg) from None


class Signer:
    """HMAC-SHA256 over (name, blob): a blob cannot be altered or moved to another name."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            msg = "the checkpoint key must have at least 16 bytes"
            raise CheckpointError(msg)
        self._key = key

    def _mac(self, name: str, blob: bytes | memoryview) -> bytes:
        if len(blob) < _STREAMED_BYTES:
            # One-shot: hmac.new() builds two hash objects per blob (~1000 per commit).
            return hmac.digest(self._key, name.encode() + b"\0" + blob, "sha256")
        # A base piece (up to 16 MiB): hashed where it lies, not copied behind its name.
        mac = hmac.new(self._key, name.encode() + b"\0", "sha256")
        mac.update(blob)
        return mac.digest()

    def sign(self, name: str, blob: bytes | memoryview) -> bytes:
        return b"".join((self._mac(name, blob), blob))

    def sign_into(self, name: str, field: memoryview) -> memoryview:
        """``field`` signed where it lies: its blob after room for the MAC, the MAC written
        into that room (the same bytes as :meth:`sign` of the blob)."""
        field[:_MAC_BYTES] = self._mac(name, field[_MAC_BYTES:])
        return field

    def verified(self, name: str, signed: bytes | memoryview) -> memoryview:
        """The blob, if its signature holds, as a view of ``signed`` (no copy).

        Raises:
            CheckpointError: unsigned, tampered, or signed with another key.
        """
        view = memoryview(signed)
        mac, blob = view[:_MAC_BYTES], view[_MAC_BYTES:]
        if len(mac) < _MAC_BYTES or not hmac.compare_digest(mac, self._mac(name, blob)):
            msg = (
                f"checkpoint entry {name!r} has a bad signature (tampered, unsigned, or written "
                "with another DETECTOR_CHECKPOINT_KEY); refusing to load it"
            )
            raise CheckpointError(msg)
        return blob

    def verify(self, name: str, signed: bytes) -> bytes:
        """The blob, if its signature holds (:meth:`verified`, as bytes)."""
        return bytes(self.verified(name, signed))

    def dumps(self, name: str, obj: object) -> bytes:
        return self.sign(name, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def loads(self, name: str, signed: bytes) -> Any:
        return restricted_loads(self.verify(name, signed), name)


@dataclass(slots=True)
class Snapshot:
    """What a checkpoint holds, unsigned: enough to resume bit-identically.

    Attributes:
        meta: format, versions, spec digest, offsets and pipeline counters (JSON-able).
        model: the model object (None: stateless, rebuilt from the spec).
        producers: producer id -> its record, for the producers changed since the base (an
            empty record: removed since); a pipeline's snapshot encodes each when read.
        removed: producers whose record is deleted (a full commit: all those written since
            the previous base).
        shared: records of the state shared by all producers (all of them, or only the
            changed ones), already encoded.
        base: every producer's state as of a full commit (None: this commit writes no base;
            restored, none in the checkpoint). A pipeline's (a bytearray) is taken over by the
            commit that signs it (:class:`FrozenCommit`), which sets this to None.
        dropped: other fields to delete (an older base's pieces beyond the new one's).
    """

    meta: dict[str, Any]
    model: object | None
    producers: Mapping[str, bytes] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    shared: dict[str, bytes] = field(default_factory=dict)
    base: bytes | bytearray | None = None
    dropped: list[str] = field(default_factory=list)


def _room_for_macs(base: bytearray) -> list[memoryview]:
    """The base's pieces (:func:`pieces`), each moved up in ``base`` behind room for its
    MAC: views of each field to be (MAC, then piece), the MAC written by :meth:`Signer.sign_into`.
    One move of the base within its own buffer (grown in place), not a copy of it into fresh
    memory per piece; ``base`` no longer holds the base after it."""
    count = max(-(-len(base) // PIECE_BYTES), 1)
    size = len(base)
    base.extend(bytes(_MAC_BYTES * count))
    view = memoryview(base)
    fields = []
    for k in range(count - 1, -1, -1):  # the last first: each moves past the one after it
        start, end = k * PIECE_BYTES, min((k + 1) * PIECE_BYTES, size)
        at = start + _MAC_BYTES * k
        view[at + _MAC_BYTES : end + _MAC_BYTES * (k + 1)] = view[start:end]
        fields.append(view[at : end + _MAC_BYTES * (k + 1)])
    fields.reverse()
    return fields


def pieces(base: bytes | bytearray) -> list[memoryview]:
    """The base cut into fields of at most :data:`PIECE_BYTES` (at least one), as views of
    it (each is copied once, behind its signature)."""
    view = memoryview(base)
    return [view[at : at + PIECE_BYTES] for at in range(0, len(base), PIECE_BYTES)] or [view]


def new_meta(
    spec_name: str, spec_digest: str, offsets: dict[str, str], **counters: Any
) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "detector": __version__,
        "river": river_version(),
        "spec": spec_name,
        "spec_digest": spec_digest,
        "offsets": offsets,
        "created_at_ms": int(time.time() * 1000),
        **counters,
    }


def check_format(meta: dict[str, Any]) -> None:
    """Refuse a checkpoint or baseline of a format this version does not read.

    Raises:
        IncompatibleCheckpointError: with how to retrain or reset.
    """
    found = meta.get("format")
    if found in READABLE_FORMATS:
        return
    readable = ", ".join(map(str, READABLE_FORMATS))
    if isinstance(found, int) and found < min(READABLE_FORMATS):
        msg = (
            f"incompatible checkpoint: format {found} was written by an older detector (this "
            f"one reads format {readable}; what changed: the README's upgrade notes). Retrain a "
            "baseline with `detector train` (then `detector run --baseline NAME --reset-state`), "
            "or start over with --reset-state (the state is relearned). See the README's "
            "upgrade notes."
        )
    else:
        msg = (
            f"incompatible checkpoint: format {found} (this detector reads {readable}). Run "
            "the version that wrote it, or start over with --reset-state."
        )
    raise IncompatibleCheckpointError(msg)


def check_compatible(meta: dict[str, Any], spec_name: str, spec_digest: str) -> None:
    """Refuse a checkpoint this code cannot resume exactly.

    Raises:
        IncompatibleCheckpointError: with the operator action in the message.
    """
    check_format(meta)
    problems = []
    # A model holding River objects (a River spec's, shared or per producer) is read for sure
    # only by the River version that wrote it; a checkpoint without one (the default model's,
    # the trees on arrays) holds nothing of River, and any River release in range reads it.
    # (Before "river_objects", meta said "stateful_model", true for the trees too.)
    holds_river = meta.get("river_objects", meta.get("stateful_model", True))
    if holds_river and meta.get("river") != river_version():
        problems.append(f"River {meta.get('river')} (installed: {river_version()})")
    if meta.get("spec_digest") != spec_digest:
        problems.append(f"model spec {meta.get('spec')!r} with other settings than {spec_name!r}")
    if problems:
        msg = (
            "incompatible checkpoint: " + "; ".join(problems) + ". Run with the matching "
            "version and model, or start over with --reset-state (the state is relearned)."
        )
        raise IncompatibleCheckpointError(msg)


class FrozenCommit:
    """A snapshot's hash fields, encoded a slice at a time while the state moves on.

    Encoding ~1000 changed producers takes milliseconds; a worker that did it in one go read
    nothing meanwhile, which set its latency p99. A frozen commit encodes the meta and the
    model at once and signs the changed producers' records later, between reads
    (:meth:`advance`); the snapshot's records are those of the state at the freeze (the store
    keeps a producer's record just before it changes: ``FeatureStore.freeze``). The shared
    records, which every event changes, come encoded in the snapshot and are signed at once.
    Complete, its fields are exactly those of the state at the freeze.
    """

    def __init__(self, signer: Signer, snap: Snapshot) -> None:
        started = time.perf_counter()
        # The base is encoded already (its bytes do not move on): its pieces are signed
        # between reads, as the records are; a bytearray's in place (the commit takes it
        # over: its fields are views of it, behind room for their MACs).
        base = snap.base
        self._pieces: dict[str, memoryview] = {}
        # How a piece is signed: in place (room for its MAC before it), or behind a copy.
        self._sign_piece = signer.sign_into if isinstance(base, bytearray) else signer.sign
        if isinstance(base, bytearray):
            snap.base = None  # taken over: no longer the base once signed in place
            in_place = _room_for_macs(base)
            self._pieces = {BASE_PREFIX + str(k): f for k, f in enumerate(in_place)}
        elif base is not None:
            self._pieces = {BASE_PREFIX + str(k): p for k, p in enumerate(pieces(base))}
        self._signer = signer
        self.fields: dict[str, bytes | memoryview] = {
            "meta": signer.sign("meta", orjson.dumps(snap.meta)),
            "model": (
                signer.sign("model", b"")
                if snap.model is None
                else signer.dumps("model", snap.model)
            ),
        }
        for name, record in snap.shared.items():
            self.fields[SHARED_PREFIX + name] = signer.sign(SHARED_PREFIX + name, record)
        self.removed = [PRODUCER_PREFIX + p for p in snap.removed] + list(snap.dropped)
        self._records = snap.producers
        self._left = dict.fromkeys(snap.producers)
        self._fresh = list(self.fields)  # encoded, not yet taken
        self.seconds = time.perf_counter() - started  # spent encoding so far

    def advance(self, deadline: float | None = None) -> bool:
        """Encode the states left until ``time.perf_counter()`` passes ``deadline`` (None: all
        of them); whether every field is encoded."""
        started = now = time.perf_counter()
        left, base = self._left, self._pieces
        while base:
            name, piece = base.popitem()
            self.fields[name] = self._sign_piece(name, piece)
            self._fresh.append(name)
            now = time.perf_counter()
            if deadline is not None and now >= deadline:
                self.seconds += now - started
                return False
        while left:
            self._encode(left.popitem()[0])
            now = time.perf_counter()
            if deadline is not None and now >= deadline:
                break
        self.seconds += now - started
        return not left and not base

    def _encode(self, producer: str) -> None:
        name = PRODUCER_PREFIX + producer
        self.fields[name] = self._signer.sign(name, self._records[producer])
        self._fresh.append(name)

    def take(self) -> list[tuple[str, bytes | memoryview]]:
        """The fields encoded since the last take, in the order of :attr:`fields` (which
        only grows): a writer packs them for the wire between reads, as they come."""
        fresh, self._fresh = self._fresh, []
        fields = self.fields
        return [(name, fields[name]) for name in fresh]


def encode_fields(signer: Signer, snap: Snapshot) -> dict[str, bytes | memoryview]:
    """Hash fields to write for a snapshot (meta, model, changed producers and shared
    records; a base's pieces as views of it, :class:`FrozenCommit`)."""
    frozen = FrozenCommit(signer, snap)
    frozen.advance()
    return frozen.fields


def decode_fields(signer: Signer, fields: dict[bytes, bytes]) -> Snapshot:
    """Verify and load every field of a checkpoint hash.

    Raises:
        CheckpointError: a missing or bad signature, or a class outside the allow-list.
        IncompatibleCheckpointError: a format this version does not read (checked first:
            nothing of an older layout is decoded).
    """
    if b"meta" not in fields or b"model" not in fields:
        msg = "checkpoint is incomplete (no meta or model entry)"
        raise CheckpointError(msg)
    meta = orjson.loads(signer.verify("meta", fields[b"meta"]))
    check_format(meta)
    stateful = signer.verify("model", fields[b"model"])  # empty: a stateless model
    model = signer.loads("model", fields[b"model"]) if stateful else None
    producers, shared = {}, {}
    for raw_name, value in fields.items():
        name = raw_name.decode()
        if name.startswith(PRODUCER_PREFIX):
            producers[name[len(PRODUCER_PREFIX) :]] = signer.verify(name, value)
        elif name.startswith(SHARED_PREFIX):
            shared[name[len(SHARED_PREFIX) :]] = signer.verify(name, value)
    base = None
    count = int(meta.get("base_pieces", 0))
    if count:
        names = [BASE_PREFIX + str(k) for k in range(count)]
        missing = [n for n in names if n.encode() not in fields]
        if missing:
            msg = f"checkpoint is incomplete (no {missing[0]!r} of its {count} base pieces)"
            raise CheckpointError(msg)
        base = b"".join([signer.verified(n, fields[n.encode()]) for n in names])
    return Snapshot(meta, model, producers, shared=shared, base=base)


def save_file(path: Path, signer: Signer, snap: Snapshot) -> None:
    """Write a baseline file atomically (temporary file, then rename)."""
    payload = orjson.dumps(
        {
            k.decode() if isinstance(k, bytes) else k: v.hex()
            for k, v in encode_fields(signer, snap).items()
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(_MAGIC + signer.sign("baseline", payload))
    tmp.replace(path)


def load_file(path: Path, signer: Signer) -> Snapshot:
    """Read a baseline file written by :func:`save_file`.

    Raises:
        CheckpointError: not a baseline, tampered, or signed with another key.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        msg = f"cannot read baseline {path}: {exc}"
        raise CheckpointError(msg) from None
    if not data.startswith(_MAGIC):
        msg = f"{path} is not a detector baseline"
        raise CheckpointError(msg)
    payload = orjson.loads(signer.verify("baseline", data[len(_MAGIC) :]))
    return decode_fields(signer, {k.encode(): bytes.fromhex(v) for k, v in payload.items()})


@dataclass(frozen=True, slots=True)
class BaselineEnd:
    """Where a baseline's data ended, for the streams it has no entry id for.

    Attributes:
        event_time_ms: the latest event time the baseline learned.
        producers: the producers it learned (others' events are never skipped).
        exact: streams with a recorded entry id (skipped by id instead, see the module doc).
    """

    event_time_ms: int
    producers: frozenset[str]
    exact: frozenset[str]

    @classmethod
    def of(
        cls, snap: Snapshot, offsets: dict[str, str], producers: Iterable[str]
    ) -> BaselineEnd | None:
        """The end of a loaded baseline that gave ``producers`` (None: it learned nothing)."""
        end = snap.meta.get("watermark_ms")
        learned = frozenset(producers)
        if not end or not learned:
            return None
        return cls(int(end), learned, frozenset(offsets))

    def covers(self, event: Event) -> bool:
        """The baseline learned this period of this producer already: skip the event.

        >>> end = BaselineEnd(1000, frozenset({"a"}), frozenset({"orders"}))
        >>> e = Event("orders:{0}", "5-0", "a", 1000, None, {}, {}, 0)
        >>> end.covers(e), end.covers(Event("orders:{0}", "5-1", "a", 1001, None, {}, {}, 0))
        (True, False)
        >>> end.covers(Event("orders", "5-0", "a", 10, None, {}, {}, 0))  # by id there
        False
        """
        return (
            event.event_time_ms <= self.event_time_ms
            and event.stream not in self.exact
            and event.producer in self.producers
        )
