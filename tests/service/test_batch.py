"""Rotation a batch at a time, on real databases: the same result as one realm at a time, one
event per realm, a poisoned realm left out while the rest commit, and a cut-off that makes a
repeated batch rotate nothing twice."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tests.conftest import FakeClock
from worker.core.lifecycle import State
from worker.service import Service
from worker.service.batch import BatchRotation
from worker.store.models import Event


def rotated_events(engine: Engine) -> Counter[str]:
    with Session(engine) as session:
        query = select(Event.realm_id).where(Event.reason == "key.rotated")
        return Counter(session.scalars(query))


def active(service: Service, realm: str) -> str:
    (key,) = [k.id for k in service.list_keys(realm=realm).collection if k.state is State.ACTIVE]
    return key


def test_a_forced_batch_rotates_every_realm_once_with_one_event_each(
    service: Service, engine: Engine
) -> None:
    realms = [
        service.create_realm(f"r{n}", algo=algo)
        for n, algo in enumerate(["es256"] * 3 + ["eddsa", "hs256"])
    ]
    was = {realm.id: active(service, realm.id) for realm in realms}

    outcome = service.rotate_batch([realm.id for realm in realms], force=True)

    assert sorted(change.realm_id for change in outcome.changes) == sorted(was)
    assert outcome.failed == {} and outcome.gone == [] and outcome.unchanged == []
    assert rotated_events(engine) == Counter(list(was))
    for realm in realms:
        change = next(c for c in outcome.changes if c.realm_id == realm.id)
        assert change.retired == was[realm.id]
        assert change.activated == active(service, realm.id) != was[realm.id]
        assert service.get_realm(realm.id).jwks_version == realm.jwks_version + 1
    # What the batch publishes is exactly what the database now says.
    for publication in outcome.publications:
        assert publication == service.publication(publication.realm_id)


def test_a_poisoned_realm_is_left_out_and_the_rest_commit(service: Service, engine: Engine) -> None:
    good = [service.create_realm(f"good-{n}", algo="es256") for n in range(3)]
    bad = service.create_realm("bad", algo="es256")
    with engine.begin() as connection:  # an old row with an algorithm no longer known
        connection.execute(text("UPDATE realms SET algo = 'zz999' WHERE id = :id"), {"id": bad.id})
    bad_key = active(service, bad.id)

    outcome = service.rotate_batch([bad.id] + [realm.id for realm in good], force=True)

    assert sorted(c.realm_id for c in outcome.changes) == sorted(realm.id for realm in good)
    assert list(outcome.failed) == [bad.id]
    assert outcome.failed[bad.id].startswith("InvalidInput: Algo must be one of")
    assert active(service, bad.id) == bad_key  # untouched
    assert rotated_events(engine) == Counter(realm.id for realm in good)


def test_with_a_cut_off_a_repeated_batch_rotates_nothing_twice(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    realms = [service.create_realm(f"r{n}", algo="es256") for n in range(4)]
    clock.advance(minutes=1)
    cutoff = clock()
    service.rotate(realms[0].id, force=True)  # rotated by hand since the cut-off
    clock.advance(minutes=1)
    ids = [realm.id for realm in realms]

    first = service.rotate_batch(ids, before=cutoff)
    again = service.rotate_batch(ids, before=cutoff)

    assert sorted(c.realm_id for c in first.changes) == sorted(ids[1:])
    assert first.unchanged == [realms[0].id]
    assert again.changes == [] and sorted(again.unchanged) == sorted(ids)
    assert rotated_events(engine) == Counter(ids)


def test_only_what_is_due_without_force_and_deleted_realms_are_reported_gone(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    short = service.create_realm("short", algo="es256", rotation_period=timedelta(hours=2))
    long = service.create_realm("long", algo="es256")
    gone = service.create_realm("gone", algo="es256")
    service.delete_realm(gone.id)
    clock.advance(hours=1, minutes=1)  # short's next key is due to be prepublished

    outcome = service.rotate_batch([short.id, long.id, gone.id])

    assert [(c.realm_id, c.reason) for c in outcome.changes] == [(short.id, "key.created")]
    assert outcome.unchanged == [long.id] and outcome.gone == [gone.id]
    assert service.due_realm_ids(clock()) == []


def test_when_the_shared_write_fails_each_realm_is_tried_alone(
    service: Service, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    realms = [service.create_realm(f"r{n}", algo="es256") for n in range(3)]

    def refused(*_: object) -> None:
        raise IntegrityError("INSERT", {}, Exception("constraint refused the batch"))

    monkeypatch.setattr(BatchRotation, "_together", refused)
    outcome = service.rotate_batch([realm.id for realm in realms], force=True)

    assert sorted(c.realm_id for c in outcome.changes) == sorted(r.id for r in realms)
    assert sorted(p.realm_id for p in outcome.publications) == sorted(r.id for r in realms)
    assert rotated_events(engine) == Counter(realm.id for realm in realms)


def test_a_batch_larger_than_the_limit_is_refused(service: Service) -> None:
    with pytest.raises(ValueError, match="at most 1000"):
        service.rotate_batch([f"rl_{n}" for n in range(1001)])


def test_rsa_realms_take_pooled_keys_first_and_the_rest_are_made_before_the_lock(
    service: Service,
) -> None:
    realms = [service.create_realm(f"rsa-{n}", algo="rs256") for n in range(3)]
    service.fill_pool(1, wanted=[("rs256", 2048)])
    pooled = service.pool_counts()[("rs256", 2048)]

    outcome = service.rotate_batch([realm.id for realm in realms], force=True)

    assert len(outcome.changes) == 3 and outcome.failed == {}
    assert pooled == 1 and service.pool_counts() == {}  # the pooled one used, none left over
    for realm in realms:
        signing = service.signing_key(realm.id)
        assert signing.kid == active(service, realm.id)


def test_an_rsa_realm_with_an_impossible_key_size_fails_alone(
    service: Service, engine: Engine
) -> None:
    good = [service.create_realm(f"rsa-{n}", algo="rs256").id for n in range(2)]
    bad = service.create_realm("rsa-bad", algo="rs256").id
    with engine.begin() as connection:  # an old row no release would write
        connection.execute(text("UPDATE realms SET rsa_bits = 1234 WHERE id = :id"), {"id": bad})

    outcome = service.rotate_batch([*good, bad], force=True)

    assert sorted(c.realm_id for c in outcome.changes) == sorted(good)
    assert list(outcome.failed) == [bad] and "RSA key size" in outcome.failed[bad]
    assert rotated_events(engine) == Counter(good)
