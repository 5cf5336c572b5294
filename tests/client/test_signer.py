"""The signer: the realm's active key, loaded once, swapped by events, verifiable by anyone."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support.events import Collector, Events, make_events
from tests.support.jwks_http import serve_jwks
from tests.support.stack import wait_for
from worker.client.signer import Signer
from worker.client.subscriber import Subscriber
from worker.client.verifier import KeyCache, RedisKeys
from worker.core import keys
from worker.core.errors import InvalidInput, NotFound
from worker.core.lifecycle import State
from worker.service import Service


@pytest.fixture
def wire(service: Service, redis_url: str, tmp_path: Path) -> Events:
    return make_events(service, redis_url, tmp_path)


def active(service: Service, realm: str) -> str:
    (kid,) = [k.id for k in service.list_keys(realm=realm).collection if k.state == State.ACTIVE]
    return kid


def test_signs_with_the_active_key_and_the_claims_asked_for(service: Service, wire: Events) -> None:
    realm = service.create_realm("acme", algo="es256", max_token_ttl=timedelta(minutes=10))
    wire.send()
    nbf = datetime.now(UTC).replace(microsecond=0)
    token = Signer(service).sign(
        "acme", {"sub": "u1", "scope": ["read"]}, timedelta(minutes=5),
        aud="api", iss="https://id.example", nbf=nbf, jti="t-1",
    )  # fmt: skip
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": active(service, "acme"), "typ": "JWT"}
    claims = KeyCache(RedisKeys(wire.redis)).verify(realm.id, token, audience="api")
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["iat"] - time.time()) < 60
    assert claims["nbf"] == int(nbf.timestamp())
    assert (claims["sub"], claims["scope"], claims["iss"], claims["jti"]) == (
        "u1", ["read"], "https://id.example", "t-1",
    )  # fmt: skip
    default = jwt.decode(Signer(service).sign(realm.id), options={"verify_signature": False})
    assert default["exp"] - default["iat"] == 600  # no ttl given: the realm's max


def test_with_an_issuer_base_tokens_carry_the_realms_issuer_unless_told_otherwise(
    service: Service,
) -> None:
    realm = service.create_realm("acme", algo="es256")
    signer = Signer(service, issuer_base="https://keys.example.com/")

    def iss(token: str) -> object:
        return jwt.decode(token, options={"verify_signature": False}).get("iss")

    for ref in (realm.id, "acme"):  # by id too, the issuer names the realm by name
        assert iss(signer.sign(ref)) == "https://keys.example.com/realms/acme"
    assert iss(signer.sign("acme", {"iss": "https://id.example"})) == "https://id.example"
    assert iss(signer.sign("acme", iss="https://id.example")) == "https://id.example"
    assert iss(Signer(service).sign("acme")) is None  # no issuer base: no iss


@pytest.mark.parametrize(
    ("claims", "ttl", "refusal"),
    [
        (
            {},
            timedelta(minutes=61),
            r"Ttl \(1h1m\) is longer than the realm's max token ttl \(1h\)",
        ),
        ({}, timedelta(0), "Ttl must be positive"),
        ({"exp": 1}, timedelta(minutes=1), "Claims must not set exp"),
        ({"iat": 1}, timedelta(minutes=1), "Claims must not set iat"),
        ({"when": datetime.now}, timedelta(minutes=1), "Claims must be JSON values"),
    ],
)
def test_refuses_what_it_must_not_sign(
    service: Service, claims: dict[str, Any], ttl: timedelta, refusal: str
) -> None:
    service.create_realm("acme", algo="es256")
    with pytest.raises(InvalidInput, match=refusal):
        Signer(service).sign("acme", claims, ttl)


def test_the_private_key_is_loaded_once_not_per_token(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.create_realm("acme", algo="es256")
    loads = []
    load = keys.load_signing_key

    def counted(algo: str, secret: bytes) -> keys.SigningKey:
        loads.append(algo)
        return load(algo, secret)

    monkeypatch.setattr(keys, "load_signing_key", counted)  # the module signer uses
    signing = Signer(service)
    tokens = {signing.sign("acme", {"n": n}, timedelta(minutes=1)) for n in range(50)}
    assert len(tokens) == 50 and loads == ["es256"]
    signing.refresh("acme")  # an event that did not change the active key: nothing reloaded
    assert loads == ["es256"]
    with pytest.raises(NotFound):
        signing.sign("nowhere")


def test_a_rotation_reaches_the_signer_by_event_without_a_restart(
    service: Service, wire: Events
) -> None:
    service.create_realm("acme", algo="es256")
    wire.send()
    signing = Signer(service)
    first = active(service, "acme")
    assert jwt.get_unverified_header(signing.sign("acme"))["kid"] == first

    got = Collector(also=signing.on_event)
    with Subscriber(wire.url, got):
        service.rotate("acme", force=True)
        wire.send()
        second = active(service, "acme")
        wait_for(lambda: signing.loaded("acme").kid == second, 10, "the signer to switch")
        assert jwt.get_unverified_header(signing.sign("acme"))["kid"] == second

        service.delete_key(second, force=True)  # revoked: the signer must drop it
        wire.send()
        got.wait_for_ids(wire.outbox_ids()[1:])
    third = active(service, "acme")
    assert jwt.get_unverified_header(signing.sign("acme"))["kid"] == third


def test_tokens_verify_with_pyjwts_jwks_client_against_the_published_jwks(
    service: Service, wire: Events
) -> None:
    realm = service.create_realm("acme", algo="rs256")
    wire.send()  # publishes the JWKS, then the event
    signing = Signer(service)
    with serve_jwks(wire.redis) as url:
        for _ in range(2):
            token = signing.sign("acme", {"sub": "u1"}, timedelta(minutes=5), aud="api")
            client = jwt.PyJWKClient(url.replace("{realm}", realm.id))
            key = client.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=["RS256"], audience="api")
            assert claims["sub"] == "u1"
            service.rotate("acme", force=True)  # the next round signs with a new key
            wire.send()
            signing.refresh("acme")
