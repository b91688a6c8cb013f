"""Settings and the options generated from them: each default is written once, in Settings."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

import click

from detector.cli import cli
from detector.core.settings import EventFormat, Settings


def _field_defaults() -> dict[str, Any]:
    out = {}
    for cls in (Settings, EventFormat):
        for f in fields(cls):
            out[f.name] = f.default if f.default is not MISSING else f.default_factory()
    return out


def _options(command: str) -> dict[str, click.Option]:
    params = cli.commands[command].params
    return {p.name: p for p in params if isinstance(p, click.Option) and p.name}


def test_each_run_option_defaults_to_its_settings_field() -> None:
    defaults, options = _field_defaults(), _options("run")
    shared = set(options) & set(defaults)
    # Every settings field but the secrets, the nested format and the resolved baseline path.
    assert set(defaults) - shared == {"checkpoint_secret", "redis_password", "sentinel_password",
                                      "event_format", "max_name_len"}  # fmt: skip
    for name in shared:
        default = options[name].default
        value = default() if callable(default) else default
        assert value == defaults[name], f"--{name}: {value!r} in the CLI, {defaults[name]!r}"


def test_run_without_options_builds_the_default_settings() -> None:
    from detector.options import settings_from

    ctx = cli.commands["run"].make_context("run", [], parent=cli.make_context("detector", ["run"]))
    settings = settings_from(dict(ctx.params))
    assert settings == Settings(consumer=settings.consumer)


# Same name, another meaning: a consumer to check or print ACLs for (any by default), the
# router's own group, consumer, partition count and lease, the name a baseline is saved as.
OTHER_MEANING = {("check", "consumer"), ("acl", "consumer"), ("route", "group"),
                 ("route", "consumer"), ("route", "partitions"), ("route", "lease_ttl_ms"),
                 ("train", "baseline")}  # fmt: skip


def test_other_commands_share_the_run_option_of_a_settings_field() -> None:
    """Where another command takes a settings field, it takes the same default and variable."""
    run = _options("run")
    for command in ("score", "train", "alerts", "check", "acl", "demo", "route"):
        for name, option in _options(command).items():
            if name in run and (command, name) not in OTHER_MEANING:
                assert option.default == run[name].default, f"{command} --{name}"
                assert option.envvar == run[name].envvar, f"{command} --{name}"
                assert option.type.to_info_dict() == run[name].type.to_info_dict(), (
                    f"{command} --{name}"
                )
