"""Who changed what: every event records the actor the shell set around its work, and the kept
events are listed back by realm and actor, a keyset page at a time, in the payload's shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.conftest import FakeClock
from worker.core.errors import InvalidInput
from worker.publish.relay import payload
from worker.service import Service
from worker.service.actors import MAX_CHARS, SYSTEM, acting_as, current_actor, name_actor
from worker.service.events import event_view
from worker.service.wire import event_json
from worker.store import outbox
from worker.store.db import transaction
from worker.store.models import Event


def actors(service: Service) -> list[tuple[str, str]]:
    """(reason, actor) of every event, in the order written."""
    with transaction(service.sessions, read_only=True) as session:
        return [(e.reason, e.actor) for e in session.scalars(select(Event).order_by(Event.seq))]


def test_events_written_inside_acting_as_carry_its_name_and_system_outside(
    service: Service,
) -> None:
    service.create_realm("acme", algo="es256")
    with acting_as("cli:alice"):
        service.rotate("acme", force=True)
        with acting_as("aky_inner"):  # nested: the inner one, then the outer one again
            service.update_realm("acme", grace=timedelta(hours=2))
        key = service.create_key("acme", None)
    with acting_as() as actor:  # an HTTP request: named once its key is authenticated
        name_actor("aky_0vSb3RMdQh1XYEdDoJGh4P")
        assert actor.name == current_actor() == "aky_0vSb3RMdQh1XYEdDoJGh4P"
        service.delete_key(key.id, force=True)
    name_actor("ignored")  # outside any acting_as: nothing to rename
    service.rotate("acme", force=True)

    assert current_actor() == SYSTEM
    assert actors(service) == [
        ("realm.created", "system"),
        ("key.rotated", "cli:alice"),
        ("realm.policy_changed", "aky_inner"),
        ("key.created", "cli:alice"),
        ("key.revoked", "aky_0vSb3RMdQh1XYEdDoJGh4P"),
        ("key.rotated", "system"),
    ]


def test_a_batch_and_a_deleted_realm_record_the_actor_and_a_long_name_is_cut_to_fit(
    service: Service,
) -> None:
    ids = [service.create_realm(f"r{n}", algo="es256").id for n in range(2)]
    long_user = "cli:" + "u" * 100
    with acting_as(long_user):
        outcome = service.rotate_batch(ids, force=True)
        service.delete_realm("r0")
    assert len(outcome.changes) == 2
    assert actors(service)[2:] == [
        ("key.rotated", long_user[:MAX_CHARS]),
        ("key.rotated", long_user[:MAX_CHARS]),
        ("key.deleted", long_user[:MAX_CHARS]),
    ]


def test_the_listed_event_is_exactly_the_published_payload(service: Service) -> None:
    service.create_realm("acme", algo="es256")
    (row,) = outbox.unpublished(service.sessions, 10)
    (listed,) = service.list_events().collection
    assert event_json(listed) == payload(row) == event_json(event_view(row))
    assert list(payload(row)) == [
        "id",
        "event_type",
        "realm_id",
        "event_at",
        "reason",
        "key_ids",
        "jwks_version",
        "actor",
    ]
    assert payload(row)["actor"] == "system"


def test_events_are_listed_newest_first_by_realm_and_actor_a_page_at_a_time(
    service: Service, clock: FakeClock
) -> None:
    acme = service.create_realm("acme", algo="es256").id
    with acting_as("cli:bob"):
        beta = service.create_realm("beta", algo="es256").id
        for _ in range(3):
            clock.advance(seconds=1)
            service.rotate("acme", force=True)
    service.delete_realm("beta")
    every = [e.id for e in service.list_events().collection]
    assert len(every) == 6 and not service.list_events().more_results

    first = service.list_events(max_results=4)
    assert first.more_results and [e.id for e in first.collection] == every[:4]
    rest = service.list_events(max_results=4, after=first.collection[-1].id)
    assert not rest.more_results and [e.id for e in rest.collection] == every[4:]
    oldest = service.list_events(direction="asc", max_results=2)
    assert [e.id for e in oldest.collection] == every[::-1][:2]
    later = service.list_events(direction="asc", after=oldest.collection[-1].id)
    assert [e.id for e in later.collection] == every[::-1][2:]

    bobs = service.list_events(actor="cli:bob").collection
    assert [(e.realm_id, e.reason) for e in bobs] == [(acme, "key.rotated")] * 3 + [
        (beta, "realm.created")
    ]
    assert [e.reason for e in service.list_events(realm_id=beta).collection] == [
        "key.deleted",  # a deleted realm's events are kept, and listed by its id
        "realm.created",
    ]
    assert [e.actor for e in service.list_events(realm_id=beta).collection] == [
        "system",
        "cli:bob",
    ]
    mine = service.list_events(realm_id=acme, actor="cli:bob", max_results=2)
    assert mine.more_results and len(mine.collection) == 2
    assert service.list_events(actor="aky_nobody").collection == []
    # `only`: the realms an admin key may read; a realm outside it shows nothing
    assert {e.realm_id for e in service.list_events(only={acme}).collection} == {acme}
    assert service.list_events(only=set()).collection == []
    assert service.list_events(realm_id=acme, only={beta}).collection == []
    # a scope naming a deleted realm grants nothing, not even its kept events
    assert service.list_events(only={beta}).collection == []


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"max_results": 0}, "Max results must be between 1 and 100"),
        ({"max_results": 101}, "Max results must be between 1 and 100"),
        ({"direction": "up"}, "Direction must be asc or desc"),
        ({"realm_id": "acme"}, "Realm must be a realm id"),
        ({"actor": ""}, "Actor must be 1-64 printable characters"),
        ({"actor": "a" * 65}, "Actor must be 1-64 printable characters"),
        ({"actor": "cli:\x00"}, "Actor must be 1-64 printable characters"),
        ({"after": "jky_0vRHaJyOFdkV3QVJpUJqJQ"}, "After must be an event id"),
        ({"after": "evt_" + "a" * 40}, "After must be an event id"),
    ],
)
def test_a_bad_filter_is_refused_in_one_line(
    service: Service, given: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        service.list_events(**given)  # type: ignore[arg-type]
    assert refused.value.messages == [message]


def test_paging_after_a_pruned_event_is_refused(service: Service) -> None:
    service.create_realm("acme", algo="es256")
    (row,) = outbox.unpublished(service.sessions, 10)
    outbox.mark_published(service.sessions, [row.seq], datetime(2026, 1, 1, tzinfo=UTC))
    assert outbox.prune(service.sessions, datetime(2026, 2, 1, tzinfo=UTC), 10) == 1
    with pytest.raises(InvalidInput, match="After is not a kept event"):
        service.list_events(after=row.id)
