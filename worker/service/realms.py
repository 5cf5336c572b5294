"""Realms: create one with its first key, read, re-configure and delete."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from worker.core import ids, lifecycle
from worker.core.errors import Conflict, InvalidInput
from worker.core.lifecycle import Policy
from worker.service.base import MAX_RESULTS, read_page
from worker.service.policy import changed, check_policy, policy_of, set_policy
from worker.service.views import Page, RealmView
from worker.service.writer import Writer
from worker.store.db import transaction
from worker.store.models import JwtKey, Realm

REALM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def realm_view(realm: Realm) -> RealmView:
    return RealmView(
        id=realm.id,
        name=realm.name,
        policy=policy_of(realm),
        jwks_version=realm.jwks_version,
        next_rotation_at=realm.next_rotation_at,
        created_at=realm.created_at,
        updated_at=realm.updated_at,
    )


class Realms(Writer):
    """Realm CRUD; every write goes through the writer so it carries its event."""

    def check_policy(self, policy: Policy) -> Policy:
        return check_policy(policy, self.limits)

    def create_realm(self, name: str, **policy: Any) -> RealmView:
        """A realm starts with one active key, so it can sign from the first second."""
        if not REALM_NAME.fullmatch(name or "") or ids.looks_like("rl", name):
            raise InvalidInput(
                "Name must be 1-100 letters, digits, '.', '_' or '-' and not look like a realm id"
            )
        checked = self.check_policy(changed(self.limits.default_policy, policy))
        now = self.clock()
        try:
            with transaction(self.sessions) as session:
                realm = Realm(id=ids.realm_id(), name=name, jwks_version=0)
                realm.created_at = realm.updated_at = realm.next_rotation_at = now
                set_policy(realm, checked)
                session.add(realm)
                session.flush()
                self._apply(session, realm, lifecycle.due, now, reason="realm.created")
                return realm_view(realm)
        except IntegrityError as error:
            raise Conflict(f"Name {name!r} is already taken") from error

    def update_realm(self, ref: str, **changes: Any) -> RealmView:
        """A new policy takes effect from the realm's current keys; existing keys are kept."""
        now = self.clock()
        with transaction(self.sessions) as session:
            realm = self._realm(session, ref, lock=True)
            policy = self.check_policy(changed(policy_of(realm), changes))
            set_policy(realm, policy)
            self._apply(session, realm, lambda *_: [], now, reason="realm.policy_changed")
            return realm_view(realm)

    def delete_realm(self, ref: str) -> RealmView:
        """Hard delete of the realm and all its keys; the event names every key it removed."""
        now = self.clock()
        with transaction(self.sessions) as session:
            realm = self._realm(session, ref, lock=True)
            view = realm_view(realm)
            key_ids = list(session.scalars(select(JwtKey.id).where(JwtKey.realm_id == realm.id)))
            realm.jwks_version += 1
            self._event(session, realm, "key.deleted", sorted(key_ids), now)
            session.delete(realm)
            return view

    def get_realm(self, ref: str) -> RealmView:
        with transaction(self.sessions, read_only=True) as session:
            return realm_view(self._realm(session, ref))

    def list_realms(
        self,
        *,
        after: str | None = None,
        max_results: int = MAX_RESULTS,
        direction: str = "desc",
        sort: str = "id",
        only: Collection[str] | None = None,
    ) -> Page[RealmView]:
        """A page of realms; `only` (realm ids) narrows it to those an admin key may read."""
        query = select(Realm)
        if only is not None:
            query = query.where(Realm.id.in_(sorted(only)))
        with transaction(self.sessions, read_only=True) as session:
            return read_page(
                session,
                query,
                Realm.id,
                realm_view,
                after=after,
                max_results=max_results,
                direction=direction,
                sort=sort,
            )
