"""The schedule's side: find the realms due, rotate them, purge keys past their grace."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, tuple_

from worker.core import lifecycle
from worker.core.lifecycle import Key, Plan, Policy, State
from worker.service.views import Change
from worker.service.writer import Writer, plan_maker
from worker.store.db import transaction
from worker.store.models import JwtKey, Realm


class Rotation(Writer):
    """What beat and the rotation tasks call; each realm is changed in its own transaction."""

    def rotate(
        self, realm_ref: str, *, force: bool = False, before: datetime | None = None
    ) -> Change | None:
        """Apply what is due now; with `force`, rotate now whatever the schedule says; with
        `before`, rotate now unless the active key began signing since that cut-off."""
        now = self.clock()
        with transaction(self.sessions) as session:
            realm = self._realm(session, realm_ref, lock=True)
            return self._apply(session, realm, plan_maker(force=force, before=before), now)

    def due_realm_ids(
        self, now: datetime, *, after: tuple[datetime, str] | None = None, limit: int = 500
    ) -> list[tuple[datetime, str]]:
        """One keyset page of realms due by `now`, in index order: cost grows with due realms."""
        query = select(Realm.next_rotation_at, Realm.id).where(Realm.next_rotation_at <= now)
        if after is not None:
            at, realm_id = after
            # A row comparison, not `a > x OR (a = x AND b > y)`: PostgreSQL makes the row form
            # an index condition, so a page deep in the walk starts where the last one ended
            # instead of re-reading every due entry before it (bench/README.md: due scan).
            query = query.where(tuple_(Realm.next_rotation_at, Realm.id) > (at, realm_id))
        query = query.order_by(Realm.next_rotation_at, Realm.id).limit(limit)
        with transaction(self.sessions, read_only=True) as session:
            return [(at, realm_id) for at, realm_id in session.execute(query)]

    def realm_versions(self, *, after: str = "", limit: int = 1000) -> list[tuple[str, int]]:
        """(realm id, jwks_version) in id order, a keyset page at a time: what reconcile checks."""
        query = (
            select(Realm.id, Realm.jwks_version)
            .where(Realm.id > after)
            .order_by(Realm.id)
            .limit(limit)
        )
        with transaction(self.sessions, read_only=True) as session:
            return [(realm_id, version) for realm_id, version in session.execute(query)]

    def purge_expired(self) -> list[Change]:
        """Hard-delete exactly the keys whose grace window has ended, one realm per transaction."""
        now = self.clock()
        with transaction(self.sessions, read_only=True) as session:
            realm_ids = list(
                session.scalars(
                    select(JwtKey.realm_id)
                    .where(JwtKey.state == State.EXPIRED, JwtKey.delete_after <= now)
                    .distinct()
                )
            )
        changes = []
        for realm_id in realm_ids:
            with transaction(self.sessions) as session:
                realm = session.scalars(
                    select(Realm).where(Realm.id == realm_id).with_for_update()
                ).one_or_none()
                change = self._apply(session, realm, _expired_deletions, now) if realm else None
                if change is not None:
                    changes.append(change)
        return changes


def _expired_deletions(policy: Policy, current: list[Key], now: datetime) -> Plan:
    return [
        step for step in lifecycle.due(policy, current, now) if isinstance(step, lifecycle.Delete)
    ]
