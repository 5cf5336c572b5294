"""The doctor's read-only queries: keyset pages over keys and realms, the stale outbox."""

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
    states = checks.realm_states(service.sessions)
    assert [s.jwks_version for s in states] == [1, 1, 1]


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
