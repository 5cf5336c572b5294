"""`/v1/admin_keys` over real HTTP: registering the public half of a key pair made elsewhere
(the API never makes or shows a private key), the object and its listing, deletion that stops
the key's tokens at once, and refusals in words."""

from __future__ import annotations

import re
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.http.conftest import Api, admin_key_pair
from tests.support.live import admin_token
from worker.http import models

ADMIN_KEY_ID = re.compile(r"aky_[0-9A-Za-z]{22}")
FIELDS = list(models.AdminKey.model_fields)


def register(api: Api, **fields: Any) -> httpx.Response:
    body = {"public_key": admin_key_pair()[1], **fields}
    return api.http.post("/v1/admin_keys", json={"admin_key": body})


def test_register_get_list_and_delete(api: Api) -> None:
    response = register(api, scopes=["realms:read", "realms:read"])
    assert response.status_code == 201, response.text
    made = response.json()
    assert (
        list(made)
        == FIELDS
        == ["id", "object", "fingerprint", "public_key", "scopes", "created_at"]
    )
    assert ADMIN_KEY_ID.fullmatch(made["id"]) and made["object"] == "admin_key"
    assert made["scopes"] == ["realms:read"]
    assert made["public_key"] == admin_key_pair()[1]
    assert made["fingerprint"].startswith("SHA256:")
    assert api.http.get(f"/v1/admin_keys/{made['id']}").json() == made

    listing = api.http.get("/v1/admin_keys").json()
    assert listing["more_results"] is False
    assert {v["id"] for v in listing["collection"]} == {api.kid, made["id"]}
    assert "PRIVATE" not in str(listing)
    ids = sorted([api.kid, made["id"]])
    first = api.http.get("/v1/admin_keys", params={"direction": "asc", "max_results": 1}).json()
    assert (first["more_results"], [v["id"] for v in first["collection"]]) == (True, ids[:1])
    rest = api.http.get(
        "/v1/admin_keys", params={"direction": "asc", "max_results": 1, "after": ids[0]}
    ).json()
    assert (rest["more_results"], [v["id"] for v in rest["collection"]]) == (False, ids[1:])

    deleted = api.http.delete(f"/v1/admin_keys/{made['id']}")
    assert (deleted.status_code, deleted.json()) == (202, made)
    assert api.http.get(f"/v1/admin_keys/{made['id']}").json() == {"errors": ["Not found"]}
    assert api.http.delete(f"/v1/admin_keys/{made['id']}").status_code == 404


def test_scopes_default_to_admin_and_a_registered_key_signs_tokens_at_once(api: Api) -> None:
    assert register(api).json()["scopes"] == ["admin"]
    realm = api.realm("acme")
    private_pem = admin_key_pair()[0]
    kid = register(api, scopes=[f"realm:{realm['id']}:admin"]).json()["id"]
    headers = api.with_token(admin_token(private_pem, kid))
    assert api.anon.get("/v1/realms/acme", headers=headers).status_code == 200
    assert api.anon.get("/v1/admin_keys", headers=headers).status_code == 403

    deleted = api.http.delete(f"/v1/admin_keys/{kid}")
    assert deleted.status_code == 202
    refused = api.anon.get("/v1/realms/acme", headers=headers)
    assert refused.status_code == 401  # a deleted key is unknown, not forbidden


def test_a_key_with_admin_keys_manages_keys_and_nothing_else(api: Api) -> None:
    private_pem = admin_key_pair()[0]
    kid = register(api, scopes=["admin-keys"]).json()["id"]
    headers = api.with_token(admin_token(private_pem, kid))
    made = api.anon.post(
        "/v1/admin_keys",
        json={"admin_key": {"public_key": admin_key_pair()[1], "scopes": ["realms:read"]}},
        headers=headers,
    )
    assert made.status_code == 201, made.text
    assert api.anon.get(f"/v1/admin_keys/{made.json()['id']}", headers=headers).status_code == 200
    assert api.anon.get("/v1/realms", headers=headers).json()["collection"] == []
    response = api.anon.post("/v1/realms", json={"realm": {"name": "x"}}, headers=headers)
    assert (response.status_code, response.json()) == (403, {"errors": ["Forbidden"]})


def test_refusals_in_words(api: Api) -> None:
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"admin_key": {}}, "Public key can't be blank"),
        ({"admin_key": {"public_key": "nope"}}, "Public key is not a valid PEM public key"),
        ({"admin_key": {"public_key": ec_pem}}, "Public key must be an RSA key"),
        ({"admin_key": {"public_key": admin_key_pair()[0]}}, "not a valid PEM public key"),
        ({"admin_key": {"public_key": admin_key_pair()[1], "scopes": []}}, "can't be empty"),
        ({"admin_key": {"public_key": admin_key_pair()[1], "scopes": None}}, "Scopes must be"),
        ({"admin_key": {"public_key": admin_key_pair()[1], "scopes": ["root"]}}, "'root' is not"),
        (
            {"admin_key": {"public_key": admin_key_pair()[1], "scopes": ["realm:rl_x:admin"]}},
            "is not one of",
        ),
        ({"admin_key": {"public_key": admin_key_pair()[1], "private_key": "x"}}, "not a known"),
    ]
    before = api.http.get("/v1/admin_keys").json()
    for body, words in cases:
        response = api.http.post("/v1/admin_keys", json=body)
        assert response.status_code == 422, (body, response.text)
        (message,) = response.json()["errors"]
        assert words in message, (body, message)
        assert "PRIVATE KEY" not in response.text
    assert api.http.get("/v1/admin_keys").json() == before  # nothing registered
    assert api.http.get("/v1/admin_keys/aky_0vRHaJyOFdkV3QVJpUJqJQ").status_code == 404
    assert api.http.get("/v1/admin_keys/nope").status_code == 404
    assert api.http.get("/v1/admin_keys", params={"after": "x\x01"}).status_code == 422
    for method, path in [
        ("GET", "/v1/admin_keys"),
        ("POST", "/v1/admin_keys"),
        ("GET", f"/v1/admin_keys/{api.kid}"),
        ("DELETE", f"/v1/admin_keys/{api.kid}"),
    ]:
        assert api.anon.request(method, path).status_code == 401
