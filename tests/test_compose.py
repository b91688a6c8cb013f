"""The deployment files agree with the code: Dockerfile, docker-compose.yml, deploy/.

No Docker here: the files are parsed and checked against the click CLI (options and their
``DETECTOR_*`` envvars), pyproject's console script, and the demo producer's own code.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import itertools
import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import redis
import yaml
from click.testing import CliRunner

from detector import compiled
from detector.cli import cli
from detector.core.settings import HEALTH_KEY, default_baselines_dir
from detector.gateway.secrets import SECRET_ENVVARS, load_checkpoint_secret
from detector.options import global_option
from detector.shop.simulator import DEMO_KINDS, iter_events

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
GITIGNORE = ROOT / ".gitignore"
OPERATIONS = ROOT / "docs" / "operations.md"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
PRODUCER = ROOT / "deploy" / "producer.py"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "detector.json"


# -- parsing helpers -------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        keyword, _, rest = (buf + line).partition(" ")
        out.append((keyword.upper(), " ".join(rest.split())))
        buf = ""
    assert not buf, "Dockerfile ends inside a continuation line"
    return out


def dockerfile_stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The build stages in order, each from its FROM on; the last one is the image."""
    stages: list[list[tuple[str, str]]] = []
    for kw, args in instructions:
        if kw == "FROM":
            stages.append([])
        assert stages, f"{kw} before the first FROM"
        stages[-1].append((kw, args))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) instruction argument; shell form is refused."""
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    assert all(isinstance(v, str) for v in value)
    return value


def duration_s(text: str) -> float:
    """A compose duration such as ``30s``, ``1m30s`` or ``500ms``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", text)
    assert parts, f"not a duration: {text!r}"
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = test
    if kind == "CMD-SHELL":
        return shlex.split(rest[0])
    assert kind == "CMD", f"unexpected healthcheck form: {test}"
    return [str(arg) for arg in rest]


def envvars(command: click.Command) -> set[str]:
    out: set[str] = set()
    for param in command.params:
        if isinstance(param.envvar, str):
            out.add(param.envvar)
        elif param.envvar:
            out.update(param.envvar)
    return out


def command_envvars(name: str) -> set[str]:
    """Envvars that reach ``detector NAME``: the group's options and the command's own."""
    return envvars(cli) | envvars(cli.commands[name])


def dockerignore_includes(patterns: list[str], path: str) -> bool:
    """Whether a top-level context path survives .dockerignore (last matching rule wins)."""
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        if fnmatch.fnmatchcase(path, pat):
            included = negate
    return included


class MissingVariable(Exception):
    """Compose's error for ``${VAR:?err}`` / ``${VAR?err}`` with VAR unset: the file fails to
    load, for every command (``down``, ``ps`` and ``logs`` too)."""


_NAME = r"[_a-zA-Z][_a-zA-Z0-9]*"


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of one value: ``$$`` is a ``$``; ``$VAR``, ``${VAR}``,
    ``${VAR:-d}``, ``${VAR-d}``, ``${VAR:+a}``, ``${VAR+a}`` never fail; ``${VAR:?e}`` fails
    when VAR is unset or empty, ``${VAR?e}`` when unset; any other ``${...}`` is invalid."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, end = 1, i + 2
            while depth:
                assert end < len(text), f"unclosed ${{ in {text!r}"
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                end += 1
            out.append(_substitute(text[i + 2 : end - 1], env))
            i = end
        elif m := re.match(_NAME, text[i + 1 :]):
            out.append(env.get(m.group(), ""))
            i += 1 + m.end()
        else:  # a lone `$` stays
            out.append("$")
            i += 1
    return "".join(out)


def _substitute(expr: str, env: dict[str, str]) -> str:
    m = re.fullmatch(rf"({_NAME})(?:(:?)([-?+])(.*))?", expr, re.DOTALL)
    assert m, f"invalid interpolation ${{{expr}}}"
    name, colon, op, arg = m.groups()
    value = env.get(name)
    # With a colon an empty value counts as unset.
    present = bool(value) if colon else value is not None
    if op is None:
        return value or ""
    if op == "?" and not present:
        raise MissingVariable(f"{name}: {arg}")
    if op == "-" and not present:
        return interpolate(arg, env)
    if op == "+":
        return interpolate(arg, env) if present else ""
    return value or ""


def interpolate_all(node: Any, env: dict[str, str]) -> Any:
    """The compose file's values as compose resolves them in ``env``."""
    if isinstance(node, dict):
        return {k: interpolate_all(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_all(v, env) for v in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def dockerfile_header_commands() -> list[str]:
    """The shell commands in the Dockerfile's header comment, continuation lines joined."""
    commands: list[str] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if not raw.startswith("#"):
            break
        line = raw.removeprefix("#").strip()
        if buf:
            buf += " " + line
        elif line.startswith(("docker ", "mkdir ")):
            buf = line
        else:
            continue
        if buf.endswith("\\"):
            buf = buf[:-1].rstrip()
        else:
            commands.append(buf)
            buf = ""
    return commands


def key_command() -> str:
    """The one command the docs give to create the checkpoint key file."""
    [command] = [c for c in dockerfile_header_commands() if c.startswith("mkdir ")]
    return command


def parse_docker_run(
    argv: list[str],
) -> tuple[dict[str, str], dict[str, str], list[str], str, list[str]]:
    """``docker run`` options the example may use -> (env, mounts target->source, published
    ports, image, args)."""
    assert argv[:2] == ["docker", "run"], argv
    env: dict[str, str] = {}
    mounts: dict[str, str] = {}
    ports: list[str] = []
    i = 2
    while argv[i].startswith("-"):
        option = argv[i]
        if option in {"--rm", "-d", "--detach", "--init"}:
            i += 1
            continue
        value = argv[i + 1]
        i += 2
        if option in {"-e", "--env"}:
            name, sep, val = value.partition("=")
            assert sep, f"-e {value}: pass the value, the host's would be empty here"
            env[name] = val
        elif option in {"-v", "--volume"}:
            source, target, *_ = value.split(":")
            mounts[target] = source
        elif option in {"-p", "--publish"}:
            ports.append(value)
        else:
            raise AssertionError(f"docker run option not understood by this test: {option}")
    image, *args = argv[i:]
    return env, mounts, ports, image, args


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for kw, args in instructions:
        if kw == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                out[name] = value
    return out


def unwritable_home(tmp_path: Path) -> Path:
    """A HOME nothing can be created under, even by root: its parent is a regular file."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    return blocker / "home"


def use_environ(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], home: Path) -> None:
    """Exactly ``env``'s DETECTOR_* variables, and ``home`` as an unwritable HOME."""
    for key in list(os.environ):
        if key.startswith(("DETECTOR_", "XDG_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("DETECTOR_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(home))


def run_healthcheck(shell_command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A CMD-SHELL healthcheck (or a RUN step) as Docker runs it: ``/bin/sh -c`` in the
    container's env, with this worktree's ``detector`` package behind the console script."""
    bindir = Path(sys.executable).parent
    assert (bindir / "detector").exists(), "the detector console script is not installed"
    base = {"PATH": f"{bindir}:/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        ["/bin/sh", "-c", shell_command], env={**base, **env}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def resolved(compose: dict[str, Any]) -> dict[str, Any]:
    """The compose file as compose resolves it with no variable set (a bare checkout)."""
    return interpolate_all(compose, {})  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def detector_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    env = services["detector"]["environment"]
    assert isinstance(env, dict), "use the mapping form for environment"
    return {k: str(v) for k, v in env.items()}


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    return dockerfile_stages(dockerfile_instructions(DOCKERFILE.read_text()))


@pytest.fixture(scope="module")
def instructions(stages: list[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """The image's: the last stage (the builder only makes the wheel it installs)."""
    return stages[-1]


@pytest.fixture()
def compose_environ(monkeypatch: pytest.MonkeyPatch, detector_env: dict[str, str]) -> None:
    """The process environment as the detector container sees it (DETECTOR_* only)."""
    _only_detector_env(monkeypatch, detector_env)


@pytest.fixture(scope="module")
def producer() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("deploy_producer", PRODUCER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as mp:
        # Should importing run main(), it fails fast on a refused connection instead of hanging.
        mp.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
        mp.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
        spec.loader.exec_module(module)
    yield module


def parse_with_env(*argv: str) -> tuple[click.Context, click.Context]:
    """Resolve (group, command) options from argv and the environment, without running."""
    group_ctx = cli.make_context("detector", list(argv))
    name, *rest = argv
    command = cli.commands[name]
    return group_ctx, command.make_context(name, rest, parent=group_ctx)


# -- docker-compose.yml ----------------------------------------------------------------------


def test_compose_is_compose_spec_with_its_services(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose spec has no version key"
    assert set(compose["services"]) == {
        "redis", "router", "detector", "producer", "prometheus", "grafana"
    }  # fmt: skip
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: named volume {source!r} not declared"


def test_redis_service_persists_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].split(":") == ["redis", "7"]
    command = redis["command"]
    args = " ".join(command) if isinstance(command, list) else command
    for setting in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert setting in args
    mounts = {v.split(":")[1]: v.split(":")[0] for v in redis["volumes"]}
    assert "/data" in mounts
    assert not mounts["/data"].startswith((".", "/")), "/data should be a named volume"
    assert healthcheck_argv(redis)[:2] == ["redis-cli", "ping"]


def test_detector_service_shape(services: dict[str, dict[str, Any]]) -> None:
    detector = services["detector"]
    build = detector["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (context / dockerfile).resolve() == DOCKERFILE
    assert detector["command"] == ["run"], "configure through DETECTOR_* variables, not flags"
    assert detector["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert detector["restart"] == "unless-stopped"
    assert healthcheck_argv(detector)[:2] == ["detector", "check"]


def test_detector_is_configured_only_through_its_envvars(
    detector_env: dict[str, str], services: dict[str, dict[str, Any]]
) -> None:
    assert "env_file" not in services["detector"]
    assert all(key.startswith("DETECTOR_") for key in detector_env)
    required = {
        "DETECTOR_REDIS_URL",
        "DETECTOR_STREAM",
        "DETECTOR_GROUP",
        "DETECTOR_ALERTS_STREAM",
        "DETECTOR_METRICS_PORT",
        "DETECTOR_LOG_FORMAT",
    }
    assert required <= set(detector_env)
    unknown = set(detector_env) - command_envvars("run") - set(SECRET_ENVVARS)
    assert not unknown, f"not an envvar of `detector run`: {sorted(unknown)}"
    # The checkpoint key comes from the secret file, never from a value in this file.
    assert "DETECTOR_CHECKPOINT_KEY" not in detector_env
    assert "DETECTOR_CHECKPOINT_KEY_FILE" in detector_env
    url = urlsplit(detector_env["DETECTOR_REDIS_URL"])
    assert url.scheme in {"redis", "rediss"}
    assert url.hostname in services, "DETECTOR_REDIS_URL should name the compose redis service"


@pytest.mark.usefixtures("compose_environ")
def test_detector_env_values_parse_as_run_options(detector_env: dict[str, str]) -> None:
    _, run_ctx = parse_with_env("run")
    assert global_option(run_ctx, "log_format") == "json"
    assert run_ctx.params["redis_url"] == detector_env["DETECTOR_REDIS_URL"]
    assert run_ctx.params["streams"] == (detector_env["DETECTOR_STREAM"],)
    assert run_ctx.params["group"] == detector_env["DETECTOR_GROUP"]
    assert run_ctx.params["alerts_stream"] == detector_env["DETECTOR_ALERTS_STREAM"]
    assert run_ctx.params["metrics_port"] == int(detector_env["DETECTOR_METRICS_PORT"])


def test_stop_grace_period_covers_a_batch(
    services: dict[str, dict[str, Any]], detector_env: dict[str, str]
) -> None:
    grace_s = duration_s(services["detector"]["stop_grace_period"])
    block_param = next(p for p in cli.commands["run"].params if p.name == "block_ms")
    block_ms = int(detector_env.get("DETECTOR_BLOCK_MS", block_param.default))  # type: ignore[arg-type]
    # One blocked read plus one batch's work and commit, with room to spare; more than
    # Docker's 10 s default, which the setting exists to raise.
    assert grace_s > 10
    assert grace_s >= 5 * block_ms / 1000


def test_healthcheck_command_exists_and_resolves() -> None:
    assert {"run", "check"} <= set(cli.commands)
    result = CliRunner().invoke(cli, ["check", "--help"])
    assert result.exit_code == 0, result.output
    assert "DETECTOR_REDIS_URL" in result.output


@pytest.mark.usefixtures("compose_environ")
def test_healthcheck_checks_this_worker(detector_env: dict[str, str]) -> None:
    """`detector check` gets URL and group from the container's environment."""
    assert {"DETECTOR_REDIS_URL", "DETECTOR_GROUP"} <= command_envvars("check")
    assert {"DETECTOR_REDIS_URL", "DETECTOR_GROUP"} <= set(detector_env)
    _, run_ctx = parse_with_env("run")
    _, check_ctx = parse_with_env("check")
    assert check_ctx.params["redis_url"] == run_ctx.params["redis_url"]
    assert check_ctx.params["group"] == run_ctx.params["group"]


def dockerfile_healthcheck(instructions: list[tuple[str, str]]) -> str:
    """The image's HEALTHCHECK as the CMD-SHELL string Docker stores for its shell form."""
    _, sep, command = _only(instructions, "HEALTHCHECK").partition("CMD ")
    assert sep, "HEALTHCHECK needs a CMD"
    assert not command.startswith("["), "shell form: the consumer name needs $HOSTNAME"
    return command


def test_service_healthcheck_is_the_images(
    resolved: dict[str, Any], instructions: list[tuple[str, str]]
) -> None:
    kind, command = resolved["services"]["detector"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    assert command == dockerfile_healthcheck(instructions)


@pytest.mark.parametrize("source", ["compose", "Dockerfile"])
def test_each_replica_checks_its_own_health_key(
    source: str,
    resolved: dict[str, Any],
    instructions: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    detector_env: dict[str, str],
    redis_url: str,
    r: redis.Redis,
) -> None:
    """The healthcheck passes only on this container's own worker's health key, named as
    `detector run` names its consumer in the same environment; a live sibling is not enough."""
    service = resolved["services"]["detector"]
    command = service["healthcheck"]["test"][1] if source == "compose" else (
        dockerfile_healthcheck(instructions)
    )  # fmt: skip
    env = {**detector_env, "DETECTOR_REDIS_URL": redis_url}
    # Docker gives the container's processes, healthchecks too, HOSTNAME = the host name.
    container = {**env, "HOSTNAME": socket.gethostname()}
    _only_detector_env(monkeypatch, env)
    _, run_ctx = parse_with_env("run")
    own, group = run_ctx.params["consumer"], run_ctx.params["group"]
    assert own == socket.gethostname()

    def beat(consumer: str) -> None:
        r.set(HEALTH_KEY.format(group=group, consumer=consumer), b'{"events": 1}', px=60_000)

    assert run_healthcheck(command, container).returncode == 1, "no worker at all"
    beat("sibling-replica")
    out = run_healthcheck(command, container)
    assert out.returncode == 1, f"healthy on a sibling's key: {out.stdout}"
    beat(own)
    out = run_healthcheck(command, container)
    assert out.returncode == 0, out.stderr
    # A consumer named through the environment: run and check agree on it.
    monkeypatch.setenv("DETECTOR_CONSUMER", "pinned")
    _, run_ctx = parse_with_env("run")
    assert run_ctx.params["consumer"] == "pinned"
    pinned = {**container, "DETECTOR_CONSUMER": "pinned"}
    assert run_healthcheck(command, pinned).returncode == 1
    beat("pinned")
    assert run_healthcheck(command, pinned).returncode == 0
    # No name at all must not fall back to "any worker of the group".
    nameless = {k: v for k, v in container.items() if k != "HOSTNAME"}
    assert run_healthcheck(command, nameless).returncode != 0


# -- interpolation, the checkpoint key secret -----------------------------------------------


def test_interpolation_simulation_follows_compose() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("a $SET ${SET} $$SET $$${SET} $ 5", env) == "a v v $SET $v $ 5"
    assert interpolate("${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-${SET}}", env) == "d d  v"
    assert interpolate("${SET:+a}|${EMPTY:+a}|${EMPTY+a}|${UNSET+a}", env) == "a||a|"
    assert interpolate("$${X:?e} ${EMPTY?e}", env) == "${X:?e} "
    for failing in ("${UNSET:?set it}", "${UNSET?e}", "${EMPTY:?e}", "x ${A:-${UNSET:?e}}"):
        with pytest.raises(MissingVariable):
            interpolate(failing, env)
    with pytest.raises(AssertionError):
        interpolate("${not valid}", env)


def test_compose_loads_with_no_variable_set(compose: dict[str, Any]) -> None:
    """`docker compose down`, `ps` and `logs` interpolate the whole file first: a required
    variable (`${VAR:?}`, `${VAR?}`) that is unset breaks every one of them."""
    resolved = interpolate_all(compose, {})
    assert resolved["services"].keys() == compose["services"].keys()


def test_checkpoint_key_is_a_declared_and_mounted_secret(resolved: dict[str, Any]) -> None:
    declared = resolved.get("secrets") or {}
    for name, service in resolved["services"].items():
        for secret in service.get("secrets", []):
            source = secret if isinstance(secret, str) else secret["source"]
            assert source in declared, f"{name}: secret {source!r} not declared"
        env = service.get("environment") or {}
        assert "DETECTOR_CHECKPOINT_KEY" not in env, f"{name}: the key as a plain value"
    detector = resolved["services"]["detector"]
    [mount] = detector["secrets"]
    name = mount if isinstance(mount, str) else mount["source"]
    target = mount.get("target", name) if isinstance(mount, dict) else name
    # A relative target lands in /run/secrets/, where the worker is told to read the key.
    path = PurePosixPath("/run/secrets") / target
    assert detector["environment"]["DETECTOR_CHECKPOINT_KEY_FILE"] == str(path)
    source = declared[name]
    assert set(source) == {"file"}, "a file: `environment:` would need the variable set"
    key_file = PurePosixPath(source["file"])
    assert not key_file.is_absolute()
    # The key stays out of git and out of the image.
    assert key_file.parts[0] == "secrets"
    assert "secrets/" in GITIGNORE.read_text().splitlines()
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]  # fmt: skip
    assert not dockerignore_includes(patterns, "secrets")
    # The key command of the docs creates exactly this file.
    assert str(key_file) in key_command()


def test_key_command_makes_a_key_the_container_user_reads(tmp_path: Path) -> None:
    command = key_command()
    # One command, the same everywhere it is documented.
    for doc in (COMPOSE, OPERATIONS):
        assert command in doc.read_text(), f"{doc.name} documents another key command"
    sh = ["/bin/sh", "-c", command]
    subprocess.run(sh, cwd=tmp_path, check=True, timeout=30)
    key_file = tmp_path / "secrets" / "checkpoint.key"
    key = key_file.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", key), key
    # Bind-mounted with its host mode: readable by uid 10001, in a directory only its owner
    # enters.
    assert stat.S_IMODE(key_file.stat().st_mode) & stat.S_IROTH
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    # Run again, it keeps the key (a new one would orphan the signed checkpoints).
    again = subprocess.run(sh, cwd=tmp_path, capture_output=True, timeout=30, check=False)
    assert again.returncode != 0
    assert key_file.read_text() == key


def test_compose_env_gives_the_worker_the_secret_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resolved: dict[str, Any]
) -> None:
    subprocess.run(["/bin/sh", "-c", key_command()], cwd=tmp_path, check=True, timeout=30)
    host_file = tmp_path / resolved["secrets"]["checkpoint_key"]["file"]
    env = {k: str(v) for k, v in resolved["services"]["detector"]["environment"].items()}
    in_container = env["DETECTOR_CHECKPOINT_KEY_FILE"]
    env["DETECTOR_CHECKPOINT_KEY_FILE"] = str(host_file)  # the mount, outside a container
    home = unwritable_home(tmp_path)
    use_environ(monkeypatch, env, home)
    assert in_container.startswith("/run/secrets/")
    assert load_checkpoint_secret() == host_file.read_text().strip().encode()
    assert not home.parent.is_dir()


# -- the Dockerfile's `docker run` example ---------------------------------------------------


def test_dockerfile_run_example_gives_the_worker_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instructions: list[tuple[str, str]]
) -> None:
    """The header's commands, run in order: build, create the key, run. The worker must get
    its key from what the example passes, with a HOME it cannot write to."""
    commands = dockerfile_header_commands()
    [build] = [shlex.split(c) for c in commands if c.startswith("docker build")]
    [run] = [c for c in commands if c.startswith("docker run")]
    tag = build[build.index("-t") + 1]
    if any(c.startswith("mkdir ") for c in commands):
        subprocess.run(["/bin/sh", "-c", key_command()], cwd=tmp_path, check=True, timeout=30)
    argv = shlex.split(run.replace("$PWD", str(tmp_path)))
    env, mounts, ports, image, args = parse_docker_run(argv)
    assert image == tag
    # Inside the container: the image's ENV, then -e; paths under a mount are host paths here.
    container_env = {**dockerfile_env(instructions), **env}
    for name, value in container_env.items():
        for target, source in mounts.items():
            if value == target or value.startswith(target + "/"):
                container_env[name] = source + value[len(target) :]
    home = unwritable_home(tmp_path)
    use_environ(monkeypatch, container_env, home)
    key = load_checkpoint_secret()
    assert len(key) >= 32
    assert not home.parent.is_dir(), "wrote into HOME"
    # The options parse with the real CLI, and the published port is the metrics port.
    argv_cli = args or exec_form(_only(instructions, "CMD"))
    group_ctx = cli.make_context("detector", list(argv_cli))
    name, *rest = argv_cli
    ctx = cli.commands[name].make_context(name, rest, parent=group_ctx)
    assert ctx.params["redis_url"] == env["DETECTOR_REDIS_URL"]
    [port] = ports
    assert port.split(":")[-1] == str(ctx.params["metrics_port"])


def test_image_home_is_the_users_and_writable(
    instructions: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a key in the environment the worker writes one into ~/.config/detector/, and
    `train` writes baselines into ~/.local/share/detector/: the user needs a home it owns."""
    [useradd] = [shlex.split(a) for kw, a in instructions if kw == "RUN" and "useradd" in a]
    tokens = useradd[useradd.index("useradd") :]
    uid = tokens[tokens.index("--uid") + 1]
    home = tokens[tokens.index("--home-dir") + 1]
    assert {"--create-home", "-m"} & set(tokens), "useradd must create the home"
    assert _only(instructions, "USER").split(":")[0] == uid
    # HOME also for `docker run --user N`, and the default paths derive from it.
    assert dockerfile_env(instructions)["HOME"] == home
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", home)
    assert default_baselines_dir().is_relative_to(home)


def test_image_bakes_no_key(stages: list[list[tuple[str, str]]]) -> None:
    for kw, args in itertools.chain(*stages):
        if kw in {"ENV", "ARG", "LABEL"}:
            assert "CHECKPOINT_KEY" not in args, f"{kw} {args}"
        if kw in {"COPY", "ADD"}:
            assert "secrets" not in args, f"{kw} {args}"


# -- Dockerfile ------------------------------------------------------------------------------


def _only(instructions: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in instructions if kw == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def test_dockerfile_base_user_and_install(instructions: list[tuple[str, str]]) -> None:
    assert _only(instructions, "FROM") == "python:3.11-slim"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"
    user = _only(instructions, "USER").split(":")[0]
    assert user not in {"root", "0"}
    runs = [args for kw, args in instructions if kw == "RUN"]
    assert not any(re.search(r"apt-get install|build-essential|\bgcc\b", r) for r in runs)


def test_dockerfile_compiles_the_core_in_a_builder_stage(
    stages: list[list[tuple[str, str]]],
) -> None:
    """The builder has a C compiler and the build's files and makes the wheel; the image
    installs that wheel and refuses to ship the pure-Python fallback."""
    [builder, image] = stages
    base, _, name = _only(builder, "FROM").partition(" AS ")
    assert base == _only(image, "FROM")  # the wheel's tags (cp311, the platform) fit
    runs = [args for kw, args in builder if kw == "RUN"]
    assert any(re.search(r"apt-get install .*\bgcc\b", r) for r in runs)
    copied = {src for kw, args in builder if kw == "COPY" for src in args.split()[:-1]}
    assert {"pyproject.toml", "setup.py", "README.md", "detector", "models"} <= copied
    [wheel] = [shlex.split(r) for r in runs if "pip wheel" in r]
    assert wheel[-1] == "." and "--no-deps" in wheel
    wheels = wheel[wheel.index("--wheel-dir") + 1]
    [copy] = [args.split() for kw, args in image if kw == "COPY" and "--from" in args]
    assert copy[0] == f"--from={name}" and copy[1] == wheels
    image_runs = [args for kw, args in image if kw == "RUN"]
    [install] = [i for i, r in enumerate(image_runs) if "pip install --no-cache-dir" in r]
    assert f"pip install --no-cache-dir {copy[2]}/*.whl" in image_runs[install]
    [check] = [
        part.strip()
        for r in image_runs[install + 1 :]
        for part in r.split("&&")
        if "require_compiled" in part
    ]
    # The check itself: it passes on a compiled core and fails on the fallback.
    for env, code in ((None, 0), ({"DETECTOR_PURE_PYTHON": "1"}, 1)):
        if env is None and compiled.pure_modules():
            continue  # not compiled here: test_compiled says why
        out = run_healthcheck(check, env or {})
        assert out.returncode == code, out.stdout + out.stderr


def test_dockerfile_entrypoint_is_the_console_script(instructions: list[tuple[str, str]]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = exec_form(_only(instructions, "ENTRYPOINT"))
    assert len(entrypoint) == 1
    assert entrypoint[0] in scripts
    module, _, attr = scripts[entrypoint[0]].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    cmd = exec_form(_only(instructions, "CMD"))
    assert cmd == ["run"]
    assert cmd[0] in cli.commands


def test_dockerfile_healthcheck_and_port(
    instructions: list[tuple[str, str]], detector_env: dict[str, str]
) -> None:
    options, _, _ = _only(instructions, "HEALTHCHECK").partition("CMD ")
    argv = shlex.split(dockerfile_healthcheck(instructions))
    assert argv[:2] == [*exec_form(_only(instructions, "ENTRYPOINT")), "check"]
    assert "--interval=" in options
    exposed = {int(p.split("/")[0]) for p in _only(instructions, "EXPOSE").split()}
    assert int(detector_env["DETECTOR_METRICS_PORT"]) in exposed


def test_dockerfile_env_vars_are_run_options(instructions: list[tuple[str, str]]) -> None:
    names = set()
    for kw, args in instructions:
        if kw == "ENV":
            names |= set(re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", args))
    detector_vars = {n for n in names if n.startswith("DETECTOR_")}
    assert detector_vars <= command_envvars(exec_form(_only(instructions, "CMD"))[0])


def test_dockerfile_copies_exist_and_survive_dockerignore(
    stages: list[list[tuple[str, str]]], services: dict[str, dict[str, Any]]
) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    destinations: dict[str, PurePosixPath] = {}
    for stage in stages:
        workdir = PurePosixPath("/")
        for kw, args in stage:
            if kw == "WORKDIR":
                workdir = workdir / args
            elif kw == "COPY" and "--from" not in args:  # from the build context
                *sources, dest = [a for a in args.split() if not a.startswith("--")]
                for source in sources:
                    assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                    top = PurePosixPath(source).parts[0]
                    assert dockerignore_includes(patterns, top), f"COPY {source}: .dockerignored"
                    destinations[source.rstrip("/")] = workdir / dest
    for private in (".git", "tests", ".venv", ".env"):
        assert not dockerignore_includes(patterns, private), f"{private} is in the build context"
    # The producer service runs the script from where the Dockerfile puts deploy/.
    script = PurePosixPath(services["producer"]["entrypoint"][-1])
    assert script == destinations["deploy"] / "producer.py"


# -- Prometheus ------------------------------------------------------------------------------


def test_prometheus_scrapes_every_worker_replica(
    services: dict[str, dict[str, Any]], detector_env: dict[str, str]
) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "detector"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # A static `detector:9100` would reach one replica; DNS discovery finds each of them.
    assert "static_configs" not in job
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["detector"]
    assert sd["type"] == "A"
    assert sd["port"] == int(detector_env["DETECTOR_METRICS_PORT"])
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus")
    mounts = [v.split(":") for v in prometheus["volumes"]]
    assert ["./deploy/prometheus.yml", "/etc/prometheus/prometheus.yml", "ro"] in mounts
    assert any(str(p).split(":")[-1] == "9090" for p in prometheus["ports"])


# -- the demo producer -----------------------------------------------------------------------


def test_producer_service_runs_the_script_from_the_detector_image(
    services: dict[str, dict[str, Any]],
) -> None:
    producer, detector = services["producer"], services["detector"]
    assert producer["profiles"] == ["demo"]
    assert producer["entrypoint"][:2] == ["python", "/app/deploy/producer.py"]
    assert producer["image"] == detector["image"]
    assert producer["build"] == detector["build"]
    assert producer["depends_on"]["redis"]["condition"] == "service_healthy"
    # The image's HEALTHCHECK (`detector check`) would mark the producer unhealthy.
    assert producer.get("healthcheck", {}).get("disable") is True


def test_producer_env_matches_compose(
    producer: ModuleType, services: dict[str, dict[str, Any]], detector_env: dict[str, str]
) -> None:
    env = {k: str(v) for k, v in services["producer"]["environment"].items()}

    recorder = Recorder(env)
    config = producer.Config.from_env(recorder)
    assert recorder.seen == set(env), "compose sets exactly the variables the producer reads"
    assert config.stream == detector_env["DETECTOR_STREAM"]
    assert config.redis_url == detector_env["DETECTOR_REDIS_URL"]
    assert config.rate > 0


@pytest.mark.usefixtures("compose_environ")
def test_producer_events_fit_the_detector_format(
    producer: ModuleType, services: dict[str, dict[str, Any]]
) -> None:
    env = {k: str(v) for k, v in services["producer"]["environment"].items()}
    config = producer.Config.from_env(env)
    _, events = iter_events(
        seed=config.seed, start_ms=1_767_225_600_000, duration_s=config.hours * 3600,
        kinds=DEMO_KINDS,
    )  # fmt: skip
    first = list(itertools.islice(events, 20))
    assert len(first) == 20
    _, run_ctx = parse_with_env("run")
    for fields in first:
        assert run_ctx.params["producer_field"] in fields
        assert fields[run_ctx.params["time_field"]] == fields[producer.TIME_FIELD]


class Recorder(dict[str, str]):
    """An environment that remembers which variables were looked up."""

    def __init__(self, items: dict[str, str]) -> None:
        super().__init__(items)
        self.seen: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return super().__contains__(key)


class FakePipeline:
    def __init__(self, log: list[tuple[str, dict[str, str], int | None]]) -> None:
        self.log = log
        self.queued: list[tuple[str, dict[str, str], int | None]] = []

    def xadd(self, name: str, fields: dict[str, str], *, maxlen: int | None = None,
             approximate: bool = True) -> None:  # fmt: skip
        assert approximate
        self.queued.append((name, fields, maxlen))

    def execute(self) -> None:
        self.log.extend(self.queued)
        self.queued.clear()


class FakeRedis:
    def __init__(self, last: list[tuple[str, dict[str, str]]] | None = None) -> None:
        self.log: list[tuple[str, dict[str, str], int | None]] = []
        self.last = last or []

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        assert not transaction
        return FakePipeline(self.log)

    def xrevrange(self, name: str, count: int | None = None) -> list[Any]:
        return self.last[:count]


def test_producer_replay_appends_everything_in_order(producer: ModuleType) -> None:
    events = [{"producer": f"p{i % 3}", "ts": str(1000 + i)} for i in range(1234)]
    client = FakeRedis()
    sent = producer.replay(
        client, "events", iter(events), rate=0, maxlen=50, stop=threading.Event()
    )
    assert sent == len(events)
    assert [f for _, f, _ in client.log] == events
    assert {(s, m) for s, _, m in client.log} == {("events", 50)}
    stopped = threading.Event()
    stopped.set()
    assert producer.replay(client, "events", iter(events), rate=0, maxlen=0, stop=stopped) == 0


def test_producer_replay_is_paced(producer: ModuleType) -> None:
    events = [{"producer": "p", "ts": str(i)} for i in range(10)]
    client = FakeRedis()
    started = time.monotonic()
    sent = producer.replay(client, "s", events, rate=100, maxlen=0, stop=threading.Event())
    assert sent == 10
    assert time.monotonic() - started >= 0.09  # 10 entries at 100/s
    assert {m for _, _, m in client.log} == {None}  # MAXLEN 0: no cap


def test_producer_resumes_after_the_last_event(producer: ModuleType) -> None:
    assert producer.resume_ms(FakeRedis(), "events", 5_000) == 5_000
    later = FakeRedis([("1-0", {"ts": "9000"})])
    assert producer.resume_ms(later, "events", 5_000) == 9_001
    earlier = FakeRedis([("1-0", {"ts": "10"})])
    assert producer.resume_ms(earlier, "events", 5_000) == 5_000
    foreign = FakeRedis([("1-0", {"value": "3.2"})])
    assert producer.resume_ms(foreign, "events", 5_000) == 5_000


# -- partitioned deployment: router and worker replicas --------------------------------------


def test_workers_are_replicas_with_dynamic_partitions(
    services: dict[str, dict[str, Any]], detector_env: dict[str, str]
) -> None:
    detector = services["detector"]
    assert detector["deploy"]["replicas"] >= 2
    assert "ports" not in detector, "replicas cannot share a published port"
    assert "container_name" not in detector, "a fixed name forbids replicas"
    assert int(detector_env["DETECTOR_PARTITIONS"]) == 16
    assert detector_env["DETECTOR_ASSIGN"] == "dynamic"
    # Each replica must be a distinct member: no shared consumer or worker name, and no
    # shared host name (the default consumer name, which the healthcheck checks).
    assert "DETECTOR_CONSUMER" not in detector_env
    assert "hostname" not in detector
    assert not {"DETECTOR_WORKER_INDEX", "DETECTOR_WORKER_COUNT"} & set(detector_env)


@pytest.fixture(scope="module")
def router_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    env = services["router"]["environment"]
    assert isinstance(env, dict), "use the mapping form for environment"
    return {k: str(v) for k, v in env.items()}


def test_router_service_feeds_the_workers_partitions(
    services: dict[str, dict[str, Any]], router_env: dict[str, str], detector_env: dict[str, str]
) -> None:
    router, detector = services["router"], services["detector"]
    assert router["command"] == ["route"]
    assert router["image"] == detector["image"]
    assert router["build"] == detector["build"]
    assert router["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert router.get("deploy", {}).get("replicas", 1) == 1, "one router per source stream"
    assert router["healthcheck"] == {"disable": True}
    assert all(key.startswith("DETECTOR_") for key in router_env)
    unknown = set(router_env) - command_envvars("route") - set(SECRET_ENVVARS)
    assert not unknown, f"not an envvar of `detector route`: {sorted(unknown)}"
    for shared in ("DETECTOR_REDIS_URL", "DETECTOR_STREAM", "DETECTOR_PARTITIONS"):
        assert router_env[shared] == detector_env[shared], shared
    assert router_env["DETECTOR_DEAD_LETTER_STREAM"] == detector_env["DETECTOR_DEAD_LETTER_STREAM"]
    producer_env = services["producer"]["environment"]
    assert router_env["DETECTOR_ROUTE_SOURCE"] == producer_env["STREAM"]
    assert router_env["DETECTOR_ROUTE_SOURCE"] != router_env["DETECTOR_STREAM"] + ":{0}"


def test_router_env_values_parse_as_route_options(
    monkeypatch: pytest.MonkeyPatch, router_env: dict[str, str]
) -> None:
    _only_detector_env(monkeypatch, router_env)
    _, ctx = parse_with_env("route")
    assert ctx.params["partitions"] == int(router_env["DETECTOR_PARTITIONS"])
    assert ctx.params["source"] == router_env["DETECTOR_ROUTE_SOURCE"]
    assert ctx.params["stream"] == router_env["DETECTOR_STREAM"]
    assert ctx.params["redis_url"] == router_env["DETECTOR_REDIS_URL"]


# -- Grafana ---------------------------------------------------------------------------------


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of the bind mounts (``./x:/y[:ro]``)."""
    out = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        out[target] = source
    return out


def test_grafana_is_provisioned_from_the_repository(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert grafana["profiles"] == services["prometheus"]["profiles"]
    assert all(str(p).startswith("127.0.0.1:") for p in grafana["ports"])
    mounts = _mounts(grafana)
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning"
    [datasource] = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus"
    assert any(str(p).endswith(f":{url.port}") for p in services["prometheus"]["ports"])
    [provider] = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "detector.yml").read_text()
    )["providers"]
    path = provider["options"]["path"]
    assert (ROOT / mounts[path]).resolve() == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert PurePosixPath(home) == PurePosixPath(path) / DASHBOARD.name
    # Every panel queries the provisioned data source by its uid.
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]


def exported_series() -> dict[str, set[str]]:
    """Series name -> label names, as the worker's and the notifier's registries export them."""
    from prometheus_client import CollectorRegistry

    from detector.runtime.metrics import Metrics, NotifierMetrics

    registry = CollectorRegistry()
    Metrics(registry, ("events:{0}",), "stats")
    NotifierMetrics(registry)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        labels = {name for s in family.samples for name in s.labels}
        for suffix in suffixes.get(family.type, ("",)):
            out[family.name + suffix] = labels - {"le"}
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def test_every_metric_the_dashboard_queries_exists() -> None:
    series = exported_series()
    queried = set()
    for title, expr in dashboard_queries():
        names = set(re.findall(r"\b(detector_[a-z0-9_]+)", expr))
        assert names or re.search(r"\bup\b", expr), f"{title}: queries no known series"
        missing = names - set(series)
        assert not missing, f"{title}: {sorted(missing)} not exported by detector.runtime.metrics"
        # Grouping labels must exist on a queried series (le, instance, job come from
        # histograms and Prometheus).
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                known = set().union(*(series[n] for n in names)) | {"le", "instance", "job"}
                assert label in known, f"{title}: no label {label!r} on {sorted(names)}"
        queried |= names
    # The panels the deployment promises: throughput, lag, latency, alerts, producers tracked.
    for needed in (
        "detector_events_total",
        "detector_consumer_lag",
        "detector_batch_seconds_bucket",
        "detector_alerts_total",
        "detector_producers_tracked",
        "detector_notify_requests_total",
    ):
        assert needed in queried, needed
    # Alerts per kind (a closed set of label values, never producer ids).
    assert any("by (kind)" in e and "detector_alerts_total" in e for _, e in dashboard_queries())


def test_dashboard_panels_do_not_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def _only_detector_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """The process environment's DETECTOR_* variables are exactly ``env``'s."""
    for key in list(os.environ):
        if key.startswith("DETECTOR_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
