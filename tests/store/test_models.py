"""What the tables themselves guarantee, whatever the code above them does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from worker.core.sealing import MasterKeys
from worker.service import Service
from worker.store.models import JwtKey, Realm

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def add_realm(
    session: Session, realm_id: str = "rl_0v1zTHXhtNgmDaXaDYSAqx", **fields: Any
) -> Realm:
    values: dict[str, Any] = {
        "id": realm_id,
        "name": realm_id.removeprefix("rl_"),
        "algo": "es256",
        "rsa_bits": 2048,
        "rotation_period_s": 30 * 86400,
        "prepublish_s": 3600,
        "grace_s": 6 * 3600,
        "max_token_ttl_s": 3600,
        "jwks_version": 0,
        "next_rotation_at": T0,
        "created_at": T0,
        "updated_at": T0,
        **fields,
    }
    realm = Realm(**values)
    session.add(realm)
    session.flush()
    return realm


def add_key(session: Session, realm_id: str, key_id: str, state: str) -> JwtKey:
    key = JwtKey(
        id=key_id,
        realm_id=realm_id,
        algo="es256",
        use="sign",
        state=state,
        public_pem=None,
        sealed_secret=b"sealed",
        created_at=T0,
    )
    session.add(key)
    session.flush()
    return key


def as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


# --- one active key per realm ---------------------------------------------------------------


def test_a_second_active_key_in_a_realm_is_refused_by_the_database(engine: Engine) -> None:
    with Session(engine) as session:
        add_realm(session)
        add_key(session, "rl_0v1zTHXhtNgmDaXaDYSAqx", "jky_a", "active")
        with pytest.raises(IntegrityError):
            add_key(session, "rl_0v1zTHXhtNgmDaXaDYSAqx", "jky_b", "active")


def test_a_second_active_key_is_refused_by_raw_sql_too(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        add_realm(session)
        add_key(session, "rl_0v1zTHXhtNgmDaXaDYSAqx", "jky_a", "active")
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jwt_keys (id, realm_id, algo, use, state, sealed_secret, created_at)"
                " VALUES ('jky_b', 'rl_0v1zTHXhtNgmDaXaDYSAqx', 'es256', 'sign', 'active',"
                " :secret, '2026-01-01 00:00:00')"
            ),
            {"secret": b"sealed"},
        )


def test_many_expired_and_pending_keys_and_one_active_per_realm_are_fine(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        for n, realm_id in enumerate(("rl_0v1zTHXhtNgmDaXaDYSAqx", "rl_1v1zTHXhtNgmDaXaDYSAqx")):
            add_realm(session, realm_id)
            add_key(session, realm_id, f"jky_active{n}", "active")
            add_key(session, realm_id, f"jky_pending{n}", "pending")
            add_key(session, realm_id, f"jky_old{n}a", "expired")
            add_key(session, realm_id, f"jky_old{n}b", "expired")

    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM jwt_keys")).scalar_one() == 8


def test_an_active_key_can_be_expired_then_another_activated(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        add_realm(session)
        old = add_key(session, "rl_0v1zTHXhtNgmDaXaDYSAqx", "jky_a", "active")
        new = add_key(session, "rl_0v1zTHXhtNgmDaXaDYSAqx", "jky_b", "pending")
        old.state = "expired"
        session.flush()
        new.state = "active"


# --- no key material in plaintext -------------------------------------------------------------


def test_the_database_holds_no_key_material_in_plaintext(
    service: Service, engine: Engine, master_keys: MasterKeys
) -> None:
    for algo in ("hs256", "rs256", "es256", "eddsa"):
        service.create_realm(f"realm-{algo}", algo=algo)
    secret = service.list_keys(realm="realm-hs256").collection[0].key
    assert secret.startswith("jsk_")

    with engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM jwt_keys")).all()
    assert len(rows) == 4
    for row in rows:
        for value in row:
            assert b"PRIVATE KEY" not in as_bytes(value)
            assert secret.encode() not in as_bytes(value)
            assert b"jsk_" not in as_bytes(value)


def test_the_sealed_blob_opens_to_the_secret_or_the_matching_private_key(
    service: Service, engine: Engine, master_keys: MasterKeys
) -> None:
    for algo in ("hs256", "es256", "eddsa"):
        service.create_realm(f"realm-{algo}", algo=algo)
    views = {k.id: k for k in service.list_keys().collection}

    with Session(engine) as session:
        rows = list(session.scalars(select(JwtKey)))
    assert len(rows) == 3
    for row in rows:
        opened = master_keys.open(row.sealed_secret, realm_id=row.realm_id, key_id=row.id)
        if row.algo == "hs256":
            assert opened.decode() == views[row.id].key
            continue
        private = serialization.load_pem_private_key(opened, password=None)
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert public_pem.decode() == row.public_pem == views[row.id].key


# --- UTCDateTime ------------------------------------------------------------------------------


def test_datetimes_come_back_aware_utc_whatever_zone_went_in(engine: Engine) -> None:
    paris_winter = timezone(timedelta(hours=1))
    moment = datetime(2026, 1, 1, 11, 30, tzinfo=paris_winter)
    with Session(engine) as session, session.begin():
        add_realm(session, created_at=moment)

    with Session(engine) as session:
        realm = session.scalars(select(Realm)).one()
    assert realm.created_at == moment
    assert realm.created_at.tzinfo is UTC
    assert realm.created_at.hour == 10
    with engine.connect() as connection:
        raw = connection.execute(text("SELECT created_at FROM realms")).scalar_one()
    assert str(raw).startswith("2026-01-01 10:30:00")


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    with Session(engine) as session, pytest.raises(StatementError, match="naive datetime"):
        add_realm(session, created_at=datetime(2026, 1, 1))

    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM realms")).scalar_one() == 0


def test_naive_datetimes_are_refused_in_queries_too(engine: Engine) -> None:
    with Session(engine) as session, pytest.raises(StatementError, match="naive datetime"):
        session.execute(select(Realm).where(Realm.next_rotation_at <= datetime(2026, 1, 1)))
