"""The only writer: applies one realm's transitions in one transaction, with its outbox event.

Each change locks the realm row (PostgreSQL `FOR UPDATE`; SQLite takes its write lock at
BEGIN), re-reads the keys, asks the lifecycle core what to do *now*, and writes the result,
`jwks_version` and the `realm.updated` event together. Two workers racing on one realm
therefore queue on the lock and the second finds nothing left to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.core import ids, keys, lifecycle
from worker.core.lifecycle import Key, Plan, Policy, State
from worker.service.actors import current_actor
from worker.service.base import core_key
from worker.service.policy import policy_of
from worker.service.pool import KeyPool
from worker.service.views import Change
from worker.store.models import Event, JwtKey, Realm

PlanMaker = Callable[[Policy, list[Key], datetime], Plan]


class RealmLike(Protocol):
    """A realm as a row or a mapped object: what a `Change` is made from."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def jwks_version(self) -> int: ...
    @property
    def next_rotation_at(self) -> datetime: ...


def plan_maker(*, force: bool = False, before: datetime | None = None) -> PlanMaker:
    """What a rotation applies: the schedule; with `force`, a rotation now; with `before`, a
    rotation now unless the active key began signing since that cut-off."""
    if before is not None:
        return partial(lifecycle.rotate_unless_since, cutoff=before)
    return lifecycle.rotate_now if force else lifecycle.due


@dataclass(frozen=True)
class Transition:
    """A realm's keys before and after a plan, and the kept keys whose state or moments move."""

    before: list[Key]
    after: list[Key]
    changed: list[Key]

    @classmethod
    def of(cls, before: list[Key], after: list[Key]) -> Transition:
        """Retirements sort first: the one-active-key index must hold after every statement."""
        was = {k.id: k for k in before}
        moved = (k for k in after if k.id in was and k != was[k.id])
        return cls(before, after, sorted(moved, key=lambda k: k.state is State.ACTIVE))

    def created(self) -> list[Key]:
        was = {k.id for k in self.before}
        return [k for k in self.after if k.id not in was]

    def removed(self) -> list[str]:
        return sorted({k.id for k in self.before} - {k.id for k in self.after})

    def touched(self, now: datetime) -> list[str]:
        """Every key added, removed or changed, oldest first (a removed key sorts as `now`)."""
        after_by_id = {k.id: k for k in self.after}
        was = {k.id for k in self.before}
        touched = (was ^ after_by_id.keys()) | {k.id for k in self.changed}
        return sorted(
            touched, key=lambda k: (after_by_id[k].created_at if k in after_by_id else now, k)
        )

    def handover(self) -> tuple[str | None, str | None]:
        """(activated, retired) when the active key changed hands, else (None, None)."""
        active = next((k.id for k in self.after if k.state is State.ACTIVE), None)
        previous = next((k.id for k in self.before if k.state is State.ACTIVE), None)
        return (active, previous) if active != previous else (None, None)


class Writer(KeyPool):
    """Writes key state, `jwks_version` and the outbox event of one locked realm."""

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
        rows = {r.id: r for r in session.scalars(select(JwtKey).where(JwtKey.realm_id == realm.id))}
        policy = policy_of(realm)
        before = [core_key(row) for row in rows.values()]
        plan = make_plan(policy, before, now)
        step = Transition.of(before, lifecycle.apply(before, plan, now, new_key_ids()))
        realm.next_rotation_at = lifecycle.next_due_at(policy, step.after)
        if not plan and reason is None:
            return None
        _remove_gone(session, rows, step)
        _update_kept(session, rows, step)
        self._insert_new(session, realm, step, material)
        realm.jwks_version += 1
        realm.updated_at = now
        why = reason or lifecycle.reason(plan)
        touched = step.touched(now)
        event_id = self._event(session, realm, why, touched, now)
        return change_of(realm, why, step, touched, event_id)

    def _insert_new(
        self, session: Session, realm: Realm, step: Transition, material: keys.KeyMaterial | None
    ) -> None:
        """New keys in plan order; `material` serves the first, the rest come from the pool
        (RSA) or are generated when it has none left."""
        created = step.created()
        wanted = len(created) - (material is not None)
        pooled = self._take_pooled(session, realm.algo, realm.rsa_bits, wanted)
        for key in created:
            made = material or (
                pooled.pop() if pooled else keys.generate(realm.algo, realm.rsa_bits)
            )
            material = None
            session.add(self._key_row(realm.id, key, made))
            session.flush()

    def _key_row(self, realm_id: str, key: Key, made: keys.KeyMaterial) -> JwtKey:
        """A new key's row: its material sealed for this realm and key, its state from `key`."""
        row = JwtKey(
            id=key.id,
            realm_id=realm_id,
            algo=made.algo,
            use="sign",
            public_pem=made.public_pem,
            sealed_secret=self.master_keys.seal(made.secret, realm_id=realm_id, key_id=key.id),
        )
        write_state(row, key)
        return row

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
                actor=current_actor(),
            )
        )
        return event_id


def _remove_gone(session: Session, rows: dict[str, JwtKey], step: Transition) -> None:
    """Deletes go first: a revoked active key must be gone before its successor arrives."""
    for key_id in step.removed():
        session.delete(rows[key_id])
    session.flush()


def _update_kept(session: Session, rows: dict[str, JwtKey], step: Transition) -> None:
    """One statement per key, retirements first, so no flush sees two active keys."""
    for key in step.changed:
        write_state(rows[key.id], key)
        session.flush()


def change_of(
    realm: RealmLike, reason: str, step: Transition, touched: list[str], event_id: str
) -> Change:
    """What the shells are told of one realm's committed change."""
    activated, retired = step.handover()
    return Change(
        realm_id=realm.id,
        realm_name=realm.name,
        reason=reason,
        key_ids=touched,
        jwks_version=realm.jwks_version,
        created=[k.id for k in step.created()],
        activated=activated,
        retired=retired,
        next_rotation_at=realm.next_rotation_at,
        event_id=event_id,
    )


def new_key_ids() -> Iterator[str]:
    while True:
        yield ids.key_id()


def write_state(row: JwtKey, key: Key) -> None:
    row.state = key.state.value
    row.created_at = key.created_at
    row.activated_at = key.activated_at
    row.expired_at = key.expired_at
    row.delete_after = key.delete_after
