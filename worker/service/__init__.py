"""The only writer: applies one realm's transitions in one transaction, with its outbox event.

Each change locks the realm row (PostgreSQL `FOR UPDATE`; SQLite takes its write lock at
BEGIN), re-reads the keys, asks the lifecycle core what to do *now*, and writes the result,
`jwks_version` and the `realm.updated` event together. Two workers racing on one realm
therefore queue on the lock and the second finds nothing left to do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from worker.core import ids, keys, lifecycle
from worker.core.clock import Clock, rfc3339, utcnow
from worker.core.errors import Conflict, InvalidInput, NotFound
from worker.core.keys import ActiveKey
from worker.core.lifecycle import Key, Plan, Policy, State
from worker.core.sealing import MasterKeys
from worker.store.db import transaction
from worker.store.models import Event, JwtKey, Realm

PlanMaker = Callable[[Policy, list[Key], datetime], Plan]
REALM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_RESULTS = 100


@dataclass(frozen=True)
class Change:
    """What one committed transaction did to a realm; the shells publish and log from it."""

    realm_id: str
    realm_name: str
    reason: str
    key_ids: list[str]
    jwks_version: int
    created: list[str] = field(default_factory=list)
    activated: str | None = None
    retired: str | None = None
    next_rotation_at: datetime | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class Publication:
    """A realm's JWKS as of one `jwks_version`, and when it is next scheduled to change."""

    realm_id: str
    realm_name: str
    jwks: dict[str, Any]
    jwks_version: int
    next_change_at: datetime | None


@dataclass(frozen=True)
class Page:
    """AuthRocket's list shape."""

    more_results: bool
    collection: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"more_results": self.more_results, "collection": self.collection}


@dataclass(frozen=True)
class Limits:
    """The settings a policy is checked against, and the defaults a new realm starts from."""

    default_policy: Policy = field(default_factory=Policy)
    clock_skew: timedelta = timedelta(seconds=60)
    jwks_max_age: timedelta = timedelta(seconds=300)


def policy_of(realm: Realm) -> Policy:
    return Policy(
        algo=realm.algo,
        rotation_period=timedelta(seconds=realm.rotation_period_s),
        prepublish=timedelta(seconds=realm.prepublish_s),
        grace=timedelta(seconds=realm.grace_s),
        max_token_ttl=timedelta(seconds=realm.max_token_ttl_s),
        rsa_bits=realm.rsa_bits,
    )


def _set_policy(realm: Realm, policy: Policy) -> None:
    realm.algo = policy.algo
    realm.rsa_bits = policy.rsa_bits
    realm.rotation_period_s = int(policy.rotation_period.total_seconds())
    realm.prepublish_s = int(policy.prepublish.total_seconds())
    realm.grace_s = int(policy.grace.total_seconds())
    realm.max_token_ttl_s = int(policy.max_token_ttl.total_seconds())


def _core_key(row: JwtKey) -> Key:
    return Key(
        id=row.id,
        state=State(row.state),
        created_at=row.created_at,
        activated_at=row.activated_at,
        expired_at=row.expired_at,
        delete_after=row.delete_after,
    )


def realm_view(realm: Realm) -> dict[str, Any]:
    policy = policy_of(realm)
    return {
        "id": realm.id,
        "name": realm.name,
        "algo": policy.algo,
        "rsa_bits": policy.rsa_bits,
        "rotation_period": int(policy.rotation_period.total_seconds()),
        "prepublish": int(policy.prepublish.total_seconds()),
        "grace": int(policy.grace.total_seconds()),
        "max_token_ttl": int(policy.max_token_ttl.total_seconds()),
        "jwks_version": realm.jwks_version,
        "next_rotation_at": rfc3339(realm.next_rotation_at),
        "created_at": rfc3339(realm.created_at),
        "updated_at": rfc3339(realm.updated_at),
    }


def _page(
    query: Select[Any], column: Any, after: str | None, limit: int, direction: str
) -> Select[Any]:
    if not 1 <= limit <= MAX_RESULTS:
        raise InvalidInput(f"Max results must be between 1 and {MAX_RESULTS}")
    if direction not in ("asc", "desc"):
        raise InvalidInput("Direction must be asc or desc")
    if after is not None:
        query = query.where(column > after if direction == "asc" else column < after)
    order = column.asc() if direction == "asc" else column.desc()
    return query.order_by(order).limit(limit + 1)


class Service:
    """Realms and keys: every read the shells need and every write there is."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        master_keys: MasterKeys,
        limits: Limits | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.sessions = sessions
        self.master_keys = master_keys
        self.limits = limits or Limits()
        self.clock = clock

    # -- realms ---------------------------------------------------------------

    def check_policy(self, policy: Policy) -> Policy:
        return check_policy(policy, self.limits)

    def create_realm(self, name: str, **policy: Any) -> dict[str, Any]:
        """A realm starts with one active key, so it can sign from the first second."""
        if not REALM_NAME.fullmatch(name or "") or ids.looks_like("rl", name):
            raise InvalidInput(
                "Name must be 1-100 letters, digits, '.', '_' or '-' and not look like a realm id"
            )
        checked = self.check_policy(_changed(self.limits.default_policy, policy))
        now = self.clock()
        try:
            with transaction(self.sessions) as session:
                realm = Realm(id=ids.realm_id(), name=name, jwks_version=0)
                realm.created_at = realm.updated_at = realm.next_rotation_at = now
                _set_policy(realm, checked)
                session.add(realm)
                session.flush()
                self._apply(session, realm, lifecycle.due, now, reason="realm.created")
                return realm_view(realm)
        except IntegrityError as error:
            raise Conflict(f"Name {name!r} is already taken") from error

    def update_realm(self, ref: str, **changes: Any) -> dict[str, Any]:
        """A new policy takes effect from the realm's current keys; existing keys are kept."""
        now = self.clock()
        with transaction(self.sessions) as session:
            realm = self._realm(session, ref, lock=True)
            policy = self.check_policy(_changed(policy_of(realm), changes))
            _set_policy(realm, policy)
            self._apply(session, realm, lambda *_: [], now, reason="realm.policy_changed")
            return realm_view(realm)

    def delete_realm(self, ref: str) -> dict[str, Any]:
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

    def get_realm(self, ref: str) -> dict[str, Any]:
        with transaction(self.sessions, read_only=True) as session:
            return realm_view(self._realm(session, ref))

    def list_realms(
        self, *, after: str | None = None, max_results: int = MAX_RESULTS, direction: str = "desc"
    ) -> Page:
        with transaction(self.sessions, read_only=True) as session:
            query = _page(select(Realm), Realm.id, after, max_results, direction)
            rows = list(session.scalars(query))
            return Page(len(rows) > max_results, [realm_view(r) for r in rows[:max_results]])

    def _realm(self, session: Session, ref: str, *, lock: bool = False) -> Realm:
        column = Realm.id if ids.looks_like("rl", ref) else Realm.name
        query = select(Realm).where(column == ref)
        if lock:
            query = query.with_for_update()
        realm = session.scalars(query).one_or_none()
        if realm is None:
            raise NotFound(f"Realm {ref!r} not found")
        return realm

    # -- keys -----------------------------------------------------------------

    def key_view(self, row: JwtKey) -> dict[str, Any]:
        """AuthRocket's key object: `key` is the public PEM, or the secret for an HMAC key."""
        if row.public_pem is not None:
            key_text = row.public_pem
        else:
            secret = self.master_keys.open(row.sealed_secret, realm_id=row.realm_id, key_id=row.id)
            key_text = secret.decode()
        return {
            "id": row.id,
            "object": "jwt_key",
            "realm_id": row.realm_id,
            "algo": row.algo,
            "use": row.use,
            "state": row.state,
            "expired": row.state == State.EXPIRED,
            "key": key_text,
            "created_at": rfc3339(row.created_at),
            "activated_at": rfc3339(row.activated_at),
            "expired_at": rfc3339(row.expired_at),
            "delete_after": rfc3339(row.delete_after),
        }

    def get_key(self, key_id: str) -> dict[str, Any]:
        with transaction(self.sessions, read_only=True) as session:
            return self.key_view(self._key(session, key_id))

    def list_keys(
        self,
        *,
        realm: str | None = None,
        after: str | None = None,
        max_results: int = MAX_RESULTS,
        direction: str = "desc",
    ) -> Page:
        with transaction(self.sessions, read_only=True) as session:
            query = select(JwtKey)
            if realm is not None:
                query = query.where(JwtKey.realm_id == self._realm(session, realm).id)
            rows = list(session.scalars(_page(query, JwtKey.id, after, max_results, direction)))
            return Page(len(rows) > max_results, [self.key_view(r) for r in rows[:max_results]])

    def create_key(
        self,
        realm_ref: str,
        algo: str | None = None,
        *,
        key_text: str | None = None,
        activate: bool = False,
    ) -> dict[str, Any]:
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
            return self.key_view(self._key(session, change.created[0]))

    def delete_key(self, key_id: str, *, force: bool = False) -> dict[str, Any]:
        """Expire (or with `force`, revoke) a key; returns the key as it was before."""
        now = self.clock()
        with transaction(self.sessions) as session:
            row = self._key(session, key_id)
            original = self.key_view(row)
            realm = self._realm(session, row.realm_id, lock=True)

            def plan(policy: Policy, current: list[Key], now: datetime) -> Plan:
                return lifecycle.delete(policy, current, key_id, now, force=force)

            self._apply(session, realm, plan, now)
            return original

    def _key(self, session: Session, key_id: str) -> JwtKey:
        row = session.get(JwtKey, key_id)
        if row is None:
            raise NotFound(f"Key {key_id!r} not found")
        return row

    # -- rotation ---------------------------------------------------------------

    def rotate(self, realm_ref: str, *, force: bool = False) -> Change | None:
        """Apply what is due now; with `force`, rotate now whatever the schedule says."""
        now = self.clock()
        with transaction(self.sessions) as session:
            realm = self._realm(session, realm_ref, lock=True)
            return self._apply(
                session, realm, lifecycle.rotate_now if force else lifecycle.due, now
            )

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

    # -- publishing -------------------------------------------------------------

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
            return Publication(
                realm_id=realm.id,
                realm_name=realm.name,
                jwks={
                    "keys": [
                        keys.public_jwk(r.algo, r.id, r.public_pem) for r in rows if r.public_pem
                    ]
                },
                jwks_version=realm.jwks_version,
                next_change_at=lifecycle.next_jwks_change_at(
                    policy_of(realm), [_core_key(r) for r in rows]
                ),
            )

    def jwks(self, realm_ref: str) -> dict[str, Any]:
        return self.publication(realm_ref).jwks

    def signing_key(self, realm_ref: str) -> ActiveKey:
        """The realm's active key with its secret opened, and the longest token it may sign."""
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
            )

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

    def count_keys(self, realm_ref: str, state: State) -> int:
        with transaction(self.sessions, read_only=True) as session:
            realm = self._realm(session, realm_ref)
            query = select(func.count()).where(JwtKey.realm_id == realm.id, JwtKey.state == state)
            return int(session.scalar(query) or 0)

    # -- master keys ------------------------------------------------------------

    def rewrap(
        self, *, batch: int = 200, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Re-seal every secret under the first master key, a committed batch at a time.

        Interrupted, it resumes where it stopped: keys already under the first master key are
        skipped. Returns how many keys it re-sealed.
        """
        with transaction(self.sessions, read_only=True) as session:
            total = int(session.scalar(select(func.count()).select_from(JwtKey)) or 0)
        done = rewrapped = 0
        after = ""
        while True:
            with transaction(self.sessions) as session:
                rows = list(
                    session.scalars(
                        select(JwtKey).where(JwtKey.id > after).order_by(JwtKey.id).limit(batch)
                    )
                )
                for row in rows:
                    if not self.master_keys.is_current(row.sealed_secret):
                        row.sealed_secret = self.master_keys.rewrap(
                            row.sealed_secret, realm_id=row.realm_id, key_id=row.id
                        )
                        rewrapped += 1
            if not rows:
                return rewrapped
            after = rows[-1].id
            done += len(rows)
            if progress is not None:
                progress(done, total)

    # -- the one place that writes key state --------------------------------------

    def _apply(
        self,
        session: Session,
        realm: Realm,
        make_plan: PlanMaker,
        now: datetime,
        *,
        material: keys.KeyMaterial | None = None,
        reason: str | None = None,
    ) -> Change | None:
        """Run the core on the locked realm and write its plan, version bump and event.

        `material`, when given, is used for the (one) key the plan creates; other new keys
        are generated here, inside the lock, so a racing worker cannot create a second one.
        """
        rows = {
            row.id: row
            for row in session.scalars(select(JwtKey).where(JwtKey.realm_id == realm.id))
        }
        policy = policy_of(realm)
        before = [_core_key(row) for row in rows.values()]
        plan = make_plan(policy, before, now)
        after = lifecycle.apply(before, plan, now, _new_key_ids())
        realm.next_rotation_at = lifecycle.next_due_at(policy, after)
        if not plan and reason is None:
            return None

        after_by_id = {k.id: k for k in after}
        for key_id in rows.keys() - after_by_id.keys():
            session.delete(rows[key_id])
        session.flush()  # deletes first: a revoked active key must be gone before its successor
        # Retire before promoting: the one-active-key index must hold after every statement.
        changed = sorted(
            (k for k in after if k.id in rows and k != _core_key(rows[k.id])),
            key=lambda k: k.state is State.ACTIVE,
        )
        for key in changed:
            _write_state(rows[key.id], key)
            session.flush()
        for key in after:
            if key.id not in rows:
                made = material or keys.generate(realm.algo, realm.rsa_bits)
                material = None
                row = JwtKey(
                    id=key.id,
                    realm_id=realm.id,
                    algo=made.algo,
                    use="sign",
                    public_pem=made.public_pem,
                    sealed_secret=self.master_keys.seal(
                        made.secret, realm_id=realm.id, key_id=key.id
                    ),
                )
                _write_state(row, key)
                session.add(row)
                session.flush()

        touched = sorted(
            (rows.keys() ^ after_by_id.keys()) | {k.id for k in changed},
            key=lambda k: (after_by_id[k].created_at if k in after_by_id else now, k),
        )
        realm.jwks_version += 1
        realm.updated_at = now
        why = reason or lifecycle.reason(plan)
        event_id = self._event(session, realm, why, touched, now)
        active = next((k.id for k in after if k.state is State.ACTIVE), None)
        previous = next((k.id for k in before if k.state is State.ACTIVE), None)
        return Change(
            realm_id=realm.id,
            realm_name=realm.name,
            reason=why,
            key_ids=touched,
            jwks_version=realm.jwks_version,
            created=[k.id for k in after if k.id not in rows],
            activated=active if active != previous else None,
            retired=previous if active != previous else None,
            next_rotation_at=realm.next_rotation_at,
            event_id=event_id,
        )

    def _event(
        self, session: Session, realm: Realm, reason: str, key_ids: Sequence[str], now: datetime
    ) -> str:
        """Write the outbox row for this change; returns its event id (for log lines)."""
        event_id = ids.event_id()
        session.add(
            Event(
                id=event_id,
                realm_id=realm.id,
                event_type="realm.updated",
                reason=reason,
                key_ids=list(key_ids),
                jwks_version=realm.jwks_version,
                event_at=now,
            )
        )
        return event_id


def check_policy(policy: Policy, limits: Limits) -> Policy:
    """The policy with its algo normalized, or InvalidInput naming every unsafe setting (also
    what `keyrotor doctor` applies to the policies already stored)."""
    problems = []
    try:
        policy = replace(policy, algo=keys.check_algo(policy.algo))
    except InvalidInput as error:
        problems += error.messages
    if policy.rsa_bits not in keys.RSA_BITS:
        problems.append("Rsa bits must be one of 2048, 3072, 4096")
    problems += lifecycle.policy_problems(
        policy, clock_skew=limits.clock_skew, jwks_max_age=limits.jwks_max_age
    )
    if problems:
        raise InvalidInput(*problems)
    return policy


def _changed(policy: Policy, changes: dict[str, Any]) -> Policy:
    unknown = sorted(set(changes) - {f.name for f in fields(Policy)})
    if unknown:
        raise InvalidInput(f"Unknown policy field: {', '.join(unknown)}")
    return replace(policy, **changes)


def _expired_deletions(policy: Policy, current: list[Key], now: datetime) -> Plan:
    return [
        step for step in lifecycle.due(policy, current, now) if isinstance(step, lifecycle.Delete)
    ]


def _new_key_ids() -> Iterator[str]:
    while True:
        yield ids.key_id()


def _write_state(row: JwtKey, key: Key) -> None:
    row.state = key.state.value
    row.created_at = key.created_at
    row.activated_at = key.activated_at
    row.expired_at = key.expired_at
    row.delete_after = key.delete_after
