"""Exception hierarchy: one root, exit codes mapped once in the CLI; install hints."""

from __future__ import annotations

# The distribution's name (pyproject.toml's [project] name): `detector` on the package index is
# an unrelated project. The import package and the command stay `detector`.
DISTRIBUTION = "redis-stream-detector"


def install_hint(extra: str) -> str:
    """How to install an optional extra, from the index or in a checkout.

    >>> install_hint("embedded")
    "pip install 'redis-stream-detector[embedded]' (or pip install -e '.[embedded]' in a checkout)"
    """
    return f"pip install '{DISTRIBUTION}[{extra}]' (or pip install -e '.[{extra}]' in a checkout)"


class DetectorError(Exception):
    """Root of every error the detector raises on purpose."""


class ConfigError(DetectorError):
    """Invalid settings or model spec. The CLI exits with code 2."""


class InvalidEventError(DetectorError):
    """A stream entry that fails validation; it goes to the dead-letter stream.

    Attributes:
        reason: short machine-readable reason (e.g. ``"non_finite_number"``).
        detail: human-readable detail (field name, limit).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class StreamError(DetectorError):
    """Redis I/O failure that the worker could not recover from."""


class CheckpointError(DetectorError):
    """A checkpoint or baseline that must not be loaded: unsigned, tampered, or malformed.

    The CLI exits with code 3. Operator action: find out who wrote it; start over with
    ``--reset-state`` only if the state can be relearned.
    """


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint written by another format, River version or model spec."""
