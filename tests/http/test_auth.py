"""Admin authentication over real HTTP: a plain RS256 admin token (`kid` header, `aud` list,
`iat`, `exp`) works, and every refusal is a 401 with
`WWW-Authenticate: Bearer error="invalid_token"` that says why."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.http.conftest import Api
from tests.support.live import AUDIENCE, admin_token, b64url, unsigned
from worker.core import ids

LIST = "/v1/jwt_keys"


@pytest.fixture
def api(shared_api: Api) -> Api:
    """Nothing here changes the deployment but admin keys of its own: one server per module."""
    return shared_api


def refused(response: httpx.Response, why: str) -> None:
    """A 401 invalid_token refusal whose description contains `why`."""
    assert response.status_code == 401, response.text
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="'), challenge
    assert why in challenge, challenge
    assert response.json()["errors"][0].startswith("Unauthorized")


def call(api: Api, token: str) -> httpx.Response:
    return api.anon.get(LIST, headers=api.with_token(token))


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


# -- accepted --------------------------------------------------------------------------------


def test_the_documented_admin_token_is_accepted_unchanged(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "private-key.pem").write_text(api.private_pem)
    monkeypatch.chdir(tmp_path)
    KID = api.kid  # the name docs/http-api.md uses

    # -- the PyJWT example from docs/http-api.md, unchanged --
    private_key = open("private-key.pem").read()  # noqa: SIM115
    now = int(time.time())
    payload = {"aud": [AUDIENCE], "iat": now, "exp": now + 300}
    token = jwt.encode(payload, private_key, "RS256", headers={"kid": KID})
    # -- then: Authorization: Bearer <token>

    response = api.anon.get(LIST, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.json() == {"more_results": False, "collection": []}


def test_aud_as_a_plain_string_is_accepted(api: Api) -> None:
    assert call(api, api.token(aud=AUDIENCE)).status_code == 200


def test_aud_list_with_other_audiences_too_is_accepted(api: Api) -> None:
    assert call(api, api.token(aud=["other", AUDIENCE])).status_code == 200


def test_iat_slightly_ahead_within_the_clock_skew_is_accepted(api: Api) -> None:
    assert call(api, api.token(iat_offset=30)).status_code == 200


def test_a_lifetime_of_exactly_the_maximum_is_accepted(api: Api) -> None:
    assert call(api, api.token(lifetime=3600)).status_code == 200


def test_the_scheme_is_case_insensitive(api: Api) -> None:
    response = api.anon.get(LIST, headers={"Authorization": f"bearer {api.token()}"})
    assert response.status_code == 200


def test_two_admin_keys_are_valid_at_once_and_deleting_one_stops_only_it(api: Api) -> None:
    old_kid, old_pem = api.new_admin_key()
    new_kid, new_pem = api.new_admin_key()
    old, new = admin_token(old_pem, old_kid), admin_token(new_pem, new_kid)
    assert call(api, old).status_code == 200
    assert call(api, new).status_code == 200
    api.admin_keys.delete(old_kid)
    refused(call(api, old), "unknown kid")
    assert call(api, new).status_code == 200


# -- no credentials --------------------------------------------------------------------------


def test_no_authorization_header_is_a_bare_bearer_challenge(api: Api) -> None:
    response = api.anon.get(LIST)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="keyrotor-admin"'
    assert response.json() == {"errors": ["Unauthorized"]}


def test_another_scheme_is_a_bare_bearer_challenge(api: Api) -> None:
    response = api.anon.get(LIST, headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert response.status_code == 401
    assert "error=" not in response.headers["WWW-Authenticate"]


def test_every_v1_route_needs_the_token(api: Api) -> None:
    for method, path in [
        ("GET", "/v1/jwt_keys/jky_x"),
        ("POST", "/v1/jwt_keys"),
        ("DELETE", "/v1/jwt_keys/jky_x"),
        ("GET", "/v1/realms"),
        ("POST", "/v1/realms"),
        ("GET", "/v1/realms/acme"),
        ("PUT", "/v1/realms/acme"),
        ("PATCH", "/v1/realms/acme"),
        ("DELETE", "/v1/realms/acme"),
    ]:
        assert api.anon.request(method, path).status_code == 401, (method, path)


# -- algorithms ------------------------------------------------------------------------------


def test_alg_none_is_refused(api: Api) -> None:
    now = int(time.time())
    token = unsigned(
        {"alg": "none", "typ": "JWT", "kid": api.kid},
        {"aud": [AUDIENCE], "iat": now, "exp": now + 300},
    )
    refused(call(api, token), "only RS256")


def test_hs256_with_the_rsa_public_key_as_the_secret_is_refused(api: Api) -> None:
    """The classic confusion attack: HMAC keyed with the (public) PEM the server holds."""
    public_pem = api.admin_keys.public_pem(api.kid)
    assert public_pem is not None
    now = int(time.time())
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": api.kid}).encode())
    body = b64url(json.dumps({"aud": [AUDIENCE], "iat": now, "exp": now + 300}).encode())
    signing_input = f"{header}.{body}".encode()
    signature = hmac.new(public_pem.encode(), signing_input, hashlib.sha256).digest()
    refused(call(api, f"{header}.{body}.{b64url(signature)}"), "only RS256")


def test_rs384_signed_by_the_admin_key_itself_is_refused(api: Api) -> None:
    refused(call(api, api.token(algorithm="RS384")), "only RS256")


def test_ps256_signed_by_the_admin_key_itself_is_refused(api: Api) -> None:
    refused(call(api, api.token(algorithm="PS256")), "only RS256")


def test_es256_is_refused(api: Api) -> None:
    token = jwt.encode(
        {"aud": [AUDIENCE], "iat": int(time.time()), "exp": int(time.time()) + 300},
        ec.generate_private_key(ec.SECP256R1()),
        "ES256",
        headers={"kid": api.kid},
    )
    refused(call(api, token), "only RS256")


def test_hs256_with_any_secret_is_refused(api: Api) -> None:
    token = jwt.encode(
        {"aud": [AUDIENCE], "iat": int(time.time()), "exp": int(time.time()) + 300},
        "a-secret-of-at-least-thirty-two-bytes!!",
        "HS256",
        headers={"kid": api.kid},
    )
    refused(call(api, token), "only RS256")


# -- kid -------------------------------------------------------------------------------------


def test_a_token_without_kid_is_refused(api: Api) -> None:
    refused(call(api, admin_token(api.private_pem, None)), "kid header is required")


def test_an_unknown_kid_is_refused(api: Api) -> None:
    refused(call(api, admin_token(api.private_pem, ids.admin_key_id())), "unknown kid")


def test_a_kid_that_is_no_admin_key_id_is_refused(api: Api) -> None:
    refused(call(api, admin_token(api.private_pem, "../../etc/passwd")), "unknown kid")


def test_a_deleted_kid_is_refused_at_once(api: Api) -> None:
    kid, pem = api.new_admin_key()
    token = admin_token(pem, kid)
    assert call(api, token).status_code == 200
    api.admin_keys.delete(kid)
    refused(call(api, token), "unknown kid")


# -- aud -------------------------------------------------------------------------------------


def test_a_token_without_aud_is_refused(api: Api) -> None:
    refused(call(api, api.token(drop=("aud",))), "aud claim is required")


def test_a_wrong_aud_string_is_refused(api: Api) -> None:
    refused(call(api, api.token(aud="someone-else")), "aud does not include")


def test_an_aud_list_without_ours_is_refused(api: Api) -> None:
    refused(call(api, api.token(aud=["a", "b"])), "aud does not include")


def test_an_aud_that_is_neither_string_nor_list_is_refused(api: Api) -> None:
    refused(call(api, api.token(aud={"aud": AUDIENCE})), "aud claim must be")


# -- exp, iat, nbf ---------------------------------------------------------------------------


def test_a_token_without_exp_is_refused(api: Api) -> None:
    refused(call(api, api.token(drop=("exp",))), "exp claim is required")


def test_a_token_without_iat_is_refused(api: Api) -> None:
    refused(call(api, api.token(drop=("iat",))), "iat claim is required")


def test_iat_in_the_future_beyond_the_clock_skew_is_refused(api: Api) -> None:
    refused(call(api, api.token(iat_offset=120)), "iat is in the future")


def test_a_lifetime_over_the_maximum_is_refused(api: Api) -> None:
    refused(call(api, api.token(lifetime=3601)), "token lifetime (exp - iat) is longer than 1h")


def test_an_expired_token_is_refused(api: Api) -> None:
    refused(call(api, api.token(iat_offset=-600, lifetime=300)), "token has expired")


def test_exp_before_iat_is_refused(api: Api) -> None:
    refused(call(api, api.token(lifetime=-10)), "exp must be later than iat")


def test_a_non_numeric_exp_is_refused(api: Api) -> None:
    refused(call(api, api.token(extra={"exp": "tomorrow"})), "exp claim must be a number")


def test_a_huge_integer_exp_is_refused(api: Api) -> None:
    refused(call(api, api.token(extra={"exp": 10**400})), "exp claim must be a number")


def test_nbf_in_the_future_is_refused(api: Api) -> None:
    refused(call(api, api.token(extra={"nbf": int(time.time()) + 600})), "nbf")


# -- malformed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token", ["abc", "a.b.c", "a.b", "....", "eyJhbGciOiJSUzI1NiJ9.e30.", "é.é.é"]
)
def test_a_malformed_token_is_refused(api: Api, token: str) -> None:
    response = api.anon.get(LIST, headers={b"Authorization": f"Bearer {token}".encode()})
    refused(response, "")


def test_an_empty_bearer_token_is_refused(api: Api) -> None:
    refused(api.anon.get(LIST, headers={"Authorization": "Bearer"}), "malformed token")


def test_a_tampered_payload_fails_the_signature(api: Api) -> None:
    header, _, signature = api.token().split(".")
    now = int(time.time())
    forged = b64url(json.dumps({"aud": [AUDIENCE], "iat": now, "exp": now + 300, "x": 1}).encode())
    refused(call(api, f"{header}.{forged}.{signature}"), "signature verification failed")


def test_an_oversized_token_is_refused_before_parsing(api: Api) -> None:
    token = api.token(extra={"padding": "x" * 9000})
    refused(call(api, token), "token is too large")


# -- header members that point at other keys are ignored --------------------------------------


def test_jku_and_x5u_headers_are_ignored_on_a_genuine_token(api: Api) -> None:
    token = api.token(
        headers={"jku": "https://attacker.example/jwks.json", "x5u": "https://attacker.example/c"}
    )
    assert call(api, token).status_code == 200


def test_an_attacker_key_in_a_jwk_header_is_refused(api: Api) -> None:
    attacker = rsa_key()
    public = attacker.public_key().public_numbers()
    jwk = {
        "kty": "RSA",
        "n": b64url(public.n.to_bytes(256, "big")),
        "e": b64url(public.e.to_bytes(3, "big")),
    }
    pem = attacker.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    token = admin_token(pem, api.kid, headers={"jwk": jwk})
    refused(call(api, token), "signature verification failed")


def test_an_attacker_key_behind_jku_and_x5u_is_refused(api: Api) -> None:
    token = admin_token(
        rsa_key(),
        api.kid,
        headers={"jku": "https://attacker.example/jwks.json", "x5u": "https://attacker.example/c"},
    )
    refused(call(api, token), "signature verification failed")
