"""The service, the only writer, on real databases: realms, keys, rotation in simulated time,
the events outbox, pagination, rewrap and two workers racing."""

from __future__ import annotations

import re
import secrets
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, select, text
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.orm import Session

from worker.core.errors import Conflict, InvalidInput, NotFound, SealError
from worker.core.lifecycle import Policy, State
from worker.core.sealing import MasterKeys
from worker.service import Change, KeyView, Limits, RealmView, Service
from worker.service.wire import page_json, realm_json
from worker.store.db import make_engine, session_factory
from worker.store.models import Event, JwtKey

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PREPUBLISH_AT = timedelta(days=30) - timedelta(hours=1)
REALM_ID = re.compile(r"rl_[0-9A-Za-z]{22}")
KEY_ID = re.compile(r"jky_[0-9A-Za-z]{22}")


class FakeClock(Protocol):
    """The `clock` fixture (tests/conftest.py): time moves only when a test says so."""

    now: datetime

    def __call__(self) -> datetime: ...

    def advance(self, **delta: float) -> datetime: ...


def events(engine: Engine, realm_id: str | None = None) -> list[Event]:
    """The outbox rows, oldest first."""
    query = select(Event).order_by(Event.seq)
    if realm_id is not None:
        query = query.where(Event.realm_id == realm_id)
    with Session(engine) as session:
        return list(session.scalars(query))


def keys_of(service: Service, realm: str) -> list[KeyView]:
    return service.list_keys(realm=realm).collection


def in_state(service: Service, realm: str, state: State) -> list[KeyView]:
    return [k for k in keys_of(service, realm) if k.state == state]


def the_one(service: Service, realm: str, state: State) -> KeyView:
    found = in_state(service, realm, state)
    assert len(found) == 1, f"expected one {state} key, found {found}"
    return found[0]


def kids(service: Service, realm: str) -> set[str]:
    return {member["kid"] for member in service.jwks(realm)["keys"]}


def raw_count(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def es256_pem() -> tuple[str, str]:
    """A P-256 private key as PKCS#8 PEM, and its public key as SubjectPublicKeyInfo PEM."""
    private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


def service_with(engine: Engine, clock: FakeClock, *keys: bytes) -> Service:
    return Service(session_factory(engine), MasterKeys(list(keys)), Limits(), clock)


def rotate_at_once(workers: list[Service], realm: str) -> list[Change | BaseException | None]:
    """Every worker calls `rotate(realm)` at the same moment, each on its own thread."""
    start = threading.Barrier(len(workers))
    results: list[Change | BaseException | None] = []

    def run(worker: Service) -> None:
        start.wait()
        try:
            results.append(worker.rotate(realm))
        except BaseException as error:  # reported by the caller's assertion
            results.append(error)

    threads = [threading.Thread(target=run, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


# --- create_realm -----------------------------------------------------------------------------


def test_create_realm_returns_the_realm_view_with_default_policy(service: Service) -> None:
    realm = service.create_realm("acme", algo="es256")

    assert REALM_ID.fullmatch(realm.id)
    assert realm == RealmView(
        id=realm.id,
        name="acme",
        policy=Policy(
            algo="es256",
            rsa_bits=2048,
            rotation_period=timedelta(days=30),
            prepublish=timedelta(hours=1),
            grace=timedelta(hours=6),
            max_token_ttl=timedelta(hours=1),
        ),
        jwks_version=1,
        next_rotation_at=T0 + PREPUBLISH_AT,
        created_at=T0,
        updated_at=T0,
    )


def test_a_new_realm_has_exactly_one_active_key_published(service: Service) -> None:
    realm = service.create_realm("acme", algo="es256")

    [key] = keys_of(service, realm.id)
    assert KEY_ID.fullmatch(key.id)
    assert key.state == "active"
    assert key.expired is False
    assert key.activated_at == T0
    assert key.realm_id == realm.id
    assert kids(service, "acme") == {key.id}


def test_a_new_rs256_realm_publishes_an_rsa_key(service: Service) -> None:
    service.create_realm("acme")

    [member] = service.jwks("acme")["keys"]
    assert member["kty"] == "RSA"
    assert member["alg"] == "RS256"
    assert "d" not in member


def test_create_realm_with_a_taken_name_is_a_conflict(service: Service, engine: Engine) -> None:
    service.create_realm("acme", algo="es256")

    with pytest.raises(Conflict, match="acme"):
        service.create_realm("acme", algo="es256")

    assert len(service.list_realms().collection) == 1
    assert raw_count(engine, "jwt_keys") == 1
    assert len(events(engine)) == 1


@pytest.mark.parametrize(
    ("name", "policy", "messages"),
    [
        ("", {}, ["Name must be 1-100 letters"]),
        ("has space", {}, ["Name must be 1-100 letters"]),
        ("x" * 101, {}, ["Name must be 1-100 letters"]),
        ("rl_0v1zTHXhtNgmDaXaDYSAqx", {}, ["not look like a realm id"]),
        ("acme", {"algo": "hs512"}, ["Algo must be one of hs256, rs256, ps256, es256, eddsa"]),
        ("acme", {"algo": " "}, ["Algo can't be blank"]),
        (
            "acme",
            {"grace": timedelta(minutes=30)},
            ["Grace (30m) must be at least max token ttl plus clock skew (1h1m)"],
        ),
        (
            "acme",
            {"prepublish": timedelta(seconds=299)},
            ["Prepublish (4m59s) must be at least the JWKS max-age (5m)"],
        ),
        ("acme", {"rsa_bits": 1024}, ["Rsa bits must be one of 2048, 3072, 4096"]),
        (
            "acme",
            {"grace": timedelta(hours=1), "prepublish": timedelta(minutes=1)},
            ["Grace (1h) must be at least", "Prepublish (1m) must be at least"],
        ),
    ],
)
def test_create_realm_refuses_bad_input_and_writes_nothing(
    service: Service, engine: Engine, name: str, policy: dict[str, Any], messages: list[str]
) -> None:
    with pytest.raises(InvalidInput) as raised:
        service.create_realm(name, **policy)

    assert len(raised.value.messages) == len(messages)
    for expected, got in zip(messages, raised.value.messages, strict=True):
        assert expected in got
    assert service.list_realms().collection == []
    assert raw_count(engine, "realms") == 0
    assert raw_count(engine, "jwt_keys") == 0
    assert events(engine) == []


# --- get, update, delete realms ---------------------------------------------------------------


@pytest.mark.parametrize("by", ["id", "name"])
def test_get_realm_by_id_or_name(service: Service, by: str) -> None:
    realm = service.create_realm("acme", algo="es256")

    assert service.get_realm(getattr(realm, by)) == realm


@pytest.mark.parametrize("ref", ["nope", "rl_0v1zTHXhtNgmDaXaDYSAqx"])
def test_unknown_realm_is_not_found_everywhere(service: Service, ref: str) -> None:
    service.create_realm("acme", algo="es256")

    for call in (
        lambda: service.get_realm(ref),
        lambda: service.update_realm(ref, grace=timedelta(hours=7)),
        lambda: service.delete_realm(ref),
        lambda: service.rotate(ref),
        lambda: service.create_key(ref),
        lambda: service.list_keys(realm=ref),
        lambda: service.jwks(ref),
    ):
        with pytest.raises(NotFound):
            call()


@pytest.mark.parametrize("by", ["id", "name"])
def test_update_realm_changes_policy_and_reschedules(
    service: Service, engine: Engine, clock: FakeClock, by: str
) -> None:
    realm = service.create_realm("acme", algo="es256")
    clock.advance(days=1)

    updated = service.update_realm(getattr(realm, by), rotation_period=timedelta(days=7))

    assert updated.policy.rotation_period == timedelta(days=7)
    assert updated.jwks_version == 2
    assert updated.next_rotation_at == T0 + timedelta(days=7, hours=-1)
    assert updated.updated_at == T0 + timedelta(days=1)
    assert service.get_realm("acme") == updated
    last = events(engine)[-1]
    assert (last.reason, last.key_ids, last.jwks_version) == ("realm.policy_changed", [], 2)


def test_update_realm_refuses_an_unsafe_policy_and_changes_nothing(
    service: Service, engine: Engine
) -> None:
    realm = service.create_realm("acme", algo="es256")

    with pytest.raises(InvalidInput, match="Grace"):
        service.update_realm("acme", grace=timedelta(minutes=5), rotation_period=timedelta(days=1))

    assert service.get_realm("acme") == realm
    assert len(events(engine)) == 1


@pytest.mark.parametrize("by", ["id", "name"])
def test_delete_realm_removes_it_and_its_keys_with_one_event(
    service: Service, engine: Engine, by: str
) -> None:
    realm = service.create_realm("acme", algo="es256")
    pending = service.create_key("acme")
    active = the_one(service, "acme", State.ACTIVE)
    other = service.create_realm("other", algo="es256")
    before = service.get_realm("acme")

    assert service.delete_realm(getattr(realm, by)) == before

    with pytest.raises(NotFound):
        service.get_realm(realm.id)
    with pytest.raises(NotFound):
        service.get_key(pending.id)
    assert [k.realm_id for k in service.list_keys().collection] == [other.id]
    last = events(engine, realm.id)[-1]
    assert last.reason == "key.deleted"
    assert last.key_ids == sorted([pending.id, active.id])
    assert last.jwks_version == 3


# --- rotation through simulated time --------------------------------------------------------


def test_scheduled_rotation_prepublishes_promotes_then_deletes(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    realm = service.create_realm("acme", algo="es256")
    first = the_one(service, "acme", State.ACTIVE)

    clock.now = T0 + PREPUBLISH_AT - timedelta(seconds=1)
    assert service.rotate("acme") is None
    assert len(events(engine)) == 1

    clock.now = T0 + PREPUBLISH_AT
    created = service.rotate("acme")
    assert created is not None
    assert created.reason == "key.created"
    assert created.activated is None and created.retired is None
    [new_id] = created.created
    assert created.key_ids == [new_id]
    assert the_one(service, "acme", State.PENDING).id == new_id
    assert kids(service, "acme") == {first.id, new_id}
    assert created.next_rotation_at == T0 + timedelta(days=30)

    clock.now = T0 + timedelta(days=30)
    rotated = service.rotate(realm.id)
    assert rotated is not None
    assert rotated.reason == "key.rotated"
    assert (rotated.activated, rotated.retired) == (new_id, first.id)
    assert sorted(rotated.key_ids) == sorted([first.id, new_id])
    old = service.get_key(first.id)
    assert old.state == "expired" and old.expired is True
    assert old.expired_at == clock.now
    assert old.delete_after == clock.now + timedelta(hours=6)
    assert the_one(service, "acme", State.ACTIVE).id == new_id
    assert kids(service, "acme") == {first.id, new_id}

    clock.advance(hours=6)
    deleted = service.rotate("acme")
    assert deleted is not None
    assert (deleted.reason, deleted.key_ids) == ("key.deleted", [first.id])
    with pytest.raises(NotFound):
        service.get_key(first.id)
    assert kids(service, "acme") == {new_id}

    reasons = [e.reason for e in events(engine)]
    assert reasons == ["realm.created", "key.created", "key.rotated", "key.deleted"]
    assert service.get_realm("acme").jwks_version == 4


def test_rotate_twice_at_the_same_instant_changes_nothing_the_second_time(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    service.create_realm("acme", algo="es256")
    for moment in (T0 + PREPUBLISH_AT, T0 + timedelta(days=30), T0 + timedelta(days=30, hours=6)):
        clock.now = moment
        assert service.rotate("acme") is not None
        before = (keys_of(service, "acme"), service.get_realm("acme"), len(events(engine)))

        assert service.rotate("acme") is None

        assert (keys_of(service, "acme"), service.get_realm("acme"), len(events(engine))) == before


def test_force_rotate_without_pending_creates_and_activates_a_key(
    service: Service, clock: FakeClock
) -> None:
    service.create_realm("acme", algo="es256")
    old = the_one(service, "acme", State.ACTIVE)
    clock.advance(days=1)

    change = service.rotate("acme", force=True)

    assert change is not None and change.reason == "key.rotated"
    new = the_one(service, "acme", State.ACTIVE)
    assert change.created == [new.id]
    assert (change.activated, change.retired) == (new.id, old.id)
    assert new.activated_at == clock.now
    assert service.get_key(old.id).delete_after == clock.now + timedelta(hours=6)
    assert in_state(service, "acme", State.PENDING) == []
    assert service.get_realm("acme").next_rotation_at == clock.now + timedelta(hours=6)


def test_force_rotate_promotes_the_pending_key(service: Service, clock: FakeClock) -> None:
    service.create_realm("acme", algo="es256")
    old = the_one(service, "acme", State.ACTIVE)
    pending = service.create_key("acme")
    clock.advance(minutes=1)

    change = service.rotate("acme", force=True)

    assert change is not None
    assert change.created == []
    assert (change.activated, change.retired) == (pending.id, old.id)
    assert the_one(service, "acme", State.ACTIVE).id == pending.id
    assert service.get_key(old.id).state == "expired"
    assert len(keys_of(service, "acme")) == 2


# --- create_key -----------------------------------------------------------------------------


def test_create_key_is_pending_and_replaces_the_pending_key(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    service.create_realm("acme", algo="es256")
    active = the_one(service, "acme", State.ACTIVE)

    first = service.create_key("acme")
    assert first.state == "pending"
    assert first.activated_at is None
    clock.advance(minutes=5)
    second = service.create_key("acme")

    assert the_one(service, "acme", State.ACTIVE).id == active.id
    assert the_one(service, "acme", State.PENDING).id == second.id
    replaced = service.get_key(first.id)
    assert replaced.state == "expired"
    assert replaced.delete_after == clock.now + timedelta(hours=6)
    assert kids(service, "acme") == {active.id, first.id, second.id}
    last = events(engine)[-1]
    assert last.reason == "key.created"
    assert last.key_ids == [first.id, second.id]


def test_create_key_with_activate_signs_at_once_and_expires_the_old_key(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    service.create_realm("acme", algo="es256")
    old = the_one(service, "acme", State.ACTIVE)
    clock.advance(hours=2)

    new = service.create_key("acme", activate=True)

    assert new.state == "active"
    assert new.activated_at == clock.now
    assert the_one(service, "acme", State.ACTIVE).id == new.id
    expired = service.get_key(old.id)
    assert expired.state == "expired"
    assert expired.delete_after == clock.now + timedelta(hours=6)
    assert events(engine)[-1].reason == "key.rotated"


def test_create_key_imports_a_pem_and_publishes_its_public_key(service: Service) -> None:
    service.create_realm("acme", algo="es256")
    private_pem, public_pem = es256_pem()

    key = service.create_key("acme", "es256", key_text=private_pem)

    assert key.key == public_pem
    assert "PRIVATE" not in key.key
    assert key.id in kids(service, "acme")
    assert service.get_key(key.id).key == public_pem


@pytest.mark.parametrize(
    ("algo", "key_text", "message"),
    [
        ("es256", "not a pem", "Key is not a valid PEM private key"),
        ("rs256", es256_pem()[0], "Key does not match algo rs256"),
        ("hs256", "short", "Key is too short"),
        ("hs512", "x" * 64, "Algo must be one of"),
    ],
)
def test_create_key_refuses_bad_key_text_and_writes_nothing(
    service: Service, engine: Engine, algo: str, key_text: str, message: str
) -> None:
    realm = service.create_realm("acme", algo="es256")
    before = keys_of(service, "acme")

    with pytest.raises(InvalidInput, match=message):
        service.create_key("acme", algo, key_text=key_text)

    assert keys_of(service, "acme") == before
    assert service.get_realm("acme") == realm
    assert len(events(engine)) == 1


def test_hs256_key_view_holds_the_secret_and_never_enters_the_jwks(service: Service) -> None:
    service.create_realm("hmac", algo="hs256")
    service.create_realm("mixed", algo="es256")

    hmac_key = the_one(service, "hmac", State.ACTIVE)
    extra = service.create_key("mixed", "hs256")

    for key in (hmac_key, extra):
        assert re.fullmatch(r"jsk_[0-9A-Za-z]{43}", key.key)
        assert key.algo == "hs256"
    assert service.jwks("hmac") == {"keys": []}
    assert kids(service, "mixed") == {the_one(service, "mixed", State.ACTIVE).id}


def test_an_imported_hs256_secret_is_kept(service: Service) -> None:
    service.create_realm("hmac", algo="hs256")
    secret = secrets.token_urlsafe(40)

    key = service.create_key("hmac", key_text=secret)

    assert service.get_key(key.id).key == secret


# --- delete_key -----------------------------------------------------------------------------


def test_delete_active_key_returns_the_original_and_a_new_key_signs(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    service.create_realm("acme", algo="es256")
    active = the_one(service, "acme", State.ACTIVE)
    clock.advance(hours=1)

    returned = service.delete_key(active.id)

    assert returned == active
    now_expired = service.get_key(active.id)
    assert now_expired.state == "expired"
    assert now_expired.delete_after == clock.now + timedelta(hours=6)
    replacement = the_one(service, "acme", State.ACTIVE)
    assert replacement.id != active.id
    assert replacement.activated_at == clock.now
    assert kids(service, "acme") == {active.id, replacement.id}
    last = events(engine)[-1]
    assert last.reason == "key.rotated"
    assert last.key_ids == [active.id, replacement.id]


def test_delete_active_key_promotes_the_pending_key(service: Service) -> None:
    service.create_realm("acme", algo="es256")
    active = the_one(service, "acme", State.ACTIVE)
    pending = service.create_key("acme")

    service.delete_key(active.id)

    assert the_one(service, "acme", State.ACTIVE).id == pending.id
    assert len(keys_of(service, "acme")) == 2


def test_delete_pending_key_expires_it_and_leaves_the_active_key(service: Service) -> None:
    service.create_realm("acme", algo="es256")
    active = the_one(service, "acme", State.ACTIVE)
    pending = service.create_key("acme")

    assert service.delete_key(pending.id) == pending

    assert service.get_key(pending.id).state == "expired"
    assert the_one(service, "acme", State.ACTIVE) == active


def test_force_delete_promotes_the_pending_key(service: Service, engine: Engine) -> None:
    service.create_realm("acme", algo="es256")
    active = the_one(service, "acme", State.ACTIVE)
    pending = service.create_key("acme")

    returned = service.delete_key(active.id, force=True)

    assert returned == active
    with pytest.raises(NotFound):
        service.get_key(active.id)
    assert the_one(service, "acme", State.ACTIVE).id == pending.id
    assert kids(service, "acme") == {pending.id}
    last = events(engine)[-1]
    assert last.reason == "key.revoked"
    assert sorted(last.key_ids) == sorted([active.id, pending.id])


def test_force_delete_without_pending_creates_a_new_active_key(
    service: Service, engine: Engine
) -> None:
    service.create_realm("acme", algo="es256")
    active = the_one(service, "acme", State.ACTIVE)

    assert service.delete_key(active.id, force=True) == active

    with pytest.raises(NotFound):
        service.get_key(active.id)
    [replacement] = keys_of(service, "acme")
    assert replacement.state == "active"
    assert kids(service, "acme") == {replacement.id}
    last = events(engine)[-1]
    assert last.reason == "key.revoked"
    assert sorted(last.key_ids) == sorted([active.id, replacement.id])


def test_force_delete_of_an_expired_key_removes_it_from_the_jwks(
    service: Service, engine: Engine
) -> None:
    service.create_realm("acme", algo="es256")
    old = the_one(service, "acme", State.ACTIVE)
    new = service.create_key("acme", activate=True)

    service.delete_key(old.id, force=True)

    assert kids(service, "acme") == {new.id}
    assert (events(engine)[-1].reason, events(engine)[-1].key_ids) == ("key.revoked", [old.id])


def test_delete_of_an_expired_key_without_force_changes_nothing(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    service.create_realm("acme", algo="es256")
    old = the_one(service, "acme", State.ACTIVE)
    service.create_key("acme", activate=True)
    expired = service.get_key(old.id)
    before = (keys_of(service, "acme"), service.get_realm("acme"), len(events(engine)))
    clock.advance(hours=1)

    assert service.delete_key(old.id) == expired

    assert (keys_of(service, "acme"), service.get_realm("acme"), len(events(engine))) == before


def test_delete_unknown_key_is_not_found(service: Service) -> None:
    service.create_realm("acme", algo="es256")

    with pytest.raises(NotFound):
        service.delete_key("jky_0vRHaJyOFdkV3QVJpUJqJQ")
    with pytest.raises(NotFound):
        service.get_key("jky_0vRHaJyOFdkV3QVJpUJqJQ")


# --- pagination -----------------------------------------------------------------------------


def test_list_realms_pages_in_authrocket_shape(service: Service) -> None:
    made = sorted(service.create_realm(f"r{n}", algo="es256").id for n in range(5))

    page = service.list_realms()
    assert page_json(page) == {
        "more_results": False,
        "collection": [realm_json(r) for r in page.collection],
    }
    assert [r.id for r in page.collection] == made[::-1]
    assert [r.id for r in service.list_realms(direction="asc").collection] == made

    first = service.list_realms(max_results=2)
    assert (first.more_results, [r.id for r in first.collection]) == (True, made[:2:-1][:2])
    second = service.list_realms(max_results=2, after=made[3])
    assert (second.more_results, [r.id for r in second.collection]) == (True, made[2:0:-1])
    third = service.list_realms(max_results=2, after=made[1])
    assert (third.more_results, [r.id for r in third.collection]) == (False, [made[0]])

    asc = service.list_realms(max_results=3, after=made[1], direction="asc")
    assert (asc.more_results, [r.id for r in asc.collection]) == (False, made[2:])


def test_more_results_is_true_exactly_when_more_remain(service: Service) -> None:
    service.create_realm("acme", algo="es256")
    for _ in range(3):
        service.create_key("acme")  # each new pending key expires the previous one

    assert service.list_keys(realm="acme", max_results=4).more_results is False
    assert service.list_keys(realm="acme", max_results=3).more_results is True
    assert service.list_keys(realm="acme", max_results=100).more_results is False


def test_list_keys_walks_one_realm_in_both_directions(service: Service) -> None:
    service.create_realm("acme", algo="es256")
    service.create_realm("other", algo="es256")
    for _ in range(4):
        service.create_key("acme")
    mine = sorted(k.id for k in keys_of(service, "acme"))
    assert len(mine) == 5

    for direction, expected in (("desc", mine[::-1]), ("asc", mine)):
        seen: list[str] = []
        after = None
        while True:
            page = service.list_keys(realm="acme", max_results=2, after=after, direction=direction)
            seen += [k.id for k in page.collection]
            assert page.more_results == (len(seen) < len(expected))
            if not page.more_results:
                break
            after = seen[-1]
        assert seen == expected
    assert len(service.list_keys().collection) == 6


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_results": 0}, "Max results must be between 1 and 100"),
        ({"max_results": 101}, "Max results must be between 1 and 100"),
        ({"direction": "up"}, "Direction must be asc or desc"),
        ({"sort": "created_at"}, "Sort must be 'id'"),
    ],
)
def test_listings_refuse_bad_page_options(
    service: Service, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        service.list_keys(**options)
    with pytest.raises(InvalidInput, match=message):
        service.list_realms(**options)


def test_max_results_bounds_are_accepted(service: Service) -> None:
    service.create_realm("acme", algo="es256")

    assert len(service.list_realms(max_results=1).collection) == 1
    assert len(service.list_keys(max_results=100).collection) == 1


# --- events outbox --------------------------------------------------------------------------


def test_every_change_writes_exactly_one_event(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    def step(expected_reason: str, action: Any) -> Event:
        count = len(events(engine))
        action()
        written = events(engine)
        assert len(written) == count + 1, f"{expected_reason}: {written[count:]}"
        event = written[-1]
        assert event.event_type == "realm.updated"
        assert event.reason == expected_reason
        assert re.fullmatch(r"evt_[0-9A-Za-z]{22}", event.id)
        assert event.event_at == clock.now
        assert event.published_at is None
        return event

    made: list[RealmView] = []
    created = step("realm.created", lambda: made.append(service.create_realm("a", algo="es256")))
    [realm] = made
    [first] = created.key_ids
    assert created.realm_id == realm.id
    assert (
        step(
            "realm.policy_changed", lambda: service.update_realm("a", grace=timedelta(hours=8))
        ).key_ids
        == []
    )
    clock.advance(minutes=1)
    [dropped] = step("key.created", lambda: service.create_key("a")).key_ids
    assert step("key.expired", lambda: service.delete_key(dropped)).key_ids == [dropped]
    [second] = step("key.created", lambda: service.create_key("a")).key_ids
    rotated = step("key.rotated", lambda: service.rotate("a", force=True))
    assert rotated.key_ids == [first, second]
    assert step("key.revoked", lambda: service.delete_key(first, force=True)).key_ids == [first]
    revoked = step("key.revoked", lambda: service.delete_key(second, force=True))
    replacement = the_one(service, "a", State.ACTIVE).id
    assert sorted(revoked.key_ids) == sorted([second, replacement])
    step("key.created", lambda: service.create_key("a", "hs256"))
    clock.advance(hours=8)
    assert step("key.deleted", lambda: service.rotate("a")).key_ids == [dropped]
    step("key.deleted", lambda: service.delete_realm("a"))

    versions = [e.jwks_version for e in events(engine, realm.id)]
    assert versions == list(range(1, len(versions) + 1))


def test_jwks_version_increases_per_realm_and_matches_the_realm_view(service: Service) -> None:
    service.create_realm("a", algo="es256")
    service.create_realm("b", algo="es256")
    service.create_key("a")
    service.rotate("a", force=True)
    service.create_key("b")

    assert service.get_realm("a").jwks_version == 3
    assert service.get_realm("b").jwks_version == 2


def test_events_carry_no_key_material(service: Service, engine: Engine) -> None:
    service.create_realm("hmac", algo="hs256")
    service.create_realm("acme", algo="es256")
    secret = the_one(service, "hmac", State.ACTIVE).key
    service.create_key("hmac", activate=True)
    service.rotate("acme", force=True)
    service.delete_key(the_one(service, "hmac", State.ACTIVE).id, force=True)

    with engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM events")).all()
    assert len(rows) == 5
    dump = repr(rows)
    assert "PRIVATE" not in dump
    assert "PUBLIC" not in dump
    assert secret not in dump
    assert "jsk_" not in dump


# --- rewrap ---------------------------------------------------------------------------------


def test_rewrap_moves_every_key_to_the_new_master_key(engine: Engine, clock: FakeClock) -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    before = service_with(engine, clock, old)
    before.create_realm("hmac", algo="hs256")
    before.create_realm("acme", algo="es256")
    before.create_key("acme")
    before.create_key("hmac")
    secret_id = the_one(before, "hmac", State.ACTIVE).id
    secret = before.get_key(secret_id).key
    with pytest.raises(SealError):
        service_with(engine, clock, new).get_key(secret_id)

    progress: list[tuple[int, int]] = []
    both = service_with(engine, clock, new, old)
    assert both.rewrap(batch=3, progress=lambda done, total: progress.append((done, total))) == 4
    assert progress == [(3, 4), (4, 4)]
    assert both.rewrap() == 0

    after = service_with(engine, clock, new)
    assert after.get_key(secret_id).key == secret
    with Session(engine) as session:
        rows = list(session.scalars(select(JwtKey)))
    assert len(rows) == 4
    for row in rows:
        opened = after.master_keys.open(row.sealed_secret, realm_id=row.realm_id, key_id=row.id)
        assert opened.startswith(b"jsk_" if row.algo == "hs256" else b"-----BEGIN PRIVATE KEY")


# --- due realms -----------------------------------------------------------------------------


def test_due_realm_ids_pages_each_due_realm_once_in_index_order(
    service: Service, clock: FakeClock
) -> None:
    due = [service.create_realm(f"now{n}", algo="es256") for n in range(4)]
    clock.advance(minutes=1)
    due += [service.create_realm(f"soon{n}", algo="es256") for n in range(3)]
    clock.advance(days=1)
    for n in range(2):
        service.create_realm(f"later{n}", algo="es256")
    clock.now = T0 + PREPUBLISH_AT + timedelta(minutes=1)

    pages: list[list[tuple[datetime, str]]] = []
    after = None
    while page := service.due_realm_ids(clock.now, after=after, limit=3):
        pages.append(page)
        after = page[-1]

    assert [len(page) for page in pages] == [3, 3, 1]
    walked = [entry for page in pages for entry in page]
    expected = sorted((r.next_rotation_at, r.id) for r in due)
    assert walked == expected
    assert all(at.tzinfo is not None for at, _ in walked)


def test_due_realm_ids_resumes_with_a_row_comparison_the_index_can_start_from(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    # With `a > x OR (a = x AND b > y)` PostgreSQL re-read every due entry before the page
    # (1M realms, 100k due: 16 ms for a late page instead of 0.6 ms; bench/README.md).
    for n in range(3):
        service.create_realm(f"r{n}", algo="es256")
    clock.now = T0 + PREPUBLISH_AT
    first = service.due_realm_ids(clock.now, limit=1)
    statements: list[str] = []

    def capture(*args: Any) -> None:
        statements.append(args[2])

    sqlalchemy_event.listen(engine, "before_cursor_execute", capture)
    try:
        rest = service.due_realm_ids(clock.now, after=first[-1])
    finally:
        sqlalchemy_event.remove(engine, "before_cursor_execute", capture)

    assert len(first + rest) == 3
    page_query = next(s for s in statements if "FROM realms" in s)
    assert "(realms.next_rotation_at, realms.id) >" in page_query
    assert " OR " not in page_query


def test_rotated_realms_leave_the_due_list(service: Service, clock: FakeClock) -> None:
    for n in range(3):
        service.create_realm(f"r{n}", algo="es256")
    clock.now = T0 + PREPUBLISH_AT

    for _, realm_id in service.due_realm_ids(clock.now):
        service.rotate(realm_id)

    assert service.due_realm_ids(clock.now) == []
    assert len(service.due_realm_ids(T0 + timedelta(days=30))) == 3


# --- two workers ----------------------------------------------------------------------------


def test_two_services_racing_on_a_due_realm_create_one_pending_key(
    database_url: str, master_keys: MasterKeys, clock: FakeClock
) -> None:
    engines = [make_engine(database_url), make_engine(database_url)]
    try:
        workers = [Service(session_factory(e), master_keys, Limits(), clock) for e in engines]
        names = [f"race{n}" for n in range(3)]
        for name in names:
            workers[0].create_realm(name, algo="es256")
        clock.now = T0 + PREPUBLISH_AT

        for name in names:
            results = rotate_at_once(workers, name)

            changes = [r for r in results if r is not None]
            assert len(results) == 2 and len(changes) == 1, results
            assert isinstance(changes[0], Change)
            assert len(in_state(workers[1], name, State.PENDING)) == 1
            realm_id = workers[1].get_realm(name).id
            assert [e.reason for e in events(engines[1], realm_id)] == [
                "realm.created",
                "key.created",
            ]
    finally:
        for engine in engines:
            engine.dispose()


def test_an_unknown_policy_field_is_refused_as_invalid_input(service: Service) -> None:
    with pytest.raises(InvalidInput, match="Unknown policy field: colour"):
        service.create_realm("acme", algo="es256", colour="blue")
    assert service.list_realms().collection == []
