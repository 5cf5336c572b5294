"""`GET /v1/events`: the audit trail, who changed what, from the events the outbox keeps.

Each item is exactly the event payload the stream, the channel and webhooks carry (with its
`actor`), so a consumer reads both the same way. An admin key sees the events of the realms it
may read. A plain `def`, run in FastAPI's thread pool like the other admin handlers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from worker.core import ids
from worker.core.scopes import Action, Need
from worker.http.admin import (
    NOT_FOUND,
    UNAUTHORIZED,
    Direction,
    MaxResults,
    Principal,
    require_admin,
    scoped,
)
from worker.http.context import clean_ref, context
from worker.http.models import Timestamp
from worker.service import MAX_RESULTS
from worker.service.actors import MAX_CHARS
from worker.service.wire import event_page_json

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)], responses=UNAUTHORIZED)


class Event(BaseModel):
    """One event, as published (worker.service.wire.event_json, field for field)."""

    id: str = Field(examples=["evt_0vSb3RMdQh1XYEdDoJGh4P"])
    event_type: Literal["realm.updated"]
    realm_id: str
    event_at: Timestamp
    reason: str = Field(examples=["key.rotated"])
    key_ids: list[str] = Field(description="The keys the change touched.")
    jwks_version: int
    actor: str = Field(
        description="Who asked: an admin key id (`aky_…`), `cli:<OS user>`, `scheduler` (beat's"
        " rotations and purges) or `system`.",
        examples=["aky_0vSb3RMdQh1XYEdDoJGh4P"],
    )


class EventPage(BaseModel):
    more_results: bool = Field(description="True when another page follows; pass `after`.")
    collection: list[Event]


@router.get(
    "/events",
    response_model=EventPage,
    tags=["events"],
    **scoped(Action.READ, NOT_FOUND),
)
def list_events(
    request: Request,
    principal: Principal,
    realm_id: Annotated[
        str | None,
        Query(
            max_length=100,
            description="Only this realm: its id (a deleted realm's events are kept too) or name.",
        ),
    ] = None,
    actor: Annotated[
        str | None,
        Query(
            max_length=MAX_CHARS,
            description="Only this actor: an admin key id, `cli:<user>`, `scheduler`, `system`.",
        ),
    ] = None,
    after: Annotated[
        str | None, Query(max_length=100, description="Start after this event id (the last seen).")
    ] = None,
    max_results: MaxResults = MAX_RESULTS,
    direction: Direction = "desc",
) -> dict[str, Any]:
    """The kept events (relayed ones go after KEYROTOR_EVENTS_RETENTION), newest first unless
    `direction=asc`, of the realms the admin key may read. An unknown realm name is 404; a
    realm the key may not read is 403."""
    service = context(request).service
    realm = None
    if realm_id is not None:
        realm = clean_ref(realm_id)
        if not ids.looks_like("rl", realm):
            realm = service.get_realm(realm).id
        principal.allow(Need(Action.READ, realm))
    page = service.list_events(
        realm_id=realm,
        actor=actor,
        after=after,
        max_results=max_results,
        direction=direction,
        only=principal.readable(),
    )
    return event_page_json(page)
