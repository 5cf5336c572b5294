"""`keyrotor web`, `admin-keys` and `admin-token` as an operator runs them: the installed
console script in a subprocess, on each database backend and the test Redis."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.http.conftest import Api, serve
from tests.support.live import admin_token, free_port
from tests.support.stack import wait_for

KEYROTOR = Path(sys.executable).parent / "keyrotor"
ADMIN_KEY_ID = re.compile(r"aky_[0-9A-Za-z]{22}")


@pytest.fixture
def api(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[Api]:
    yield from serve(tmp_path, database_url, redis_url)


def run(api: Api, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KEYROTOR), *args],
        cwd=api.stack.tmp,
        env=api.stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stderr}"
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr, result.stderr


def admin_ids(api: Api) -> list[str]:
    listing = json.loads(ok(run(api, "admin-keys", "list", "--json")))
    assert listing["more_results"] is False
    return [view["id"] for view in listing["collection"]]


def test_create_writes_the_private_key_once_0600_and_prints_its_kid(api: Api) -> None:
    kid = ok(run(api, "admin-keys", "create", "--out", "admin.pem")).strip()
    assert ADMIN_KEY_ID.fullmatch(kid)
    path = api.stack.tmp / "admin.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert api.admin_keys.public_pem(kid) == public.decode()
    assert kid in admin_ids(api)

    before = api.admin_keys.list()
    refused(run(api, "admin-keys", "create", "--out", "admin.pem"), "refusing to overwrite")
    assert api.admin_keys.list() == before  # nothing half-written
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_create_defaults_to_private_key_pem_and_can_print_to_stdout(api: Api) -> None:
    kid = ok(run(api, "admin-keys", "create")).strip()
    assert (api.stack.tmp / "private-key.pem").exists()
    result = run(api, "admin-keys", "create", "--out", "-")
    assert ok(result).startswith("-----BEGIN PRIVATE KEY-----")
    assert ADMIN_KEY_ID.fullmatch(result.stderr.strip())
    assert {kid, result.stderr.strip()} <= {view["id"] for view in api.admin_keys.list()}


def test_create_registers_a_public_key_made_elsewhere(api: Api) -> None:
    private = rsa.generate_private_key(65537, 2048)
    (api.stack.tmp / "mine.pub").write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    view = json.loads(ok(run(api, "admin-keys", "create", "--public-key", "mine.pub", "--json")))
    assert api.admin_keys.public_pem(view["id"]) is not None
    assert not (api.stack.tmp / "private-key.pem").exists()
    refused(run(api, "admin-keys", "create", "--public-key", "missing.pub"), "cannot read")


def test_delete_removes_a_key_and_refuses_an_unknown_one(api: Api) -> None:
    kid, _ = api.new_admin_key()
    assert ok(run(api, "admin-keys", "delete", kid)).strip() == f"deleted {kid}"
    assert api.admin_keys.public_pem(kid) is None
    refused(run(api, "admin-keys", "delete", kid), "not found")


def test_scopes_limit_what_a_key_may_do_as_a_tenant_pipeline_uses_them(api: Api) -> None:
    mine, theirs = api.realm("mine"), api.realm("theirs")
    scope = f"realm:{mine['id']}:admin"
    kid = ok(run(api, "admin-keys", "create", "--scope", scope, "--out", "tenant.pem")).strip()
    public = serialization.load_pem_private_key(
        (api.stack.tmp / "tenant.pem").read_bytes(), password=None
    ).public_key()
    (api.stack.tmp / "signer.pub").write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    sign = f"realm:{mine['id']}:sign"
    args = ["--public-key", "signer.pub", "--scope", sign, "--scope", "realms:read", "--json"]
    registered = json.loads(ok(run(api, "admin-keys", "create", *args)))
    assert registered["scopes"] == [sign, "realms:read"]

    listing = json.loads(ok(run(api, "admin-keys", "list", "--json")))["collection"]
    assert {v["id"]: v["scopes"] for v in listing} == {
        api.kid: ["admin"],
        kid: [scope],
        registered["id"]: [sign, "realms:read"],
    }
    table = ok(run(api, "admin-keys", "list"))
    assert "scopes" in table and scope in table and "realms:read" in table

    token = ok(run(api, "admin-token", "--key", "tenant.pem", "--kid", kid)).strip()
    headers = api.with_token(token)
    for realm, status in [(mine, 201), (theirs, 403)]:
        body = {"jwt_key": {"realm_id": realm["name"], "algo": "es256", "activate": True}}
        response = api.anon.post("/v1/jwt_keys", json=body, headers=headers)
        assert response.status_code == status, response.text
    assert api.anon.get("/v1/realms/theirs", headers=headers).json() == {"errors": ["Forbidden"]}


def test_refused_scopes_are_one_line_and_make_nothing(api: Api) -> None:
    realm = api.realm("acme")
    before = admin_ids(api)
    for scope in ["realm:rl_x:admin", "admin; DROP TABLE", f"realm:{realm['id']}:admin\n"]:
        result = run(api, "admin-keys", "create", "--scope", "admin", "--scope", scope)
        refused(result, "is not one of admin, realms:read, admin-keys")
    assert not (api.stack.tmp / "private-key.pem").exists()
    assert admin_ids(api) == before


def write_admin_key(api: Api) -> str:
    """A new admin key whose private half is in `admin.pem`; returns its kid."""
    kid, private_pem = api.new_admin_key()
    (api.stack.tmp / "admin.pem").write_text(private_pem)
    return kid


def test_admin_token_signs_the_seed_sample_shape(api: Api) -> None:
    kid = write_admin_key(api)
    token = ok(run(api, "admin-token", "--key", "admin.pem", "--kid", kid)).strip()
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": kid}
    public_pem = api.admin_keys.public_pem(kid)
    assert public_pem is not None
    claims = jwt.decode(token, public_pem, algorithms=["RS256"], audience="keyrotor-admin")
    assert set(claims) == {"aud", "iat", "exp"}
    assert claims["aud"] == ["keyrotor-admin"]
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["iat"] - time.time()) < 60
    response = api.anon.get("/v1/realms", headers=api.with_token(token))
    assert response.status_code == 200

    longer = ok(run(api, "admin-token", "--key", "admin.pem", "--kid", kid, "--ttl", "1h"))
    claims = jwt.decode(longer.strip(), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600


def test_admin_token_refusals(api: Api) -> None:
    kid = write_admin_key(api)
    refused(run(api, "admin-token", "--key", "admin.pem", "--kid", kid, "--ttl", "2h"), "at most")
    refused(run(api, "admin-token", "--key", "nope.pem", "--kid", kid), "cannot read")
    (api.stack.tmp / "ec.pem").write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    refused(run(api, "admin-token", "--key", "ec.pem", "--kid", kid), "not an RSA private key")


def test_web_serves_and_a_deleted_admin_key_stops_at_once_in_every_web_process(
    api: Api,
) -> None:
    """Two web processes (`keyrotor web` and this test's server) share one database."""
    port = free_port()
    web = api.stack.spawn("web", [str(KEYROTOR), "web", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            assert web.poll() is None, api.stack.log("web")
            return False

    wait_for(healthy, 30, "keyrotor web")
    kid, private_pem = api.new_admin_key()
    token = admin_token(private_pem, kid)
    bearer = {"Authorization": f"Bearer {token}"}

    created = httpx.post(url + "/v1/realms", json={"realm": {"name": "acme"}}, headers=bearer)
    assert created.status_code == 201, created.text
    jwks = httpx.get(url + "/realms/acme/.well-known/jwks.json")
    assert jwks.status_code == 200 and jwks.headers["ETag"]
    assert api.anon.get("/v1/realms", headers=bearer).status_code == 200

    ok(run(api, "admin-keys", "delete", kid))
    for base in (url, api.url):
        response = httpx.get(base + "/v1/realms", headers=bearer)
        assert response.status_code == 401, base
        assert "unknown kid" in response.headers["WWW-Authenticate"]


def test_python_m_worker_http_is_keyrotor_web(api: Api) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker.http", "--help"],
        cwd=api.stack.tmp,
        env=api.stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--port" in result.stdout
