"""`rotate --all`: the record of one emergency rotation and the realms it covers.

A realm is covered while it matches the record's filters and its active key began signing
before the record's cut-off. Rotating it moves its active key past the cut-off, so the
covered set only shrinks: a rerun, a duplicated batch or a resumed fan-out finds only the
realms still to do, and never rotates one twice for the same incident.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, Select, func, literal, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from worker.core import ids, keys
from worker.core.errors import InvalidInput, NotFound
from worker.core.lifecycle import State
from worker.service.base import ServiceBase
from worker.service.views import RotationProgress, RotationView
from worker.store.db import transaction
from worker.store.models import JwtKey, MassRotation, Realm

MAX_PREFIX = 100
_PREFIX = re.compile(r"[A-Za-z0-9._-]*")
# Inlined, not bound: SQLite uses a partial index only when the query's term is the literal.
_ACTIVE = literal(State.ACTIVE.value, literal_execute=True)
_IDS_PER_QUERY = 1000


def rotation_view(row: MassRotation) -> RotationView:
    return RotationView(
        id=row.id,
        algo=row.algo,
        realm_prefix=row.realm_prefix,
        before=row.before,
        total=row.total,
        batches=row.batches,
        created_at=row.created_at,
        queued_at=row.queued_at,
    )


def check_filters(algo: str | None, realm_prefix: str | None) -> tuple[str | None, str | None]:
    """Normalized filters (an empty prefix is no filter), or InvalidInput naming the bad one."""
    if algo is not None:
        algo = keys.check_algo(algo)
    if not realm_prefix:
        return algo, None
    if len(realm_prefix) > MAX_PREFIX:
        raise InvalidInput(f"Realm prefix is too long (at most {MAX_PREFIX} characters)")
    if not _PREFIX.fullmatch(realm_prefix):
        raise InvalidInput("Realm prefix may hold only letters, digits, '.', '_' or '-'")
    return algo, realm_prefix


def covered(algo: str | None, realm_prefix: str | None, before: datetime) -> Select[str]:
    """Realm ids matching the filters whose active key began signing before `before`.

    Each realm's active key is looked up (a correlated subquery, through the one-active-key
    partial index) rather than joined, so a page walks realms in id order and stops at its
    limit; a join let SQLite read every active key and sort, for every page.
    """
    active_since = (
        select(JwtKey.activated_at)
        .where(JwtKey.realm_id == Realm.id, JwtKey.state == _ACTIVE)
        .scalar_subquery()
    )
    query = select(Realm.id).where(active_since < before)
    if algo is not None:
        query = query.where(Realm.algo == algo)
    if realm_prefix is not None:
        # Not LIKE: SQLite's ignores case and `_` is a wildcard; names are exact.
        query = query.where(func.substr(Realm.name, 1, len(realm_prefix)) == realm_prefix)
    return query


def _covered_by(row: MassRotation | RotationView) -> Select[str]:
    return covered(row.algo, row.realm_prefix, row.before)


class MassRotations(ServiceBase):
    """Records of `rotate --all` and the keyset pages of realms they still cover; the
    rotations themselves are the batch tasks' (`rotate_batch`)."""

    def count_matching(self, algo: str | None, realm_prefix: str | None, before: datetime) -> int:
        """How many realms a rotation with these filters and cut-off covers now."""
        algo, realm_prefix = check_filters(algo, realm_prefix)
        with transaction(self.sessions, read_only=True) as session:
            return _count(session, covered(algo, realm_prefix, self._cutoff(before)))

    def start_rotation(
        self, algo: str | None, realm_prefix: str | None, before: datetime | None
    ) -> RotationView:
        """Record a new rotation of every matching realm whose key began signing before
        `before` (default: now); `total` is how many that is now."""
        algo, realm_prefix = check_filters(algo, realm_prefix)
        now = self.clock()
        before = now if before is None else self._cutoff(before)
        with transaction(self.sessions, read_only=True) as session:  # no write lock meanwhile
            total = _count(session, covered(algo, realm_prefix, before))
        with transaction(self.sessions) as session:
            row = MassRotation(
                id=ids.rotation_id(),
                algo=algo,
                realm_prefix=realm_prefix,
                before=before,
                total=total,
                created_at=now,
            )
            session.add(row)
            session.flush()
            return rotation_view(row)

    def resume_rotation(
        self,
        algo: str | None,
        realm_prefix: str | None,
        progress: Callable[[str], RotationProgress],
    ) -> RotationView | None:
        """The newest rotation with exactly these filters, unless it has finished: every batch
        it queued has reported, none failed, and no realm it covers is left. `progress` reads
        a record's progress (from Redis). Whoever resumes it marks it not queued
        (`mark_queued(id, None)`) before sending its fan-out again, so as not to take the last
        run's end for this one's."""
        algo, realm_prefix = check_filters(algo, realm_prefix)
        with transaction(self.sessions, read_only=True) as session:
            row = session.scalars(
                select(MassRotation)
                .where(
                    _same(MassRotation.algo, algo), _same(MassRotation.realm_prefix, realm_prefix)
                )
                .order_by(MassRotation.created_at.desc(), MassRotation.id.desc())
                .limit(1)
            ).one_or_none()
            if row is None or self._finished(session, row, progress):
                return None
            return rotation_view(row)

    def rotation(self, rotation_id: str) -> RotationView:
        if not ids.looks_like("rot", rotation_id):
            raise NotFound(f"Rotation {rotation_id!r} not found")
        with transaction(self.sessions, read_only=True) as session:
            row = session.get(MassRotation, rotation_id)
            if row is None:
                raise NotFound(f"Rotation {rotation_id!r} not found")
            return rotation_view(row)

    def matching_realm_ids(self, rotation: RotationView, after: str, limit: int) -> list[str]:
        """The next keyset page, in id order after `after`, of the realms still covered."""
        query = _covered_by(rotation).where(Realm.id > after).order_by(Realm.id).limit(limit)
        with transaction(self.sessions, read_only=True) as session:
            return list(session.scalars(query))

    def still_left(
        self, rotation: RotationView, realm_ids: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """Of `realm_ids`, (those still covered, those gone): the rest were rotated since the
        cut-off. How a rerun settles the realms that failed before."""
        left: set[str] = set()
        found: set[str] = set()
        with transaction(self.sessions, read_only=True) as session:
            for start in range(0, len(realm_ids), _IDS_PER_QUERY):
                chunk = list(realm_ids[start : start + _IDS_PER_QUERY])
                found.update(session.scalars(select(Realm.id).where(Realm.id.in_(chunk))))
                left.update(session.scalars(_covered_by(rotation).where(Realm.id.in_(chunk))))
        return sorted(left), sorted(set(realm_ids) - found)

    def mark_queued(self, rotation_id: str, batches: int | None) -> None:
        """Every batch is queued (`batches` of them); None: not (or no longer) all queued."""
        queued_at = None if batches is None else self.clock()
        with transaction(self.sessions) as session:
            session.execute(
                update(MassRotation)
                .where(MassRotation.id == rotation_id)
                .values(batches=batches, queued_at=queued_at)
            )

    def _cutoff(self, before: datetime) -> datetime:
        """A cut-off in the future would cover the keys this rotation makes: refused."""
        if before.tzinfo is None:
            raise InvalidInput("Before needs a time zone offset")
        if before > self.clock():
            raise InvalidInput("Before can't be in the future")
        return before

    def _finished(
        self,
        session: Session,
        row: MassRotation,
        progress: Callable[[str], RotationProgress],
    ) -> bool:
        if row.batches is None:
            return False
        reported = progress(row.id)
        if reported.batches < row.batches or reported.failed:
            return False
        return session.scalars(_covered_by(row).limit(1)).first() is None


def _count(session: Session, query: Select[str]) -> int:
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


def _same(column: InstrumentedAttribute[str | None], value: str | None) -> ColumnElement[bool]:
    """`IS NULL` for a filter not given: SQL's `= NULL` matches nothing."""
    return column.is_(None) if value is None else column == value
