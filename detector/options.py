"""Command-line options: generated from the settings' fields, the config file, global options.

Each :class:`~detector.core.settings.Settings` (and :class:`~detector.core.settings.EventFormat`)
field with an ``option`` in its metadata becomes one click option: its name, type, default and help
come from the field, so a default is written once, in the dataclass. Every option can also come
from a ``DETECTOR_*`` environment variable and from a TOML config file (``--config``, keys named
like the options); the command line wins over the environment, which wins over the file.
"""

from __future__ import annotations

import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from detector.core.errors import ConfigError, InvalidEventError
from detector.core.settings import (
    EventFormat,
    OptionSpec,
    Settings,
    default_baselines_dir,
    mask_url,
)
from detector.gateway.connection import check_redis_url, check_sentinel_address
from detector.logs import configure_logging

F = TypeVar("F", bound=Callable[..., Any])


def env_option(*decls: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option that also reads ``DETECTOR_<env>``, shown in the help."""
    return click.option(*decls, envvar=f"DETECTOR_{env}", show_envvar=True, **kwargs)


class RedisUrl(click.types.StringParamType):
    """A Redis URL, checked while the options are parsed: a bad one is a usage error (exit 2)
    wherever it comes from (flag, environment, config file)."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        url = super().convert(value, param, ctx)
        if not url:
            return url  # as if not given: the embedded server, or "needs --redis-url"
        try:
            return check_redis_url(url)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class SentinelAddress(click.types.StringParamType):
    """A Sentinel's ``HOST:PORT``, checked while the options are parsed (exit 2)."""

    name = "host:port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        address = super().convert(value, param, ctx)
        try:
            return check_sentinel_address(address)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class EventTime(click.types.StringParamType):
    """An event time, epoch ms or ISO-8601 (naive: UTC), as epoch ms; a bad one is a usage
    error."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        from detector.core.events import parse_time_ms  # not at start-up: compiled core

        try:
            return parse_time_ms(str(super().convert(value, param, ctx)).encode())
        except InvalidEventError:
            self.fail(f"{value!r} is neither epoch ms nor ISO-8601", param, ctx)


# -- options generated from the settings' fields ------------------------------------------------

_OPTION_FIELDS: dict[str, Field[Any]] = {
    f.name: f for cls in (Settings, EventFormat) for f in fields(cls) if "option" in f.metadata
}
_HINTS = {**typing.get_type_hints(EventFormat), **typing.get_type_hints(Settings)}
# Types the annotation does not say: a checked URL; a baseline's name (or path), which
# --baselines-dir resolves into Settings.baseline.
_TYPES: dict[str, click.ParamType[Any]] = {
    "redis_url": RedisUrl(),
    "baseline": click.STRING,
    "sentinels": SentinelAddress(),
}


def _click_type(name: str, spec: OptionSpec) -> dict[str, Any]:
    """click's ``type`` (and ``is_flag``, ``multiple``) from the field's annotation."""
    hint = _HINTS[name]
    if isinstance(hint, types.UnionType):  # `int | None`: the option may be absent
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if name in _TYPES:
        multiple = typing.get_origin(hint) is tuple
        return {"type": _TYPES[name], "multiple": True} if multiple else {"type": _TYPES[name]}
    if hint is bool:
        return {"is_flag": True}
    if typing.get_origin(hint) is tuple:  # tuple[str, ...]: repeat the option
        return {"multiple": True, "type": typing.get_args(hint)[0]}
    if hint is Path:  # an input file (TLS certificates and keys)
        return {"type": click.Path(exists=True, dir_okay=False, path_type=Path)}
    if spec.choices is not None:
        return {"type": click.Choice(spec.choices)}
    if spec.low is not None or spec.high is not None:
        if hint is int:
            low, high = (None if b is None else int(b) for b in (spec.low, spec.high))
            return {"type": click.IntRange(low, high)}
        return {"type": click.FloatRange(spec.low, spec.high)}
    return {"type": hint}


def setting_option(name: str, *, help: str | None = None) -> Callable[[F], F]:
    """The option of a settings field; ``help`` words it for a command that uses it otherwise."""
    f = _OPTION_FIELDS[name]
    spec: OptionSpec = f.metadata["option"]
    flag = spec.flag or name.replace("_", "-")
    default = f.default if f.default is not MISSING else f.default_factory
    return env_option(
        f"--{flag}",
        name,
        env=flag.upper().replace("-", "_"),
        default=default,
        show_default=spec.shown_default or True,
        help=help or spec.help,
        **_click_type(name, spec),
    )


def setting_options(*names: str) -> Callable[[F], F]:
    """The options of these settings fields, in this order."""
    return lambda f: _apply(f, [setting_option(name) for name in names])


def _apply(f: F, decorators: list[Callable[[F], F]]) -> F:
    """Decorate so that the options show in the list's order."""
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


baselines_dir_option = env_option(
    "--baselines-dir", env="BASELINES_DIR", default=default_baselines_dir,
    type=click.Path(file_okay=False, path_type=Path),
    show_default="~/.local/share/detector/baselines",
    help="Where baselines are saved and looked up by name.",
)  # fmt: skip


def baseline_options(f: F) -> F:
    """``--baseline`` and the directory its names are looked up in."""
    return _apply(f, [setting_option("baseline"), baselines_dir_option])


def format_options(f: F) -> F:
    """Where an entry keeps its producer, time, type and payload; input caps."""
    names = [x.name for x in fields(EventFormat) if x.name in _OPTION_FIELDS]
    return setting_options(*names)(f)


def sentinel_options(f: F) -> F:
    """``--sentinel`` (repeatable), ``--sentinel-master``, ``--sentinel-user``: the primary,
    found through Sentinel instead of ``--redis-url``'s host."""
    return setting_options("sentinels", "sentinel_master", "sentinel_user")(f)


def tls_options(f: F) -> F:
    """CA, client certificate and key for rediss:// URLs (verification is always on)."""
    return setting_options("tls_ca_cert", "tls_cert", "tls_key")(f)


def settings_options(f: F) -> F:
    """Every option of a worker's settings, in the fields' order."""
    decorators: list[Callable[[F], F]] = []
    for x in fields(Settings):
        if x.name == "event_format":
            decorators.append(format_options)
        elif x.name == "baseline":
            decorators.append(baseline_options)
        elif x.name in _OPTION_FIELDS:
            decorators.append(setting_option(x.name))
    return _apply(f, decorators)


def event_format(kw: dict[str, Any]) -> EventFormat:
    """The event format from the parsed options (taken out of ``kw``)."""
    names = [x.name for x in fields(EventFormat) if x.name in _OPTION_FIELDS]
    return EventFormat(**{name: kw.pop(name) for name in names})


def baseline_path(kw: dict[str, Any]) -> Path | None:
    """The baseline the options name, resolved in --baselines-dir (taken out of ``kw``)."""
    from detector.baselines import baseline_path

    name, directory = kw.pop("baseline"), kw.pop("baselines_dir")
    return baseline_path(name, directory) if name else None


def settings_from(kw: dict[str, Any], **secrets: Any) -> Settings:
    """Settings from the parsed options of :func:`settings_options` and the secrets."""
    fmt, baseline = event_format(kw), baseline_path(kw)
    return Settings(event_format=fmt, baseline=baseline, **kw, **secrets)


def refuse_password_on_command_line(ctx: click.Context, url: str | None) -> None:
    """A --redis-url carrying a password shows in `ps` and shell history: refuse it."""
    if not url or ctx.get_parameter_source("redis_url") is not ParameterSource.COMMANDLINE:
        return
    if mask_url(url) != url:
        msg = (
            "--redis-url carries a password, which the command line exposes (ps, shell "
            "history): put it in DETECTOR_REDIS_PASSWORD or DETECTOR_REDIS_PASSWORD_FILE"
        )
        raise click.UsageError(msg, ctx)


# -- the config file ----------------------------------------------------------------------------


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Eager: read the TOML file into the command's defaults before other options resolve."""
    if not value:
        return
    try:
        data = tomllib.loads(Path(value).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    # Keys are option names (`stream`, `idle-timeout-ms` or `idle_timeout_ms`).
    known: dict[str, click.Option] = {}
    for p in ctx.command.params:
        if isinstance(p, click.Option) and p.name and p.name != "config":
            for opt in p.opts:
                known[opt.lstrip("-").replace("-", "_")] = p
    defaults = {}
    for key, val in data.items():
        option = known.get(key.replace("-", "_"))
        if option is None or option.name is None:
            msg = f"unknown key {key!r} in {value} (known: {', '.join(sorted(known))})"
            raise click.BadParameter(msg, ctx, param)
        if option.multiple and isinstance(val, str):
            val = [val]  # `stream = "orders"` as well as `stream = ["orders"]`
        # Check the type here: click would blame the option's environment variable.
        try:
            option.type_cast_value(ctx, val)
        except click.BadParameter as exc:
            msg = f"{value}: key {key!r}: {exc.message}"
            raise click.BadParameter(msg, ctx, param) from None
        except (AttributeError, TypeError, ValueError):  # a TOML type click does not expect
            msg = f"{value}: key {key!r}: {val!r} is not a valid {option.type.name}"
            raise click.BadParameter(msg, ctx, param) from None
        defaults[option.name] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


config_option = click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False),
    envvar="DETECTOR_CONFIG",
    show_envvar=True,
    is_eager=True,
    expose_value=False,
    callback=_load_config,
    help="TOML file with option values (keys named like the options).",
)


# -- global options: before or after the command's name -----------------------------------------


def _remember_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Keep a global option's value in ``ctx.meta`` (shared by the group and the command).

    A global option goes before or after the command's name. A command-line value wins over
    the environment and the config file wherever it stands; the later one over the earlier.
    """
    key, flag = f"detector.{param.name}", ParameterSource.COMMANDLINE
    source = ctx.get_parameter_source(param.name or "")
    earlier = ctx.meta.get(key)
    if earlier is None or source is flag or earlier[1] is not flag:
        ctx.meta[key] = (value, source)


def global_option(ctx: click.Context, name: str) -> Any:
    """A global option's value (``log_level``, ``log_format``), wherever it was given."""
    return ctx.meta[f"detector.{name}"][0]


def global_params() -> list[click.Parameter]:
    """Options of the group that every command also takes (`detector run --log-format json`)."""
    levels = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False)
    common: dict[str, Any] = dict(show_envvar=True, expose_value=False, callback=_remember_global)
    return [
        click.Option(["--log-level"], envvar="DETECTOR_LOG_LEVEL", type=levels, default="INFO",
                     show_default=True, help="Log level.", **common),
        click.Option(["--log-format"], envvar="DETECTOR_LOG_FORMAT",
                     type=click.Choice(["text", "json"]), default="text", show_default=True,
                     help="text for people; json (one object a line) for log pipelines.",
                     **common),
    ]  # fmt: skip


class Command(click.Command):
    """A command that takes the global options too, and configures logging before it runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(global_params())

    def invoke(self, ctx: click.Context) -> Any:
        level, fmt = global_option(ctx, "log_level"), global_option(ctx, "log_format")
        configure_logging(level, json=fmt == "json")
        return super().invoke(ctx)


class Group(click.Group):
    """The ``detector`` group: its commands take the global options."""

    command_class = Command
