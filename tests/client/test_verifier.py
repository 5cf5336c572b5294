"""The verifier's key cache: follows events, drops revoked keys at once, refetches sparingly."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from keyrotor_client.errors import InvalidInput, InvalidToken, NotFound
from keyrotor_client.subscriber import Subscriber
from keyrotor_client.verifier import (
    PUBLIC_ALGS,
    HttpKeys,
    KeyCache,
    KeySet,
    KeySource,
    RedisKeys,
    parse_jwks,
)

from tests.support.events import Collector, Events, make_events
from tests.support.jwks_http import serve_jwks
from worker.client.signer import Signer
from worker.core import keys
from worker.core.lifecycle import State
from worker.service import Service
from worker.service.key_sources import ServiceKeys


@pytest.fixture
def wire(service: Service, redis_url: str, tmp_path: Path) -> Events:
    return make_events(service, redis_url, tmp_path)


@dataclass
class Ticks:
    """A monotonic clock the test moves."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Counting:
    """A key source that counts its fetches and can be frozen on an old copy."""

    source: KeySource
    fetches: int = 0
    frozen: KeySet | None = None

    def fetch(self, realm: str) -> KeySet:
        self.fetches += 1
        return self.frozen or self.source.fetch(realm)


@dataclass
class Realm:
    id: str
    name: str
    service: Service
    signers: dict[str, Any] = field(default_factory=dict)

    def active(self) -> str:
        (kid,) = [
            k.id
            for k in self.service.list_keys(realm=self.id).collection
            if k.state == State.ACTIVE
        ]
        return kid

    def token(self, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        """A token signed by the active key with exactly these claims (iat/exp by default)."""
        active = self.service.signing_key(self.id)
        now = int(time.time())
        body = {"iat": now, "exp": now + 300, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        key = keys.load_signing_key(active.algo, active.secret)
        header = {"kid": active.kid, **(headers or {})}
        header = {k: v for k, v in header.items() if v is not None}
        return jwt.encode(body, key, algorithm=keys.JWT_ALG[active.algo], headers=header)


@pytest.fixture
def acme(service: Service, wire: Events) -> Realm:
    realm = service.create_realm("acme", algo="es256")
    wire.send()
    return Realm(realm.id, "acme", service)


def test_the_client_takes_from_a_jwks_exactly_the_algorithms_the_server_publishes() -> None:
    assert PUBLIC_ALGS == keys.PUBLIC_ALGS
    assert {keys.JWT_ALG[algo] for algo in keys.ALGOS if algo != "hs256"} == PUBLIC_ALGS


def test_a_revoked_key_is_refused_after_one_event_with_no_cache_expiry(
    wire: Events, service: Service, acme: Realm
) -> None:
    cache = KeyCache(RedisKeys(wire.redis))  # no max_age: only events change what it holds
    token = Signer(service).sign("acme", {"sub": "u1"}, timedelta(minutes=5))
    assert cache.verify(acme.id, token)["sub"] == "u1"
    revoked = acme.active()

    got = Collector(also=cache.on_event)
    with Subscriber(wire.url, got):
        service.delete_key(revoked, force=True)
        wire.send()
        got.wait_for_ids(wire.outbox_ids()[1:])
    assert got.events[-1]["reason"] == "key.revoked"
    with pytest.raises(InvalidToken, match=f"key {revoked} is revoked"):
        cache.verify(acme.id, token)
    fresh = Signer(service).sign("acme", {"sub": "u2"}, timedelta(minutes=5))
    assert cache.verify(acme.id, fresh)["sub"] == "u2"
    assert cache.kids(acme.id) == [acme.active()]


def test_revocation_drops_the_key_before_the_refetch_and_no_stale_copy_brings_it_back(
    wire: Events, service: Service, acme: Realm
) -> None:
    ticks = Ticks()
    source = Counting(RedisKeys(wire.redis))
    cache = KeyCache(source, clock=ticks)
    old_token = acme.token()
    cache.verify(acme.id, old_token)
    stale = source.source.fetch(acme.id)  # a copy that still holds the key

    service.delete_key(acme.active(), force=True)
    wire.send()
    (event,) = [e for e in wire.stream() if e["reason"] == "key.revoked"]
    source.frozen = stale
    cache.on_event(event)  # its refetch finds only the stale copy
    with pytest.raises(InvalidToken, match="unknown key"):
        cache.verify(acme.id, old_token)
    ticks.now += 5
    with pytest.raises(InvalidToken, match="unknown key"):
        cache.verify(acme.id, old_token)  # refetched after the cooldown: still stale, still out

    source.frozen = None
    ticks.now += 5
    cache.verify(acme.id, acme.token())  # a fresh copy: the new key, and the old one confirmed gone
    source.frozen = KeySet(stale.keys)  # a cache on the way serves the old document again
    cache.refresh(acme.id)
    with pytest.raises(InvalidToken, match="is revoked"):
        cache.verify(acme.id, old_token)


def forge_hs256(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token MACed with `secret`, built by hand (PyJWT refuses to use a PEM as a secret)."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode())
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(mac)).decode()


def test_unknown_kids_cost_one_fetch_per_cooldown_not_one_per_token(
    wire: Events, service: Service, acme: Realm
) -> None:
    ticks = Ticks()
    source = Counting(RedisKeys(wire.redis))
    cache = KeyCache(source, clock=ticks, refetch_cooldown=timedelta(seconds=5))
    cache.verify(acme.id, acme.token())
    assert source.fetches == 1
    made_up = [acme.token(headers={"kid": f"jky_madeup{n:013d}"}) for n in range(100)]
    for token in made_up:
        with pytest.raises(InvalidToken, match="unknown key"):
            cache.verify(acme.id, token)
    assert source.fetches == 1  # the first load was less than a cooldown ago
    ticks.now += 5
    for token in made_up:
        with pytest.raises(InvalidToken, match="unknown key"):
            cache.verify(acme.id, token)
    assert source.fetches == 2

    service.rotate("acme", force=True)  # a new key, and this cache hears no event of it
    wire.send()
    rotated = acme.token()
    with pytest.raises(InvalidToken, match="unknown key"):
        cache.verify(acme.id, rotated)
    ticks.now += 5
    cache.verify(acme.id, rotated)  # a real new kid is found by the refetch
    assert source.fetches == 3


@dataclass
class Flaky:
    """A key source that fails while `down`, as the Redis copy does during a restart."""

    source: KeySource
    down: bool = False
    fetches: int = 0

    def fetch(self, realm: str) -> KeySet:
        self.fetches += 1
        if self.down:
            raise redis.ConnectionError("Redis is restarting")
        return self.source.fetch(realm)


def test_a_failed_fetch_is_retried_after_a_second_not_after_a_whole_cooldown(
    wire: Events, acme: Realm
) -> None:
    """Found by the chaos run: a verifier whose first fetch met a Redis restart refused every
    token of that realm for the whole cooldown, long after Redis was back."""
    ticks = Ticks()
    source = Flaky(RedisKeys(wire.redis), down=True)
    cache = KeyCache(source, clock=ticks, refetch_cooldown=timedelta(seconds=5))
    token = acme.token()
    with pytest.raises(InvalidToken, match="unknown key"):
        cache.verify(acme.id, token)
    source.down = False
    ticks.now += 0.5
    with pytest.raises(InvalidToken, match="unknown key"):  # one attempt a second, not a flood
        cache.verify(acme.id, token)
    assert source.fetches == 1
    ticks.now += 0.6
    assert cache.verify(acme.id, token)
    assert source.fetches == 2


def test_keys_an_event_announced_but_its_refresh_missed_are_fetched_within_a_second(
    wire: Events, service: Service, acme: Realm
) -> None:
    ticks = Ticks()
    source = Flaky(RedisKeys(wire.redis))
    cache = KeyCache(source, clock=ticks, refetch_cooldown=timedelta(seconds=5))
    cache.verify(acme.id, acme.token())
    service.rotate("acme", force=True)
    wire.send()
    (event,) = [e for e in wire.stream() if e["reason"] == "key.rotated"]
    source.down = True
    cache.on_event(event)  # the refresh it starts fails
    source.down = False
    ticks.now += 1.1  # well within the cooldown since the first load
    assert cache.verify(acme.id, acme.token())


def test_the_algorithm_is_the_keys_own_whatever_the_token_says(acme: Realm, wire: Events) -> None:
    cache = KeyCache(RedisKeys(wire.redis))
    cache.verify(acme.id, acme.token())
    kid = acme.active()
    public_pem = acme.service.get_key(kid).key.encode()
    now = int(time.time())
    claims = {"iat": now, "exp": now + 60}
    # The classic confusion: the public key used as an HMAC secret.
    forged = forge_hs256(public_pem, {"alg": "HS256", "typ": "JWT", "kid": kid}, claims)
    with pytest.raises(InvalidToken, match="alg 'HS256' does not match"):
        cache.verify(acme.id, forged)
    # PyJWT annotates no key for alg "none", which takes None
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": kid})  # type: ignore[arg-type]
    with pytest.raises(InvalidToken, match="alg 'none' does not match"):
        cache.verify(acme.id, unsigned)
    pem = keys.generate("rs256").secret
    private = cast(rsa.RSAPrivateKey, serialization.load_pem_private_key(pem, password=None))
    other = jwt.encode(claims, private, algorithm="RS256", headers={"kid": kid})
    with pytest.raises(InvalidToken, match="alg 'RS256' does not match"):
        cache.verify(acme.id, other)


@pytest.mark.parametrize(
    ("claims", "refusal"),
    [
        ({"exp": -30}, None),  # expired, but within the 60 s skew
        ({"exp": -120}, "expired"),
        ({"nbf": 30}, None),
        ({"nbf": 120}, "not valid yet"),
        ({"iat": 120}, "not valid yet"),
        ({"exp": None}, "no exp claim"),
        ({"iat": None}, "no iat claim"),
    ],
)
def test_time_claims_are_checked_with_the_clock_skew(
    acme: Realm, wire: Events, claims: dict[str, int | None], refusal: str | None
) -> None:
    now = int(time.time())
    shifted: dict[str, Any] = {k: None if v is None else now + v for k, v in claims.items()}
    token = acme.token(**shifted)
    cache = KeyCache(RedisKeys(wire.redis), clock_skew=timedelta(seconds=60))
    if refusal is None:
        cache.verify(acme.id, token)
    else:
        with pytest.raises(InvalidToken, match=refusal):
            cache.verify(acme.id, token)


def test_audience_and_issuer_are_checked_when_asked(acme: Realm, wire: Events) -> None:
    cache = KeyCache(RedisKeys(wire.redis))
    token = acme.token(aud=["api", "web"], iss="https://id.example")
    assert cache.verify(acme.id, token)["aud"] == ["api", "web"]  # not asked: not checked
    assert cache.verify(acme.id, token, audience="web", issuer="https://id.example")
    with pytest.raises(InvalidToken, match="audience does not match"):
        cache.verify(acme.id, token, audience="admin")
    with pytest.raises(InvalidToken, match="issuer does not match"):
        cache.verify(acme.id, token, issuer="https://evil.example")
    with pytest.raises(InvalidToken, match="no aud claim"):
        cache.verify(acme.id, acme.token(), audience="api")


def test_malformed_oversized_and_kidless_tokens_are_refused_without_a_fetch(
    acme: Realm, wire: Events
) -> None:
    source = Counting(RedisKeys(wire.redis))
    cache = KeyCache(source, max_token_bytes=4096)
    with pytest.raises(InvalidToken, match="too large"):
        cache.verify(acme.id, "a" * 5000)
    with pytest.raises(InvalidToken, match="malformed"):
        cache.verify(acme.id, "not.a.token")
    with pytest.raises(InvalidToken, match="no kid"):
        cache.verify(acme.id, acme.token(headers={"kid": None}))
    assert source.fetches == 0
    tampered = acme.token()[:-4] + "AAAA"
    with pytest.raises(InvalidToken, match="signature"):
        cache.verify(acme.id, tampered)
    # A remembered header with a payload no JWT has (a lone surrogate: PyJWT raised
    # UnicodeEncodeError for it) is malformed, not a crash (found by the fuzzer).
    head, _, rest = acme.token().partition(".")
    with pytest.raises(InvalidToken, match="malformed"):
        cache.verify(acme.id, f"{head}.\ud800{rest}")


def test_the_header_is_read_once_per_kid_and_still_checked_strictly_by_decode(
    acme: Realm, wire: Events
) -> None:
    # verify once parsed every token twice (PyJWT's get_unverified_header, then decode): a
    # third of an RS256 verification (bench/README.md: verifying). Headers are remembered
    # now, boundedly, and a remembered header never lets a bad token through.
    cache = KeyCache(RedisKeys(wire.redis))
    token = acme.token(sub="u1")
    assert cache.verify(acme.id, token)["sub"] == "u1"
    head, _, rest = token.partition(".")
    with pytest.raises(InvalidToken, match="signature"):
        cache.verify(acme.id, f"{head}.{rest[:-4]}AAAA")
    with pytest.raises(InvalidToken, match="invalid"):
        cache.verify(acme.id, f"{head}.{rest}.extra")
    list_header = base64.urlsafe_b64encode(b"[1]").rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="malformed"):
        cache.verify(acme.id, f"{list_header}.{rest}")
    for n in range(2000):
        made_up = base64.urlsafe_b64encode(json.dumps({"n": n}).encode()).rstrip(b"=").decode()
        with pytest.raises(InvalidToken, match="no kid"):
            cache.verify(acme.id, f"{made_up}.{rest}")
    assert len(cache._headers) <= 1024
    assert cache.verify(acme.id, token)["sub"] == "u1"


def test_keys_over_http_for_verifiers_that_only_see_http(
    acme: Realm, wire: Events, service: Service
) -> None:
    hits: list[str] = []
    with serve_jwks(wire.redis, hits) as url:
        cache = KeyCache.from_url(url)
        assert cache.verify(acme.id, acme.token(sub="u1"))["sub"] == "u1"
        assert hits == [f"/realms/{acme.id}/.well-known/jwks.json"]
        with pytest.raises(NotFound):
            HttpKeys(url).fetch("rl_missing")
        with pytest.raises(InvalidToken, match="unknown key"):
            KeyCache(HttpKeys(url)).verify("rl_missing", acme.token())


def test_a_gap_in_the_stream_refreshes_every_cached_realm(
    acme: Realm, wire: Events, service: Service
) -> None:
    cache = KeyCache(RedisKeys(wire.redis))
    cache.verify(acme.id, acme.token())
    before = cache.kids(acme.id)
    service.rotate("acme", force=True)
    wire.send()
    assert cache.kids(acme.id) == before  # no event reached it
    cache.refresh_all()
    assert set(cache.kids(acme.id)) == {k.id for k in service.list_keys().collection}


def test_service_keys_verify_hmac_realms_too(service: Service) -> None:
    service.create_realm("shared", algo="hs256")
    realm = Realm(service.get_realm("shared").id, "shared", service)
    cache = KeyCache(ServiceKeys(service))
    assert cache.verify(realm.id, realm.token(sub="s"))["sub"] == "s"
    assert cache.kids(realm.id) == [realm.active()]


def test_a_jwks_member_with_an_odd_alg_is_skipped_and_the_others_still_load() -> None:
    """Found by fuzzing: `"alg": []` raised TypeError out of parse_jwks (and out of
    `KeyCache.verify`), so one garbled member made a whole realm unverifiable."""
    material = keys.generate("es256")
    assert material.public_pem is not None
    member = keys.public_jwk("es256", "jky_good", material.public_pem)
    odd = [{"kid": "a", "alg": []}, {"kid": "b", "alg": {}}, {"kid": [], "alg": "ES256"}]
    assert list(parse_jwks({"keys": [*odd, member]})) == ["jky_good"]


@pytest.mark.parametrize("document", [b"\xff\xfe", "{", "[" * 100_000, "[]", '{"keys": {}}'])
def test_a_document_that_is_no_jwks_is_invalid_input(document: str | bytes) -> None:
    with pytest.raises(InvalidInput):
        parse_jwks(document)
