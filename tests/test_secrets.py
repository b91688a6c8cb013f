"""Secrets come from the environment (or files it names), never from options."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from detector.core.errors import ConfigError
from detector.gateway.secrets import (
    SECRET_ENVVARS,
    env_secret,
    load_checkpoint_secret,
    redis_password,
)


@pytest.fixture
def no_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in SECRET_ENVVARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path


def test_a_checkpoint_secret_is_generated_once_into_a_private_file(no_secrets: Path) -> None:
    key = load_checkpoint_secret()
    path = no_secrets / "detector" / "checkpoint.key"
    assert path.read_bytes().strip() == key and len(key) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_checkpoint_secret() == key  # the same key on the next start


def test_the_environment_wins_over_the_file_it_names(
    no_secrets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = no_secrets / "k"
    key_file.write_text("from-file\n")
    monkeypatch.setenv("DETECTOR_CHECKPOINT_KEY_FILE", str(key_file))
    assert load_checkpoint_secret() == b"from-file"
    monkeypatch.setenv("DETECTOR_CHECKPOINT_KEY", "from-env")
    assert load_checkpoint_secret() == b"from-env"
    assert not (no_secrets / "detector").exists()  # nothing generated


def test_a_missing_secret_file_is_a_config_error(
    no_secrets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DETECTOR_CHECKPOINT_KEY_FILE", str(no_secrets / "absent"))
    with pytest.raises(ConfigError, match="DETECTOR_CHECKPOINT_KEY_FILE"):
        load_checkpoint_secret()
    monkeypatch.setenv("DETECTOR_REDIS_PASSWORD_FILE", str(no_secrets / "absent"))
    with pytest.raises(ConfigError, match="DETECTOR_REDIS_PASSWORD_FILE"):
        redis_password()


def test_a_password_file_loses_its_last_line_break_only(
    no_secrets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert redis_password() is None
    password_file = no_secrets / "pw"
    password_file.write_text(" s3cret \r\n")
    monkeypatch.setenv("DETECTOR_ACL_READER_PASSWORD_FILE", str(password_file))
    assert env_secret("DETECTOR_ACL_READER_PASSWORD") == " s3cret "
