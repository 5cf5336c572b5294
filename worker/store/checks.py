"""Read-only queries for `keyrotor doctor`: keyset pages over every key and realm, and the age
of the outbox backlog. No rules, no writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from worker.store.db import transaction
from worker.store.models import Event, JwtKey, Realm


@dataclass(frozen=True)
class SealedKey:
    id: str
    realm_id: str
    sealed_secret: bytes


@dataclass(frozen=True)
class RealmState:
    id: str
    name: str
    jwks_version: int
    updated_at: datetime


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


def realms(sessions: sessionmaker[Session], *, after: str = "", limit: int = 500) -> list[Realm]:
    """Whole realm rows (for their policies), detached from the session."""
    query = select(Realm).where(Realm.id > after).order_by(Realm.id).limit(limit)
    with transaction(sessions, read_only=True) as session:
        return list(session.scalars(query))


def realm_states(
    sessions: sessionmaker[Session], *, after: str = "", limit: int = 500
) -> list[RealmState]:
    query = (
        select(Realm.id, Realm.name, Realm.jwks_version, Realm.updated_at)
        .where(Realm.id > after)
        .order_by(Realm.id)
        .limit(limit)
    )
    with transaction(sessions, read_only=True) as session:
        return [RealmState(*row) for row in session.execute(query)]


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
