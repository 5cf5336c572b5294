"""What leaves the database for verifiers and signers: the public key set and the signing key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from worker.core import keys, lifecycle
from worker.core.errors import NotFound
from worker.core.keys import ActiveKey
from worker.core.lifecycle import Key, Policy, State
from worker.service.base import ServiceBase, core_key
from worker.service.policy import policy_of
from worker.service.views import Publication
from worker.store.db import transaction
from worker.store.models import JwtKey, Realm


class Publishing(ServiceBase):
    """Read-only: each answer comes from one consistent read of the realm and its keys."""

    def publication(self, realm_ref: str) -> Publication:
        """The realm's public key set (pending, active, in-grace; never HMAC), read consistently."""
        with transaction(self.sessions, read_only=True) as session:
            realm = self._realm(session, realm_ref)
            rows = list(
                session.scalars(
                    select(JwtKey)
                    .where(JwtKey.realm_id == realm.id)
                    .order_by(JwtKey.created_at, JwtKey.id)
                )
            )
            return _publication(realm, rows)

    def publications(self, realm_ids: Sequence[str]) -> list[Publication]:
        """`publication` of many realms by id in two queries (a realm deleted meanwhile is left
        out): reconcile republishes a page of lagging realms without two queries per realm."""
        ids = list(realm_ids)
        with transaction(self.sessions, read_only=True) as session:
            realms = list(session.scalars(select(Realm).where(Realm.id.in_(ids))))
            rows: dict[str, list[JwtKey]] = {realm.id: [] for realm in realms}
            for row in session.scalars(
                select(JwtKey)
                .where(JwtKey.realm_id.in_(ids))
                .order_by(JwtKey.realm_id, JwtKey.created_at, JwtKey.id)
            ):
                rows.setdefault(row.realm_id, []).append(row)
            return [_publication(realm, rows[realm.id]) for realm in realms]

    def jwks(self, realm_ref: str) -> dict[str, Any]:
        return self.publication(realm_ref).jwks

    def signing_key(self, realm_ref: str) -> ActiveKey:
        """The realm's active key with its secret opened, the longest token it may sign, and
        the realm's `jwks_version` read with it."""
        with transaction(self.sessions, read_only=True) as session:
            realm = self._realm(session, realm_ref)
            row = session.scalars(
                select(JwtKey).where(JwtKey.realm_id == realm.id, JwtKey.state == State.ACTIVE)
            ).one_or_none()
            if row is None:
                raise NotFound(f"Realm {realm.name!r} has no active key")
            return ActiveKey(
                realm_id=realm.id,
                realm_name=realm.name,
                kid=row.id,
                algo=row.algo,
                secret=self.master_keys.open(row.sealed_secret, realm_id=realm.id, key_id=row.id),
                max_token_ttl=timedelta(seconds=realm.max_token_ttl_s),
                jwks_version=realm.jwks_version,
            )


def _publication(realm: Realm, rows: Sequence[JwtKey]) -> Publication:
    return publication_of(
        realm.id,
        realm.name,
        realm.jwks_version,
        policy_of(realm),
        [core_key(row) for row in rows],
        {row.id: (row.algo, row.public_pem) for row in rows},
    )


def publication_of(
    realm_id: str,
    realm_name: str,
    jwks_version: int,
    policy: Policy,
    current: Sequence[Key],
    public: Mapping[str, tuple[str, str | None]],
) -> Publication:
    """The public key set of a realm from its keys in (created_at, id) order, `public` giving
    each key's (algo, public PEM): pending, active, in grace; HMAC keys have no public half
    and are never listed."""
    members = []
    for key in sorted(current, key=lambda k: (k.created_at, k.id)):
        algo, pem = public[key.id]
        if pem:
            members.append(keys.public_jwk(algo, key.id, pem))
    return Publication(
        realm_id=realm_id,
        realm_name=realm_name,
        jwks={"keys": members},
        jwks_version=jwks_version,
        next_change_at=lifecycle.next_jwks_change_at(policy, current),
    )
