"""`POST /v1/realms/<realm>/tokens` over real HTTP: tokens of every algorithm that verify with
the realm's JWKS (or secret), the claims the server sets and refuses, the body limit, the sign
scope, and a revocation made by any process applying to the very next token."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.http.conftest import Api
from tests.support.live import LiveServer, admin_token
from worker import runtime
from worker.core import keys
from worker.http import tokens
from worker.http.app import create_app
from worker.publish.jwks import redis_key

ALGOS = ("es256", "rs256", "eddsa", "hs256")


def sign(
    api: Api, realm: str, headers: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    """POST a token request; with `headers`, instead of the deployment's admin key."""
    client = api.anon if headers is not None else api.http
    return client.post(f"/v1/realms/{realm}/tokens", json={"token": fields}, headers=headers)


def signed(api: Api, realm: str, **fields: Any) -> dict[str, Any]:
    response = sign(api, realm, **fields)
    assert response.status_code == 201, response.text
    return dict(response.json())


def refusal(response: httpx.Response, status: int) -> str:
    """The one line of a refusal with `status`."""
    assert response.status_code == status, response.text
    (line,) = response.json()["errors"]
    assert "\n" not in line
    return str(line)


def active_kid(api: Api, realm_id: str) -> str:
    page = api.http.get("/v1/jwt_keys", params={"realm_id": realm_id}).json()
    (key,) = [key for key in page["collection"] if key["state"] == "active"]
    return str(key["id"])


def verifying_key(api: Api, realm: dict[str, Any], kid: str) -> Any:
    """The key a verifier has: the realm's JWKS member, or (hs256) the secret the API shows."""
    if realm["algo"] == "hs256":
        return api.http.get(f"/v1/jwt_keys/{kid}").json()["key"].encode()
    document = api.anon.get(f"/realms/{realm['id']}/.well-known/jwks.json").json()
    return jwt.PyJWKSet.from_dict(document)[kid].key


def test_signs_with_the_realms_active_key_for_every_algorithm(api: Api) -> None:
    for algo in ALGOS:
        realm = api.realm(f"realm-{algo}", algo=algo, max_token_ttl="1h")
        before = int(time.time())
        answer = signed(api, realm["name"], claims={"sub": "user-1", "n": 7}, ttl="5m")
        token = answer["token"]
        assert answer["kid"] == jwt.get_unverified_header(token)["kid"]
        assert answer["kid"] == active_kid(api, realm["id"])
        issuer = f"{api.stack.settings.issuer_base}/realms/{realm['name']}"
        claims = jwt.decode(
            token,
            verifying_key(api, realm, answer["kid"]),
            algorithms=[keys.JWT_ALG[algo]],
            issuer=issuer,
        )
        assert jwt.get_unverified_header(token)["alg"] == keys.JWT_ALG[algo]
        assert claims["sub"] == "user-1" and claims["n"] == 7
        assert before <= claims["iat"] <= int(time.time())
        assert claims["exp"] == claims["iat"] + 300
        assert answer["expires_at"] == time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims["exp"])
        )
        assert set(claims) == {"sub", "n", "iat", "exp", "iss", "jti"}
    again = signed(api, "realm-es256")
    first = signed(api, "realm-es256")
    assert (
        jwt.decode(again["token"], options={"verify_signature": False})["jti"]
        != jwt.decode(first["token"], options={"verify_signature": False})["jti"]
    )


def test_by_id_or_name_and_an_unknown_realm_is_404(api: Api) -> None:
    realm = api.realm("acme")
    assert signed(api, realm["id"])["kid"] == signed(api, "acme")["kid"]
    assert refusal(sign(api, "nowhere"), 404) == "Not found"
    assert refusal(sign(api, "rl_0v1zTHXhtNgmDaXaDYSAqx"), 404) == "Not found"
    assert sign(api, "acme", headers={}).status_code == 401  # no admin token at all


def test_ttl_defaults_to_the_realms_max_and_may_not_exceed_it(api: Api) -> None:
    api.realm("acme", max_token_ttl="1h")
    claims = jwt.decode(signed(api, "acme")["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600
    assert signed(api, "acme", ttl=60)["token"]
    assert signed(api, "acme", ttl="1h")["token"]
    line = refusal(sign(api, "acme", ttl="2h"), 422)
    assert line == "Ttl (2h) is longer than the realm's max token ttl (1h)"
    assert refusal(sign(api, "acme", ttl="0s"), 422) == "Ttl must be positive"
    assert "Ttl must be" in refusal(sign(api, "acme", ttl="soon"), 422)
    assert "Ttl must be" in refusal(sign(api, "acme", ttl=[5]), 422)


@pytest.mark.parametrize("name", ["exp", "iat", "nbf", "iss", "jti"])
def test_claims_may_not_set_what_the_server_sets(api: Api, name: str) -> None:
    api.realm("acme")
    line = refusal(sign(api, "acme", claims={"sub": "u", name: 1}), 422)
    assert line == f"Claims must not set {name}: the server does"


def test_claim_refusals_name_every_server_claim_at_once_and_check_the_shape(api: Api) -> None:
    api.realm("acme")
    both = refusal(sign(api, "acme", claims={"iss": "me", "exp": 1, "sub": "u"}), 422)
    assert both == "Claims must not set exp, iss: the server does"
    assert refusal(sign(api, "acme", claims=["sub"]), 422) == "Claims must be an object"
    assert refusal(sign(api, "acme", claims="sub"), 422) == "Claims must be an object"
    assert refusal(sign(api, "acme", scopes=["x"]), 422) == "Scopes is not a known field"
    assert refusal(api.http.post("/v1/realms/acme/tokens", json={}), 422) == (
        "Token can't be blank"
    )


def test_the_audience_is_given_once(api: Api) -> None:
    api.realm("acme")
    one = signed(api, "acme", audience="orders")["token"]
    assert jwt.decode(one, options={"verify_signature": False})["aud"] == "orders"
    many = signed(api, "acme", audience=["orders", "billing"])["token"]
    assert jwt.decode(many, options={"verify_signature": False})["aud"] == ["orders", "billing"]
    in_claims = signed(api, "acme", claims={"aud": "orders"})["token"]
    assert jwt.decode(in_claims, options={"verify_signature": False})["aud"] == "orders"
    line = refusal(sign(api, "acme", claims={"aud": "a"}, audience="b"), 422)
    assert line == "Give the audience once: as audience or as the aud claim"
    assert "Audience must be" in refusal(sign(api, "acme", audience=""), 422)
    assert "Audience must be" in refusal(sign(api, "acme", audience=["a", 3]), 422)
    assert "The aud claim must be" in refusal(sign(api, "acme", claims={"aud": 3}), 422)


def test_a_body_over_8_kib_is_refused_in_one_line(api: Api) -> None:
    api.realm("acme")
    assert signed(api, "acme", claims={"pad": "x" * 7000})["token"]
    line = refusal(sign(api, "acme", claims={"pad": "x" * 9000}), 413)
    assert line == "Body is too large: at most 8 KiB"

    def chunks() -> Any:  # no Content-Length: the limit holds for a streamed body too
        yield b'{"token": {"claims": {"pad": "'
        for _ in range(10):
            yield b"x" * 1024
        yield b'"}}}'

    streamed = api.http.post(
        "/v1/realms/acme/tokens", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert refusal(streamed, 413) == "Body is too large: at most 8 KiB"


# -- revocation: the very next token ---------------------------------------------------------------


def test_a_revocation_through_the_api_applies_to_the_next_token(api: Api) -> None:
    realm = api.realm("acme")
    first = signed(api, "acme")["kid"]
    revoked = api.http.delete(f"/v1/jwt_keys/{first}", params={"force": "true"})
    assert revoked.status_code == 202, revoked.text
    replacement = active_kid(api, realm["id"])
    assert replacement != first
    assert signed(api, "acme")["kid"] == replacement
    expired = api.http.delete(f"/v1/jwt_keys/{replacement}")  # expire: replaced at once too
    assert expired.status_code == 202, expired.text
    assert signed(api, realm["id"])["kid"] == active_kid(api, realm["id"]) != replacement


def test_a_revocation_by_another_process_applies_to_the_next_token(api: Api) -> None:
    """As the CLI or a worker revokes: the service's change, then its publication."""
    realm = api.realm("acme")
    first = signed(api, "acme")["kid"]
    api.stack.service.delete_key(first, force=True)
    runtime.relay(api.stack.settings, api.stack.service, api.stack.redis).after_commit(realm["id"])
    second = signed(api, "acme")["kid"]
    assert second == active_kid(api, realm["id"]) != first
    api.stack.service.rotate("acme", force=True)
    runtime.relay(api.stack.settings, api.stack.service, api.stack.redis).after_commit(realm["id"])
    assert signed(api, "acme")["kid"] == active_kid(api, realm["id"]) != second


def test_without_a_published_copy_the_database_decides(api: Api) -> None:
    realm = api.realm("acme")
    first = signed(api, "acme")["kid"]
    api.stack.redis.delete(redis_key(realm["id"]))  # no copy: Redis flushed, say
    api.stack.service.delete_key(first, force=True)  # and nothing published after it
    assert signed(api, "acme")["kid"] == active_kid(api, realm["id"]) != first


def test_with_redis_unreachable_the_database_decides_every_token(api: Api) -> None:
    realm = api.realm("acme")
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    app = create_app(api.stack.settings, api.stack.service, redis_client=dead)
    with LiveServer(app) as server, httpx.Client(base_url=server.url) as client:
        bearer = {"Authorization": f"Bearer {api.token()}"}
        first = client.post("/v1/realms/acme/tokens", json={"token": {}}, headers=bearer)
        assert first.status_code == 201, first.text
        api.stack.service.delete_key(first.json()["kid"], force=True)
        second = client.post("/v1/realms/acme/tokens", json={"token": {}}, headers=bearer)
        assert second.status_code == 201, second.text
        assert second.json()["kid"] == active_kid(api, realm["id"]) != first.json()["kid"]


def test_a_change_whose_publication_failed_reaches_the_signer_within_a_second(api: Api) -> None:
    realm = api.realm("acme")
    first = signed(api, "acme")["kid"]
    api.stack.service.delete_key(first, force=True)  # committed; its publication never came
    time.sleep(tokens.REREAD_SECONDS + 0.1)
    assert signed(api, "acme")["kid"] == active_kid(api, realm["id"]) != first


def test_a_deleted_realm_is_404_and_its_name_may_be_taken_again(api: Api) -> None:
    old = api.realm("acme")
    signed(api, "acme")
    assert api.http.delete(f"/v1/realms/{old['id']}").status_code == 202
    assert refusal(sign(api, "acme"), 404) == "Not found"
    assert refusal(sign(api, old["id"]), 404) == "Not found"
    new = api.realm("acme")
    assert signed(api, "acme")["kid"] == active_kid(api, new["id"])


# -- scopes ----------------------------------------------------------------------------------------


def test_a_sign_scope_signs_for_its_realm_only(api: Api) -> None:
    a, b = api.realm("realm-a"), api.realm("realm-b")
    view, private_pem = api.admin_keys.create(scopes=[f"realm:{a['id']}:sign"])
    assert private_pem is not None
    bearer = {"Authorization": f"Bearer {admin_token(private_pem, view['id'])}"}
    answer = sign(api, "realm-a", headers=bearer, claims={"sub": "u"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["kid"] == active_kid(api, a["id"])
    assert refusal(sign(api, "realm-b", headers=bearer), 403) == "Forbidden"
    assert refusal(sign(api, b["id"], headers=bearer), 403) == "Forbidden"
    assert refusal(api.anon.get(f"/v1/realms/{a['id']}", headers=bearer), 403) == "Forbidden"
    # The listing shows only what a key may read; a sign scope reads nothing.
    listing = api.anon.get("/v1/realms", headers=bearer)
    assert listing.status_code == 403 or listing.json()["collection"] == [], listing.text
