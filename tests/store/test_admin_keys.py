"""Admin API keys on each database backend: only the public half is stored."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from worker.core.errors import InvalidInput, NotFound
from worker.service import Service
from worker.store.admin_keys import AdminKeys, fingerprint, is_admin_key_id
from worker.store.db import transaction
from worker.store.models import AdminKey


@pytest.fixture
def admin_keys(service: Service) -> AdminKeys:
    return AdminKeys(service.sessions, service.clock)


def test_create_returns_the_private_key_once_and_stores_only_the_public_half(
    admin_keys: AdminKeys,
) -> None:
    view, private_pem = admin_keys.create()
    assert private_pem is not None and private_pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert is_admin_key_id(view["id"])
    assert set(view) == {"id", "object", "fingerprint", "public_key", "scopes", "created_at"}
    assert view["scopes"] == ["admin"]  # what a key made without scopes may do: everything
    private = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with transaction(admin_keys.sessions, read_only=True) as session:
        (row,) = session.scalars(select(AdminKey))
        assert row.public_pem == public.decode()
        assert "PRIVATE" not in row.public_pem
    assert admin_keys.public_pem(view["id"]) == public.decode()
    assert view["fingerprint"] == fingerprint(public.decode())
    assert view["created_at"] == "2026-01-01T00:00:00Z"  # the service's (fake) clock


def test_list_get_and_delete(admin_keys: AdminKeys) -> None:
    first, _ = admin_keys.create()
    second, _ = admin_keys.create()
    assert {v["id"] for v in admin_keys.list()} == {first["id"], second["id"]}
    assert admin_keys.get(first["id"]) == first
    assert admin_keys.delete(first["id"]) == first
    assert admin_keys.public_pem(first["id"]) is None
    assert [v["id"] for v in admin_keys.list()] == [second["id"]]
    with pytest.raises(NotFound):
        admin_keys.delete(first["id"])
    with pytest.raises(NotFound):
        admin_keys.get("aky_nope")


def test_lookups_of_garbage_kids_never_reach_the_database(admin_keys: AdminKeys) -> None:
    for kid in ["", "x", "aky_" + "a" * 40, "aky_\x00", "jky_0vRHaJyOFdkV3QVJpUJqJQ", "aky_ä"]:
        assert admin_keys.public_pem(kid) is None
        with pytest.raises(NotFound):
            admin_keys.delete(kid)


def test_a_public_key_made_elsewhere_can_be_registered(admin_keys: AdminKeys) -> None:
    private = rsa.generate_private_key(65537, 3072)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    view, private_pem = admin_keys.create(pem.decode())
    assert private_pem is None
    assert admin_keys.public_pem(view["id"]) == pem.decode()


def test_only_rsa_public_keys_of_2048_bits_or_more_register(admin_keys: AdminKeys) -> None:
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    small = (
        rsa.generate_private_key(65537, 1024)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for text, words in [
        (ec_pem.decode(), "must be an RSA key"),
        (small.decode(), "too short"),
        ("not a key", "not a valid PEM"),
        ("x" * 20000, "too large"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            admin_keys.create(text)
    assert admin_keys.list() == []


def test_scopes_are_checked_stored_and_read_with_the_public_key(admin_keys: AdminKeys) -> None:
    realm = "rl_0v1zTHXhtNgmDaXaDYSAqx"
    scopes = [f"realm:{realm}:sign", "realms:read", f"realm:{realm}:sign"]
    view, _ = admin_keys.create(scopes=scopes)
    assert view["scopes"] == ["realm:rl_0v1zTHXhtNgmDaXaDYSAqx:sign", "realms:read"]
    assert admin_keys.get(view["id"])["scopes"] == view["scopes"]
    pem = admin_keys.public_pem(view["id"])
    assert admin_keys.admin_key(view["id"]) == (pem, view["scopes"])
    assert admin_keys.admin_key("aky_0vRHaJyOFdkV3QVJpUJqJQ") is None
    for bad in [[], ["root"], ["realm:rl_x:admin"], ["admin; DROP TABLE"], "admin", [1]]:
        with pytest.raises(InvalidInput):
            admin_keys.create(scopes=bad)  # type: ignore[arg-type]
    assert [v["id"] for v in admin_keys.list()] == [view["id"]]  # nothing made when refused


def test_pages_in_id_order(admin_keys: AdminKeys) -> None:
    made = sorted(admin_keys.create()[0]["id"] for _ in range(3))
    more, first = admin_keys.page(max_results=2, direction="asc")
    assert more and [v["id"] for v in first] == made[:2]
    more, rest = admin_keys.page(after=made[1], max_results=2, direction="asc")
    assert not more and [v["id"] for v in rest] == made[2:]
    assert [v["id"] for v in admin_keys.page()[1]] == made[::-1]
