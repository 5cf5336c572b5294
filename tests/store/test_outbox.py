"""Outbox queries: unsent events come back in commit order, stamping them is idempotent, and
only events sent longer ago than the retention are pruned, a bounded batch at a time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.event import listen, remove

from tests.conftest import FakeClock
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


# --- retention --------------------------------------------------------------------------------


def events_written(service: Service, count: int) -> list[Event]:
    """`count` events (one realm each, ES256 to stay quick), in commit order."""
    for n in range(count):
        service.create_realm(f"realm-{n}", algo="es256")
    events = outbox.unpublished(service.sessions, count + 1)
    assert len(events) == count
    return events


def left(service: Service) -> list[int]:
    with transaction(service.sessions, read_only=True) as session:
        return list(session.scalars(select(Event.seq).order_by(Event.seq)))


def test_prune_drops_old_relayed_events_and_keeps_recent_and_unsent_ones(
    service: Service, clock: FakeClock
) -> None:
    old, recent, unsent = events_written(service, 3)
    outbox.mark_published(service.sessions, [old.seq], clock.now)
    outbox.mark_published(service.sessions, [recent.seq], clock.advance(days=6))
    clock.advance(days=2)  # `old` was sent 8 days ago, `recent` 2; `unsent` was written 8 ago
    cut_off = clock.now - timedelta(days=7)

    assert outbox.prune(service.sessions, cut_off, 1000) == 1
    assert left(service) == [recent.seq, unsent.seq]
    assert outbox.prune(service.sessions, cut_off, 1000) == 0  # again: nothing more to do
    assert outbox.prune(service.sessions, clock.now + timedelta(days=365), 1000) == 1
    assert left(service) == [unsent.seq]  # never sent, so kept whatever its age
    assert [e.id for e in outbox.unpublished(service.sessions, 10)] == [unsent.id]


def test_prune_takes_the_oldest_sent_first_and_at_most_a_batch_at_a_time(
    service: Service, clock: FakeClock
) -> None:
    events = events_written(service, 5)
    # Sent in the reverse of commit order: the batch follows published_at, not seq.
    for event in reversed(events):
        outbox.mark_published(service.sessions, [event.seq], clock.advance(minutes=1))
    cut_off = clock.advance(days=30)

    assert outbox.prune(service.sessions, cut_off, 2) == 2
    assert left(service) == [e.seq for e in events[:3]]
    assert outbox.prune(service.sessions, cut_off, 2) == 2
    assert left(service) == [events[0].seq]
    assert outbox.prune(service.sessions, cut_off, 2) == 1
    assert outbox.prune(service.sessions, cut_off, 2) == 0
    assert left(service) == []


def test_prunes_running_at_once_delete_each_event_once_and_keep_the_rest(
    service: Service, clock: FakeClock
) -> None:
    events = events_written(service, 40)
    sent, kept = events[:30], events[30:]
    outbox.mark_published(service.sessions, [e.seq for e in sent], clock.now)
    outbox.mark_published(service.sessions, [kept[0].seq], clock.advance(days=2))
    cut_off = clock.now - timedelta(days=1)

    def prune_all() -> int:
        deleted = 0
        while pruned := outbox.prune(service.sessions, cut_off, 3):
            deleted += pruned
        return deleted

    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(prune_all) for _ in range(4)]
        assert sum(run.result() for run in runs) == len(sent)
    assert left(service) == [e.seq for e in kept]


def test_prune_finds_its_batch_through_the_published_at_index(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    """Read the plan of the very statement prune runs: the table is never scanned for it."""
    events = events_written(service, 3)
    outbox.mark_published(service.sessions, [e.seq for e in events], clock.now)
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            statements.append((statement, parameters))

    listen(engine, "before_cursor_execute", capture)
    try:
        outbox.prune(service.sessions, clock.advance(days=1), 1000)
    finally:
        remove(engine, "before_cursor_execute", capture)
    ((statement, parameters),) = statements
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            # Three rows are cheaper to scan than to look up: ask whether the index serves.
            connection.exec_driver_sql("SET enable_seqscan = off")
            plan = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
        else:
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
    assert "ix_events_published_at" in " ".join(str(value) for row in plan for value in row)
