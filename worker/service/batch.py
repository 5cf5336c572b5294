"""Rotation a batch at a time: up to `KEYROTOR_ROTATE_BATCH` realms in one transaction.

Each realm is still decided by the lifecycle core alone, on its own keys read under its lock;
only the statements are shared: the realm rows are locked in id order (so two batches that
overlap queue instead of deadlocking), their keys read in one query, and the deletes, updates,
new keys, versions and outbox rows flushed together. A realm that cannot be planned (an
unknown algorithm in an old row, a key that will not be made) is left out and reported, and
the rest commit. If the shared write itself fails, every realm is retried in a transaction of
its own, so one bad row costs its batch a second pass, never its rotation.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from worker.core import keys, lifecycle
from worker.core.errors import InvalidInput, NotFound
from worker.core.lifecycle import Plan, Policy, State
from worker.service.base import core_key
from worker.service.policy import policy_of
from worker.service.publication import Publishing, publication_of
from worker.service.rotation import Rotation
from worker.service.views import Change, Publication
from worker.service.writer import (
    PlanMaker,
    Transition,
    change_of,
    new_key_ids,
    plan_maker,
    write_state,
)
from worker.store.db import transaction
from worker.store.models import JwtKey, Realm

log = logging.getLogger("keyrotor.batch")

MAX_BATCH = 1000
# Spare RSA keys a batch made and did not use join the pool, up to this many of their kind.
SPARE_TO_POOL = 1000


@dataclass(frozen=True)
class BatchOutcome:
    """What one batch did: the changes committed and the key sets they publish, the realms
    with nothing to do (not due, or rotated since the cut-off), the realms gone, and the
    realms that failed with a one-line reason."""

    changes: list[Change] = field(default_factory=list)
    publications: list[Publication] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class _Planned:
    realm: Realm
    policy: Policy
    plan: Plan
    step: Transition
    next_at: datetime
    rows: dict[str, JwtKey]
    made: dict[str, keys.KeyMaterial] = field(default_factory=dict)


class BatchRotation(Rotation, Publishing):
    """`rotate_batch`: what the `keyrotor.rotate_realms` task calls."""

    def rotate_batch(
        self, realm_ids: Sequence[str], *, force: bool = False, before: datetime | None = None
    ) -> BatchOutcome:
        """Rotate what is due in each realm (with `force`, rotate now; with `before`, rotate
        unless the active key began signing since that cut-off), sharing one transaction."""
        ids = sorted(set(realm_ids))
        if len(ids) > MAX_BATCH:
            raise ValueError(f"a batch holds at most {MAX_BATCH} realms (got {len(ids)})")
        make_plan = plan_maker(force=force, before=before)
        spare = self._spare_keys(ids, make_plan)
        try:
            return self._together(ids, make_plan, spare)
        except (OperationalError, InterfaceError):
            raise  # the database is away: the task retries the whole batch
        except SQLAlchemyError as error:
            log.warning("batch of %d realms split up (%s)", len(ids), _one_line(error))
            return self._alone(ids, force=force, before=before)
        finally:  # what the batch did not use is ready for the next one
            for (_, bits), left in spare.items():
                for material in left:
                    self._add_pooled(material, bits, SPARE_TO_POOL)

    def _spare_keys(
        self, ids: list[str], make_plan: PlanMaker
    ) -> dict[tuple[str, int], list[keys.KeyMaterial]]:
        """The RSA keys the batch's plans need beyond what the pool holds, made before any
        lock is taken: prime search takes 40 ms to a second a key, and realms locked meanwhile
        would keep a revocation waiting. The plans are made again under the lock; a key made
        here and not used then joins the pool."""
        rsa = select(Realm).where(Realm.id.in_(ids), Realm.algo.in_(keys.POOLED_ALGOS))
        needed: Counter[tuple[str, int]] = Counter()
        with transaction(self.sessions, read_only=True) as session:
            realms = list(session.scalars(rsa))
            held = self.pool_counts() if realms else {}
            at_most = Counter((realm.algo, realm.rsa_bits) for realm in realms)
            if all(count <= held.get(group, 0) for group, count in at_most.items()):
                return {}  # the pool holds a key for every RSA realm: nothing to plan
            rows: dict[str, dict[str, JwtKey]] = {realm.id: {} for realm in realms}
            for row in session.scalars(select(JwtKey).where(JwtKey.realm_id.in_(list(rows)))):
                rows[row.realm_id][row.id] = row
            now = self.clock()
            for realm in realms:
                with contextlib.suppress(Exception):  # the locked pass reports what fails
                    created = _plan(realm, rows[realm.id], make_plan, now).step.created()
                    needed[(realm.algo, realm.rsa_bits)] += len(created)
        spare = {}
        for group, count in needed.items():
            with contextlib.suppress(InvalidInput):  # a bad size fails its realms under the lock
                spare[group] = [keys.generate(*group) for _ in range(count - held.get(group, 0))]
        return spare

    def _together(
        self,
        ids: list[str],
        make_plan: PlanMaker,
        spare: dict[tuple[str, int], list[keys.KeyMaterial]],
    ) -> BatchOutcome:
        now = self.clock()
        outcome = BatchOutcome()
        with transaction(self.sessions) as session:
            realms = list(
                session.scalars(
                    select(Realm).where(Realm.id.in_(ids)).order_by(Realm.id).with_for_update()
                )
            )
            outcome.gone.extend(sorted(set(ids) - {realm.id for realm in realms}))
            rows: dict[str, dict[str, JwtKey]] = {realm.id: {} for realm in realms}
            for row in session.scalars(select(JwtKey).where(JwtKey.realm_id.in_(list(rows)))):
                rows[row.realm_id][row.id] = row
            planned = []
            for realm in realms:
                try:
                    found = _plan(realm, rows[realm.id], make_plan, now)
                except Exception as error:  # one realm's bad row must not stop the others
                    outcome.failed[realm.id] = _one_line(error)
                    continue
                if found.plan:
                    planned.append(found)
                else:
                    realm.next_rotation_at = found.next_at
                    outcome.unchanged.append(realm.id)
            planned = self._make_keys(session, planned, spare, outcome.failed)
            _write(session, planned)
            session.add_all(
                [
                    self._key_row(item.realm.id, key, item.made[key.id])
                    for item in planned
                    for key in item.step.created()
                ]
            )
            session.flush()
            for item in planned:
                change, publication = self._commit_realm(session, item, now)
                outcome.changes.append(change)
                outcome.publications.append(publication)
        return outcome

    def _make_keys(
        self,
        session: Session,
        planned: list[_Planned],
        spare: dict[tuple[str, int], list[keys.KeyMaterial]],
        failed: dict[str, str],
    ) -> list[_Planned]:
        """Material for every new key: pooled RSA keys first, then the spare ones made before
        the lock, the rest generated. A realm whose key cannot be made is left out."""
        wanted: dict[tuple[str, int], int] = {}
        for item in planned:
            group = (item.realm.algo, item.realm.rsa_bits)
            wanted[group] = wanted.get(group, 0) + len(item.step.created())
        pooled = {
            group: self._take_pooled(session, group[0], group[1], count)
            for group, count in wanted.items()
        }
        kept = []
        for item in planned:
            realm = item.realm
            group = (realm.algo, realm.rsa_bits)
            taken, extra = pooled[group], spare.get(group, [])
            try:
                for key in item.step.created():  # pooled, else spare, else made now
                    item.made[key.id] = (taken or extra or [keys.generate(*group)]).pop()
            except Exception as error:
                failed[realm.id] = _one_line(error)
                continue
            kept.append(item)
        return kept

    def _commit_realm(
        self, session: Session, item: _Planned, now: datetime
    ) -> tuple[Change, Publication]:
        realm = item.realm
        realm.next_rotation_at = item.next_at
        realm.jwks_version += 1
        realm.updated_at = now
        why = lifecycle.reason(item.plan)
        touched = item.step.touched(now)
        event_id = self._event(session, realm, why, touched, now)
        public = {row.id: (row.algo, row.public_pem) for row in item.rows.values()}
        public.update({kid: (made.algo, made.public_pem) for kid, made in item.made.items()})
        publication = publication_of(
            realm.id, realm.name, realm.jwks_version, item.policy, item.step.after, public
        )
        return change_of(realm, why, item.step, touched, event_id), publication

    def _alone(self, ids: list[str], *, force: bool, before: datetime | None) -> BatchOutcome:
        """Every realm in its own transaction: what a batch falls back to when its shared
        write fails, so the realm at fault fails alone."""
        outcome = BatchOutcome()
        for realm_id in ids:
            try:
                change = self.rotate(realm_id, force=force, before=before)
            except NotFound:
                outcome.gone.append(realm_id)
                continue
            except (OperationalError, InterfaceError):
                raise
            except Exception as error:
                outcome.failed[realm_id] = _one_line(error)
                continue
            if change is None:
                outcome.unchanged.append(realm_id)
            else:
                outcome.changes.append(change)
        changed = [change.realm_id for change in outcome.changes]
        outcome.publications.extend(self.publications(changed) if changed else [])
        return outcome


def _plan(realm: Realm, rows: dict[str, JwtKey], make_plan: PlanMaker, now: datetime) -> _Planned:
    """The core's decision for one locked realm, computed before anything is written."""
    policy = policy_of(realm)
    before = [core_key(row) for row in rows.values()]
    plan = make_plan(policy, before, now)
    if plan:
        keys.check_algo(realm.algo)  # an unknown algorithm fails here, not mid-write
    step = Transition.of(before, lifecycle.apply(before, plan, now, new_key_ids()))
    return _Planned(realm, policy, plan, step, lifecycle.next_due_at(policy, step.after), rows)


def _write(session: Session, planned: list[_Planned]) -> None:
    """The batch's key changes in three flushes, deletes, retirements, activations (new keys
    follow), so the one-active-key index holds after every statement."""
    for item in planned:
        for key_id in item.step.removed():
            session.delete(item.rows[key_id])
    session.flush()
    for activating in (False, True):
        for item in planned:
            for key in item.step.changed:
                if (key.state is State.ACTIVE) is activating:
                    write_state(item.rows[key.id], key)
        session.flush()


def _one_line(error: BaseException) -> str:
    if isinstance(error, DBAPIError):
        error = error.orig or error
    text = str(error).strip().splitlines()
    return f"{error.__class__.__name__}: {text[0] if text else ''}"[:200]
