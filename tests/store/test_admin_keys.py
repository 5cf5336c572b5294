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
    assert set(view) == {"id", "object", "fingerprint", "public_key", "created_at"}
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
