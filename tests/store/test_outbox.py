"""Outbox queries: unsent events come back in commit order, and stamping them is idempotent."""

from __future__ import annotations

from datetime import UTC, datetime

from worker.service import Service
from worker.store import outbox
from worker.store.db import transaction
from worker.store.models import Event


def test_unsent_events_come_in_commit_order_and_stamping_twice_changes_nothing(
    service: Service,
) -> None:
    service.create_realm("acme", algo="es256")
    service.rotate("acme", force=True)
    service.create_realm("beta", algo="es256")
    pending = outbox.unpublished(service.sessions, 10)
    assert [e.reason for e in pending] == ["realm.created", "key.rotated", "realm.created"]
    assert [e.seq for e in pending] == sorted(e.seq for e in pending)
    assert [e.id for e in outbox.unpublished(service.sessions, 2)] == [e.id for e in pending[:2]]

    first = datetime(2026, 1, 2, tzinfo=UTC)
    outbox.mark_published(service.sessions, [pending[0].seq], first)
    outbox.mark_published(service.sessions, [pending[0].seq, pending[1].seq], datetime.now(UTC))
    assert outbox.count_unpublished(service.sessions) == 1
    with transaction(service.sessions, read_only=True) as session:
        stamped = session.get(Event, pending[0].seq)
        assert stamped is not None and stamped.published_at == first  # the first stamp stays
    assert [e.id for e in outbox.unpublished(service.sessions, 10)] == [pending[2].id]
    outbox.mark_published(service.sessions, [], first)  # nothing to do is fine
