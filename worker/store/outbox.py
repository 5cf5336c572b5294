"""Queries on the `events` outbox: what the relay has still to send, marking it sent, the
audit listing, and dropping what was sent long ago.

The service writes outbox rows with the change they describe; only the relay reads them back
and stamps `published_at`, so marking never touches realms or keys. Once sent, a row is only a
record (`listing` reads it back, for who changed what): `prune` deletes it after the
retention, and never a row the relay has still to send.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker.core.errors import NotFound
from worker.store.db import transaction
from worker.store.models import Event


def unpublished(sessions: sessionmaker[Session], limit: int) -> list[Event]:
    """The oldest unsent events in commit order per realm (`seq`), through the partial index."""
    query = select(Event).where(Event.published_at.is_(None)).order_by(Event.seq).limit(limit)
    with transaction(sessions, read_only=True) as session:
        return list(session.scalars(query))


def mark_published(
    sessions: sessionmaker[Session],
    seqs: Sequence[int],
    at: datetime,
    then: Callable[[Session, set[int]], None] | None = None,
) -> None:
    """Stamp events as sent; running it twice (two relays) changes nothing the second time.
    `then` runs in the same transaction with the events this call stamped (never one a
    racing relay stamped), so what follows from sending an event happens exactly once."""
    if not seqs:
        return
    with transaction(sessions) as session:
        stamped = set(
            session.scalars(
                update(Event)
                .where(Event.seq.in_(list(seqs)), Event.published_at.is_(None))
                .values(published_at=at)
                .returning(Event.seq)
            )
        )
        if then is not None:
            then(session, stamped)


def listing(
    sessions: sessionmaker[Session],
    *,
    limit: int,
    realm_ids: Collection[str] | None = None,
    actor: str | None = None,
    after: str | None = None,
    newest_first: bool = True,
) -> list[Event]:
    """Up to `limit` kept events of `realm_ids` (None: every realm) and `actor`, newest first
    (or oldest), from just past the event `after`. Pages are keyset pages on `seq`, the order
    events were written, so a page never repeats or skips a row as new ones arrive; an `after`
    no longer kept (pruned) is NotFound, as there is nowhere to go on from."""
    query = select(Event)
    if realm_ids is not None:
        query = query.where(Event.realm_id.in_(sorted(realm_ids)))
    if actor is not None:
        query = query.where(Event.actor == actor)
    with transaction(sessions, read_only=True) as session:
        if after is not None:
            seq = session.scalar(select(Event.seq).where(Event.id == after))
            if seq is None:
                raise NotFound(f"Event {after!r} is not kept")
            query = query.where(Event.seq < seq if newest_first else Event.seq > seq)
        order = Event.seq.desc() if newest_first else Event.seq.asc()
        return list(session.scalars(query.order_by(order).limit(limit)))


def count_unpublished(sessions: sessionmaker[Session]) -> int:
    """How many events wait for the relay: a backlog that only grows means Redis is away."""
    with transaction(sessions, read_only=True) as session:
        query = select(func.count()).where(Event.published_at.is_(None))
        return int(session.scalar(query) or 0)


def prune(sessions: sessionmaker[Session], before: datetime, batch: int) -> int:
    """Delete at most `batch` of the oldest events relayed before `before`, in one short
    transaction; returns how many went. Unsent events stay whatever their age.

    The subquery walks the `published_at` partial index from its oldest end, so the cost is the
    batch, not the table. On PostgreSQL it skips rows another prune has locked, so two at once
    take different batches instead of waiting for each other.
    """
    oldest = (
        select(Event.seq)
        .where(Event.published_at.is_not(None), Event.published_at < before)
        .order_by(Event.published_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    with transaction(sessions) as session:
        result = session.execute(
            delete(Event).where(Event.seq.in_(oldest)),
            execution_options={"synchronize_session": False},
        )
        return cast("CursorResult[Any]", result).rowcount
