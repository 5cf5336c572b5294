"""The pool of ready RSA keys, on real databases: filled per RSA kind in use, each key taken
once by the transaction that stores it for a realm, never published, re-sealed by rewrap."""

from __future__ import annotations

import secrets
import threading

import jwt
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.conftest import FakeClock
from worker.core import keys
from worker.core.lifecycle import State
from worker.core.sealing import MasterKeys
from worker.service import Limits, Service
from worker.store.db import session_factory, transaction
from worker.store.models import JwtKey, PooledKey

RS256 = ("rs256", 2048)


def service_with(engine: Engine, clock: FakeClock, *master: bytes) -> Service:
    return Service(session_factory(engine), MasterKeys(list(master)), Limits(), clock)


def pooled(engine: Engine) -> dict[str, str]:
    """Pooled key id -> public PEM."""
    with Session(engine) as session:
        return {row.id: row.public_pem for row in session.scalars(select(PooledKey))}


def stored_pems(engine: Engine) -> dict[str, str | None]:
    """Realm key id -> public PEM."""
    with Session(engine) as session:
        return {row.id: row.public_pem for row in session.scalars(select(JwtKey))}


def active_pem(service: Service, realm: str) -> str:
    (active,) = [k for k in service.list_keys(realm=realm).collection if k.state is State.ACTIVE]
    return active.key


def signs_and_verifies(service: Service, realm: str) -> bool:
    """The realm's signing key opens, and its token verifies with the published public key."""
    signing = service.signing_key(realm)
    token = jwt.encode(
        {"sub": "x"},
        keys.load_signing_key(signing.algo, signing.secret),
        algorithm=keys.JWT_ALG[signing.algo],
        headers={"kid": signing.kid},
    )
    public = keys.load_verifying_key(signing.algo, active_pem(service, realm))
    claims: dict[str, object] = jwt.decode(token, public, algorithms=[keys.JWT_ALG[signing.algo]])
    return claims["sub"] == "x"


# --- filling ----------------------------------------------------------------------------------


def test_fill_makes_up_to_size_for_each_rsa_kind_in_use_and_nothing_else(
    service: Service,
) -> None:
    service.create_realm("rs", algo="rs256")
    service.create_realm("ps", algo="ps256")
    service.create_realm("ec", algo="es256")
    service.create_realm("hmac", algo="hs256")

    assert service.fill_pool(0) == 0
    assert service.pool_counts() == {}
    assert service.fill_pool(2) == 4
    assert service.pool_counts() == {("ps256", 2048): 2, ("rs256", 2048): 2}
    assert service.fill_pool(2) == 0  # full: nothing more
    assert service.fill_pool(3) == 2  # topped up, not refilled
    assert service.pool_counts() == {("ps256", 2048): 3, ("rs256", 2048): 3}


def test_fill_makes_wanted_rsa_kinds_no_realm_uses_yet(service: Service) -> None:
    service.create_realm("ec", algo="es256")
    assert service.fill_pool(1, wanted=[RS256, ("es256", 2048), ("hs256", 2048)]) == 1
    assert service.pool_counts() == {RS256: 1}


def test_without_rsa_realms_or_wanted_kinds_fill_makes_nothing(service: Service) -> None:
    service.create_realm("ec", algo="es256")
    service.create_realm("ed", algo="eddsa")
    assert service.fill_pool(5) == 0
    assert service.pool_counts() == {}


# --- taking -----------------------------------------------------------------------------------


def test_a_rotation_takes_a_pooled_key_whose_secret_signs(service: Service, engine: Engine) -> None:
    realm = service.create_realm("acme", algo="rs256")
    service.fill_pool(2)
    before = pooled(engine)

    change = service.rotate("acme", force=True)

    assert change is not None and change.activated is not None
    after = pooled(engine)
    assert service.pool_counts() == {RS256: 1}
    (taken,) = before.keys() - after.keys()
    assert active_pem(service, "acme") == before[taken]
    assert signs_and_verifies(service, realm.id)


def test_creation_rotation_and_revocation_each_take_one(service: Service, engine: Engine) -> None:
    service.fill_pool(3, wanted=[RS256])
    pems = set(pooled(engine).values())

    service.create_realm("acme", algo="rs256")
    first = active_pem(service, "acme")
    service.rotate("acme", force=True)
    second = active_pem(service, "acme")
    (active,) = [k for k in service.list_keys(realm="acme").collection if k.state is State.ACTIVE]
    service.delete_key(active.id, force=True)
    third = active_pem(service, "acme")

    assert {first, second, third} == pems  # three different keys, each from the pool
    assert service.pool_counts() == {}
    assert signs_and_verifies(service, "acme")


def test_two_rotations_at_once_take_two_different_keys(service: Service, engine: Engine) -> None:
    service.create_realm("one", algo="rs256")
    service.create_realm("two", algo="rs256")
    service.fill_pool(2)
    pems = set(pooled(engine).values())
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def rotate(realm: str) -> None:
        start.wait()
        try:
            service.rotate(realm, force=True)
        except BaseException as error:  # reported by the assertion below
            failures.append(error)

    threads = [threading.Thread(target=rotate, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert failures == []
    assert {active_pem(service, "one"), active_pem(service, "two")} == pems
    assert service.pool_counts() == {}


def test_an_empty_pool_falls_back_to_generating(service: Service) -> None:
    realm = service.create_realm("acme", algo="rs256")
    first = active_pem(service, "acme")
    service.rotate("acme", force=True)
    assert active_pem(service, "acme") != first
    assert service.pool_counts() == {}
    assert signs_and_verifies(service, realm.id)


def test_realms_of_other_algos_leave_the_pool_alone(service: Service) -> None:
    service.fill_pool(1, wanted=[RS256])
    service.create_realm("ec", algo="es256")
    service.create_realm("ps", algo="ps256")
    service.create_realm("hmac", algo="hs256")
    assert service.pool_counts() == {RS256: 1}


def test_a_rolled_back_take_leaves_the_key_in_the_pool(service: Service) -> None:
    service.fill_pool(1, wanted=[RS256])
    with pytest.raises(RuntimeError), transaction(service.sessions) as session:
        (material,) = service._take_pooled(session, "rs256", 2048, 5)
        assert material.algo == "rs256" and material.secret.startswith(b"-----BEGIN PRIVATE")
        assert service._take_pooled(session, "es256", 2048, 5) == []
        raise RuntimeError("the realm's write failed")
    assert service.pool_counts() == {RS256: 1}


def test_a_pooled_key_that_no_longer_opens_is_dropped_and_replaced(
    engine: Engine, clock: FakeClock
) -> None:
    """Sealed under a master key since removed: the rotation generates instead of failing."""
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    service_with(engine, clock, old).fill_pool(1, wanted=[RS256])
    service = service_with(engine, clock, new)
    realm = service.create_realm("acme", algo="rs256")
    assert service.pool_counts() == {}
    assert signs_and_verifies(service, realm.id)


def test_emptying_the_pool_deletes_every_key(service: Service) -> None:
    service.fill_pool(2, wanted=[RS256, ("ps256", 2048)])
    assert service.empty_pool() == 4
    assert service.pool_counts() == {}
    assert service.empty_pool() == 0


# --- never published --------------------------------------------------------------------------


def test_pooled_keys_are_in_no_jwks_and_no_listing(service: Service, engine: Engine) -> None:
    realm = service.create_realm("acme", algo="rs256")
    service.fill_pool(2)
    pool = pooled(engine)

    members = service.publication(realm.id).jwks["keys"]
    listed = service.list_keys().collection
    assert {m["kid"] for m in members} == {k.id for k in listed} == set(stored_pems(engine))
    assert not set(pool) & {m["kid"] for m in members}
    assert not set(pool.values()) & {k.key for k in listed}
    for pooled_id in pool:
        assert pooled_id.startswith("kpl_")


# --- rewrap -----------------------------------------------------------------------------------


def test_rewrap_reseals_pooled_keys_under_the_new_master_key(
    engine: Engine, clock: FakeClock
) -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    before = service_with(engine, clock, old)
    before.create_realm("acme", algo="rs256")
    before.fill_pool(2)

    progress: list[tuple[int, int]] = []
    both = service_with(engine, clock, new, old)
    assert both.rewrap(batch=2, progress=lambda done, total: progress.append((done, total))) == 3
    assert progress == [(1, 3), (3, 3)]  # the realm's key, then the pool's two
    assert both.rewrap() == 0

    after = service_with(engine, clock, new)
    with Session(engine) as session:
        rows = list(session.scalars(select(PooledKey)))
    assert len(rows) == 2
    for row in rows:
        opened = after.master_keys.open(row.sealed_secret, realm_id=keys.POOL_REALM, key_id=row.id)
        assert opened.startswith(b"-----BEGIN PRIVATE KEY")
    after.rotate("acme", force=True)  # takes a pooled key: it opens under the new key alone
    assert after.pool_counts() == {RS256: 1}
    assert signs_and_verifies(after, "acme")


def test_rewrap_deletes_a_pooled_key_that_no_longer_opens(engine: Engine, clock: FakeClock) -> None:
    """Its master key is gone (every realm key opened): it is of no use, and the pool refills."""
    gone, old, new = (secrets.token_bytes(32) for _ in range(3))
    service_with(engine, clock, old).create_realm("acme", algo="rs256")
    service_with(engine, clock, gone).fill_pool(1)
    assert service_with(engine, clock, old).pool_counts() == {RS256: 1}
    both = service_with(engine, clock, new, old)
    assert both.rewrap() == 1  # the realm's key
    assert both.pool_counts() == {}
