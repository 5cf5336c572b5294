"""Engines, sessions and migrations for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, Select, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from worker.core.errors import NotMigrated

MIGRATIONS = Path(__file__).parent / "migrations"


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here; SQLAlchemy would otherwise look for psycopg2."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_immediate(engine: Engine) -> None:
    """A writing SQLite transaction takes the write lock at BEGIN, so two writers queue, not fail.

    Reads begin deferred: with WAL they see the last commit and never wait for a writer.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        reading = connection.get_execution_options().get("keyrotor_read_only", False)
        connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        _sqlite_immediate(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session], *, read_only: bool = False) -> Iterator[Session]:
    """One unit of work: committed when the block ends, rolled back if it raises."""
    with factory() as session, session.begin():
        if read_only:
            session.connection(execution_options={"keyrotor_read_only": True})
        yield session


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration; safe to run again."""
    command.upgrade(_alembic_config(engine), "head")


def schema_revision(engine: Engine) -> tuple[str | None, str | None]:
    """(current, head): equal when the database is up to date."""
    head = ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current, head


def require_migrated(engine: Engine) -> None:
    current, head = schema_revision(engine)
    if current != head:
        raise NotMigrated(
            f"database schema is at {current or 'nothing'}, code needs {head}:"
            " run `keyrotor migrate`"
        )


def keyset_page(
    session: Session,
    query: Select[Any],
    column: Any,
    *,
    after: str | None,
    max_results: int,
    direction: str,
) -> tuple[bool, list[Any]]:
    """One page of `query` ordered by `column` from just past `after`, and whether more follow
    (one row more than a page is read to tell)."""
    if after is not None:
        query = query.where(column > after if direction == "asc" else column < after)
    order = column.asc() if direction == "asc" else column.desc()
    rows = list(session.scalars(query.order_by(order).limit(max_results + 1)))
    return len(rows) > max_results, rows[:max_results]
