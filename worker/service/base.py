"""What every part of the service shares: its stores, limits and clock, and the row lookups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, sessionmaker

from worker.core import ids
from worker.core.clock import Clock, utcnow
from worker.core.errors import InvalidInput, NotFound
from worker.core.lifecycle import Key, State
from worker.core.sealing import MasterKeys
from worker.core.webhooks import WebhookPolicy
from worker.service.policy import Limits
from worker.service.views import Page
from worker.store.db import keyset_page
from worker.store.models import JwtKey, Realm

MAX_RESULTS = 100
T = TypeVar("T")


class ServiceBase:
    """The database, the master keys that seal secrets, the policy and webhook limits and the
    clock."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        master_keys: MasterKeys,
        limits: Limits | None = None,
        clock: Clock = utcnow,
        webhooks: WebhookPolicy | None = None,
    ) -> None:
        self.sessions = sessions
        self.master_keys = master_keys
        self.limits = limits or Limits()
        self.clock = clock
        self.webhook_policy = webhooks or WebhookPolicy()

    def _realm(self, session: Session, ref: str, *, lock: bool = False) -> Realm:
        column = Realm.id if ids.looks_like("rl", ref) else Realm.name
        query = select(Realm).where(column == ref)
        if lock:
            query = query.with_for_update()
        realm = session.scalars(query).one_or_none()
        if realm is None:
            raise NotFound(f"Realm {ref!r} not found")
        return realm

    def _key(self, session: Session, key_id: str) -> JwtKey:
        row = session.get(JwtKey, key_id)
        if row is None:
            raise NotFound(f"Key {key_id!r} not found")
        return row


def core_key(row: JwtKey) -> Key:
    """The lifecycle core's view of a stored key: its state and moments, nothing secret."""
    return Key(
        id=row.id,
        state=State(row.state),
        created_at=row.created_at,
        activated_at=row.activated_at,
        expired_at=row.expired_at,
        delete_after=row.delete_after,
    )


def read_page(
    session: Session,
    query: Select[Any],
    column: Any,
    view: Callable[[Any], T],
    *,
    after: str | None,
    max_results: int,
    direction: str,
    sort: str,
) -> Page[T]:
    """One page of `query` in id order from just past `after`; one row more than a page is
    read to tell whether more follow."""
    if not 1 <= max_results <= MAX_RESULTS:
        raise InvalidInput(f"Max results must be between 1 and {MAX_RESULTS}")
    if direction not in ("asc", "desc"):
        raise InvalidInput("Direction must be asc or desc")
    if sort != "id":
        raise InvalidInput("Sort must be 'id'")
    more, rows = keyset_page(
        session, query, column, after=after, max_results=max_results, direction=direction
    )
    return Page(more, [view(row) for row in rows])
