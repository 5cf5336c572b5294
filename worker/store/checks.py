"""Read-only queries for `keyrotor doctor`: keyset pages over every key (pooled ones too) and
realm, the age of the outbox backlog, the realms overdue. No rules, no writes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from worker.core.keys import POOL_REALM
from worker.store.db import transaction
from worker.store.models import Event, JwtKey, PooledKey, Realm


@dataclass(frozen=True)
class SealedKey:
    id: str
    realm_id: str
    sealed_secret: bytes


@dataclass(frozen=True)
class Backlog:
    """Unsent events committed before a cut-off, and when the oldest of them was written."""

    count: int
    oldest_at: datetime | None


def sealed_keys(
    sessions: sessionmaker[Session], *, after: str = "", limit: int = 500
) -> list[SealedKey]:
    query = (
        select(JwtKey.id, JwtKey.realm_id, JwtKey.sealed_secret)
        .where(JwtKey.id > after)
        .order_by(JwtKey.id)
        .limit(limit)
    )
    with transaction(sessions, read_only=True) as session:
        return [SealedKey(*row) for row in session.execute(query)]


def pooled_keys(
    sessions: sessionmaker[Session], *, after: str = "", limit: int = 500
) -> list[SealedKey]:
    """The key pool's sealed secrets, each with the realm id it is sealed with."""
    query = (
        select(PooledKey.id, PooledKey.sealed_secret)
        .where(PooledKey.id > after)
        .order_by(PooledKey.id)
        .limit(limit)
    )
    with transaction(sessions, read_only=True) as session:
        return [SealedKey(key_id, POOL_REALM, sealed) for key_id, sealed in session.execute(query)]


def realms(sessions: sessionmaker[Session], *, after: str = "", limit: int = 500) -> list[Realm]:
    """Whole realm rows (for their policies), detached from the session."""
    query = select(Realm).where(Realm.id > after).order_by(Realm.id).limit(limit)
    with transaction(sessions, read_only=True) as session:
        return list(session.scalars(query))


def realm_versions(
    sessions: sessionmaker[Session], settled_by: datetime, *, after: str = "", limit: int = 10_000
) -> list[tuple[str, int, bool]]:
    """(id, jwks_version, last changed by `settled_by`) in id order: all the JWKS check compares
    for each realm, without building an object per row; names are read for the few reported."""
    query = (
        select(Realm.id, Realm.jwks_version, Realm.updated_at <= settled_by)
        .where(Realm.id > after)
        .order_by(Realm.id)
        .limit(limit)
    )
    with transaction(sessions, read_only=True) as session:
        return [
            (realm_id, version, bool(settled))
            for realm_id, version, settled in session.execute(query)
        ]


def realm_names(sessions: sessionmaker[Session], realm_ids: Iterable[str]) -> dict[str, str]:
    query = select(Realm.id, Realm.name).where(Realm.id.in_(list(realm_ids)))
    with transaction(sessions, read_only=True) as session:
        return {realm_id: name for realm_id, name in session.execute(query)}


def unsent_before(sessions: sessionmaker[Session], cutoff: datetime) -> Backlog:
    """Events still unsent that were committed before `cutoff`: the relay is behind on them."""
    query = select(func.count(), func.min(Event.event_at)).where(
        Event.published_at.is_(None), Event.event_at < cutoff
    )
    with transaction(sessions, read_only=True) as session:
        count, oldest = session.execute(query).one()
    if oldest is not None and oldest.tzinfo is None:
        # Stored values are naive UTC, should a backend hand min() back without the column type.
        oldest = oldest.replace(tzinfo=UTC)
    return Backlog(int(count or 0), oldest)


@dataclass(frozen=True)
class OverdueRealm:
    id: str
    name: str
    next_rotation_at: datetime


def overdue_realms(
    sessions: sessionmaker[Session], before: datetime, *, limit: int
) -> tuple[int, list[OverdueRealm]]:
    """How many realms were due before `before`, and the `limit` earliest: both from the start
    of the (next_rotation_at, id) index, so the cost follows the overdue realms alone."""
    due = Realm.next_rotation_at < before
    earliest = (
        select(Realm.id, Realm.name, Realm.next_rotation_at)
        .where(due)
        .order_by(Realm.next_rotation_at, Realm.id)
        .limit(limit)
    )
    with transaction(sessions, read_only=True) as session:
        count = int(session.scalar(select(func.count()).where(due)) or 0)
        return count, [OverdueRealm(*row) for row in session.execute(earliest)]
