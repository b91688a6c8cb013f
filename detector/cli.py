"""Command line: ``detector run | train | score | plot | alerts | feedback | notify | check | acl
| demo | route | models``.

The commands only parse options (detector.options: generated from the settings' fields, also
from ``DETECTOR_*`` variables and a ``--config`` TOML file), call the package and print.
Secrets never come from the command line (detector.gateway.secrets); the Redis connection policy
(URL check, password and TLS files, access check, embedded server) is detector.gateway.connection.
``detector acl`` prints least-privilege ACL users for a configuration.
Exit codes: 0 ok, 1 runtime or health failure, 2 usage or config, 3 checkpoint refused.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click
import orjson
import redis

from detector import __version__, compiled
from detector.core.errors import CheckpointError, ConfigError, DetectorError
from detector.core.settings import (
    DEFAULT_FEEDBACK_STREAM,
    DEFAULT_MODEL,
    DEFAULT_STREAM,
    HEALTH_KEY,
    NOTIFY_DEAD_LETTER_STREAM,
    NOTIFY_GROUP,
    EventFormat,
    default_consumer,
)
from detector.gateway.connection import (
    command_client,
    connect_checked,
    describe,
    redis_url_or_embedded,
    sentinel_target,
)
from detector.gateway.secrets import (
    env_secret,
    load_checkpoint_secret,
    redis_password,
    sentinel_password,
)
from detector.gateway.streams import Client, connect_kwargs
from detector.options import (
    EventTime,
    Group,
    baseline_options,
    baselines_dir_option,
    config_option,
    env_option,
    event_format,
    format_options,
    global_params,
    refuse_password_on_command_line,
    sentinel_options,
    setting_option,
    setting_options,
    settings_from,
    settings_options,
    tls_options,
)
from detector.options import baseline_path as resolve_baseline

if TYPE_CHECKING:
    from detector.offline import Scoring

log = logging.getLogger(__name__)
EXIT_CHECKPOINT = 3


def _version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"detector {__version__}, {compiled.describe()}")
        ctx.exit()


@click.group(
    cls=Group,
    params=global_params(),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version, and whether the core runs compiled, and exit.")  # fmt: skip
def cli() -> None:
    """Real-time anomaly detection for Redis Streams."""


@cli.command()
@config_option
@settings_options
def run(**kw: Any) -> None:
    """Consume streams through a consumer group, score every event, emit alerts."""
    from detector.runtime.worker import Worker

    compiled.warn_if_pure()

    url, sentinels = kw["redis_url"], kw["sentinels"]
    refuse_password_on_command_line(click.get_current_context(), url)
    if kw["cluster"] and not url:
        msg = "--cluster needs --redis-url (a node of the cluster)"
        raise click.UsageError(msg)
    settings = settings_from(
        kw,
        checkpoint_secret=load_checkpoint_secret(),
        # The embedded server has no password: the environment's is for --redis-url.
        redis_password=redis_password() if url or sentinels else None,
        sentinel_password=sentinel_password() if sentinels else None,
    )
    # Through Sentinel, the URL (optional) gives only scheme, user and database: no embedded.
    with nullcontext(url) if sentinels else redis_url_or_embedded(url) as real_url:
        settings = replace(settings, redis_url=real_url)
        kwargs = connect_kwargs(settings)
        where = describe(real_url, kwargs["sentinel"])
        log.info("redis %s, streams %s", where, ", ".join(settings.streams))
        client = connect_checked(real_url or "", **kwargs)
        worker = Worker(settings, client)
        if settings.metrics_port is not None:
            worker.metrics.serve(settings.metrics_port)
        stats = worker.run()
    click.echo(
        f"processed {stats.events} events ({stats.invalid} dead-lettered) in "
        f"{stats.busy_s:.2f}s: {stats.events_per_s:,.0f} events/s, {stats.alerts} alerts",
        err=True,
    )


input_option = env_option(
    "--input", "input_path", env="INPUT", required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL (one entry's fields per line) or CSV (header = field names).",
)  # fmt: skip


def scoring_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of offline scoring (``score``, ``plot``): model, threshold, stream,
    bounds, ``--baseline`` and the event format."""
    f = format_options(f)
    f = baseline_options(f)
    f = setting_options("max_producers", "producer_idle_ttl_s")(f)
    f = env_option("--feedback", env="FEEDBACK_FILE", default=None,
                   type=click.Path(exists=True, dir_okay=False, path_type=Path),
                   help="Analyst feedback to apply between the events by entry id (JSONL: one "
                   "feedback entry's fields and its _id per line).")(f)  # fmt: skip
    f = env_option("--stream", env="STREAM", default=DEFAULT_STREAM, show_default=True,
                   help="Stream the events count as coming from (producer fallback, alert "
                   "ids).")(f)  # fmt: skip
    return setting_options("model", "threshold")(f)


def scoring_from(kw: dict[str, Any]) -> Scoring:
    """How to score, from the options of :func:`scoring_options` (taken out of ``kw``)."""
    from detector.core.checkpoint import Signer
    from detector.offline import Scoring

    baseline = resolve_baseline(kw)
    return Scoring(
        model=kw.pop("model"),
        threshold=kw.pop("threshold"),
        stream=kw.pop("stream"),
        event_format=event_format(kw),
        max_producers=kw.pop("max_producers"),
        idle_ttl_ms=int(kw.pop("producer_idle_ttl_s") * 1000),
        baseline=baseline,
        signer=Signer(load_checkpoint_secret()) if baseline else None,
        feedback=kw.pop("feedback"),
    )


@cli.command()
@config_option
@input_option
@env_option("--output", "output_path", env="OUTPUT", required=True,
            type=click.Path(dir_okay=False, writable=True, path_type=Path),
            help="CSV: producer,event_time,score,alert (one row per input event).")  # fmt: skip
@scoring_options
def score(**kw: Any) -> None:
    """Score a file offline with exactly the code `run` uses (a backtest with --baseline)."""
    from detector.offline import score_file

    compiled.warn_if_pure()

    counts = score_file(kw["input_path"], kw["output_path"], scoring_from(kw))
    click.echo(
        f"scored {counts.events} events: {counts.alerts} alerts, {counts.warmup} in warm-up, "
        f"{counts.invalid} invalid",
        err=True,
    )
    click.echo("alerts each threshold would have produced (cooldown included):", err=True)
    for t, n in counts.by_threshold.items():
        click.echo(f"  {t:<9} {n}", err=True)


def _picture_path(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and value.suffix.lower() not in (".png", ".html"):
        msg = f"{value}: give a .png or .html file"
        raise click.BadParameter(msg, ctx, param)
    return value


@cli.command()
@config_option
@input_option
@env_option("--producer", env="PLOT_PRODUCER", required=True, help="The producer to draw.")
@env_option("--output", "output_path", env="PLOT_OUTPUT", required=True,
            type=click.Path(dir_okay=False, writable=True, path_type=Path),
            callback=_picture_path, help="A .png (needs the `plot` extra: matplotlib) or a "
            "self-contained .html file.")  # fmt: skip
@env_option("--from", "start_ms", env="PLOT_FROM", type=EventTime(),
            help="Draw from this event time (epoch ms or ISO-8601); everything before is "
            "still scored.")  # fmt: skip
@env_option("--to", "end_ms", env="PLOT_TO", type=EventTime(),
            help="Draw up to this event time.")  # fmt: skip
@scoring_options
def plot(**kw: Any) -> None:
    """Draw what the detector saw of one producer: values and expected bands, novelties,
    scores against the threshold, alerts and their reasons (scored as `score` does)."""
    from detector.plot import write_plot
    from detector.timeline import trace

    compiled.warn_if_pure()

    output: Path = kw["output_path"]
    timeline = trace(kw["input_path"], scoring_from(kw), kw["producer"], kw["start_ms"],
                     kw["end_ms"])  # fmt: skip
    if not timeline.points:
        msg = f"no event of producer {kw['producer']!r} in {kw['input_path']} (in that window)"
        raise click.UsageError(msg)
    write_plot(timeline, output)
    click.echo(
        f"{output}: {len(timeline.points)} events of {timeline.producer}, "
        f"{len(timeline.alerts)} alerts, {timeline.novelties} novelties",
        err=True,
    )


@cli.command()
@config_option
@env_option("--baseline", env="BASELINE", required=True, help="Name (or path) to save it as.")
@baselines_dir_option
@env_option("--input", "input_path", env="INPUT",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Learn from a JSONL or CSV file ...")  # fmt: skip
@setting_option("redis_url", help="... or from a stream on this Redis.")
@sentinel_options
@env_option("--stream", env="STREAM", default=DEFAULT_STREAM, show_default=True,
            help="Stream to learn from (with --redis-url).")  # fmt: skip
@env_option("--from", "start", env="FROM", help="First entry id or time (epoch ms, ISO-8601).")
@env_option("--to", "end", env="TO", help="Last entry id or time.")
@setting_option("model")
@format_options
@tls_options
def train(**kw: Any) -> None:
    """Learn a baseline from history, as fast as the machine allows."""
    from detector import baselines
    from detector.core.checkpoint import Signer
    from detector.core.events import Decoder
    from detector.core.pipeline import Pipeline
    from detector.core.scoring import load_spec

    compiled.warn_if_pure()

    url, stream = kw["redis_url"], kw["stream"]
    refuse_password_on_command_line(click.get_current_context(), url)
    sentinel = sentinel_target(kw["sentinels"], kw["sentinel_master"], kw["sentinel_user"])
    from_redis = bool(url or sentinel)
    if bool(kw["input_path"]) == from_redis:
        msg = "give exactly one of --input and --redis-url (or --sentinel)"
        raise click.UsageError(msg)
    path = baselines.baseline_path(kw["baseline"], kw["baselines_dir"])
    signer = Signer(load_checkpoint_secret())
    pipeline = Pipeline(load_spec(kw["model"]))
    decoder = Decoder(event_format(kw))
    entries: Iterator[tuple[str, dict[bytes, bytes]]]
    total: int | None = None
    if from_redis:
        tls = {k: kw[k] for k in ("tls_ca_cert", "tls_cert", "tls_key")}
        client = command_client(url, sentinel, tls, socket_timeout=30)
        entries, total = baselines.stream_entries(client, stream, kw["start"], kw["end"])
    else:
        entries = baselines.file_entries(kw["input_path"])
    with _progress(total) as advance:
        done = baselines.train(pipeline, decoder, stream, entries, path, signer,
                               from_stream=from_redis, progress=advance)  # fmt: skip
    click.echo(
        f"baseline {path}: learned {done.learned} events from {done.producers} producers "
        f"({done.rejected} rejected), up to entry {done.last_id or '-'} and event "
        f"time {done.watermark_ms}",
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
@setting_options("redis_url", "alerts_stream")
@sentinel_options
@env_option("--follow", "-f", env="FOLLOW", is_flag=True, help="Keep printing new alerts.")
@env_option("--json", "as_json", env="JSON", is_flag=True, help="One JSON object per line.")
@env_option("--count", env="COUNT", default=100, show_default=True, help="Latest alerts to show.")
@tls_options
def alerts(
    redis_url: str | None,
    alerts_stream: str,
    sentinels: tuple[str, ...],
    sentinel_master: str | None,
    sentinel_user: str | None,
    follow: bool,
    as_json: bool,
    count: int,
    **tls: Path | None,
) -> None:
    """Print alerts from the alert stream."""
    r = _alerts_client("alerts", redis_url, (sentinels, sentinel_master, sentinel_user), tls)
    from detector.gateway.alert_reader import AlertReader

    # Through Redis restarts and failovers: the reader reconnects (through Sentinel, to the
    # new primary) and goes on after the last alert shown.
    reader = AlertReader(r, alerts_stream, block_ms=5000)
    for entry in reader.tail(count):
        click.echo(_show(entry.fields, as_json))
    for entry in reader.read(follow=follow):
        click.echo(_show(entry.fields, as_json))


@cli.command()
@config_option
@click.argument("alert_id")
@click.argument("verdict", type=click.Choice(["false-positive", "confirmed"]))
@env_option("--note", env="FEEDBACK_NOTE", default="", help="Free text kept with the verdict.")
@env_option("--by", env="FEEDBACK_BY", default="", help="Who gives it (kept with the verdict).")
@setting_options("redis_url", "alerts_stream")
@sentinel_options
@env_option("--stream", env="FEEDBACK_STREAM", default=DEFAULT_FEEDBACK_STREAM, show_default=True,
            help="The feedback stream (the workers' --feedback-stream).")  # fmt: skip
@env_option("--partitions", env="PARTITIONS", type=click.IntRange(1), default=None,
            help="The workers' --partitions: append to the producer's partition of the "
            "feedback stream.")  # fmt: skip
@tls_options
def feedback(
    alert_id: str,
    verdict: str,
    note: str,
    by: str,
    redis_url: str | None,
    alerts_stream: str,
    sentinels: tuple[str, ...],
    sentinel_master: str | None,
    sentinel_user: str | None,
    stream: str,
    partitions: int | None,
    **tls: Path | None,
) -> None:
    """Mark an alert a false positive (its pattern is normal for its producer for 7 days) or
    confirmed (its pattern is never learned as normal): appends to the feedback stream, which
    the worker owning the producer reads like events (exit 1: no such alert)."""
    r = _alerts_client("feedback", redis_url, (sentinels, sentinel_master, sentinel_user), tls)
    from detector.gateway import feedback as writer

    found = writer.find_alert(r, alerts_stream, alert_id)
    if found is None:
        click.echo(f"no alert {alert_id} in {alerts_stream}", err=True)
        sys.exit(1)
    if not found.producer:
        click.echo(f"alert {alert_id} is about the detector ({found.kind}), not a producer",
                   err=True)  # fmt: skip
        sys.exit(1)
    target, entry_id = writer.append(r, stream, writer.feedback_of(found, verdict, note, by),
                                     partitions)  # fmt: skip
    click.echo(f"{verdict} {alert_id} ({found.producer}: {found.why}) -> {target} {entry_id}")


def _alerts_client(
    command: str,
    redis_url: str | None,
    sentinel: tuple[tuple[str, ...], str | None, str | None],
    tls: dict[str, Path | None],
) -> redis.Redis:
    """The client of a command on the alert stream (``alerts``, ``feedback``): a Redis URL or
    Sentinels (a usage error without either), the password never on the command line."""
    target = sentinel_target(*sentinel)
    if not redis_url and not target:
        msg = f"{command} needs --redis-url (or DETECTOR_REDIS_URL) or --sentinel"
        raise click.UsageError(msg)
    refuse_password_on_command_line(click.get_current_context(), redis_url)
    return command_client(redis_url, target, tls, decode_responses=True, socket_timeout=30)


def _show(fields: dict[str, str], as_json: bool) -> str:
    from detector.console import alert_json, alert_line

    return orjson.dumps(alert_json(fields)).decode() if as_json else alert_line(fields)


@cli.command()
@config_option
@setting_options("redis_url", "group")
@sentinel_options
@env_option("--consumer", env="CONSUMER", default=None,
            help="Check this consumer (default: any live consumer of the group).")  # fmt: skip
@tls_options
def check(
    redis_url: str | None,
    group: str,
    sentinels: tuple[str, ...],
    sentinel_master: str | None,
    sentinel_user: str | None,
    consumer: str | None,
    **tls: Path | None,
) -> None:
    """Exit 0 if a worker is alive (fresh health key), else 1. For healthchecks."""
    sentinel = sentinel_target(sentinels, sentinel_master, sentinel_user)
    if not redis_url and not sentinel:
        msg = "check needs --redis-url (or DETECTOR_REDIS_URL) or --sentinel"
        raise click.UsageError(msg)
    refuse_password_on_command_line(click.get_current_context(), redis_url)
    try:
        r = command_client(redis_url, sentinel, tls, socket_timeout=5, socket_connect_timeout=5)
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
@setting_options("streams", "group")
@env_option("--consumer", env="CONSUMER", default=None,
            help="Pin the checkpoint and health keys to this consumer (default: any consumer "
            "of the group).")  # fmt: skip
@setting_options("alerts_stream", "dead_letter_stream", "scores_stream", "feedback_stream")
@env_option("--feedback-writer", env="ACL_FEEDBACK_WRITER", is_flag=True,
            help="Also print the `detector feedback` user (needs --feedback-stream).")  # fmt: skip
@env_option("--feedback-user", env="ACL_FEEDBACK_USER", default="detector-feedback",
            show_default=True, help="ACL user of `detector feedback`.")  # fmt: skip
@env_option("--worker-user", env="ACL_WORKER_USER", default="detector-worker", show_default=True,
            help="ACL user of the workers.")  # fmt: skip
@env_option("--producer-user", env="ACL_PRODUCER_USER", default="detector-producer",
            show_default=True, help="ACL user of the producers (XADD to the input).")  # fmt: skip
@env_option("--reader-user", env="ACL_READER_USER", default="detector-reader", show_default=True,
            help="ACL user of alert readers (`detector alerts`, `check`).")  # fmt: skip
@env_option("--redis-version", env="ACL_REDIS_VERSION", type=click.Choice(["7.0", "7.2+"]),
            default="7.0", show_default=True,
            help="7.2+ also grants CLIENT SETINFO (refused on 7.0).")  # fmt: skip
@env_option("--partitioned", env="ACL_PARTITIONED", is_flag=True,
            help="For workers run with --partitions (any P; leases, partition streams); also "
            "prints the router user.")  # fmt: skip
@env_option("--router-user", env="ACL_ROUTER_USER", default="detector-router", show_default=True,
            help="ACL user of `detector route` (with --partitioned).")  # fmt: skip
@env_option("--router-source", "sources", env="ACL_ROUTER_SOURCE", multiple=True,
            help="Streams `detector route --source` reads (default: the --stream "
            "names).")  # fmt: skip
@env_option("--router-group", env="ACL_ROUTER_GROUP", default="detector-router", show_default=True,
            help="Consumer group of `detector route` on its sources.")  # fmt: skip
@setting_option("min_replicas_acked", help="Workers run with durable writes (WAIT) if > 0.")
@setting_option("cluster", help="The commands run with --cluster (COMMAND and CLUSTER SLOTS "
                "for every user; create the users on every node).")  # fmt: skip
@env_option("--notifier", env="ACL_NOTIFIER", is_flag=True,
            help="Also print the user of `detector notify`.")  # fmt: skip
@env_option("--notifier-user", env="ACL_NOTIFIER_USER", default="detector-notifier",
            show_default=True, help="ACL user of `detector notify` (with --notifier).")  # fmt: skip
@env_option("--notify-group", env="NOTIFY_GROUP", default=NOTIFY_GROUP, show_default=True,
            help="`detector notify --group`.")  # fmt: skip
@env_option("--notify-dead-letter-stream", env="NOTIFY_DEAD_LETTER_STREAM",
            default=NOTIFY_DEAD_LETTER_STREAM, show_default=True,
            help="`detector notify --dead-letter-stream`.")  # fmt: skip
@env_option("--sentinel-users", env="ACL_SENTINEL_USERS", is_flag=True,
            help="Behind Sentinel: also print the Sentinels' user on the data nodes and the "
            "detector's user on the Sentinels.")  # fmt: skip
@env_option("--sentinel-monitor-user", env="ACL_SENTINEL_MONITOR_USER",
            default="detector-sentinel", show_default=True,
            help="User the Sentinels monitor the data nodes as.")  # fmt: skip
@env_option("--sentinel-lookup-user", env="ACL_SENTINEL_LOOKUP_USER", default="detector-lookup",
            show_default=True, help="User the detector looks the primary up as, on each "
            "Sentinel (run's --sentinel-user).")  # fmt: skip
def acl(
    streams: tuple[str, ...],
    group: str,
    consumer: str | None,
    alerts_stream: str,
    dead_letter_stream: str,
    scores_stream: str | None,
    feedback_stream: str | None,
    feedback_writer: bool,
    feedback_user: str,
    worker_user: str,
    producer_user: str,
    reader_user: str,
    redis_version: str,
    partitioned: bool,
    router_user: str,
    sources: tuple[str, ...],
    router_group: str,
    min_replicas_acked: int,
    cluster: bool,
    notifier: bool,
    notifier_user: str,
    notify_group: str,
    notify_dead_letter_stream: str,
    sentinel_users: bool,
    sentinel_monitor_user: str,
    sentinel_lookup_user: str,
) -> None:
    """Print least-privilege ACL SETUSER lines: worker, producers, alert readers (and, with
    --partitioned, the router; with --notifier, the notifier; with --feedback-writer, the
    feedback writer; with --sentinel-users, the Sentinels' and the look-up user).

    Passwords are read from DETECTOR_ACL_{WORKER,PRODUCER,READER,ROUTER,NOTIFIER,FEEDBACK,SENTINEL,
    SENTINEL_READER}_PASSWORD (or the files named by the same names + _FILE) and printed only
    as SHA-256 hashes; without them, placeholders that Redis refuses until replaced.
    """
    from detector.acl import ROLES, AclConfig, acl_lines

    cfg = AclConfig(
        streams=streams,
        group=group,
        consumer=consumer,
        alerts_stream=alerts_stream,
        dead_letter_stream=dead_letter_stream,
        scores_stream=scores_stream,
        feedback_stream=feedback_stream,
        feedback_writer=feedback_writer,
        feedback_user=feedback_user,
        worker_user=worker_user,
        producer_user=producer_user,
        reader_user=reader_user,
        redis_version=redis_version,
        partitioned=partitioned,
        router_user=router_user,
        sources=sources or None,
        router_group=router_group,
        durable=min_replicas_acked > 0,
        cluster=cluster,
        notifier=notifier,
        notifier_user=notifier_user,
        notify_group=notify_group,
        notify_dead_letter_stream=notify_dead_letter_stream,
        sentinel=sentinel_users,
        sentinel_user=sentinel_monitor_user,
        sentinel_reader_user=sentinel_lookup_user,
    )
    passwords = {role: env_secret(f"DETECTOR_ACL_{role.upper()}_PASSWORD") for role in ROLES}
    for line in acl_lines(cfg, passwords):
        click.echo(line)


@cli.command()
def models() -> None:
    """List the shipped model specs, each with when to use it."""
    from detector.core.scoring import available_models

    for name, description in available_models().items():
        mark = " (default)" if name == DEFAULT_MODEL else ""
        click.echo(f"{name}{mark}: {description}")
    click.echo("your own: --model PATH.toml, e.g. any River detector (README, 'Models')")


@cli.command()
@config_option
@setting_options("redis_url", "model", "threshold")
@env_option("--seed", env="SEED", default=7, show_default=True,
            help="Random seed of the simulated shop and its incidents.")  # fmt: skip
@env_option("--hours", env="HOURS", default=6.0, show_default=True,
            help="Event-time span of the simulated shop.")  # fmt: skip
@env_option("--speed", env="SPEED", default=900.0, show_default=True,
            help="Event-time seconds replayed per wall second (0: as fast as "
            "possible).")  # fmt: skip
@setting_option("metrics_port")
def demo(redis_url: str | None, model: str, threshold: float | None, seed: int, hours: float,
            speed: float, metrics_port: int | None) -> None:  # fmt: skip
    """Simulate a shop with injected incidents and watch the detector catch them."""
    from detector.demo import run_demo

    compiled.warn_if_pure()

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
@setting_option("redis_url")
@sentinel_options
@env_option("--source", env="ROUTE_SOURCE", default=DEFAULT_STREAM, show_default=True,
            help="The unpartitioned stream producers write to.")  # fmt: skip
@env_option("--stream", env="STREAM", default=DEFAULT_STREAM, show_default=True,
            help="Base of the partition streams (<stream>:{p}): the workers' "
            "--stream.")  # fmt: skip
@env_option("--partitions", env="PARTITIONS", type=int, required=True,
            help="Partition count P, the same as the workers'.")  # fmt: skip
@env_option("--group", env="ROUTER_GROUP", default="detector-router", show_default=True,
            help="The router's consumer group on --source.")  # fmt: skip
@env_option("--consumer", env="ROUTER_CONSUMER", default="router", show_default=True,
            help="Consumer name of this router in its group.")  # fmt: skip
@setting_options(
    "dead_letter_stream",
    "producer_field",
    "max_entry_bytes",
    "max_fields",
    "batch_size",
    "block_ms",
)
@env_option("--maxlen", env="ROUTE_MAXLEN", default=0, show_default=True,
            help="Cap each partition stream at about this many entries (0: no cap).")  # fmt: skip
@env_option("--lease-ttl-ms", env="ROUTER_LEASE_TTL_MS", default=10_000, show_default=True,
            help="Only the holder of this lease routes --source; others wait.")  # fmt: skip
@setting_option("until_idle", help="Exit 0 once nothing arrives for --idle-timeout-ms.")
@setting_options("idle_timeout_ms", "cluster")
@tls_options
def route(**kw: Any) -> None:
    """Re-key an unpartitioned stream into the partition streams, by producer."""
    from detector.router import Router, RouterConfig

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
    router = Router(config, _service_client("route", kw, config.block_ms, cluster=kw["cluster"]))
    stop = _stop_on_signals("the current batch")
    log.info("routing %s into %s:{0..%d}", config.source, config.base, config.partitions - 1)
    stats = router.run(until_idle=kw["until_idle"], idle_timeout_ms=kw["idle_timeout_ms"],
                          stop=stop)  # fmt: skip
    click.echo(
        f"routed {stats.routed} entries ({stats.duplicates} already routed, "
        f"{stats.dead_lettered} dead-lettered, {stats.trimmed} trimmed before routing)",
        err=True,
    )


@cli.command()
@config_option
@setting_option("redis_url")
@sentinel_options
@setting_option("alerts_stream")
@env_option("--group", env="NOTIFY_GROUP", default=NOTIFY_GROUP, show_default=True,
            help="The notifier's consumer group on the alert stream.")  # fmt: skip
@env_option("--consumer", env="NOTIFY_CONSUMER", default=default_consumer,
            show_default="hostname", help="This notifier's name in its group; keep it stable "
            "across restarts.")  # fmt: skip
@env_option("--dead-letter-stream", env="NOTIFY_DEAD_LETTER_STREAM",
            default=NOTIFY_DEAD_LETTER_STREAM, show_default=True,
            help="Where alerts the webhook refused for good go, with its answer.")  # fmt: skip
@env_option("--start", env="NOTIFY_START", type=click.Choice(["oldest", "newest"]),
            default="oldest", show_default=True,
            help="Where a new group starts: at the oldest alert in the stream (every alert is "
            "posted), or after the newest.")  # fmt: skip
@env_option("--timeout-s", env="WEBHOOK_TIMEOUT_S", type=click.FloatRange(0.1), default=10.0,
            show_default=True, help="Limit of each socket operation of a webhook "
            "request.")  # fmt: skip
@env_option("--max-backoff-s", env="NOTIFY_MAX_BACKOFF_S", type=click.FloatRange(0.5),
            default=60.0, show_default=True,
            help="Longest wait between two attempts at one alert.")  # fmt: skip
@setting_options("claim_idle_ms", "block_ms", "alerts_maxlen", "metrics_port")
@setting_option("until_idle", help="Exit 0 once no alert arrives for --idle-timeout-ms.")
@setting_option("idle_timeout_ms")
@tls_options
def notify(**kw: Any) -> None:
    """Post each alert to a webhook (URL in DETECTOR_WEBHOOK_URL), at least once.

    The JSON body is the alert's fields (reasons parsed) and a Slack-compatible `text`.
    Connection errors, timeouts, 5xx and 429 are retried with backoff; other 4xx go to
    --dead-letter-stream with the status and response. The URL is a secret: it comes from
    DETECTOR_WEBHOOK_URL or the file named by DETECTOR_WEBHOOK_URL_FILE, never an option.
    """
    from prometheus_client import CollectorRegistry

    from detector.gateway.secrets import webhook_url
    from detector.notifier import Notifier, NotifierConfig, Webhook
    from detector.runtime.metrics import NotifierMetrics

    webhook = Webhook(webhook_url(), kw["timeout_s"])
    config = NotifierConfig(
        stream=kw["alerts_stream"],
        group=kw["group"],
        consumer=kw["consumer"],
        dead_letter_stream=kw["dead_letter_stream"],
        dead_letter_maxlen=kw["alerts_maxlen"],
        start="0" if kw["start"] == "oldest" else "$",
        block_ms=kw["block_ms"],
        claim_idle_ms=kw["claim_idle_ms"],
        max_backoff_s=kw["max_backoff_s"],
    )
    client = _service_client("notify", kw, config.block_ms)
    metrics = NotifierMetrics(CollectorRegistry())
    if kw["metrics_port"] is not None:
        metrics.serve(kw["metrics_port"])
    stop = _stop_on_signals("the current attempt")
    log.info("posting alerts of %s (group %s) to %s", config.stream, config.group, webhook.host)
    # Without --cluster, connect_checked makes a plain client.
    notifier = Notifier(config, cast(redis.Redis, client), webhook, metrics=metrics, stop=stop)
    stats = notifier.run(until_idle=kw["until_idle"], idle_timeout_ms=kw["idle_timeout_ms"])
    click.echo(
        f"delivered {stats.delivered} alerts in {stats.attempts} requests "
        f"({stats.dead_lettered} dead-lettered, {stats.trimmed} trimmed before delivery)",
        err=True,
    )


def _service_client(
    command: str, kw: dict[str, Any], block_ms: int, *, cluster: bool = False
) -> Client:
    """The client of a long-running command other than `run` (`route`, `notify`): its
    --redis-url or Sentinels, password from the environment, TLS files, checked once."""
    url = kw["redis_url"]
    sentinel = sentinel_target(kw["sentinels"], kw["sentinel_master"], kw["sentinel_user"])
    if not url and not sentinel:
        msg = f"{command} needs --redis-url (or DETECTOR_REDIS_URL) or --sentinel"
        raise click.UsageError(msg)
    refuse_password_on_command_line(click.get_current_context(), url)
    return connect_checked(
        url or "",
        block_ms=block_ms,
        password=redis_password(),
        tls_ca_cert=kw["tls_ca_cert"],
        tls_cert=kw["tls_cert"],
        tls_key=kw["tls_key"],
        cluster=cluster,
        sentinel=sentinel,
    )


def _stop_on_signals(after: str) -> threading.Event:
    """An event SIGTERM and SIGINT set: the command stops after ``after``."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info("stopping after %s (signal %d)", after, signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


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
