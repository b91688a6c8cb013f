"""Secrets: read from the environment only, never from options (so never on a command line,
in `ps` or in shell history), never from Redis, never logged.

The checkpoint secret (the HMAC key that signs checkpoints and baselines) comes from
``DETECTOR_CHECKPOINT_KEY``, else the file named by ``DETECTOR_CHECKPOINT_KEY_FILE``, else a
key generated once into a private file of this user. The Redis password comes from
``DETECTOR_REDIS_PASSWORD`` or ``DETECTOR_REDIS_PASSWORD_FILE``, the Sentinels' from
``DETECTOR_SENTINEL_PASSWORD`` or ``DETECTOR_SENTINEL_PASSWORD_FILE``; `detector acl` reads the
passwords whose hashes it prints from ``DETECTOR_ACL_<ROLE>_PASSWORD(_FILE)``. The webhook URL
of `detector notify` (its path is the credential of Slack-like webhooks) comes from
``DETECTOR_WEBHOOK_URL`` or ``DETECTOR_WEBHOOK_URL_FILE``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from secrets import token_hex
from urllib.parse import urlsplit

from detector.core.errors import ConfigError
from detector.core.settings import user_dir

log = logging.getLogger(__name__)
# Names of variables, not secrets:
CHECKPOINT_SECRET_ENVVAR = "DETECTOR_CHECKPOINT_KEY"  # noqa: S105
REDIS_PASSWORD_ENVVAR = "DETECTOR_REDIS_PASSWORD"  # noqa: S105
SENTINEL_PASSWORD_ENVVAR = "DETECTOR_SENTINEL_PASSWORD"  # noqa: S105
WEBHOOK_URL_ENVVAR = "DETECTOR_WEBHOOK_URL"
# Every variable a secret is read from (the `_FILE` variants name a file holding it).
SECRET_ENVVARS = (
    CHECKPOINT_SECRET_ENVVAR,
    f"{CHECKPOINT_SECRET_ENVVAR}_FILE",
    REDIS_PASSWORD_ENVVAR,
    f"{REDIS_PASSWORD_ENVVAR}_FILE",
    SENTINEL_PASSWORD_ENVVAR,
    f"{SENTINEL_PASSWORD_ENVVAR}_FILE",
    WEBHOOK_URL_ENVVAR,
    f"{WEBHOOK_URL_ENVVAR}_FILE",
    # `detector acl`: passwords whose SHA-256 goes into the printed ACL lines.
    "DETECTOR_ACL_WORKER_PASSWORD",
    "DETECTOR_ACL_WORKER_PASSWORD_FILE",
    "DETECTOR_ACL_PRODUCER_PASSWORD",
    "DETECTOR_ACL_PRODUCER_PASSWORD_FILE",
    "DETECTOR_ACL_READER_PASSWORD",
    "DETECTOR_ACL_READER_PASSWORD_FILE",
    "DETECTOR_ACL_ROUTER_PASSWORD",
    "DETECTOR_ACL_ROUTER_PASSWORD_FILE",
    "DETECTOR_ACL_SENTINEL_PASSWORD",
    "DETECTOR_ACL_SENTINEL_PASSWORD_FILE",
    "DETECTOR_ACL_SENTINEL_READER_PASSWORD",
    "DETECTOR_ACL_SENTINEL_READER_PASSWORD_FILE",
    "DETECTOR_ACL_NOTIFIER_PASSWORD",
    "DETECTOR_ACL_NOTIFIER_PASSWORD_FILE",
)


def load_checkpoint_secret() -> bytes:
    """The key that signs checkpoints and baselines, from the environment, never from Redis.

    ``DETECTOR_CHECKPOINT_KEY`` (the key itself), else ``DETECTOR_CHECKPOINT_KEY_FILE`` (a file
    holding it), else a key generated once into a private file of this user
    (``~/.config/detector/checkpoint.key``, mode 0600): fine for one machine; workers on
    several hosts must share a key through the environment.
    """
    if key := os.environ.get(CHECKPOINT_SECRET_ENVVAR):
        return key.encode()
    if key_file := os.environ.get(f"{CHECKPOINT_SECRET_ENVVAR}_FILE"):
        try:
            return Path(key_file).read_bytes().strip()
        except OSError as exc:
            msg = f"{CHECKPOINT_SECRET_ENVVAR}_FILE: {exc}"
            raise ConfigError(msg) from None
    path = user_dir("XDG_CONFIG_HOME", ".config") / "detector" / "checkpoint.key"
    if not path.exists():
        _generate_key_file(path)
    return path.read_bytes().strip()


def _generate_key_file(path: Path) -> None:
    """A new random key in ``path``, readable by this user only (a racing writer wins)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token_hex(32))
    except FileExistsError:
        pass  # another process generated it just now
    except OSError as exc:
        msg = f"no {CHECKPOINT_SECRET_ENVVAR} and cannot create {path}: {exc}"
        raise ConfigError(msg) from None
    log.warning(
        "generated a checkpoint key in %s (set %s to share one)", path, CHECKPOINT_SECRET_ENVVAR
    )


def env_secret(name: str) -> str | None:
    """A secret from ``$name``, else from the file named by ``$name_FILE`` (its last line
    break dropped), else None."""
    if value := os.environ.get(name):
        return value
    if path := os.environ.get(f"{name}_FILE"):
        try:
            text = Path(path).read_text()
        except OSError as exc:
            msg = f"{name}_FILE: {exc}"
            raise ConfigError(msg) from None
        return text.removesuffix("\n").removesuffix("\r") or None
    return None


def redis_password() -> str | None:
    """The Redis password: ``DETECTOR_REDIS_PASSWORD``, else the file named by
    ``DETECTOR_REDIS_PASSWORD_FILE``, else None (the URL's user, if any, or no AUTH)."""
    return env_secret(REDIS_PASSWORD_ENVVAR)


def sentinel_password() -> str | None:
    """The Sentinels' password (``requirepass`` or their ACL user's, apart from the data
    nodes'): ``DETECTOR_SENTINEL_PASSWORD``, else the file named by
    ``DETECTOR_SENTINEL_PASSWORD_FILE``, else None."""
    return env_secret(SENTINEL_PASSWORD_ENVVAR)


def webhook_url() -> str:
    """The webhook ``detector notify`` posts to: ``DETECTOR_WEBHOOK_URL``, else the file named
    by ``DETECTOR_WEBHOOK_URL_FILE``; an ``http://`` or ``https://`` URL.

    Raises:
        ConfigError: neither is set, or the value is not such a URL (the message never
            shows it: its path is the credential).
    """
    url = env_secret(WEBHOOK_URL_ENVVAR)
    if url is None:
        msg = f"detector notify needs {WEBHOOK_URL_ENVVAR} or {WEBHOOK_URL_ENVVAR}_FILE"
        raise ConfigError(msg)
    url = url.strip()
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises on a bad port
    except ValueError:
        valid = False
    if not valid:
        msg = f"{WEBHOOK_URL_ENVVAR} is not an http:// or https:// URL with a host"
        raise ConfigError(msg)
    return url
