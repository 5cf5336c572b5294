"""Queries on the `events` outbox: what the relay has still to send, and marking it sent.

The service writes outbox rows with the change they describe; only the relay reads them back
and stamps `published_at`, so marking never touches realms or keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker.store.db import transaction
from worker.store.models import Event


def unpublished(sessions: sessionmaker[Session], limit: int) -> list[Event]:
    """The oldest unsent events in commit order per realm (`seq`), through the partial index."""
    query = select(Event).where(Event.published_at.is_(None)).order_by(Event.seq).limit(limit)
    with transaction(sessions, read_only=True) as session:
        return list(session.scalars(query))


def mark_published(sessions: sessionmaker[Session], seqs: Sequence[int], at: datetime) -> None:
    """Stamp events as sent; running it twice (two relays) changes nothing the second time."""
    if not seqs:
        return
    with transaction(sessions) as session:
        session.execute(
            update(Event)
            .where(Event.seq.in_(list(seqs)), Event.published_at.is_(None))
            .values(published_at=at)
        )


def count_unpublished(sessions: sessionmaker[Session]) -> int:
    """How many events wait for the relay: a backlog that only grows means Redis is away."""
    with transaction(sessions, read_only=True) as session:
        query = select(func.count()).where(Event.published_at.is_(None))
        return int(session.scalar(query) or 0)
