"""Keys by hand: read, create (or import) and delete (expire or revoke) one key."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select

from worker.core import keys, lifecycle
from worker.core.lifecycle import Key, Plan, Policy, State
from worker.service.base import MAX_RESULTS, read_page
from worker.service.views import KeyView, Page
from worker.service.writer import Writer
from worker.store.db import transaction
from worker.store.models import JwtKey


class JwtKeys(Writer):
    """Key reads and the writes a person asks for; the schedule's writes are in rotation."""

    def _key_view(self, row: JwtKey) -> KeyView:
        """The public PEM, or for an HMAC key its secret opened: AuthRocket shows it."""
        if row.public_pem is not None:
            key_text = row.public_pem
        else:
            secret = self.master_keys.open(row.sealed_secret, realm_id=row.realm_id, key_id=row.id)
            key_text = secret.decode()
        return KeyView(
            id=row.id,
            realm_id=row.realm_id,
            algo=row.algo,
            use=row.use,
            state=State(row.state),
            key=key_text,
            created_at=row.created_at,
            activated_at=row.activated_at,
            expired_at=row.expired_at,
            delete_after=row.delete_after,
        )

    def get_key(self, key_id: str) -> KeyView:
        with transaction(self.sessions, read_only=True) as session:
            return self._key_view(self._key(session, key_id))

    def list_keys(
        self,
        *,
        realm: str | None = None,
        after: str | None = None,
        max_results: int = MAX_RESULTS,
        direction: str = "desc",
        sort: str = "id",
        only: Collection[str] | None = None,
    ) -> Page[KeyView]:
        """A page of keys, of one realm or all; `only` (realm ids) narrows it to the realms an
        admin key may read."""
        with transaction(self.sessions, read_only=True) as session:
            query = select(JwtKey)
            if realm is not None:
                query = query.where(JwtKey.realm_id == self._realm(session, realm).id)
            if only is not None:
                query = query.where(JwtKey.realm_id.in_(sorted(only)))
            return read_page(
                session,
                query,
                JwtKey.id,
                self._key_view,
                after=after,
                max_results=max_results,
                direction=direction,
                sort=sort,
            )

    def create_key(
        self,
        realm_ref: str,
        algo: str | None = None,
        *,
        key_text: str | None = None,
        activate: bool = False,
    ) -> KeyView:
        """A key made or imported by hand: pending unless `activate` (see lifecycle.create)."""
        with transaction(self.sessions, read_only=True) as session:
            realm = self._realm(session, realm_ref)
            checked = keys.check_algo(algo if algo is not None else realm.algo)
        if key_text is not None:
            material = keys.import_key(checked, key_text)
        else:
            material = keys.generate(checked, realm.rsa_bits)
        now = self.clock()

        def plan(policy: Policy, current: list[Key], now: datetime) -> Plan:
            return lifecycle.create(policy, current, now, activate=activate)

        with transaction(self.sessions) as session:
            realm = self._realm(session, realm.id, lock=True)
            change = self._apply(session, realm, plan, now, material=material)
            assert change is not None and len(change.created) == 1
            return self._key_view(self._key(session, change.created[0]))

    def delete_key(self, key_id: str, *, force: bool = False) -> KeyView:
        """Expire (or with `force`, revoke) a key; returns the key as it was before."""
        now = self.clock()
        with transaction(self.sessions) as session:
            row = self._key(session, key_id)
            original = self._key_view(row)
            realm = self._realm(session, row.realm_id, lock=True)

            def plan(policy: Policy, current: list[Key], now: datetime) -> Plan:
                return lifecycle.delete(policy, current, key_id, now, force=force)

            self._apply(session, realm, plan, now)
            return original
