"""Read-only figures for `/metrics`, in one transaction whose cost does not follow the number
of realms: ranges of an index (overdue realms, unrelayed events) and, on PostgreSQL, the
planner's statistics for the totals. No rules, no writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from worker.store.db import transaction
from worker.store.models import Event, JwtKey, Realm

EXACT_UP_TO = 10_000
"""On PostgreSQL a table is counted row by row only up to this many rows (about a millisecond);
a larger one is taken from the planner's statistics, which ANALYZE (autovacuum) keeps fresh:
counting a million realms reads them all, ~100 ms, on every scrape of every web process."""

OVERDUE_TICKS = 3
"""A realm is overdue when its `next_rotation_at` is this many ticks (KEYROTOR_TICK) past: beat
sends a due realm within a tick, and sends it again three ticks after a lost task."""

_RELTUPLES = text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:table)")
_STATE_STATS = text(
    "SELECT c.reltuples, s.most_common_vals::text::text[], s.most_common_freqs"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname"
    " WHERE c.oid = to_regclass(:table) AND s.attname = 'state' AND NOT s.inherited"
)


@dataclass(frozen=True)
class Overdue:
    """Realms whose `next_rotation_at` passed before a cut-off, and the earliest of them."""

    count: int
    earliest_at: datetime | None


@dataclass(frozen=True)
class Unrelayed:
    """Events the relay has still to send: how many, for how many realms, the oldest one's time."""

    events: int
    realms: int
    oldest_at: datetime | None


@dataclass(frozen=True)
class Snapshot:
    keys_by_state: dict[str, int]
    realms: int
    overdue: Overdue
    unrelayed: Unrelayed


def snapshot(sessions: sessionmaker[Session], overdue_before: datetime) -> Snapshot:
    """Everything `/metrics` reads from the database: four or five statements, whatever the
    number of realms (the overdue count grows with overdue realms, the outbox's with its
    backlog, both read through their own index)."""
    with transaction(sessions, read_only=True) as session:
        return Snapshot(
            keys_by_state=keys_by_state(session),
            realms=realm_count(session),
            overdue=overdue(session, overdue_before),
            unrelayed=unrelayed(session),
        )


def _postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def realm_count(session: Session) -> int:
    """Exact on SQLite and for small tables; above EXACT_UP_TO on PostgreSQL, the estimate."""
    if not _postgresql(session):
        return int(session.scalar(select(func.count()).select_from(Realm)) or 0)
    capped = select(Realm.id).limit(EXACT_UP_TO).subquery()
    counted = int(session.scalar(select(func.count()).select_from(capped)) or 0)
    if counted < EXACT_UP_TO:
        return counted
    estimate = session.scalar(_RELTUPLES, {"table": Realm.__tablename__})
    return max(counted, round(estimate or 0))  # -1 before the first ANALYZE: the lower bound


def keys_by_state(session: Session) -> dict[str, int]:
    """Keys per state: exact on SQLite and for small tables, else the planner's estimate."""
    if not _postgresql(session):
        query = select(JwtKey.state, func.count()).group_by(JwtKey.state)
        return {state: int(count) for state, count in session.execute(query)}
    capped = select(JwtKey.state).limit(EXACT_UP_TO).subquery()
    query = select(capped.c.state, func.count()).group_by(capped.c.state)
    counted = {state: int(count) for state, count in session.execute(query)}
    if sum(counted.values()) < EXACT_UP_TO:
        return counted
    return _estimated_by_state(session) or counted  # no statistics yet: the lower bound


def _estimated_by_state(session: Session) -> dict[str, int] | None:
    """Rows times each state's frequency in ANALYZE's sample (its most common values list; a
    state too rare to be among them, under one row in 30,000 by default, reads 0)."""
    found = session.execute(_STATE_STATS, {"table": JwtKey.__tablename__}).one_or_none()
    if found is None or found[0] is None or found[0] < 0 or found[1] is None:
        return None
    rows, states, frequencies = float(found[0]), list(found[1]), list(found[2])
    return {state: round(rows * share) for state, share in zip(states, frequencies, strict=True)}


def overdue(session: Session, before: datetime) -> Overdue:
    """A range of the (next_rotation_at, id) index, from its start: cost follows overdue realms."""
    query = select(func.count(), func.min(Realm.next_rotation_at)).where(
        Realm.next_rotation_at < before
    )
    count, earliest = session.execute(query).one()
    return Overdue(int(count or 0), _utc(earliest))


def unrelayed(session: Session) -> Unrelayed:
    """The outbox's backlog through its partial index (`published_at IS NULL`): cost follows the
    backlog. The relay publishes a realm's JWKS before it stamps the realm's events, so these
    realms are the ones whose Redis JWKS may lag the database."""
    query = select(
        func.count(), func.count(func.distinct(Event.realm_id)), func.min(Event.event_at)
    )
    events, realms, oldest = session.execute(query.where(Event.published_at.is_(None))).one()
    return Unrelayed(int(events or 0), int(realms or 0), _utc(oldest))


def _utc(value: datetime | None) -> datetime | None:
    """min() may come back without the column's type: stored values are naive UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
