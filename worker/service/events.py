"""The audit trail: the events the outbox still keeps, by realm and by who asked.

The outbox is the record: every change wrote its event in its own transaction, with the actor
that caused it (`worker.service.actors`), and it keeps them for `KEYROTOR_EVENTS_RETENTION`
after they were relayed. A listing is a keyset page on the order they were written.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select

from worker.core import ids
from worker.core.errors import InvalidInput, NotFound
from worker.service.actors import MAX_CHARS
from worker.service.base import MAX_RESULTS, ServiceBase
from worker.service.views import EventView, Page
from worker.store import outbox
from worker.store.db import transaction
from worker.store.models import Event, Realm

MAX_ID_CHARS = 32


def event_view(row: Event) -> EventView:
    return EventView(
        id=row.id,
        event_type=row.event_type,
        realm_id=row.realm_id,
        event_at=row.event_at,
        reason=row.reason,
        key_ids=list(row.key_ids),
        jwks_version=row.jwks_version,
        actor=row.actor,
    )


class EventLog(ServiceBase):
    """Reads the kept events back; the writer and the relay own them otherwise."""

    def list_events(
        self,
        *,
        realm_id: str | None = None,
        actor: str | None = None,
        after: str | None = None,
        max_results: int = MAX_RESULTS,
        direction: str = "desc",
        only: Collection[str] | None = None,
    ) -> Page[EventView]:
        """A page of events, newest first unless `direction` is `asc`, of one realm (by id: a
        deleted realm's events are kept too) or all, of one actor or all; `only` (realm ids)
        narrows it to the realms an admin key may read. `after` is the last event id seen."""
        if not 1 <= max_results <= MAX_RESULTS:
            raise InvalidInput(f"Max results must be between 1 and {MAX_RESULTS}")
        if direction not in ("asc", "desc"):
            raise InvalidInput("Direction must be asc or desc")
        if realm_id is not None and not _is_id("rl", realm_id):
            raise InvalidInput("Realm must be a realm id")
        if actor is not None and not (0 < len(actor) <= MAX_CHARS and actor.isprintable()):
            raise InvalidInput(f"Actor must be 1-{MAX_CHARS} printable characters")
        if after is not None and not _is_id("evt", after):
            raise InvalidInput("After must be an event id")
        realms: set[str] | None = None if only is None else self._existing(only)
        if realm_id is not None:
            realms = {realm_id} if realms is None else realms & {realm_id}
        try:
            rows = outbox.listing(
                self.sessions,
                limit=max_results + 1,
                realm_ids=realms,
                actor=actor,
                after=after,
                newest_first=direction == "desc",
            )
        except NotFound:
            raise InvalidInput(
                "After is not a kept event (events go after KEYROTOR_EVENTS_RETENTION)"
            ) from None
        return Page(len(rows) > max_results, [event_view(row) for row in rows[:max_results]])

    def _existing(self, realm_ids: Collection[str]) -> set[str]:
        """The realms of `realm_ids` that still exist: a scope naming a deleted realm grants
        nothing, not even its old events."""
        with transaction(self.sessions, read_only=True) as session:
            return set(session.scalars(select(Realm.id).where(Realm.id.in_(list(realm_ids)))))


def _is_id(prefix: str, value: str) -> bool:
    return len(value) <= MAX_ID_CHARS and ids.looks_like(prefix, value)
