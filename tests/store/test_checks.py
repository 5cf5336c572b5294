"""The doctor's read-only queries: keyset pages over keys and realms, the stale outbox, the
overdue realms."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from tests.conftest import FakeClock
from worker.service import Service
from worker.store import checks
from worker.store.db import transaction
from worker.store.models import Event


def test_pages_walk_every_key_and_realm_once_in_id_order(service: Service) -> None:
    for name in ("a", "b", "c"):
        service.create_realm(name, algo="hs256")
    keys, after = [], ""
    while page := checks.sealed_keys(service.sessions, after=after, limit=2):
        keys += page
        after = page[-1].id
    assert [k.id for k in keys] == sorted(k.id for k in keys) and len(keys) == 3
    assert all(
        service.master_keys.open(k.sealed_secret, realm_id=k.realm_id, key_id=k.id) for k in keys
    )
    realms = checks.realms(service.sessions, limit=2)
    assert len(realms) == 2 and realms[0].id < realms[1].id
    assert checks.realms(service.sessions, after=realms[1].id)[0].name in ("a", "b", "c")
    versions = checks.realm_versions(service.sessions, service.clock(), limit=2)
    assert [(version, settled) for _, version, settled in versions] == [(1, True), (1, True)]
    last = checks.realm_versions(service.sessions, service.clock(), after=versions[-1][0])
    ids = [realm_id for realm_id, _, _ in versions + last]
    assert ids == sorted(ids) and len(ids) == 3
    assert sorted(checks.realm_names(service.sessions, ids).values()) == ["a", "b", "c"]


def test_unsent_before_counts_only_unsent_events_older_than_the_cutoff(
    service: Service, clock: FakeClock
) -> None:
    service.create_realm("a")
    first = clock.now
    clock.advance(minutes=5)
    service.rotate("a", force=True)
    assert checks.unsent_before(service.sessions, first) == checks.Backlog(0, None)
    backlog = checks.unsent_before(service.sessions, first + timedelta(minutes=1))
    assert backlog == checks.Backlog(1, first)
    assert backlog.oldest_at is not None and backlog.oldest_at.tzinfo is not None
    with transaction(service.sessions) as session:
        session.execute(update(Event).values(published_at=clock.now))
    assert checks.unsent_before(service.sessions, clock.now).count == 0


def test_overdue_realms_are_counted_and_the_earliest_listed_first(
    service: Service, clock: FakeClock
) -> None:
    day, hour = timedelta(days=1), timedelta(hours=1)
    for n, period in enumerate((3 * day, day, 2 * day)):
        service.create_realm(f"r{n}", rotation_period=period, prepublish=hour)
    start = clock.now
    assert checks.overdue_realms(service.sessions, start, limit=2) == (0, [])
    clock.advance(days=4)
    count, earliest = checks.overdue_realms(service.sessions, start + 2 * day, limit=2)
    assert count == 2  # r1 and r2 due before the cut-off, r0 not
    assert [(realm.name, realm.next_rotation_at) for realm in earliest] == [
        ("r1", start + day - hour),
        ("r2", start + 2 * day - hour),
    ]
    count, earliest = checks.overdue_realms(service.sessions, clock.now, limit=2)
    assert count == 3 and [realm.name for realm in earliest] == ["r1", "r2"]
