"""The read-only figures behind /metrics, on each database backend."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

from tests.conftest import FakeClock
from worker.service import Service
from worker.store import outbox, stats


def test_counts_keys_realms_overdue_realms_and_the_unrelayed_events(
    service: Service, clock: FakeClock
) -> None:
    empty = stats.snapshot(service.sessions, overdue_before=clock.now)
    assert empty == stats.Snapshot({}, 0, stats.Overdue(0, None), stats.Unrelayed(0, 0, None))

    created_at = clock.now
    service.create_realm(
        "acme", rotation_period=timedelta(hours=1), prepublish=timedelta(minutes=10)
    )
    service.create_realm("other", rotation_period=timedelta(days=1), prepublish=timedelta(hours=1))
    clock.advance(hours=1)
    service.rotate("acme", force=True)

    found = stats.snapshot(service.sessions, overdue_before=clock.now)
    assert found.keys_by_state == {"active": 2, "expired": 1}
    assert found.realms == 2
    assert found.overdue == stats.Overdue(0, None)  # acme rotated just now, other not yet due
    assert found.unrelayed == stats.Unrelayed(3, 2, created_at)

    later = clock.advance(days=1)  # both due, neither rotated
    found = stats.snapshot(service.sessions, overdue_before=later)
    assert found.overdue.count == 2
    # acme's pending key was due 10 minutes before its period ended (prepublish)
    assert found.overdue.earliest_at == created_at + timedelta(hours=1, minutes=50)
    slack = stats.snapshot(service.sessions, overdue_before=created_at + timedelta(hours=23))
    assert slack.overdue == stats.Overdue(1, created_at + timedelta(hours=1, minutes=50))

    events = outbox.unpublished(service.sessions, 10)
    outbox.mark_published(service.sessions, [event.seq for event in events[:2]], later)
    assert stats.snapshot(service.sessions, later).unrelayed == stats.Unrelayed(
        1, 1, events[2].event_at
    )


def test_large_postgresql_tables_are_estimated_from_the_planners_statistics(
    service: Service, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        service.create_realm(f"realm-{n}")
    for n in range(2):  # each state on two rows or more, as ANALYZE's common values need
        service.rotate(f"realm-{n}", force=True)
        service.create_key(f"realm-{n}")
    monkeypatch.setattr(stats, "EXACT_UP_TO", 2)
    found = stats.snapshot(service.sessions, service.clock())
    if engine.dialect.name != "postgresql":  # SQLite is counted row by row, past any cap
        assert found.realms == 3
        assert found.keys_by_state == {"active": 3, "expired": 2, "pending": 2}
        return
    assert found.realms >= 2  # not analysed yet: at least what the capped count saw
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE realms, jwt_keys"))
    found = stats.snapshot(service.sessions, service.clock())
    assert found.realms == 3  # a table this small is sampled whole
    assert found.keys_by_state == {"active": 3, "expired": 2, "pending": 2}
