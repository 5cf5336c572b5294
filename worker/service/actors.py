"""Who is asking: the actor every event records, set once by each shell for its work.

An admin key id (`aky_…`) for an admin API call, `cli:<OS user>` for the CLI, `scheduler` for
beat's rotations and purges, `system` otherwise. The shells set it around their work with
`acting_as`; the writer reads it when it writes an event, so no service call needs a new
parameter. An HTTP request's actor is known only once its token is checked (in a thread of
its own), so a request holds one `Actor` that authentication fills in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

SYSTEM = "system"
SCHEDULER = "scheduler"
# The `events.actor` column's width: a longer name (a long OS user name) is cut to fit.
MAX_CHARS = 64


@dataclass
class Actor:
    name: str = SYSTEM


_ACTOR: ContextVar[Actor | None] = ContextVar("keyrotor_actor", default=None)


def current_actor() -> str:
    actor = _ACTOR.get()
    return SYSTEM if actor is None else actor.name


@contextmanager
def acting_as(name: str = SYSTEM) -> Iterator[Actor]:
    """Events written inside are `name`'s; the Actor may be renamed inside (an HTTP request
    learns its admin key once authenticated), which copies of this context see too."""
    token = _ACTOR.set(Actor(name[:MAX_CHARS]))
    try:
        actor = _ACTOR.get()
        assert actor is not None
        yield actor
    finally:
        _ACTOR.reset(token)


def name_actor(name: str) -> None:
    """Rename the actor of the work under way (no-op outside `acting_as`)."""
    actor = _ACTOR.get()
    if actor is not None:
        actor.name = name[:MAX_CHARS]
