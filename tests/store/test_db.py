"""Engines and migrations on each backend: the schema the migrations build is the models'."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from worker.core.errors import NotMigrated
from worker.service import Service
from worker.store.db import (
    make_engine,
    migrate,
    normalize_url,
    require_migrated,
    schema_revision,
)
from worker.store.models import Base

HEAD = "0005"


def count(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


@pytest.fixture
def fresh_sqlite(tmp_path: Path) -> Iterator[Engine]:
    """An SQLite file nobody has migrated."""
    engine = make_engine(f"sqlite:///{tmp_path / 'var' / 'fresh.db'}")
    yield engine
    engine.dispose()


# --- migrations -----------------------------------------------------------------------------


def test_migrations_build_exactly_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_the_migrated_schema_is_at_head(engine: Engine) -> None:
    assert schema_revision(engine) == (HEAD, HEAD)
    require_migrated(engine)


def test_migrate_again_is_a_no_op_that_keeps_data(engine: Engine, service: Service) -> None:
    realm = service.create_realm("acme", algo="es256")

    migrate(engine)
    migrate(engine)

    assert schema_revision(engine) == (HEAD, HEAD)
    assert service.get_realm("acme") == realm
    assert count(engine, "jwt_keys") == 1


def test_an_unmigrated_database_is_refused_with_the_fix(fresh_sqlite: Engine) -> None:
    assert schema_revision(fresh_sqlite) == (None, HEAD)

    with pytest.raises(NotMigrated, match="keyrotor migrate") as raised:
        require_migrated(fresh_sqlite)
    assert "nothing" in str(raised.value)


def test_migrating_a_fresh_sqlite_file_makes_it_usable(fresh_sqlite: Engine) -> None:
    migrate(fresh_sqlite)

    require_migrated(fresh_sqlite)
    assert count(fresh_sqlite, "realms") == 0


# --- urls and engines -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@db:5432/keyrotor", "postgresql+psycopg://u:p@db:5432/keyrotor"),
        ("postgres://u:p@db/keyrotor", "postgresql+psycopg://u:p@db/keyrotor"),
        ("postgresql+psycopg://db/keyrotor", "postgresql+psycopg://db/keyrotor"),
        ("sqlite:///var/keyrotor.db", "sqlite:///var/keyrotor.db"),
    ],
)
def test_normalize_url_uses_psycopg_3_for_postgresql(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


def test_make_engine_creates_the_sqlite_directory(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'keyrotor.db'}")
    try:
        migrate(engine)
    finally:
        engine.dispose()
    assert (tmp_path / "a" / "b" / "keyrotor.db").is_file()


def test_sqlite_connections_use_wal_and_enforce_foreign_keys(fresh_sqlite: Engine) -> None:
    with fresh_sqlite.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_deleting_a_realm_row_cascades_to_its_keys(engine: Engine, service: Service) -> None:
    doomed = service.create_realm("doomed", algo="es256")
    service.create_key("doomed")
    kept = service.create_realm("kept", algo="es256")
    assert count(engine, "jwt_keys") == 3

    with engine.begin() as connection:
        connection.execute(text("DELETE FROM realms WHERE id = :id"), {"id": doomed.id})

    assert count(engine, "jwt_keys") == 1
    assert {k.realm_id for k in service.list_keys().collection} == {kept.id}


def test_a_key_for_a_missing_realm_is_refused(engine: Engine) -> None:
    with pytest.raises(IntegrityError, match=r"(?i)foreign key"), engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jwt_keys (id, realm_id, algo, use, state, sealed_secret, created_at)"
                " VALUES ('jky_a', 'rl_missing', 'es256', 'sign', 'active', :secret,"
                " '2026-01-01 00:00:00')"
            ),
            {"secret": b"sealed"},
        )
