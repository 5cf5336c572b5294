"""Read-only counts for `/metrics`: keys per state, events per reason, each realm's last
rotation and publication state. No rules, no writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, sessionmaker

from worker.store.db import transaction
from worker.store.models import Event, JwtKey, Realm


@dataclass(frozen=True)
class RealmStat:
    id: str
    name: str
    jwks_version: int
    updated_at: datetime
    last_rotation_at: datetime | None
    """When the active key began to sign (None for a realm without an active key)."""
    rotation_period_s: int = 0


def keys_by_state(sessions: sessionmaker[Session]) -> dict[str, int]:
    query = select(JwtKey.state, func.count()).group_by(JwtKey.state)
    with transaction(sessions, read_only=True) as session:
        return {state: int(count) for state, count in session.execute(query)}


def events_by_reason(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Every event ever written, by reason: `key.rotated` counts the rotations."""
    query = select(Event.reason, func.count()).group_by(Event.reason)
    with transaction(sessions, read_only=True) as session:
        return {reason: int(count) for reason, count in session.execute(query)}


def realms(sessions: sessionmaker[Session]) -> list[RealmStat]:
    active = and_(JwtKey.realm_id == Realm.id, JwtKey.state == "active")
    query = (
        select(
            Realm.id,
            Realm.name,
            Realm.jwks_version,
            Realm.updated_at,
            JwtKey.activated_at,
            Realm.rotation_period_s,
        )
        .outerjoin(JwtKey, active)
        .order_by(Realm.id)
    )
    with transaction(sessions, read_only=True) as session:
        return [RealmStat(*row) for row in session.execute(query)]
