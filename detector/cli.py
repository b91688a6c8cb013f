"""Command line: ``detector run | train | score | alerts | check | demo | models``.

Every option can also come from a ``DETECTOR_*`` environment variable and from a TOML config
file (``--config``, keys named like the options); the command line wins over the environment,
which wins over the file. Secrets never come from the command line: the checkpoint key is read
from ``DETECTOR_CHECKPOINT_KEY`` or the file named by ``DETECTOR_CHECKPOINT_KEY_FILE``, the
Redis password from ``DETECTOR_REDIS_PASSWORD`` or ``DETECTOR_REDIS_PASSWORD_FILE`` (a
``--redis-url`` with a password in it is refused); URLs are logged with the password masked.
``detector acl`` prints least-privilege ACL users for a configuration.
Exit codes: 0 ok, 1 runtime or health failure, 2 usage or config, 3 checkpoint refused.
"""

from __future__ import annotations

import logging
import os
import secrets
import ssl
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
import redis
from click.core import ParameterSource

from detector import __version__
from detector.errors import CheckpointError, ConfigError, DetectorError
from detector.logs import configure_logging
from detector.settings import (
    DEFAULT_ALERTS_STREAM,
    DEFAULT_DEAD_LETTER_STREAM,
    DEFAULT_GROUP,
    DEFAULT_MODEL,
    DEFAULT_STREAM,
    HEALTH_KEY,
    EventFormat,
    Settings,
    check_redis_url,
    default_consumer,
    mask_url,
)

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)
EXIT_CHECKPOINT = 3
# Read from the environment only: never options, so never on a command line or in `ps`.
SECRET_ENVVARS = (
    "DETECTOR_CHECKPOINT_KEY",
    "DETECTOR_CHECKPOINT_KEY_FILE",
    "DETECTOR_REDIS_PASSWORD",
    "DETECTOR_REDIS_PASSWORD_FILE",
    # `detector acl`: passwords whose SHA-256 goes into the printed ACL lines.
    "DETECTOR_ACL_WORKER_PASSWORD",
    "DETECTOR_ACL_WORKER_PASSWORD_FILE",
    "DETECTOR_ACL_PRODUCER_PASSWORD",
    "DETECTOR_ACL_PRODUCER_PASSWORD_FILE",
    "DETECTOR_ACL_READER_PASSWORD",
    "DETECTOR_ACL_READER_PASSWORD_FILE",
    "DETECTOR_ACL_ROUTER_PASSWORD",
    "DETECTOR_ACL_ROUTER_PASSWORD_FILE",
)


def _user_dir(env: str, fallback: str) -> Path:
    base = os.environ.get(env)
    return Path(base) if base else Path.home() / fallback


def checkpoint_key() -> bytes:
    """The key that signs checkpoints and baselines, from the environment, never from Redis.

    ``DETECTOR_CHECKPOINT_KEY`` (the key itself), else ``DETECTOR_CHECKPOINT_KEY_FILE`` (a file
    holding it), else a key generated once into a private file of this user
    (``~/.config/detector/checkpoint.key``, mode 0600): fine for one machine; workers on
    several hosts must share a key through the environment.
    """
    if key := os.environ.get("DETECTOR_CHECKPOINT_KEY"):
        return key.encode()
    if key_file := os.environ.get("DETECTOR_CHECKPOINT_KEY_FILE"):
        try:
            return Path(key_file).read_bytes().strip()
        except OSError as exc:
            msg = f"DETECTOR_CHECKPOINT_KEY_FILE: {exc}"
            raise ConfigError(msg) from None
    path = _user_dir("XDG_CONFIG_HOME", ".config") / "detector" / "checkpoint.key"
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        except FileExistsError:
            pass
        except OSError as exc:
            msg = f"no DETECTOR_CHECKPOINT_KEY and cannot create {path}: {exc}"
            raise ConfigError(msg) from None
        log.warning(
            "generated a checkpoint key in %s (set DETECTOR_CHECKPOINT_KEY to share one)", path
        )
    return path.read_bytes().strip()


def _env_secret(name: str) -> str | None:
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
    return _env_secret("DETECTOR_REDIS_PASSWORD")


def redis_options(
    redis_url: str,
    tls_ca_cert: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> dict[str, Any]:
    """redis-py keyword arguments: the password from the environment, and TLS files."""
    from detector.streams import connection_options

    return connection_options(
        redis_url,
        password=redis_password(),
        tls_ca_cert=tls_ca_cert,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )


def _refuse_password_on_command_line(ctx: click.Context, url: str | None) -> None:
    """A --redis-url carrying a password shows in `ps` and shell history: refuse it."""
    if not url or ctx.get_parameter_source("redis_url") is not ParameterSource.COMMANDLINE:
        return
    if mask_url(url) != url:
        msg = (
            "--redis-url carries a password, which the command line exposes (ps, shell "
            "history): put it in DETECTOR_REDIS_PASSWORD or DETECTOR_REDIS_PASSWORD_FILE"
        )
        raise click.UsageError(msg, ctx)


def check_access(client: redis.Redis | redis.RedisCluster, url: str) -> None:
    """Fail fast on credentials or certificates the server will never accept (exit 2).

    The worker retries connection errors forever (Redis restarts), and redis-py reports a
    refused password or TLS handshake as connection errors: check once, before it starts. A
    server that is merely down is left to the worker's retries.
    """
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        msg = f"redis {mask_url(url)} refused the credentials: {exc}"
        raise ConfigError(msg) from None
    except redis.ConnectionError as exc:
        if not _caused_by_tls(exc):
            log.warning("redis %s unavailable, retrying: %s", mask_url(url), exc)
            return
        msg = f"TLS with redis {mask_url(url)} failed: {exc}"
        raise ConfigError(msg) from None
    except redis.ResponseError as exc:  # e.g. a user without +ping: the worker may still run
        log.debug("PING refused: %s", exc)


def _caused_by_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def default_baselines_dir() -> Path:
    return _user_dir("XDG_DATA_HOME", ".local/share") / "detector" / "baselines"


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


def _option(*decls: str, env: str, **kwargs: Any) -> Callable[[F], F]:
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
redis_url_option = _option(
    "--redis-url",
    env="REDIS_URL",
    type=RedisUrl(),
    help="redis://, rediss:// (TLS) or unix:// URL. Without it, an embedded redis-server is "
    "started.",
)
alerts_stream_option = _option(
    "--alerts-stream", env="ALERTS_STREAM", default=DEFAULT_ALERTS_STREAM, show_default=True,
    help="Stream the alerts are appended to.",
)  # fmt: skip
group_option = _option("--group", env="GROUP", default=DEFAULT_GROUP, show_default=True,
                       help="Consumer group the workers share.")  # fmt: skip
model_option = _option(
    "--model",
    env="MODEL",
    default=DEFAULT_MODEL,
    show_default=True,
    help="Model spec: a name from `detector models` or a path to a .toml spec.",
)
baseline_option = _option(
    "--baseline", env="BASELINE", help="Baseline name (from `detector train`) or file path."
)
baselines_dir_option = _option(
    "--baselines-dir", env="BASELINES_DIR", default=default_baselines_dir,
    type=click.Path(file_okay=False, path_type=Path),
    show_default="~/.local/share/detector/baselines",
    help="Where baselines are saved and looked up by name.",
)  # fmt: skip


def _tls_options(f: F) -> F:
    """CA, client certificate and key for rediss:// URLs (verification is always on)."""
    path = click.Path(exists=True, dir_okay=False, path_type=Path)
    for name, env, text in reversed(
        [
            ("--tls-ca-cert", "TLS_CA_CERT", "CA bundle (PEM) that verifies the server."),
            ("--tls-cert", "TLS_CERT", "Client certificate (PEM), if the server asks for one."),
            ("--tls-key", "TLS_KEY", "Private key (PEM) of the client certificate."),
        ]
    ):
        f = _option(name, env=env, type=path, help=text)(f)
    return f


threshold_option = _option(
    "--threshold",
    env="THRESHOLD",
    type=click.FloatRange(0.0, 1.0),
    help="Alert threshold on the calibrated score (default: the model spec's); the spec's "
    "rarity horizon may raise it per producer.",
)


FORMAT_HELP = {
    "producer-field": "Field naming the producer (missing: the stream's name).",
    "time-field": "Event time field, epoch ms or ISO-8601 (missing: the entry id's time).",
    "type-field": "Optional event type field.",
    "payload-field": "Field with a JSON object payload (other fields are flat payload).",
    "max-entry-bytes": "Dead-letter entries larger than this (names and values).",
    "max-fields": "Dead-letter entries with more fields (JSON leaves included).",
    "max-json-depth": "Dead-letter payloads nested deeper.",
    "max-string-len": "Dead-letter entries with a longer value (characters).",
}


def _format_options(f: F) -> F:
    """Where an entry keeps its producer, time, type and payload; input caps."""
    d = EventFormat()
    for name, default in reversed(
        [
            ("producer-field", d.producer_field),
            ("time-field", d.time_field),
            ("type-field", d.type_field),
            ("payload-field", d.payload_field),
            ("max-entry-bytes", d.max_entry_bytes),
            ("max-fields", d.max_fields),
            ("max-json-depth", d.max_json_depth),
            ("max-string-len", d.max_string_len),
        ]
    ):
        env = name.upper().replace("-", "_")
        f = _option(f"--{name}", env=env, default=default, show_default=True,
                    help=FORMAT_HELP[name])(f)  # fmt: skip
    return f


def _event_format(kw: dict[str, Any]) -> EventFormat:
    return EventFormat(
        producer_field=kw.pop("producer_field"),
        time_field=kw.pop("time_field"),
        type_field=kw.pop("type_field"),
        payload_field=kw.pop("payload_field"),
        max_entry_bytes=kw.pop("max_entry_bytes"),
        max_fields=kw.pop("max_fields"),
        max_json_depth=kw.pop("max_json_depth"),
        max_string_len=kw.pop("max_string_len"),
    )


@contextmanager
def redis_url_or_embedded(url: str | None) -> Iterator[str]:
    """The given URL, or an embedded redis-server's for the duration of the block."""
    if url:
        yield url
        return
    from detector.embedded import EmbeddedRedis

    with EmbeddedRedis() as server:
        click.echo(f"embedded redis-server on {server.url}", err=True)
        yield server.url


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


def _global_params() -> list[click.Parameter]:
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


class _Command(click.Command):
    """A command that takes the global options too, and configures logging before it runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_global_params())

    def invoke(self, ctx: click.Context) -> Any:
        level, fmt = global_option(ctx, "log_level"), global_option(ctx, "log_format")
        configure_logging(level, json=fmt == "json")
        return super().invoke(ctx)


class _Group(click.Group):
    command_class = _Command


@click.group(
    cls=_Group,
    params=_global_params(),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="detector")
def cli() -> None:
    """Real-time anomaly detection for Redis Streams."""


@cli.command()
@config_option
@redis_url_option
@_option("--stream", "streams", env="STREAM", multiple=True, default=(DEFAULT_STREAM,),
         show_default=True, help="Input stream (repeat for several).")  # fmt: skip
@group_option
@_option("--consumer", env="CONSUMER", default=default_consumer, show_default="hostname",
         help="Consumer name; keep it stable across restarts.")  # fmt: skip
@alerts_stream_option
@_option("--dead-letter-stream", env="DEAD_LETTER_STREAM", default=DEFAULT_DEAD_LETTER_STREAM,
         show_default=True, help="Where rejected entries go, with a reason.")  # fmt: skip
@model_option
@threshold_option
@_option("--metrics-port", env="METRICS_PORT", type=int, help="Serve Prometheus metrics here.")
@_option("--until-idle", env="UNTIL_IDLE", is_flag=True,
         help="Drain the streams, exit 0 once nothing arrives for --idle-timeout-ms.")  # fmt: skip
@_option("--idle-timeout-ms", env="IDLE_TIMEOUT_MS", default=2000, show_default=True,
         help="Quiet period that ends an --until-idle run.")  # fmt: skip
@_option("--batch-size", env="BATCH_SIZE", default=500, show_default=True,
         help="Entries per read (per stream).")  # fmt: skip
@_option("--block-ms", env="BLOCK_MS", default=1000, show_default=True,
         help="How long one read waits for new entries.")  # fmt: skip
@_option("--claim-idle-ms", env="CLAIM_IDLE_MS", default=60_000, show_default=True,
         help="Claim entries other consumers left pending this long.")  # fmt: skip
@_option("--max-producers", env="MAX_PRODUCERS", default=100_000, show_default=True,
         help="Producers tracked at once (bounds memory).")  # fmt: skip
@_option("--producer-idle-ttl-s", env="PRODUCER_IDLE_TTL_S", default=86_400.0,
         show_default=True, help="Forget a producer silent this long (event time).")  # fmt: skip
@_option("--alerts-maxlen", env="ALERTS_MAXLEN", default=1_000_000, show_default=True,
         help="Approximate cap on the alert and dead-letter streams (XADD MAXLEN ~).")  # fmt: skip
@_option("--checkpoint-every", env="CHECKPOINT_EVERY", default=5000, show_default=True,
         help="Commit state and acks after this many entries ...")  # fmt: skip
@_option("--checkpoint-interval-ms", env="CHECKPOINT_INTERVAL_MS", default=5000,
         show_default=True, help="... or after this long.")  # fmt: skip
@_option("--commit-slice-ms", env="COMMIT_SLICE_MS", default=5.0, show_default=True,
         type=click.FloatRange(0), help="Encode a due commit this long at a time between "
         "reads, so reading never stops for a whole commit (0: all at once).")  # fmt: skip
@_option("--max-deliveries", env="MAX_DELIVERIES", default=10, show_default=True,
         help="Dead-letter a pending entry delivered more often (poison).")  # fmt: skip
@baseline_option
@baselines_dir_option
@_option("--reset-state", env="RESET_STATE", is_flag=True,
         help="Delete this consumer's checkpoint first; the state is relearned.")  # fmt: skip
@_option("--partitions", env="PARTITIONS", type=click.IntRange(1, 1024),
         help="Read the partition streams <stream>:{0..P-1}, one owner per partition "
         "(default: the unpartitioned streams).")  # fmt: skip
@_option("--assign", env="ASSIGN", type=click.Choice(["static", "dynamic"]),
         help="Partition ownership: static (--worker-index/--worker-count) or dynamic (leases "
         "over the live workers; the default without --worker-count).")  # fmt: skip
@_option("--worker-index", env="WORKER_INDEX", type=click.IntRange(0),
         help="Static assignment: this worker owns p with p % count == index.")  # fmt: skip
@_option("--worker-count", env="WORKER_COUNT", type=click.IntRange(1),
         help="Static assignment: the number of workers.")  # fmt: skip
@_option("--lease-ttl-ms", env="LEASE_TTL_MS", default=15_000, show_default=True,
         help="An owner silent this long loses its partitions (late commits refused).")  # fmt: skip
@_option("--cluster", env="CLUSTER", is_flag=True,
         help="--redis-url names a Redis Cluster node: use a cluster client.")  # fmt: skip
@_option("--status-interval-s", env="STATUS_INTERVAL_S", default=10.0, show_default=True,
         type=click.FloatRange(0), help="Log a status line (events/s, lag, alerts, dead "
         "letters, producers) this often; on a terminal, a live line (0: off).")  # fmt: skip
@_format_options
@_tls_options
def run(**kw: Any) -> None:
    """Consume streams through a consumer group, score every event, emit alerts."""
    from detector.baselines import baseline_path
    from detector.streams import connect
    from detector.worker import Worker

    fmt = _event_format(kw)
    url = kw.pop("redis_url")
    _refuse_password_on_command_line(click.get_current_context(), url)
    baseline, directory = kw.pop("baseline"), kw.pop("baselines_dir")
    path = baseline_path(baseline, directory) if baseline else None
    if kw["cluster"] and not url:
        msg = "--cluster needs --redis-url (a node of the cluster)"
        raise click.UsageError(msg)
    settings = Settings(
        event_format=fmt,
        checkpoint_key=checkpoint_key(),
        baseline=path,
        # The embedded server has no password: the environment's is for --redis-url.
        redis_password=redis_password() if url else None,
        **kw,
    )
    with redis_url_or_embedded(url) as real_url:
        settings = _replace(settings, redis_url=real_url)
        log.info("redis %s, streams %s", mask_url(real_url), ", ".join(settings.streams))
        client = connect(
            real_url,
            block_ms=settings.block_ms,
            password=settings.redis_password,
            tls_ca_cert=settings.tls_ca_cert,
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
            cluster=settings.cluster,
        )
        check_access(client, real_url)
        worker = Worker(settings, client)
        if settings.metrics_port is not None:
            worker.metrics.serve(settings.metrics_port)
        stats = worker.run()
    click.echo(
        f"processed {stats.events} events ({stats.invalid} dead-lettered) in "
        f"{stats.busy_s:.2f}s: {stats.events_per_s:,.0f} events/s, {stats.alerts} alerts",
        err=True,
    )


def _replace(settings: Settings, **changes: Any) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)


@cli.command()
@config_option
@_option("--input", "input_path", env="INPUT", required=True,
         type=click.Path(exists=True, dir_okay=False, path_type=Path),
         help="JSONL (one entry's fields per line) or CSV (header = field names).")  # fmt: skip
@_option("--output", "output_path", env="OUTPUT", required=True,
         type=click.Path(dir_okay=False, writable=True, path_type=Path),
         help="CSV: producer,event_time,score,alert (one row per input event).")  # fmt: skip
@model_option
@threshold_option
@_option("--stream", env="STREAM", default=DEFAULT_STREAM, show_default=True,
         help="Stream the events count as coming from (producer fallback, alert ids).")  # fmt: skip
@_option("--max-producers", env="MAX_PRODUCERS", default=100_000, show_default=True,
         help="Producers tracked at once (bounds memory).")  # fmt: skip
@_option("--producer-idle-ttl-s", env="PRODUCER_IDLE_TTL_S", default=86_400.0,
         show_default=True, help="Forget a producer silent this long (event time).")  # fmt: skip
@baseline_option
@baselines_dir_option
@_format_options
def score(**kw: Any) -> None:
    """Score a file offline with exactly the code `run` uses (a backtest with --baseline)."""
    from detector.baselines import baseline_path
    from detector.checkpoint import Signer
    from detector.offline import score_file

    fmt = _event_format(kw)
    baseline, directory = kw.pop("baseline"), kw.pop("baselines_dir")
    counts = score_file(
        kw["input_path"],
        kw["output_path"],
        model=kw["model"],
        threshold=kw["threshold"],
        stream=kw["stream"],
        event_format=fmt,
        max_producers=kw["max_producers"],
        idle_ttl_ms=int(kw["producer_idle_ttl_s"] * 1000),
        baseline=baseline_path(baseline, directory) if baseline else None,
        signer=Signer(checkpoint_key()) if baseline else None,
    )
    click.echo(
        f"scored {counts.events} events: {counts.alerts} alerts, {counts.warmup} in warm-up, "
        f"{counts.invalid} invalid",
        err=True,
    )
    click.echo("alerts each threshold would have produced (cooldown included):", err=True)
    for t, n in counts.by_threshold.items():
        click.echo(f"  {t:<9} {n}", err=True)


@cli.command()
@config_option
@_option("--baseline", env="BASELINE", required=True, help="Name (or path) to save it as.")
@baselines_dir_option
@_option("--input", "input_path", env="INPUT",
         type=click.Path(exists=True, dir_okay=False, path_type=Path),
         help="Learn from a JSONL or CSV file ...")  # fmt: skip
@_option("--redis-url", env="REDIS_URL", type=RedisUrl(),
         help="... or from a stream on this Redis.")  # fmt: skip
@_option("--stream", env="STREAM", default=DEFAULT_STREAM, show_default=True,
         help="Stream to learn from (with --redis-url).")  # fmt: skip
@_option("--from", "start", env="FROM", help="First entry id or time (epoch ms, ISO-8601).")
@_option("--to", "end", env="TO", help="Last entry id or time.")
@model_option
@_format_options
@_tls_options
def train(**kw: Any) -> None:
    """Learn a baseline from history, as fast as the machine allows."""
    from detector import baselines
    from detector.checkpoint import Signer
    from detector.events import Decoder
    from detector.offline import read_records
    from detector.pipeline import Pipeline
    from detector.scoring import load_spec

    fmt = _event_format(kw)
    _refuse_password_on_command_line(click.get_current_context(), kw["redis_url"])
    if bool(kw["input_path"]) == bool(kw["redis_url"]):
        msg = "give exactly one of --input and --redis-url"
        raise click.UsageError(msg)
    path = baselines.baseline_path(kw["baseline"], kw["baselines_dir"])
    signer = Signer(checkpoint_key())
    pipeline = Pipeline(load_spec(kw["model"]))
    decoder = Decoder(fmt)
    stream = kw["stream"]
    entries: Iterator[tuple[str, dict[bytes, bytes]]]
    if kw["input_path"]:
        records = read_records(kw["input_path"])
        entries = (
            (eid or f"0-{n}", f) for n, (eid, f) in enumerate(records) if not isinstance(f, str)
        )
        total = None
    else:
        tls = (kw["tls_ca_cert"], kw["tls_cert"], kw["tls_key"])
        client = redis.Redis.from_url(
            kw["redis_url"], socket_timeout=30, **redis_options(kw["redis_url"], *tls)
        )
        start = baselines.stream_bound(kw["start"], "-")
        end = baselines.stream_bound(kw["end"], "+")
        entries = baselines.read_stream(client, stream, start, end)
        total = int(client.xlen(stream))
    with _progress(total) as advance:
        learned, rejected = baselines.learn(pipeline, decoder, stream, entries, advance)
    baselines.save(pipeline, path, signer)
    click.echo(
        f"baseline {path}: learned {learned} events from {len(pipeline.store)} producers "
        f"({rejected} rejected)",
        err=True,
    )


@contextmanager
def _progress(total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal, nothing elsewhere."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("learning", total=total)
        yield lambda n: bar.advance(task, n)


@cli.command()
@config_option
@redis_url_option
@alerts_stream_option
@_option("--follow", "-f", env="FOLLOW", is_flag=True, help="Keep printing new alerts.")
@_option("--json", "as_json", env="JSON", is_flag=True, help="One JSON object per line.")
@_option("--count", env="COUNT", default=100, show_default=True, help="Latest alerts to show.")
@_tls_options
def alerts(
    redis_url: str | None,
    alerts_stream: str,
    follow: bool,
    as_json: bool,
    count: int,
    **tls: Path | None,
) -> None:
    """Print alerts from the alert stream."""
    if not redis_url:
        msg = "alerts needs --redis-url (or DETECTOR_REDIS_URL)"
        raise click.UsageError(msg)
    _refuse_password_on_command_line(click.get_current_context(), redis_url)
    from detector.alert_reader import AlertReader
    from detector.console import alert_line

    r = redis.Redis.from_url(
        redis_url, decode_responses=True, socket_timeout=30, **redis_options(redis_url, **tls)
    )
    # Through Redis restarts: the reader reconnects and goes on after the last alert shown.
    reader = AlertReader(r, alerts_stream, block_ms=5000)
    for entry in reader.tail(count):
        click.echo(_show(entry.fields, as_json, alert_line))
    for entry in reader.read(follow=follow):
        click.echo(_show(entry.fields, as_json, alert_line))


def _show(fields: dict[str, str], as_json: bool, line: Callable[[dict[str, str]], str]) -> str:
    if not as_json:
        return line(fields)
    out: dict[str, Any] = dict(fields)
    with suppress(orjson.JSONDecodeError):
        out["reasons"] = orjson.loads(fields.get("reasons", "[]"))
    return orjson.dumps(out).decode()


@cli.command()
@config_option
@redis_url_option
@group_option
@_option("--consumer", env="CONSUMER", default=None,
         help="Check this consumer (default: any live consumer of the group).")  # fmt: skip
@_tls_options
def check(redis_url: str | None, group: str, consumer: str | None, **tls: Path | None) -> None:
    """Exit 0 if a worker is alive (fresh health key), else 1. For healthchecks."""
    if not redis_url:
        msg = "check needs --redis-url (or DETECTOR_REDIS_URL)"
        raise click.UsageError(msg)
    _refuse_password_on_command_line(click.get_current_context(), redis_url)
    options = redis_options(redis_url, **tls)
    try:
        r = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5, **options)
        if consumer:
            keys = [HEALTH_KEY.format(group=group, consumer=consumer)]
        else:
            pattern = HEALTH_KEY.format(group=group, consumer="*")
            keys = list(r.scan_iter(match=pattern, count=1000))
        values = [v for v in (r.get(k) for k in keys) if v]
    except redis.RedisError as exc:
        click.echo(f"unhealthy: {exc}", err=True)
        sys.exit(1)
    if not values:
        click.echo("unhealthy: no live worker", err=True)
        sys.exit(1)
    for v in values:
        click.echo(v.decode() if isinstance(v, bytes) else v)


@cli.command()
@_option("--stream", "streams", env="STREAM", multiple=True, default=(DEFAULT_STREAM,),
         show_default=True, help="Input stream (repeat for several).")  # fmt: skip
@group_option
@_option("--consumer", env="CONSUMER", default=None,
         help="Pin the checkpoint and health keys to this consumer (default: any consumer "
         "of the group).")  # fmt: skip
@alerts_stream_option
@_option("--dead-letter-stream", env="DEAD_LETTER_STREAM", default=DEFAULT_DEAD_LETTER_STREAM,
         show_default=True, help="Where rejected entries go, with a reason.")  # fmt: skip
@_option("--worker-user", env="ACL_WORKER_USER", default="detector-worker", show_default=True,
         help="ACL user of the workers.")  # fmt: skip
@_option("--producer-user", env="ACL_PRODUCER_USER", default="detector-producer",
         show_default=True, help="ACL user of the producers (XADD to the input).")  # fmt: skip
@_option("--reader-user", env="ACL_READER_USER", default="detector-reader", show_default=True,
         help="ACL user of alert readers (`detector alerts`, `check`).")  # fmt: skip
@_option("--redis-version", env="ACL_REDIS_VERSION", type=click.Choice(["7.0", "7.2+"]),
         default="7.0", show_default=True,
         help="7.2+ also grants CLIENT SETINFO (refused on 7.0).")  # fmt: skip
@_option("--partitioned", env="ACL_PARTITIONED", is_flag=True,
         help="For workers run with --partitions (any P; leases, partition streams); also "
         "prints the router user.")  # fmt: skip
@_option("--router-user", env="ACL_ROUTER_USER", default="detector-router", show_default=True,
         help="ACL user of `detector route` (with --partitioned).")  # fmt: skip
@_option("--router-source", "sources", env="ACL_ROUTER_SOURCE", multiple=True,
         help="Streams `detector route --source` reads (default: the --stream names).")  # fmt: skip
@_option("--router-group", env="ACL_ROUTER_GROUP", default="detector-router", show_default=True,
         help="Consumer group of `detector route` on its sources.")  # fmt: skip
def acl(
    streams: tuple[str, ...],
    group: str,
    consumer: str | None,
    alerts_stream: str,
    dead_letter_stream: str,
    worker_user: str,
    producer_user: str,
    reader_user: str,
    redis_version: str,
    partitioned: bool,
    router_user: str,
    sources: tuple[str, ...],
    router_group: str,
) -> None:
    """Print least-privilege ACL SETUSER lines: worker, producers, alert readers (and, with
    --partitioned, the router).

    Passwords are read from DETECTOR_ACL_{WORKER,PRODUCER,READER,ROUTER}_PASSWORD (or the files
    named by the same names + _FILE) and printed only as SHA-256 hashes; without them,
    placeholders that Redis refuses until replaced.
    """
    from detector.acl import ROLES, AclConfig, acl_lines

    cfg = AclConfig(
        streams=streams,
        group=group,
        consumer=consumer,
        alerts_stream=alerts_stream,
        dead_letter_stream=dead_letter_stream,
        worker_user=worker_user,
        producer_user=producer_user,
        reader_user=reader_user,
        redis_version=redis_version,
        partitioned=partitioned,
        router_user=router_user,
        sources=sources or None,
        router_group=router_group,
    )
    passwords = {role: _env_secret(f"DETECTOR_ACL_{role.upper()}_PASSWORD") for role in ROLES}
    for line in acl_lines(cfg, passwords):
        click.echo(line)


@cli.command()
def models() -> None:
    """List the shipped model specs."""
    from detector.scoring import available_models

    for name, description in available_models().items():
        mark = " (default)" if name == DEFAULT_MODEL else ""
        click.echo(f"{name}{mark}: {description}")


@cli.command()
@config_option
@redis_url_option
@model_option
@threshold_option
@_option("--seed", env="SEED", default=7, show_default=True,
         help="Random seed of the simulated shop and its incidents.")  # fmt: skip
@_option("--hours", env="HOURS", default=6.0, show_default=True,
         help="Event-time span of the simulated shop.")  # fmt: skip
@_option("--speed", env="SPEED", default=900.0, show_default=True,
         help="Event-time seconds replayed per wall second (0: as fast as possible).")  # fmt: skip
@_option("--metrics-port", env="METRICS_PORT", type=int, help="Serve Prometheus metrics here.")
def demo(redis_url: str | None, model: str, threshold: float | None, seed: int, hours: float,
         speed: float, metrics_port: int | None) -> None:  # fmt: skip
    """Simulate a shop with injected incidents and watch the detector catch them."""
    from detector.demo import run_demo

    logging.getLogger("detector").setLevel(logging.WARNING)  # the demo prints its own story
    with redis_url_or_embedded(redis_url) as url:
        ok = run_demo(
            url,
            model=model,
            threshold=threshold,
            seed=seed,
            hours=hours,
            speed=speed,
            metrics_port=metrics_port,
        )
    if not ok:
        sys.exit(1)


@cli.command()
@config_option
@redis_url_option
@_option("--source", env="ROUTE_SOURCE", default=DEFAULT_STREAM, show_default=True,
         help="The unpartitioned stream producers write to.")  # fmt: skip
@_option("--stream", env="STREAM", default=DEFAULT_STREAM, show_default=True,
         help="Base of the partition streams (<stream>:{p}): the workers' --stream.")  # fmt: skip
@_option("--partitions", env="PARTITIONS", type=int, required=True,
         help="Partition count P, the same as the workers'.")  # fmt: skip
@_option("--group", env="ROUTER_GROUP", default="detector-router", show_default=True,
         help="The router's consumer group on --source.")  # fmt: skip
@_option("--consumer", env="ROUTER_CONSUMER", default="router", show_default=True,
         help="Consumer name of this router in its group.")  # fmt: skip
@_option("--dead-letter-stream", env="DEAD_LETTER_STREAM", default=DEFAULT_DEAD_LETTER_STREAM,
         show_default=True, help="Where rejected entries go, with a reason.")  # fmt: skip
@_option("--producer-field", env="PRODUCER_FIELD", default=EventFormat().producer_field,
         show_default=True, help=FORMAT_HELP["producer-field"])  # fmt: skip
@_option("--max-entry-bytes", env="MAX_ENTRY_BYTES", default=EventFormat().max_entry_bytes,
         show_default=True, help=FORMAT_HELP["max-entry-bytes"])  # fmt: skip
@_option("--max-fields", env="MAX_FIELDS", default=EventFormat().max_fields, show_default=True,
         help=FORMAT_HELP["max-fields"])  # fmt: skip
@_option("--batch-size", env="BATCH_SIZE", default=500, show_default=True,
         help="Entries per read (per stream).")  # fmt: skip
@_option("--block-ms", env="BLOCK_MS", default=1000, show_default=True,
         help="How long one read waits for new entries.")  # fmt: skip
@_option("--maxlen", env="ROUTE_MAXLEN", default=0, show_default=True,
         help="Cap each partition stream at about this many entries (0: no cap).")  # fmt: skip
@_option("--lease-ttl-ms", env="ROUTER_LEASE_TTL_MS", default=10_000, show_default=True,
         help="Only the holder of this lease routes --source; others wait.")  # fmt: skip
@_option("--until-idle", env="UNTIL_IDLE", is_flag=True,
         help="Exit 0 once nothing arrives for --idle-timeout-ms.")  # fmt: skip
@_option("--idle-timeout-ms", env="IDLE_TIMEOUT_MS", default=2000, show_default=True,
         help="Quiet period that ends an --until-idle run.")  # fmt: skip
@_option("--cluster", env="CLUSTER", is_flag=True,
         help="--redis-url names one node of a Redis Cluster.")  # fmt: skip
@_tls_options
def route(**kw: Any) -> None:
    """Re-key an unpartitioned stream into the partition streams, by producer."""
    import signal
    import threading

    from detector.router import Router, RouterConfig
    from detector.streams import connect

    url = kw.pop("redis_url")
    if not url:
        msg = "route needs --redis-url (or DETECTOR_REDIS_URL)"
        raise click.UsageError(msg)
    _refuse_password_on_command_line(click.get_current_context(), url)
    fmt = EventFormat(
        producer_field=kw["producer_field"],
        max_entry_bytes=kw["max_entry_bytes"],
        max_fields=kw["max_fields"],
    )
    config = RouterConfig(
        source=kw["source"],
        base=kw["stream"],
        partitions=kw["partitions"],
        group=kw["group"],
        consumer=kw["consumer"],
        dead_letter_stream=kw["dead_letter_stream"],
        event_format=fmt,
        batch_size=kw["batch_size"],
        block_ms=kw["block_ms"],
        maxlen=kw["maxlen"],
        lease_ttl_ms=kw["lease_ttl_ms"],
    )
    client = connect(
        url,
        block_ms=config.block_ms,
        password=redis_password(),
        tls_ca_cert=kw["tls_ca_cert"],
        tls_cert=kw["tls_cert"],
        tls_key=kw["tls_key"],
        cluster=kw["cluster"],
    )
    check_access(client, url)
    router = Router(config, client)
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info("stopping after the current batch (signal %d)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    log.info("routing %s into %s:{0..%d}", config.source, config.base, config.partitions - 1)
    stats = router.run(until_idle=kw["until_idle"], idle_timeout_ms=kw["idle_timeout_ms"],
                       stop=stop)  # fmt: skip
    click.echo(
        f"routed {stats.routed} entries ({stats.duplicates} already routed, "
        f"{stats.dead_lettered} dead-lettered, {stats.trimmed} trimmed before routing)",
        err=True,
    )


def main() -> None:
    """Entry point: map errors to exit codes once."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except CheckpointError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CHECKPOINT)
    except DetectorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except redis.RedisError as exc:
        click.echo(f"redis error: {exc}", err=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
