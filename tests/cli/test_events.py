"""`keyrotor token sign|verify` and `keyrotor events`, run as a user runs them.

The short commands run the console script's entry point in this process (`cli`, through
tests/support/cli.py: a new process costs about a second of imports); the follower of the
stream and a refusal's exit status are the installed command in a subprocess. Each test runs
once (`ONE_DATABASE`: on PostgreSQL when CI has it, else SQLite): signing keys and the outbox
are stored and read the same way as in tests/service and tests/store, checked on both backends.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from tests.conftest import ONE_DATABASE
from tests.support.cli import KEYROTOR, keyrotor_in_process
from tests.support.processes import interruptible
from worker.core.sealing import MasterKeys, generate_master_key
from worker.service import Limits, Service
from worker.store.db import session_factory

MASTER_KEY = generate_master_key()


def environment(tmp_path: Path, database_url: str, redis_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    env.update(
        KEYROTOR_DATABASE_URL=database_url,
        KEYROTOR_MASTER_KEYS=MASTER_KEY,
        KEYROTOR_VAR_DIR=str(tmp_path / "var"),
        KEYROTOR_JWKS_DIR=str(tmp_path / "jwks"),
    )
    if redis_url is not None:
        env["KEYROTOR_REDIS_URL"] = redis_url
    return env


def keyrotor(
    *args: str, tmp_path: Path, database_url: str, redis_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed command in a subprocess."""
    return subprocess.run(
        [str(KEYROTOR), *args],
        cwd=tmp_path,
        env=environment(tmp_path, database_url, redis_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def in_process(
    *args: str, tmp_path: Path, database_url: str, redis_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The same command and environment, run in this process."""
    env = environment(tmp_path, database_url, redis_url)
    return keyrotor_in_process(*args, env=env, cwd=tmp_path)


@pytest.fixture
def shared_service(engine: Engine) -> Service:
    """A service under the same master key as the CLI runs with."""
    return Service(session_factory(engine), MasterKeys.from_text(MASTER_KEY), Limits())


@ONE_DATABASE
def test_a_signed_token_verifies_and_refusals_are_one_line(
    shared_service: Service, tmp_path: Path, database_url: str
) -> None:
    shared_service.create_realm("acme", algo="es256")
    shared_service.create_realm("shared", algo="hs256")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return in_process(*args, tmp_path=tmp_path, database_url=database_url)

    for realm in ("acme", "shared"):
        signed = cli(
            "token", "sign", realm, "--claims", '{"sub": "u1"}', "--ttl", "5m", "--aud", "api"
        )
        assert signed.returncode == 0, signed.stderr
        token = signed.stdout.strip()
        verified = cli("token", "verify", realm, token, "--aud", "api")
        assert verified.returncode == 0, verified.stderr
        claims = json.loads(verified.stdout)
        assert (claims["sub"], claims["aud"], claims["exp"] - claims["iat"]) == ("u1", "api", 300)

    refused = cli("token", "verify", "acme", token, "--aud", "admin")  # an hs256 token, too
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: ")
    assert cli("token", "verify", "acme", "x.y.z").stderr == "error: token is malformed\n"
    too_long = cli("token", "sign", "acme", "--ttl", "2h")
    assert too_long.returncode == 2
    assert "longer than the realm's max token ttl" in too_long.stderr
    not_an_object = cli("token", "sign", "acme", "--claims", "[1]")
    assert (not_an_object.returncode, not_an_object.stderr) == (
        2, "error: Claims must be a JSON object\n",
    )  # fmt: skip


def read_lines(stream: queue.Queue[str], count: int, timeout: float = 20) -> list[str]:
    return [stream.get(timeout=timeout) for _ in range(count)]


@ONE_DATABASE
def test_events_prints_json_lines_and_follows_the_stream(
    shared_service: Service, tmp_path: Path, database_url: str, redis_url: str
) -> None:
    redis.Redis.from_url(redis_url).flushdb()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return in_process(*args, tmp_path=tmp_path, database_url=database_url, redis_url=redis_url)

    assert cli("realms", "create", "acme", "--algo", "es256").returncode == 0  # relays too
    assert cli("realms", "create", "beta", "--algo", "es256").returncode == 0
    listed = cli("events", "--since", "0", "--no-follow")
    assert listed.returncode == 0, listed.stderr
    created = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [e["reason"] for e in created] == ["realm.created", "realm.created"]

    follower = subprocess.Popen(
        [str(KEYROTOR), "events", "--realm", "acme", "--since", created[0]["id"]],
        cwd=tmp_path,
        env=environment(tmp_path, database_url, redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in follower.stdout or []:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert cli("rotate", "acme").returncode == 0
        assert cli("rotate", "beta").returncode == 0  # another realm: filtered out
        assert cli("rotate", "acme").returncode == 0
        followed = [json.loads(line) for line in read_lines(lines, 2)]
        assert [e["reason"] for e in followed] == ["key.rotated", "key.rotated"]
        assert {e["realm_id"] for e in followed} == {created[0]["realm_id"]}
    finally:
        follower.send_signal(signal.SIGINT)
        _, errors = follower.communicate(timeout=20)
    assert follower.returncode == 0 and errors == ""
    unknown = keyrotor(  # the installed command: a refusal's exit status
        "events",
        "--since",
        "evt_0000000000000000000000",
        "--no-follow",
        tmp_path=tmp_path,
        database_url=database_url,
        redis_url=redis_url,
    )
    assert unknown.returncode == 2 and "is not in the stream" in unknown.stderr
