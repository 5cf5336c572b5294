"""An HTTP deployment per test: the real app under uvicorn on a free port, on the test database
(every backend) and the test Redis, with one admin API key and clients that use it."""

from __future__ import annotations

import shutil
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import text

from tests.conftest import BACKENDS, TABLES
from tests.support.live import LiveServer, admin_token
from tests.support.stack import Stack, make_stack
from worker.http.app import create_app
from worker.http.context import Recent
from worker.store.admin_keys import AdminKeys
from worker.store.db import make_engine

# Production-like policy and caching (the stack's defaults are seconds-scale); es256 keys are
# generated in microseconds, so creating realms costs the tests nothing.
PLAIN = {
    "algo": "es256",
    "rotation_period": "30d",
    "prepublish": "1h",
    "grace": "6h",
    "max_token_ttl": "1h",
    "clock_skew": "60s",
    "jwks_max_age": "300s",
    "tick": "10s",
}


@dataclass
class Api:
    """One served app and what a test needs around it."""

    url: str
    stack: Stack
    admin_keys: AdminKeys
    kid: str
    private_pem: str
    http: httpx.Client
    """Sends a fresh, valid admin token with every request."""
    anon: httpx.Client
    """Sends no credentials."""
    recent: Recent
    """The JWKS documents the app read lately (worker/http/context.py)."""

    def token(self, **options: Any) -> str:
        return admin_token(self.private_pem, self.kid, **options)

    def with_token(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def new_admin_key(self) -> tuple[str, str]:
        """Another admin key of this deployment: (kid, private PEM)."""
        view, private_pem = self.admin_keys.create()
        assert private_pem is not None
        return view["id"], private_pem

    def realm(self, name: str = "acme", **policy: Any) -> dict[str, Any]:
        response = self.http.post("/v1/realms", json={"realm": {"name": name, **policy}})
        assert response.status_code == 201, response.text
        return dict(response.json())


class _FreshToken(httpx.Auth):
    def __init__(self, api: Api) -> None:
        self.api = api

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.api.token()}"
        yield request


@cache
def admin_key_pair() -> tuple[str, str]:
    """(private PEM, public PEM), made once: RSA generation would cost every test ~0.1 s."""
    private = rsa.generate_private_key(65537, 2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem.decode(), public_pem.decode()


def serve(tmp_path: Path, database_url: str, redis_url: str, **overrides: str) -> Iterator[Api]:
    stack = make_stack(tmp_path, database_url, redis_url, **{**PLAIN, **overrides})
    admin_keys = AdminKeys(stack.service.sessions)
    private_pem, public_pem = admin_key_pair()
    view, _ = admin_keys.create(public_pem)
    app = create_app(stack.settings, stack.service, admin_keys=admin_keys, redis_client=stack.redis)
    try:
        with LiveServer(app) as server:
            api = Api(
                url=server.url,
                stack=stack,
                admin_keys=admin_keys,
                kid=view["id"],
                private_pem=private_pem,
                http=httpx.Client(base_url=server.url, timeout=30),
                anon=httpx.Client(base_url=server.url, timeout=30),
                recent=app.state.keyrotor.recent,
            )
            api.http.auth = _FreshToken(api)
            try:
                yield api
            finally:
                api.http.close()
                api.anon.close()
    finally:
        stack.close()


@pytest.fixture
def api(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[Api]:
    yield from serve(tmp_path, database_url, redis_url)


@pytest.fixture(scope="module", params=BACKENDS)
def shared_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Api]:
    """One server per module and backend, for tests that change nothing but their own admin
    keys (the database fixtures are per test; this mirrors them at module scope)."""
    yield from serve_on(request, tmp_path_factory.mktemp("api"), redis_url)


def serve_on(request: pytest.FixtureRequest, tmp: Path, redis_url: str) -> Iterator[Api]:
    """`serve` on the backend `request.param` names, for fixtures wider than one test (the
    per-test database fixtures do not reach them): a copy of the migrated SQLite template, or
    the PostgreSQL schema, emptied afterwards."""
    if request.param == "sqlite":
        shutil.copy(request.getfixturevalue("sqlite_template"), tmp / "keyrotor.db")
        yield from serve(tmp, f"sqlite:///{tmp / 'keyrotor.db'}", redis_url)
        return
    url = request.getfixturevalue("postgres_schema_url")
    try:
        yield from serve(tmp, url, redis_url)
    finally:
        engine = make_engine(url)
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        engine.dispose()
