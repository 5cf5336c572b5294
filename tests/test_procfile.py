"""The Procfile as a platform runs it: the release phase, then `honcho start` of the process
types, against the test database and Redis; it serves a JWKS, rotates a key, sends a signed
webhook, logs JSON, and leaves nothing behind when stopped.

The honcho test runs once (`ONE_DATABASE`: on PostgreSQL when CI has it, else SQLite): what it
adds is the platform's way of starting the processes; what they store is checked on both
backends closer in (tests/service) and through real workers in tests/jobs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from keyrotor_client import verify_webhook

from tests.conftest import ONE_DATABASE
from tests.support.processes import free_port, processes_under
from tests.support.receiver import Receiver
from tests.support.stack import FAST, ROOT, wait_for
from worker.core.sealing import generate_master_key
from worker.runtime import build_service
from worker.settings import load_settings

BIN = Path(sys.executable).parent
HONCHO_START: list[str | Path] = [BIN / "honcho", "start", "--no-colour"]


def procfile_types() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip())


def test_the_procfile_names_release_web_worker_webhooks_and_beat() -> None:
    types = procfile_types()
    assert set(types) == {"release", "web", "worker", "webhooks", "beat"}
    assert types["release"].strip() == "keyrotor migrate"


def json_lines(output: str, process: str) -> list[dict[str, Any]]:
    """What one process type logged as JSON, from honcho's `HH:MM:SS worker.1 | line` output."""
    found = []
    for line in output.splitlines():
        prefix, _, text = line.partition("| ")
        if f" {process}." in prefix and text.startswith("{"):
            found.append(json.loads(text))
    return found


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@ONE_DATABASE
def test_honcho_starts_the_procfile_which_serves_a_jwks_rotates_and_sends_webhooks(
    tmp_path: Path, database_url: str, redis_url: str, receiver: Receiver
) -> None:
    values = {
        **FAST,
        "database_url": database_url,
        "redis_url": redis_url,
        "master_keys": generate_master_key(),
        "var_dir": str(tmp_path / "var"),
        "jwks_dir": str(tmp_path / "jwks"),
        "http_port": str(free_port()),
        "env": "production",
        "log_format": "json",
        # the test's receiver is on this machine, over http
        "webhook_allow_http": "true",
        "webhook_allow_private": "true",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    env.update({f"KEYROTOR_{k.upper()}": v for k, v in values.items()})
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    redis.Redis.from_url(redis_url).flushdb()

    # The release phase runs before the processes start, as a platform would run it.
    release = subprocess.run(
        procfile_types()["release"].split(), cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert release.returncode == 0, release.stderr
    service = build_service(load_settings(**values))
    _, secret = service.create_webhook(receiver.url)
    realm = service.create_realm("acme")
    first_kid = realm_key(service, realm.id)

    output = tmp_path / "honcho.log"
    with open(output, "wb") as log:
        honcho = subprocess.Popen(
            # Every process type but `release`: honcho would run it too, and stop everything
            # when it exits.
            [
                *HONCHO_START,
                "-f",
                ROOT / "Procfile",
                "-d",
                tmp_path,
                "web",
                "worker",
                "webhooks",
                "beat",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{values['http_port']}/realms/{realm.id}/.well-known/jwks.json"
        wait_for(lambda: served_kids(url), 30, f"the JWKS at {url}")
        wait_for(lambda: realm_key(service, realm.id) != first_kid, 30, "a rotation")
        second_kid = realm_key(service, realm.id)
        wait_for(lambda: second_kid in served_kids(url), 10, "the new key in the served JWKS")

        rotated = wait_for(
            lambda: [e for e in json_lines(output.read_text(), "worker") if "key_id" in e],
            10,
            "the worker's JSON log line of the rotation",
        )
        assert rotated[0]["realm_id"] == realm.id and rotated[0]["key_id"] == second_kid
        assert rotated[0]["logger"] == "keyrotor.tasks" and rotated[0]["level"] == "INFO"
        assert json_lines(output.read_text(), "beat"), "beat logs JSON lines too"

        # the realm's events, relayed by the worker, sent and signed by the webhook worker
        def reasons() -> list[str]:
            received = receiver.received()
            events = [verify_webhook(secret, d.headers, d.body) for d in received]
            assert [event["id"] for event in events] == [d.headers["webhook-id"] for d in received]
            assert all(event["realm_id"] == realm.id for event in events)
            return [event["reason"] for event in events]

        wait_for(lambda: "realm.created" in reasons(), 30, "the realm.created webhook delivery")
    finally:
        with_fallback_kill(honcho)
    wait_for(lambda: not processes_under(tmp_path), 15, "every process to exit")


def realm_key(service: Any, realm_id: str) -> str:
    return str(service.signing_key(realm_id).kid)


def served_kids(url: str) -> list[str]:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return []
    if response.status_code != 200:
        return []
    return [key["kid"] for key in response.json()["keys"]]


def with_fallback_kill(honcho: subprocess.Popen[bytes]) -> None:
    """SIGTERM honcho as a platform stops it; it passes it on and waits for its processes."""
    os.killpg(honcho.pid, signal.SIGTERM)
    try:
        honcho.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(honcho.pid, signal.SIGKILL)
        honcho.wait(5)
        raise AssertionError("honcho did not stop within 20s of SIGTERM") from None
