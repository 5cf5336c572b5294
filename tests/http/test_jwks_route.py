"""The JWKS route over real HTTP: served from Redis or the database, ETag and 304, a max-age
that never outlives a scheduled change, CORS, and PyJWT's own client as the verifier."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.http.conftest import Api, serve
from tests.support.live import LiveServer
from worker.core.clock import utcnow
from worker.http.app import create_app
from worker.http.context import Document
from worker.http.jwks_route import _read_once, matches, max_age
from worker.publish.jwks import publish_realm, redis_key
from worker.service import Service

KEYROTOR = Path(sys.executable).parent / "keyrotor"


def jwks_path(realm: str) -> str:
    return f"/realms/{realm}/.well-known/jwks.json"


def cache_seconds(response: httpx.Response) -> int:
    control = response.headers["Cache-Control"]
    found = re.fullmatch(r"public, max-age=(\d+)", control)
    assert found, control
    return int(found.group(1))


def test_serves_the_published_set_with_etag_cache_control_and_cors(api: Api) -> None:
    realm = api.realm()
    response = api.anon.get(jwks_path(realm["id"]))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == api.stack.service.jwks(realm["id"])
    assert response.headers["ETag"].startswith('"')
    assert cache_seconds(response) == 300
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    (member,) = response.json()["keys"]
    assert set(member) == {"kty", "kid", "use", "alg", "crv", "x", "y"}


def test_head_answers_the_get_headers_without_a_body(api: Api) -> None:
    realm = api.realm()
    got = api.anon.get(jwks_path(realm["id"]))
    head = api.anon.head(jwks_path(realm["id"]))
    assert head.status_code == 200 and head.content == b""
    assert head.headers["ETag"] == got.headers["ETag"]
    assert head.headers["Content-Length"] == str(len(got.content))


def test_a_redis_copy_not_written_by_the_publisher_is_passed_over(api: Api) -> None:
    realm = api.realm()
    api.stack.redis.hset(redis_key(realm["id"]), "next_change_at", "2026-01-01T00:00:00")
    response = api.anon.get(jwks_path(realm["id"]))
    assert response.status_code == 200
    assert response.json() == api.stack.service.jwks(realm["id"])


def test_a_realm_name_works_in_place_of_its_id(api: Api) -> None:
    realm = api.realm("acme")
    by_id = api.anon.get(jwks_path(realm["id"]))
    for _ in range(2):  # the second time through the name cache and the Redis copy
        by_name = api.anon.get(jwks_path("acme"))
        assert by_name.status_code == 200
        assert by_name.content == by_id.content
        assert by_name.headers["ETag"] == by_id.headers["ETag"]


def test_a_matching_if_none_match_gets_304_without_a_body(api: Api) -> None:
    realm = api.realm()
    tag = api.anon.get(jwks_path(realm["id"])).headers["ETag"]
    for header in [tag, f"W/{tag}", f'"other", {tag}', "*"]:
        response = api.anon.get(jwks_path(realm["id"]), headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["ETag"] == tag
        assert cache_seconds(response) == 300
    stale = api.anon.get(jwks_path(realm["id"]), headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200


def test_the_etag_changes_when_the_key_set_does(api: Api) -> None:
    realm = api.realm()
    before = api.anon.get(jwks_path(realm["id"])).headers["ETag"]
    created = api.http.post("/v1/jwt_keys", json={"jwt_key": {"realm_id": "acme", "algo": "es256"}})
    assert created.status_code == 201
    after = api.anon.get(jwks_path(realm["id"]), headers={"If-None-Match": before})
    assert after.status_code == 200
    assert after.headers["ETag"] != before
    assert created.json()["id"] in {k["kid"] for k in after.json()["keys"]}


def test_unknown_realms_are_404(api: Api) -> None:
    for realm in ["nope", "rl_0v1zTHXhtNgmDaXaDYSAqx", "a%00b", "x" * 300, "%E2%80%8B"]:
        response = api.anon.get(jwks_path(realm))
        assert response.status_code == 404, realm
        assert response.json() == {"errors": ["Not found"]}


def test_the_redis_copy_is_what_is_served(api: Api) -> None:
    realm = api.realm()
    key = redis_key(realm["id"])
    api.stack.redis.hset(key, mapping={"document": '{"keys":[]}', "etag": '"from-redis"'})
    response = api.anon.get(jwks_path(realm["id"]))
    assert response.headers["ETag"] == '"from-redis"'
    assert response.json() == {"keys": []}


def test_without_a_redis_copy_the_database_answers_the_same(api: Api) -> None:
    realm = api.realm()
    published = api.anon.get(jwks_path(realm["id"]))
    api.stack.redis.delete(redis_key(realm["id"]))
    api.recent.clear()
    fallback = api.anon.get(jwks_path(realm["id"]))
    assert fallback.status_code == 200
    assert fallback.content == published.content
    assert fallback.headers["ETag"] == published.headers["ETag"]


def test_a_change_made_elsewhere_shows_once_the_recent_copy_lapses(api: Api) -> None:
    realm = api.realm()
    api.recent.seconds = 1.0  # (default 0.02 s) long enough to see the copy held
    first = api.anon.get(jwks_path(realm["id"])).headers["ETag"]
    api.stack.redis.hset(redis_key(realm["id"]), "etag", '"elsewhere"')  # as another publisher
    assert api.anon.get(jwks_path(realm["id"])).headers["ETag"] == first
    time.sleep(1.0)
    assert api.anon.get(jwks_path(realm["id"])).headers["ETag"] == '"elsewhere"'


def test_an_answer_from_the_recent_copy_is_the_same_answer(api: Api) -> None:
    realm = api.realm()
    api.recent.seconds = 60.0
    api.recent.clear()
    path = jwks_path(realm["id"])
    fetched = api.anon.get(path)  # read from Redis by the route
    api.stack.redis.hset(redis_key(realm["id"]), "etag", '"elsewhere"')  # unseen from memory
    remembered = api.anon.get(path)
    assert remembered.content == fetched.content
    for header in [
        "ETag",
        "Cache-Control",
        "Content-Type",
        "Content-Length",
        "Access-Control-Allow-Origin",
        "Access-Control-Expose-Headers",
    ]:
        assert remembered.headers[header] == fetched.headers[header], header
    tag = fetched.headers["ETag"]
    not_modified = api.anon.get(path, headers={"If-None-Match": tag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert "Content-Length" not in not_modified.headers
    head = api.anon.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(fetched.content))


def test_requests_that_miss_together_share_one_read(api: Api) -> None:
    realm = api.realm()
    app = create_app(api.stack.settings, api.stack.service, redis_client=api.stack.redis)
    ctx = app.state.keyrotor

    def reads() -> int:
        stats = api.stack.redis.info("commandstats").get("cmdstat_hmget", {"calls": 0})
        return int(stats["calls"])

    async def sixteen_at_once() -> list[Document]:
        return await asyncio.gather(*(_read_once(ctx, realm["id"]) for _ in range(16)))

    before = reads()
    documents = asyncio.run(sixteen_at_once())
    assert reads() - before == 1
    assert len({document.etag for document in documents}) == 1
    assert ctx.reading == {}


def test_a_change_through_this_process_shows_at_once(api: Api) -> None:
    api.realm()
    api.recent.seconds = 60.0
    before = api.anon.get(jwks_path("acme")).json()["keys"]
    created = api.http.post("/v1/jwt_keys", json={"jwt_key": {"realm_id": "acme", "algo": "es256"}})
    after = api.anon.get(jwks_path("acme")).json()["keys"]
    assert {key["kid"] for key in after} == {key["kid"] for key in before} | {created.json()["id"]}


def test_with_redis_unreachable_the_database_answers(api: Api) -> None:
    import redis

    realm = api.realm()
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    app = create_app(api.stack.settings, api.stack.service, redis_client=dead)
    with LiveServer(app) as server:
        for _ in range(2):  # the second while the Redis reads rest
            response = httpx.get(server.url + jwks_path(realm["id"]))
            assert response.status_code == 200
            assert response.json() == api.stack.service.jwks(realm["id"])


def test_max_age_never_outlives_a_scheduled_change(api: Api) -> None:
    # The pending key is due 100 s after creation: rotation 1h, prepublish 1h - 100s.
    realm = api.realm("soon", rotation_period="1h", prepublish=3500)
    response = api.anon.get(jwks_path(realm["id"]))
    assert 0 < cache_seconds(response) <= 100
    api.stack.redis.delete(redis_key(realm["id"]))  # the database's answer agrees
    assert 0 < cache_seconds(api.anon.get(jwks_path(realm["id"]))) <= 100


def test_an_overdue_change_makes_caches_revalidate(api: Api) -> None:
    service = api.stack.service
    past = utcnow() - timedelta(seconds=200)
    late = Service(service.sessions, service.master_keys, service.limits, lambda: past)
    realm = late.create_realm(
        "late", rotation_period=timedelta(hours=1), prepublish=timedelta(seconds=3500)
    )
    publish_realm(service, api.stack.publisher, realm.id)
    assert cache_seconds(api.anon.get(jwks_path(realm.id))) == 0


def test_cors_preflight_is_open(api: Api) -> None:
    realm = api.realm()
    response = api.anon.options(
        jwks_path(realm["id"]),
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in response.headers["Access-Control-Allow-Methods"]


def test_max_age_arithmetic() -> None:
    now = utcnow()
    limit = timedelta(seconds=300)
    assert max_age(limit, None, now) == 300
    assert max_age(limit, now + timedelta(seconds=42.9), now) == 42
    assert max_age(limit, now + timedelta(days=1), now) == 300
    assert max_age(limit, now - timedelta(seconds=5), now) == 0


def test_if_none_match_parsing() -> None:
    assert matches('"a"', '"a"')
    assert matches('W/"a"', '"a"')
    assert matches(' "b" , "a" ', '"a"')
    assert matches("*", '"a"')
    assert not matches(None, '"a"')
    assert not matches('"b"', '"a"')
    assert not matches("", '"a"')


# -- a verifier's view: PyJWT's PyJWKClient against the URL, tokens from `keyrotor token sign` --


@pytest.fixture
def rs256(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[Api]:
    yield from serve(tmp_path, database_url, redis_url, algo="rs256")


def keyrotor(api: Api, *args: str) -> str:
    result = subprocess.run(
        [str(KEYROTOR), *args],
        cwd=api.stack.tmp,
        env=api.stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


def verifies(url: str, token: str) -> bool:
    client = jwt.PyJWKClient(url)  # fresh: nothing cached
    try:
        key = client.get_signing_key_from_jwt(token)
    except jwt.PyJWKClientError:
        return False
    jwt.decode(token, key.key, algorithms=["RS256"], audience="api")
    return True


def test_pyjwkclient_verifies_across_a_rotation_and_not_after_a_revocation(rs256: Api) -> None:
    api = rs256
    api.realm("acme")
    url = api.url + jwks_path("acme")
    # The next key, published ahead (as the scheduler does `prepublish` before a rotation).
    pending = api.http.post("/v1/jwt_keys", json={"jwt_key": {"realm_id": "acme", "algo": "rs256"}})
    assert pending.status_code == 201 and pending.json()["state"] == "pending"

    first = keyrotor(api, "token", "sign", "acme", "--aud", "api", "--ttl", "5m").strip()
    first_kid = jwt.get_unverified_header(first)["kid"]
    cached = jwt.PyJWKClient(url)  # a verifier that keeps its copy of the set
    assert cached.get_signing_key_from_jwt(first).key_id == first_kid
    assert verifies(url, first)

    keyrotor(api, "rotate", "acme")
    second = keyrotor(api, "token", "sign", "acme", "--aud", "api", "--ttl", "5m").strip()
    second_kid = jwt.get_unverified_header(second)["kid"]
    assert second_kid == pending.json()["id"] != first_kid
    # The cached copy already holds the new signing key: it was published before it signed.
    assert cached.get_signing_key_from_jwt(second).key_id == second_kid
    assert verifies(url, second)
    assert verifies(url, first)  # the retired key verifies through its grace

    revoked = json.loads(keyrotor(api, "keys", "delete", second_kid, "--force", "--json"))
    assert revoked["id"] == second_kid
    assert not verifies(url, second)
    assert verifies(url, first)  # revoking one key leaves the others in place
