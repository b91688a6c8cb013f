"""Security: least-privilege ACL users, secrets kept out of command lines and logs, TLS.

Every test runs against real redis-server processes: one with the ACL users of
``detector acl`` applied and the default user turned off, and one that speaks TLS only and
requires client certificates (certificates made with openssl in a temporary directory).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from detector.acl import AclConfig, acl_lines, glob_escape, key_pattern
from detector.core.errors import CheckpointError, ConfigError
from detector.core.settings import (
    CHECKPOINT_KEY,
    HEALTH_KEY,
    Settings,
    mask_url,
)
from detector.gateway import partitions
from detector.gateway.embedded import EmbeddedRedis, TlsFiles
from detector.gateway.streams import connect, connection_options
from detector.runtime.worker import Worker
from tests.conftest import TEST_KEY
from tests.helpers import append, order_events, outlier
from tests.test_cli import clean_env, cli

STREAM = "orders"
GROUP = "detector"
CONSUMER = "c1"
ALERTS = "detector:alerts"
DEAD = "detector:dead-letter"
PASSWORDS = {"worker": "w-Pa55-7f3e9c", "producer": "p-Pa55-1b2d4a", "reader": "r-Pa55-9e8d7c"}
USERS = {"worker": "detector-worker", "producer": "detector-producer", "reader": "detector-reader"}
ADMIN = ("admin", "admin-Pa55-0c1d2e")
# Generated for the test run; no secret ever printed by the detector may contain it.
SECRETS = (*PASSWORDS.values(), TEST_KEY.decode())


def apply_acl(admin: redis.Redis, lines: list[str]) -> None:
    """Send each ACL SETUSER line as redis-cli would (split on spaces; Redis joins selectors)."""
    for line in lines:
        if line and not line.startswith("#"):
            admin.execute_command(*line.split())


def secure_server(server: EmbeddedRedis, lines: list[str]) -> redis.Redis:
    """Apply the ACL lines, create an admin user, turn the default user off; the admin client."""
    kwargs = server.tls.client_kwargs() if server.tls else {}
    default = redis.Redis(port=server.port, decode_responses=True, **kwargs)
    default.execute_command(
        "ACL", "SETUSER", ADMIN[0], "reset", "on", f">{ADMIN[1]}", "~*", "&*", "+@all"
    )
    apply_acl(default, lines)
    default.execute_command("ACL", "SETUSER", "default", "off")
    default.close()
    return redis.Redis(
        port=server.port, username=ADMIN[0], password=ADMIN[1], decode_responses=True, **kwargs
    )


@pytest.fixture(scope="module")
def acl_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    server.start()
    cfg = AclConfig(streams=(STREAM,), group=GROUP, consumer=CONSUMER)
    secure_server(server, acl_lines(cfg, PASSWORDS)).close()
    yield server
    server.stop()


@pytest.fixture
def admin(acl_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis(
        port=acl_server.port, username=ADMIN[0], password=ADMIN[1], decode_responses=True
    )
    # Fresh data, same users; the ACL log starts empty so any refusal below is ours.
    client.flushall()
    client.acl_log_reset()
    yield client
    client.close()


def user_client(server: EmbeddedRedis, role: str, **kwargs: Any) -> redis.Redis:
    return redis.Redis(
        port=server.port, username=USERS[role], password=PASSWORDS[role],
        decode_responses=True, **kwargs,
    )  # fmt: skip


def user_url(server: EmbeddedRedis, role: str, with_password: bool = True) -> str:
    scheme = "rediss" if server.tls else "redis"
    auth = f"{USERS[role]}:{PASSWORDS[role]}" if with_password else USERS[role]
    return f"{scheme}://{auth}@127.0.0.1:{server.port}/0"


def worker_settings(url: str, **changes: Any) -> Settings:
    base = Settings(
        redis_url=url, streams=(STREAM,), group=GROUP, consumer=CONSUMER, until_idle=True,
        idle_timeout_ms=300, block_ms=100, checkpoint_secret=TEST_KEY, checkpoint_every=300,
        claim_idle_ms=0,
    )  # fmt: skip
    return replace(base, **changes)


def workload(start_ms: int | None = None) -> list[dict[str, str]]:
    """Normal events of 3 producers, one outlier (an alert) and one invalid entry."""
    events = order_events(producers=3, per_producer=300)
    if start_ms is not None:
        shift = start_ms - int(events[0]["ts"])
        events = [{**e, "ts": str(int(e["ts"]) + shift)} for e in events]
    last = int(events[-1]["ts"])
    events.append(outlier("svc-1", last + 1000))
    events.append({"producer": "svc-2", "ts": str(last + 2000), "data": "{not json"})
    return events


def refused(call: Callable[[], object]) -> str:
    """The NOPERM error a call gets (fails the test if the call is allowed)."""
    with pytest.raises(redis.ResponseError) as info:
        call()
    message = str(info.value)
    # Direct commands: NOPERM; commands inside a script: "The user executing the script can't".
    assert any(
        m in message for m in ("NOPERM", "no permissions", "user executing the script can't")
    ), message
    return message


def denied_log(admin: redis.Redis) -> list[dict[str, Any]]:
    return list(admin.acl_log())


# -- the ACL lines ------------------------------------------------------------------------


def test_acl_command_prints_rules_for_the_configuration_without_passwords() -> None:
    env = {
        "DETECTOR_ACL_WORKER_PASSWORD": PASSWORDS["worker"],
        "DETECTOR_ACL_PRODUCER_PASSWORD": PASSWORDS["producer"],
    }
    out = cli(
        "acl", "--stream", "orders", "--stream", "pay*", "--group", "g", "--consumer", "w1",
        "--alerts-stream", "al", "--dead-letter-stream", "dl", "--scores-stream", "sc",
        "--worker-user", "wu",
        "--producer-user", "pu", "--redis-version", "7.2+", env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for secret in SECRETS:
        assert secret not in out.stdout
    setusers = [line for line in out.stdout.splitlines() if line.startswith("ACL SETUSER")]
    worker, producer, reader = setusers
    assert worker.startswith("ACL SETUSER wu reset on #") and "+client|setinfo" in worker
    assert "%RW~orders %RW~pay\\*)" in worker  # glob characters of names are escaped
    assert "(+xadd %W~al %W~dl %W~sc)" in worker and "%R~sc" in reader
    assert "%RW~detector:checkpoint:g:w1)" in worker and "%W~detector:health:g:w1" in worker
    assert producer.endswith("+xadd %W~orders %W~pay\\*")
    assert "#READER_PASSWORD_SHA256" in reader  # no password given: a placeholder
    assert "# ACL SETUSER default off" in out.stdout
    bad = cli("acl", "--stream", "two words")
    assert bad.returncode == 2 and "cannot be expressed in ACL rules" in bad.stderr
    assert cli("acl", "--stream", "a", "--alerts-stream", "a").returncode == 2


def test_key_patterns_match_exactly_the_names() -> None:
    assert glob_escape("a*b?c[d]\\") == "a\\*b\\?c\\[d\\]\\\\"
    assert key_pattern(CHECKPOINT_KEY, group="g*", consumer="c") == "detector:checkpoint:g\\*:c"
    assert key_pattern(HEALTH_KEY, group="g", consumer=None) == "detector:health:g:*"
    with pytest.raises(ConfigError):
        AclConfig(consumer="has space")
    with pytest.raises(ConfigError):
        AclConfig(worker_user="same", producer_user="same")


def test_placeholder_passwords_are_refused_by_redis(admin: redis.Redis) -> None:
    cfg = AclConfig(worker_user="x-w", producer_user="x-p", reader_user="x-r")
    for line in acl_lines(cfg, {}):
        if line.startswith("ACL SETUSER"):
            with pytest.raises(redis.ResponseError, match="hash"):
                admin.execute_command(*line.split())
    assert not {"x-w", "x-p", "x-r"} & set(admin.acl_users())
    # Lines for 7.2+ grant CLIENT SETINFO, which 7.0 does not know: refused as a whole there.
    cfg = AclConfig(worker_user="y-w", producer_user="y-p", reader_user="y-r", redis_version="7.2+")
    major, minor = (int(x) for x in admin.info("server")["redis_version"].split(".")[:2])
    for line in acl_lines(cfg, PASSWORDS):
        if line.startswith("ACL SETUSER"):
            if (major, minor) < (7, 2):
                with pytest.raises(redis.ResponseError, match=r"(?i)unknown command"):
                    admin.execute_command(*line.split())
            else:
                admin.execute_command(*line.split())


# -- the worker under its user ------------------------------------------------------------


def test_worker_runs_fully_under_its_acl_user(
    acl_server: EmbeddedRedis, admin: redis.Redis
) -> None:
    producer = user_client(acl_server, "producer")
    reader = user_client(acl_server, "reader")
    first = workload()
    ids = append(producer, STREAM, first)
    health = HEALTH_KEY.format(group=GROUP, consumer=CONSUMER)
    seen_health: list[bool] = []

    def probe(_: object) -> None:  # `detector check --consumer c1`, as the reader
        seen_health.append(reader.get(health) is not None)

    stats = Worker(worker_settings(user_url(acl_server, "worker")), on_verdicts=probe).run()
    assert stats.events == len(ids) and stats.alerts == 1 and stats.invalid == 1
    assert stats.redis_errors == 0
    assert seen_health and all(seen_health)
    assert admin.xlen(ALERTS) == 1 and admin.xlen(DEAD) == 1
    assert admin.xpending(STREAM, GROUP)["pending"] == 0
    assert admin.exists(CHECKPOINT_KEY.format(group=GROUP, consumer=CONSUMER))

    # Another consumer of the group read entries and died; more events arrive; the worker
    # restarts from its checkpoint, claims the dead consumer's entries and reads the rest.
    second = workload(start_ms=int(first[-1]["ts"]) + 60_000)
    ids2 = append(producer, STREAM, second)
    admin.xreadgroup(GROUP, "dead-consumer", {STREAM: ">"}, count=100)
    stats = Worker(worker_settings(user_url(acl_server, "worker"))).run()
    assert stats.events == len(ids2)  # nothing relearned from before the checkpoint
    assert stats.claimed == 100
    assert admin.xpending(STREAM, GROUP)["pending"] == 0
    assert admin.xlen(DEAD) == 2
    letters = reader.xrange(DEAD)
    assert [f["source_id"] for _, f in letters] == [ids[-1], ids2[-1]]

    # --reset-state deletes the checkpoint (DEL) and relearns.
    stats = Worker(worker_settings(user_url(acl_server, "worker"), reset_state=True)).run()
    assert stats.events == 0
    assert not admin.exists(CHECKPOINT_KEY.format(group=GROUP, consumer=CONSUMER))
    assert not admin.exists(health)  # a stopping worker deletes its health key

    # The reader sees the alerts as `detector alerts` reads them, and through a group.
    assert len(reader.xrevrange(ALERTS, count=10)) == admin.xlen(ALERTS) >= 1
    reader.xgroup_create(ALERTS, "notifier", id="0")
    got = reader.xreadgroup("notifier", "n1", {ALERTS: ">"}, count=10)
    reader.xack(ALERTS, "notifier", *[eid for eid, _ in got[0][1]])

    # Nothing any of them did was refused: the rules are enough to run fully.
    assert denied_log(admin) == []
    for client in (producer, reader):
        client.close()


def test_worker_user_is_refused_everything_else(
    acl_server: EmbeddedRedis, admin: redis.Redis
) -> None:
    append(admin, STREAM, order_events(producers=1, per_producer=3))
    admin.xadd(ALERTS, {"a": "1"})
    admin.set("other", "secret")
    w = user_client(acl_server, "worker")
    own_checkpoint = CHECKPOINT_KEY.format(group=GROUP, consumer=CONSUMER)
    refused(lambda: w.xadd(STREAM, {"producer": "forged"}))  # cannot forge input
    refused(lambda: w.xrange(STREAM))  # reads its input only through its group
    refused(lambda: w.xdel(STREAM, "0-1"))
    refused(lambda: w.xtrim(STREAM, maxlen=0))
    refused(lambda: w.delete(STREAM))
    refused(lambda: w.xgroup_destroy(STREAM, GROUP))
    refused(lambda: w.xgroup_setid(STREAM, GROUP, "$"))
    refused(lambda: w.get("other"))
    refused(lambda: w.set("other", "x"))
    refused(lambda: w.xrange(ALERTS))  # alerts are write-only for the worker
    refused(lambda: w.set(ALERTS, "x"))  # cannot overwrite the alert stream
    refused(lambda: w.delete(ALERTS))
    refused(lambda: w.hset(CHECKPOINT_KEY.format(group=GROUP, consumer="c2"), "f", "v"))
    refused(lambda: w.set(own_checkpoint, "x"))
    refused(lambda: w.config_get("*"))
    refused(lambda: w.flushall())
    refused(lambda: w.keys("*"))
    refused(lambda: w.scan())
    refused(lambda: w.eval("return 1", 0))
    refused(lambda: w.function_list())
    refused(lambda: w.script_flush())
    refused(lambda: w.publish("ch", "x"))
    refused(lambda: w.acl_list())
    # A script of its own confers nothing: each command inside is checked against the user.
    forge = w.script_load("return redis.call('XADD', KEYS[1], '*', 'producer', 'forged')")
    refused(lambda: w.evalsha(forge, 1, STREAM))  # the input is no declared script key
    refused(lambda: w.evalsha(forge, 1, "{detector:alerts}:guard:x"))  # XADD on a guard key
    peek = w.script_load("return redis.call('GET', 'other')")
    refused(lambda: w.evalsha(peek, 1, ALERTS))
    assert admin.xlen(STREAM) == 3 and admin.get("other") == "secret"
    w.close()


def test_the_scores_stream_is_granted_only_when_configured(
    acl_server: EmbeddedRedis, admin: redis.Redis
) -> None:
    scores = "detector:scores"
    # The module's users (no --scores-stream): the worker may not append scores.
    w = user_client(acl_server, "worker")
    refused(lambda: w.xadd(scores, {"score": "1"}))
    w.close()
    cfg = AclConfig(streams=(STREAM,), group=GROUP, consumer=CONSUMER, scores_stream=scores)
    worker, _, reader = (line for line in acl_lines(cfg, PASSWORDS) if line.startswith("ACL"))
    assert "(+xadd %W~detector:alerts %W~detector:dead-letter %W~detector:scores)" in worker
    assert "%R~detector:scores" in reader
    with pytest.raises(ConfigError, match="input stream"):
        AclConfig(streams=(STREAM,), scores_stream=STREAM)
    partitioned = AclConfig(streams=(STREAM,), partitioned=True, scores_stream=scores)
    lines = acl_lines(partitioned, PASSWORDS)
    assert "(+xadd %W~detector:alerts %W~detector:dead-letter %W~detector:scores)" in next(
        line for line in lines if line.startswith("ACL SETUSER detector-worker")
    )

    server = EmbeddedRedis()
    server.start()
    try:
        admin2 = secure_server(server, acl_lines(cfg, PASSWORDS))
        admin2.acl_log_reset()
        producer = user_client(server, "producer")
        ids = append(producer, STREAM, workload())
        settings = worker_settings(user_url(server, "worker"), scores_stream=scores)
        stats = Worker(settings).run()
        assert stats.events == len(ids) and stats.alerts == 1 and stats.redis_errors == 0
        assert admin2.xlen(scores) == len(ids) - 1  # every event but the invalid one
        r = user_client(server, "reader")  # dashboards read the scores
        assert [f["source_id"] for _, f in r.xrevrange(scores, count=1)] == [ids[-2]]
        assert denied_log(admin2) == []  # the worker ran as its user, nothing refused
        w = user_client(server, "worker")
        refused(lambda: w.xrange(scores))  # write-only for the worker
        refused(lambda: w.delete(scores))
        for client in (producer, r, w, admin2):
            client.close()
    finally:
        server.stop()


def test_producer_may_only_append_to_the_input(
    acl_server: EmbeddedRedis, admin: redis.Redis
) -> None:
    p = user_client(acl_server, "producer")
    assert p.xadd(STREAM, {"producer": "p", "a": "1"})
    refused(lambda: p.xrange(STREAM))
    refused(lambda: p.xreadgroup(GROUP, "x", {STREAM: ">"}))
    refused(lambda: p.xgroup_create(STREAM, "g2"))
    refused(lambda: p.xadd(ALERTS, {"forged": "alert"}))
    refused(lambda: p.xadd(DEAD, {"a": "1"}))
    refused(lambda: p.xadd("some-other-stream", {"a": "1"}))
    refused(lambda: p.hset(CHECKPOINT_KEY.format(group=GROUP, consumer=CONSUMER), "p:x", "v"))
    refused(lambda: p.set("{detector:alerts}:guard:x", "1"))
    refused(lambda: p.get("anything"))
    refused(lambda: p.delete(STREAM))
    refused(lambda: p.config_get("*"))
    refused(lambda: p.keys("*"))
    r = user_client(acl_server, "reader")
    refused(lambda: r.xadd(ALERTS, {"forged": "alert"}))
    refused(lambda: r.xrange(STREAM))
    refused(lambda: r.hgetall(CHECKPOINT_KEY.format(group=GROUP, consumer=CONSUMER)))
    assert admin.xlen(STREAM) == 1
    p.close()
    r.close()


# -- secrets ------------------------------------------------------------------------------


def test_cli_worker_takes_its_password_from_the_environment_and_never_shows_it(
    acl_server: EmbeddedRedis, admin: redis.Redis, tmp_path: Path
) -> None:
    producer = user_client(acl_server, "producer")
    ids = append(producer, STREAM, workload())
    password_file = tmp_path / "redis-password"
    password_file.write_text(PASSWORDS["worker"] + "\n")  # as `echo pw > file` writes it
    base = ["--log-level", "DEBUG", "run", "--stream", STREAM, "--consumer", CONSUMER,
            "--until-idle", "--idle-timeout-ms", "300", "--block-ms", "100"]  # fmt: skip
    out = cli(
        *base, "--redis-url", user_url(acl_server, "worker", with_password=False),
        env={"DETECTOR_REDIS_PASSWORD_FILE": str(password_file)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"processed {len(ids)} events (1 dead-lettered)" in out.stderr
    # A URL with a password from the environment (not the command line) is logged masked.
    env_url = user_url(acl_server, "worker")
    out2 = cli(*base, env={"DETECTOR_REDIS_URL": env_url, "DETECTOR_LOG_FORMAT": "json"})
    assert out2.returncode == 0, out2.stderr
    assert f"redis://{USERS['worker']}:***@127.0.0.1:{acl_server.port}/0" in out2.stderr
    # The reader's commands with DETECTOR_REDIS_PASSWORD.
    reader_env = {"DETECTOR_REDIS_PASSWORD": PASSWORDS["reader"]}
    reader_url = user_url(acl_server, "reader", with_password=False)
    shown = cli("alerts", "--redis-url", reader_url, "--json", env=reader_env)
    assert shown.returncode == 0 and '"producer":"svc-1"' in shown.stdout, shown.stderr
    # A wrong password is a configuration error (exit 2, at once), and is not echoed.
    wrong = cli(*base, "--redis-url", reader_url.replace("reader", "worker"),
                env={"DETECTOR_REDIS_PASSWORD": "wrong-Pa55-d00d"})  # fmt: skip
    assert wrong.returncode == 2 and "refused the credentials" in wrong.stderr, wrong.stderr
    assert "wrong-Pa55-d00d" not in wrong.stderr + wrong.stdout
    for result in (out, out2, shown, wrong):
        for secret in SECRETS:
            assert secret not in result.stdout + result.stderr
    assert admin.xpending(STREAM, GROUP)["pending"] == 0
    # Refused: only the wrong password (ACL LOG records the user, never the password).
    (entry,) = denied_log(admin)
    assert entry["reason"] == "auth" and entry["username"] == USERS["worker"]
    producer.close()


def test_password_on_the_command_line_is_refused() -> None:
    for command in (["run", "--until-idle"], ["alerts"], ["check"]):
        out = cli(*command, "--redis-url", "redis://u:hunter2-Pa55@127.0.0.1:1/0")
        assert out.returncode == 2, (command, out.stderr)
        assert "DETECTOR_REDIS_PASSWORD" in out.stderr and "hunter2" not in out.stderr
    out = cli("train", "--baseline", "b", "--redis-url", "redis://:hunter2-Pa55@127.0.0.1:1/0")
    assert out.returncode == 2 and "hunter2" not in out.stderr


def test_settings_repr_and_worker_logs_never_show_a_password(
    acl_server: EmbeddedRedis, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    other = "other-Pa55-x"
    settings = worker_settings(user_url(acl_server, "worker"), redis_password=other)
    text = repr(settings) + str(settings)
    assert PASSWORDS["worker"] not in text and other not in text
    assert f"{USERS['worker']}:***@" in text and TEST_KEY.decode() not in text
    append(user_client(acl_server, "producer"), STREAM, workload())
    caplog.set_level(logging.DEBUG)
    Worker(worker_settings(user_url(acl_server, "worker"))).run()
    assert caplog.records  # the worker did log
    for secret in SECRETS:
        assert secret not in caplog.text


def test_mask_url() -> None:
    assert mask_url("redis://u:p@h:1/0") == "redis://u:***@h:1/0"
    assert mask_url("redis://:p%40ss@h/0") == "redis://:***@h/0"
    assert mask_url("rediss://h/0?password=p&db=0") == "rediss://h/0?password=***&db=0"
    assert mask_url("unix:///run/redis.sock?password=p") == "unix:///run/redis.sock?password=***"
    assert mask_url("redis://u@h/0") == "redis://u@h/0"
    assert mask_url("redis://[::1") == "***"


def test_connection_options_keep_secrets_apart_and_verification_on(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("")
    pw = "pw"
    assert connection_options("redis://u@h/0", password=pw) == {"password": pw}
    assert connection_options("redis://h/0") == {}
    tls = connection_options("rediss://h/0", tls_ca_cert=pem, tls_cert=pem, tls_key=pem)
    assert tls == {
        "ssl_ca_certs": str(pem), "ssl_certfile": str(pem), "ssl_keyfile": str(pem),
        "ssl_cert_reqs": "required", "ssl_check_hostname": True,
    }  # fmt: skip
    for url, kwargs in [
        ("redis://u:pw@h/0", {"password": "pw2"}),  # a password in two places
        ("redis://h/0?password=pw", {"password": "pw2"}),
        ("redis://h/0", {"tls_ca_cert": pem}),  # TLS files without rediss://
        ("rediss://h/0", {"tls_key": pem}),  # a key without its certificate
        ("rediss://h/0?ssl_cert_reqs=none", {}),  # verification off
        ("rediss://h/0?ssl_check_hostname=false", {}),
    ]:
        with pytest.raises(ConfigError) as info:
            connection_options(url, **kwargs)
        assert "pw" not in str(info.value)


# -- TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path  # another CA, and a client certificate it signed
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
             str(cert), "-days", "2", "-subj", f"/CN={name}", cwd=d)  # fmt: skip
    return cert, key


def _make_cert(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = (d / f"{name}.{x}" for x in ("key", "csr", "crt", "ext"))
    extfile.write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={name}", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extfile),
             cwd=d)  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _make_ca(d, "test-ca")
    server = _make_cert(
        d, "server", ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )  # fmt: skip
    client = _make_cert(d, "client", ca, "extendedKeyUsage=clientAuth\n")
    rogue_ca = _make_ca(d, "rogue-ca")
    rogue = _make_cert(d, "rogue", rogue_ca, "extendedKeyUsage=clientAuth\n")
    return Pki(ca[0], *server, *client, rogue_ca[0], *rogue)


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[EmbeddedRedis]:
    files = TlsFiles(pki.ca, pki.server_cert, pki.server_key, pki.client_cert, pki.client_key)
    server = EmbeddedRedis(tls=files)
    try:
        server.start()
    except ConfigError as exc:  # a redis-server built without TLS: say so, do not skip
        pytest.fail(f"redis-server cannot serve TLS (built without BUILD_TLS=yes?): {exc}")
    cfg = AclConfig(streams=(STREAM,), group=GROUP, consumer=CONSUMER)
    secure_server(server, acl_lines(cfg, PASSWORDS)).close()
    yield server
    server.stop()


def _tls_admin(server: EmbeddedRedis) -> redis.Redis:
    assert server.tls is not None
    return redis.Redis(
        port=server.port, username=ADMIN[0], password=ADMIN[1], decode_responses=True,
        **server.tls.client_kwargs(),
    )  # fmt: skip


def test_worker_end_to_end_over_tls_with_client_certificate(
    tls_server: EmbeddedRedis, pki: Pki
) -> None:
    admin = _tls_admin(tls_server)
    admin.flushall()
    producer = redis.Redis.from_url(
        user_url(tls_server, "producer"), ssl_ca_certs=str(pki.ca),
        ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key),
    )  # fmt: skip
    ids = append(producer, STREAM, workload())
    url = user_url(tls_server, "worker", with_password=False)
    assert url.startswith("rediss://")
    out = cli(
        "run", "--redis-url", url, "--stream", STREAM, "--consumer", CONSUMER, "--until-idle",
        "--idle-timeout-ms", "300", "--block-ms", "100",
        "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
        env={"DETECTOR_TLS_CA_CERT": str(pki.ca),
             "DETECTOR_REDIS_PASSWORD": PASSWORDS["worker"]},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"processed {len(ids)} events (1 dead-lettered)" in out.stderr
    assert admin.xlen(ALERTS) == 1 and admin.xpending(STREAM, GROUP)["pending"] == 0
    assert admin.acl_log() == []
    for secret in SECRETS:
        assert secret not in out.stderr + out.stdout
    # The library path: connect() with the same files, a restarted worker resumes.
    append(producer, STREAM, workload(start_ms=int(workload()[-1]["ts"]) + 60_000))
    client = connect(
        url, block_ms=100, password=PASSWORDS["worker"], tls_ca_cert=pki.ca,
        tls_cert=pki.client_cert, tls_key=pki.client_key,
    )  # fmt: skip
    stats = Worker(worker_settings(url), client).run()
    assert stats.events == len(ids) and stats.invalid == 1
    assert admin.xpending(STREAM, GROUP)["pending"] == 0
    client.close()
    producer.close()
    admin.close()


def _fails_to_connect(server: EmbeddedRedis, **kwargs: Any) -> str:
    client = redis.Redis(
        host="127.0.0.1", port=server.port, username=ADMIN[0], password=ADMIN[1],
        socket_timeout=5, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0), **kwargs,
    )  # fmt: skip
    with pytest.raises(redis.ConnectionError) as info:
        client.ping()
    client.close()
    return str(info.value)


def test_tls_refuses_clients_without_a_trusted_certificate(
    tls_server: EmbeddedRedis, pki: Pki
) -> None:
    ca = str(pki.ca)
    # No client certificate, or one signed by another CA: the server refuses the handshake.
    _fails_to_connect(tls_server, ssl=True, ssl_ca_certs=ca)
    _fails_to_connect(
        tls_server, ssl=True, ssl_ca_certs=ca, ssl_certfile=str(pki.rogue_cert),
        ssl_keyfile=str(pki.rogue_key),
    )  # fmt: skip
    # A client that does not trust the server's CA refuses the server.
    message = _fails_to_connect(
        tls_server, ssl=True, ssl_ca_certs=str(pki.rogue_ca),
        ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key),
    )  # fmt: skip
    assert "certificate verify failed" in message
    # Plain text to the TLS port does not work either.
    _fails_to_connect(tls_server)
    # The same client with the right files is let in.
    good = redis.Redis(
        port=tls_server.port, username=ADMIN[0], password=ADMIN[1], ssl=True,
        ssl_ca_certs=ca, ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key),
    )  # fmt: skip
    assert good.ping()
    good.close()


def test_cli_refuses_tls_options_without_rediss_and_without_client_cert_fails(
    tls_server: EmbeddedRedis, pki: Pki
) -> None:
    out = cli("run", "--redis-url", "redis://127.0.0.1:1/0", "--tls-ca-cert", str(pki.ca))
    assert out.returncode == 2 and "rediss://" in out.stderr
    out = cli(
        "check", "--redis-url", user_url(tls_server, "reader", with_password=False),
        "--consumer", CONSUMER, "--tls-ca-cert", str(pki.ca),
        env={"DETECTOR_REDIS_PASSWORD": PASSWORDS["reader"]},
    )  # fmt: skip
    assert out.returncode == 1 and "unhealthy" in out.stderr  # no client certificate
    # The worker does not retry a refused handshake forever: a configuration error, at once.
    out = cli(
        "run", "--redis-url", user_url(tls_server, "worker", with_password=False),
        "--until-idle", "--tls-ca-cert", str(pki.ca),
        env={"DETECTOR_REDIS_PASSWORD": PASSWORDS["worker"]},
    )  # fmt: skip
    assert out.returncode == 2 and "TLS with redis rediss://" in out.stderr, out.stderr


# -- documented limits (docs/security.md): asserted so the document stays true -------------


def test_limit_a_producer_can_trim_the_input_it_appends_to(
    acl_server: EmbeddedRedis, admin: redis.Redis
) -> None:
    """XADD's MAXLEN/MINID options need no more than the XADD permission: ACLs cannot stop
    a producer sharing a stream from trimming entries the worker has not read yet."""
    p = user_client(acl_server, "producer")
    append(p, STREAM, order_events(producers=1, per_producer=50))
    p.xadd(STREAM, {"producer": "rogue", "a": "1"}, maxlen=1, approximate=False)
    assert admin.xlen(STREAM) == 1
    p.close()


def _signed_pickle_reaching(module: str, dotted: str) -> bytes:
    """A protocol-4 pickle calling ``module.dotted()`` (STACK_GLOBAL, no arguments)."""
    return (
        b"\x80\x04"
        + b"\x8c" + bytes([len(module)]) + module.encode() + b"\x94"
        + b"\x8c" + bytes([len(dotted)]) + dotted.encode() + b"\x94"
        + b"\x93" + b")" + b"R" + b"."
    )  # fmt: skip


def test_signed_pickle_cannot_reach_beyond_the_allow_list() -> None:
    from detector.core.checkpoint import Signer

    signer = Signer(TEST_KEY)
    blob = signer.sign("p:x", _signed_pickle_reaching("detector.gateway.secrets", "os.getpid"))
    with pytest.raises(CheckpointError):
        signer.loads("p:x", blob)


# -- partitioned workers and the router under the users of `detector acl --partitioned` ------

P_COUNT = 4
PART_PASSWORDS = {**PASSWORDS, "router": "rt-Pa55-5a6b7c"}
PART_ENV = {f"DETECTOR_ACL_{role.upper()}_PASSWORD": pw for role, pw in PART_PASSWORDS.items()}


@pytest.fixture(scope="module")
def partitioned_acl_server() -> Iterator[EmbeddedRedis]:
    """A server with exactly the users `detector acl --partitioned` prints (defaults)."""
    out = cli("acl", "--partitioned", env=PART_ENV)
    assert out.returncode == 0, out.stderr
    for secret in PART_PASSWORDS.values():
        assert secret not in out.stdout
    server = EmbeddedRedis()
    server.start()
    secure_server(server, out.stdout.splitlines()).close()
    yield server
    server.stop()


def _part_client(server: EmbeddedRedis, user: str, password: str) -> redis.Redis:
    return redis.Redis(port=server.port, username=user, password=password)


@pytest.mark.parametrize("assign", ["static", "dynamic"])
def test_partitioned_workers_and_router_run_fully_under_their_users(
    partitioned_acl_server: EmbeddedRedis, assign: str
) -> None:
    """Two `detector run --partitions 4` processes under the worker user; producers append
    under theirs: straight into the partitions (static) or into `events` through `detector
    route` under the router user (dynamic). The outcome equals one admin worker's."""
    from detector.producer import Producer
    from detector.router import Router, RouterConfig
    from tests import partitioned as h

    server = partitioned_acl_server
    admin = _part_client(server, *ADMIN)
    admin.flushall()
    admin.acl_log_reset()
    events = h.workload(producers=40, per_producer=50, seed=11)
    bad = {"producer": "svc-bad", "ts": events[-1]["ts"], "data": "{not json"}
    producer = _part_client(server, USERS["producer"], PASSWORDS["producer"])
    if assign == "static":
        Producer(producer, h.BASE, P_COUNT).send_many((e["producer"], e) for e in [*events, bad])
    else:
        for e in [*events, bad]:
            producer.xadd("events", e)  # type: ignore[arg-type]
        url = f"redis://detector-router@127.0.0.1:{server.port}/0"
        client = connect(url, block_ms=50, password=PART_PASSWORDS["router"])
        config = RouterConfig(partitions=P_COUNT, block_ms=50, lease_ttl_ms=1000)
        stats = Router(config, client).run(until_idle=True, idle_timeout_ms=200)
        client.close()
        assert (stats.routed, stats.dead_lettered) == (len(events) + 1, 0)
    producer.close()
    admin_url = f"redis://{ADMIN[0]}:{ADMIN[1]}@127.0.0.1:{server.port}/0"
    # The reference reads the same entries (same ids, so the same alert ids) as an admin.
    reference = h.reference(admin, admin_url, events, P_COUNT)

    url = user_url(server, "worker", with_password=False)
    env = {**clean_env(), "DETECTOR_REDIS_PASSWORD": PASSWORDS["worker"]}
    extra = ["--assign", assign, "--until-idle", "--idle-timeout-ms", "600",
             "--lease-ttl-ms", "2000", "--checkpoint-every", "300"]  # fmt: skip
    procs = []
    for i in range(2):
        index = ["--worker-index", str(i), "--worker-count", "2"] if assign == "static" else []
        cmd = h.run_cmd(url, f"w{i}", P_COUNT, *extra, *index)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    outputs = [p.communicate(timeout=90)[1] for p in procs]
    for p, err in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
        for secret in SECRETS:
            assert secret not in err
    assert "processed" in outputs[0] and "processed" in outputs[1]
    h.check(reference, h.outcome(admin, P_COUNT), len(events))
    (letter,) = admin.xrange(DEAD)
    assert letter[1][b"reason"] == b"invalid_json"
    assert admin.acl_log() == [], "a command of the worker, producer or router was refused"

    w = _part_client(server, USERS["worker"], PASSWORDS["worker"])
    stream0 = partitions.partition_stream(h.BASE, 0)
    refused(lambda: w.xadd(stream0, {"producer": "forged"}))  # cannot forge input
    refused(lambda: w.xadd("events", {"producer": "forged"}))  # nor the router's source
    refused(lambda: w.xrange(stream0))  # reads its input only through its group
    refused(lambda: w.hgetall(partitions.checkpoint_key("ref", 0)))  # another group's state
    refused(lambda: w.hget("detector:routed:events:{0}", "events"))  # the router's marks
    refused(lambda: w.get("detector:router:lease:detector-router:events"))
    refused(lambda: w.xrange(ALERTS))  # alerts are write-only for the worker
    refused(lambda: w.flushall())
    refused(lambda: w.config_get("*"))
    refused(lambda: w.config_set("appendonly", "no"))
    refused(lambda: w.keys("*"))
    forge = w.script_load("return redis.call('XADD', KEYS[1], '*', 'producer', 'forged')")
    refused(lambda: w.evalsha(forge, 1, stream0))  # a script confers nothing beyond the rules
    w.close()
    router_user = _part_client(server, "detector-router", PART_PASSWORDS["router"])
    refused(lambda: router_user.xrange(stream0))
    refused(lambda: router_user.xadd(ALERTS, {"forged": "alert"}))
    refused(lambda: router_user.hset(partitions.checkpoint_key("detector", 0), "f", "v"))
    router_user.close()
    p = _part_client(server, USERS["producer"], PASSWORDS["producer"])
    refused(lambda: p.xrange(stream0))
    refused(lambda: p.xadd(ALERTS, {"forged": "alert"}))
    p.close()
    total = sum(int(admin.xlen(partitions.partition_stream(h.BASE, q))) for q in range(P_COUNT))
    assert total == len(events) + 1, "a refused command wrote something"
    admin.close()


def test_router_rules_follow_the_configuration() -> None:
    cfg = AclConfig(partitioned=True, streams=("ev*",), sources=("in",), router_group="rg")
    lines = [x for x in acl_lines(cfg, PART_PASSWORDS) if x.startswith("ACL SETUSER")]
    assert [x.split()[2] for x in lines] == [*USERS.values(), "detector-router"]
    router_line, producer_line = lines[3], lines[1]
    assert "(+xreadgroup +xautoclaim +xack +xgroup|create %RW~in)" in router_line
    assert "(+xadd %W~ev\\*:{*} %W~detector:dead-letter)" in router_line
    assert "%RW~detector:router:lease:rg:in" in router_line
    assert "%R~detector:routed:ev\\*:{*}" in router_line and "%RW~ev\\*:{*}" in router_line
    assert "{detector:dead-letter}:guard:in:*" in router_line
    assert producer_line.endswith("+xadd %W~ev\\*:{*} %W~in")
    # Unpartitioned workers have no router.
    assert not any("detector-router" in x for x in acl_lines(AclConfig(), PART_PASSWORDS))
    with pytest.raises(ConfigError, match="also an input stream"):
        AclConfig(partitioned=True, sources=(ALERTS,))
    with pytest.raises(ConfigError, match="different names"):
        AclConfig(router_user="detector-worker")
