"""Secrets stay secret: a whole lifecycle (realms of every algorithm, an imported key, rotations
by a real worker, revocations, a refusal, `rewrap` under a new master key, an admin key
rotation) with every log line (in-process at DEBUG, the worker's, the CLI's), every event,
every error and every HTTP answer captured, then searched for each private key, HMAC secret
and master key the run held. The one place a secret may appear is where the API puts it: the
`key` member of an hs256 key object in the admin API. Files that hold secrets are 0600, and
outside development a missing master key is a refusal to start, not a generated file.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from tests.support.live import LiveServer, admin_token
from tests.support.replies import xrange
from tests.support.stack import ROOT, Stack, make_stack, wait_for
from worker.client.events import STREAM
from worker.core.sealing import MasterKeys, generate_master_key
from worker.http.app import create_app
from worker.store.db import transaction
from worker.store.models import JwtKey

KEYROTOR = [str(Path(sys.executable).parent / "keyrotor")]


@dataclass
class Capture:
    """Everything the run said anywhere, and every secret it held."""

    said: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)  # needle -> what it is

    def add(self, text: str) -> None:
        self.said.append(text)

    def secret(self, what: str, value: str | bytes) -> None:
        text = value.decode() if isinstance(value, bytes) else value
        self.secrets[text.strip()] = what
        if "PRIVATE KEY-----" in text:
            # a PEM leaks just as well without its armour, or a line at a time
            body = [line for line in text.strip().splitlines() if "-----" not in line]
            self.secrets["".join(body)] = f"{what} (base64 body)"
            for number, line in enumerate(body):
                if len(line) >= 32:
                    self.secrets[line] = f"{what} (line {number + 1})"

    def master_key(self, what: str, text: str) -> None:
        raw = MasterKeys.from_text(text)  # checks it is one
        assert raw is not None
        unpadded = text.rstrip("=")
        padded = unpadded + "=" * (-len(unpadded) % 4)
        decoded = base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
        self.secrets[text] = what
        self.secrets[base64.b64encode(decoded).decode().rstrip("=")] = f"{what} (base64)"
        self.secrets[decoded.hex()] = f"{what} (hex)"

    def leaks(self) -> list[str]:
        return [
            f"{what} found in: {text[max(0, text.index(needle) - 200) :][:300]!r}"
            for needle, what in self.secrets.items()
            for text in self.said
            if needle in text
        ]


@dataclass
class Lifecycle:
    stack: Stack
    capture: Capture
    api: str
    env: dict[str, str]
    admin_kid: str = ""
    admin_pem: str = ""

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*KEYROTOR, *args],
            cwd=self.stack.tmp,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.capture.add(_without_hmac_keys(done.stdout))
        self.capture.add(done.stderr)
        return done

    def call(self, method: str, path: str, **options: Any) -> httpx.Response:
        token = admin_token(self.admin_pem, self.admin_kid)
        headers = {"Authorization": f"Bearer {token}"}
        response = httpx.request(method, self.api + path, headers=headers, timeout=30, **options)
        self.capture.add(f"{response.status_code} {dict(response.headers)}")
        self.capture.add(_without_hmac_keys(response.text))
        return response

    def harvest(self) -> None:
        """Every secret now stored (opened with the master keys), before any is deleted."""
        service = self.stack.service
        with transaction(service.sessions, read_only=True) as session:
            for row in session.scalars(select(JwtKey)):
                secret = service.master_keys.open(
                    row.sealed_secret, realm_id=row.realm_id, key_id=row.id
                )
                self.capture.secret(f"{row.algo} secret of {row.id}", secret)


def _without_hmac_keys(text: str) -> str:
    """The API's one exposure: an hs256 key object carries its secret as `key`."""
    try:
        data = json.loads(text)
    except ValueError:
        return text

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("object") == "jwt_key" and value.get("algo") == "hs256":
                value = {**value, "key": "[the hs256 secret, as the API returns it]"}
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return json.dumps(scrub(data))


@pytest.fixture
def lifecycle(
    tmp_path: Path, sqlite_template: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> Iterator[Lifecycle]:
    shutil.copy(sqlite_template, tmp_path / "keyrotor.db")
    master = generate_master_key()
    stack = make_stack(
        tmp_path,
        f"sqlite:///{tmp_path / 'keyrotor.db'}",
        redis_url,
        master_keys=master,
        log_level="DEBUG",
        rotation_period="1h",
        prepublish="20m",
    )
    capture = Capture()
    capture.master_key("master key", master)
    caplog.set_level(logging.DEBUG)
    app = create_app(stack.settings, stack.service, redis_client=stack.redis)
    try:
        with LiveServer(app) as server:
            yield Lifecycle(stack, capture, server.url, dict(stack.env))
    finally:
        stack.close()
    for record in caplog.records:
        capture.add(record.getMessage())
        capture.add(repr(vars(record)))
    capture.add(caplog.text)


def test_no_secret_appears_in_any_log_event_error_or_answer(lifecycle: Lifecycle) -> None:
    run, capture = lifecycle, lifecycle.capture
    stack = run.stack

    # an admin key pair made by the CLI: written once, 0600
    created = run.cli("admin-keys", "create", "--out", "admin.pem")
    assert created.returncode == 0, created.stderr
    admin_file = stack.tmp / "admin.pem"
    assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
    run.admin_kid, run.admin_pem = created.stdout.strip(), admin_file.read_text()
    capture.secret("admin private key", run.admin_pem)

    stack.worker("w1")
    realms = {}
    for algo in ("hs256", "rs256", "es256", "eddsa"):
        response = run.call("POST", "/v1/realms", json={"realm": {"name": algo, "algo": algo}})
        assert response.status_code == 201, response.text
        realms[algo] = response.json()["id"]

    imported = ec.generate_private_key(ec.SECP256R1())
    imported_pem = imported.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    capture.secret("imported private key", imported_pem)
    hmac_text = "an imported hmac secret of more than 32 bytes " + os.urandom(8).hex()
    capture.secret("imported hmac secret", hmac_text)
    body = {"jwt_key": {"realm_id": "es256", "algo": "es256", "key": imported_pem}}
    assert run.call("POST", "/v1/jwt_keys", json=body).status_code == 201
    body = {"jwt_key": {"realm_id": "hs256", "algo": "hs256", "key": hmac_text}}
    assert run.call("POST", "/v1/jwt_keys", json=body).status_code == 201
    # a refusal that holds a real key: the wrong algorithm for it
    body = {"jwt_key": {"realm_id": "rs256", "algo": "rs256", "key": imported_pem}}
    refused = run.call("POST", "/v1/jwt_keys", json=body)
    assert refused.status_code == 422 and "PRIVATE" not in refused.text
    run.harvest()

    # rotations by the worker, revocations over HTTP and by task
    for realm_id in realms.values():
        stack.send("keyrotor.rotate_realm", realm_id, True)
    for algo, realm_id in realms.items():
        # a def, not a lambda: mypy cannot infer a lambda with a default against `Callable[[], T]`
        def rotated(realm_id: str = realm_id) -> bool:
            return "rotated" in stack.log("w1") and realm_id in stack.log("w1")

        wait_for(rotated, 30, f"the rotation of {algo}")
    run.harvest()
    keys_now = run.call("GET", "/v1/jwt_keys", params={"max_results": 100}).json()["collection"]
    active = {k["realm_id"]: k["id"] for k in keys_now if k["state"] == "active"}
    revoked = run.call("DELETE", f"/v1/jwt_keys/{active[realms['es256']]}?force=true")
    assert revoked.status_code == 202
    stack.send("keyrotor.revoke_key", active[realms["hs256"]])
    wait_for(lambda: "revoked" in stack.log("w1"), 30, "the revocation by task")
    run.harvest()

    # rewrap under a new master key, then rotate an admin key
    new_master = generate_master_key()
    capture.master_key("new master key", new_master)
    both = {"KEYROTOR_MASTER_KEYS": f"{new_master},{stack.settings.master_keys}"}
    rewrapped = run.cli("rewrap", env=both)
    assert rewrapped.returncode == 0, rewrapped.stderr
    nxt = run.cli("admin-keys", "create", "--out", "next.pem", env=both)
    assert nxt.returncode == 0, nxt.stderr
    capture.secret("next admin private key", (stack.tmp / "next.pem").read_text())
    assert stat.S_IMODE((stack.tmp / "next.pem").stat().st_mode) == 0o600
    assert run.cli("admin-keys", "delete", run.admin_kid, env=both).returncode == 0
    run.cli("admin-keys", "list", "--json", env=both)

    # everything readable afterwards: lists, objects, JWKS, health, metrics, events
    for path in ("/v1/realms", "/v1/jwt_keys", "/healthz", "/metrics", "/openapi.json"):
        httpx.get(run.api + path)  # the old admin key is gone: a refusal is captured too
        capture.add(httpx.get(run.api + path).text)
    for realm_id in realms.values():
        capture.add(httpx.get(f"{run.api}/realms/{realm_id}/.well-known/jwks.json").text)
        capture.add(json.dumps(stack.service.jwks(realm_id)))
    run.cli("events", "--since", "0", "--no-follow")
    run.cli("keys", "list", "--json", env=both)
    run.cli("jwks", "es256", env=both)
    run.cli("doctor", "--json", env=both)
    for _, fields in xrange(stack.redis, STREAM):
        capture.add(fields[b"event"].decode())
    for name in stack.redis.scan_iter("keyrotor:*"):
        kind = cast(bytes, stack.redis.type(name)).decode()  # the client does not decode
        if kind == "hash":
            capture.add(repr(stack.redis.hgetall(name)))
        elif kind == "string":
            capture.add(repr(stack.redis.get(name)))
    for file in stack.settings.jwks_dir.rglob("*"):
        if file.is_file():
            capture.add(file.read_text(errors="replace"))
    stack.stop("w1")
    capture.add(stack.log("w1"))
    assert "DEBUG" in stack.log("w1")  # the worker did log at DEBUG: there was something to see

    assert len(capture.secrets) > 20
    assert capture.leaks() == []


# -- files and refusals to start ----------------------------------------------------------------


def _env(tmp_path: Path, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    env.update(
        PYTHONPATH=str(ROOT),
        KEYROTOR_DATABASE_URL=f"sqlite:///{tmp_path / 'var' / 'keyrotor.db'}",
        KEYROTOR_REDIS_URL=redis_url,
        KEYROTOR_VAR_DIR=str(tmp_path / "var"),
        **extra,
    )
    return env


def test_the_development_master_key_file_is_0600_and_its_warning_does_not_quote_it(
    tmp_path: Path, redis_url: str
) -> None:
    env = _env(tmp_path, redis_url)
    migrated = subprocess.run([*KEYROTOR, "migrate"], cwd=tmp_path, env=env, capture_output=True)
    assert migrated.returncode == 0, migrated.stderr
    assert not (tmp_path / "var" / "master.key").exists()  # migrating needs no master key
    done = subprocess.run(
        [*KEYROTOR, "realms", "create", "acme"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    key_file = tmp_path / "var" / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert "master.key" in done.stderr  # the warning names the file...
    assert key not in done.stderr + done.stdout  # ...never the key


@pytest.mark.parametrize(
    "command",
    [
        [*KEYROTOR, "run"],
        [*KEYROTOR, "web"],
        [*KEYROTOR, "realms", "create", "acme"],
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "solo"],
        [sys.executable, "-m", "celery", "-A", "worker", "beat"],
    ],
    ids=["run", "web", "cli", "celery worker", "celery beat"],
)
def test_production_without_a_master_key_refuses_to_start_and_generates_nothing(
    tmp_path: Path, redis_url: str, command: list[str]
) -> None:
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=_env(tmp_path, redis_url, KEYROTOR_ENV="production"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "KEYROTOR_MASTER_KEYS is required" in lines[0]
    assert not (tmp_path / "var" / "master.key").exists()
    assert not list(tmp_path.rglob("master.key"))
