"""The JWT attack catalogue: every attack once against the admin API (over real HTTP) and once
against the token verifier (`KeyCache` on a realm's published JWKS). Each must be refused; a
genuine token must pass on both, so no refusal here is an accident of a broken set-up.

The admin API takes RS256 tokens of an admin key; the verifier is shown an rs256 realm (and
an es256 realm for the ECDSA attacks). "Another realm" is a second rs256 realm whose own,
genuine key signs the forged token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import func, select, text

from tests.conftest import BACKENDS, TABLES
from tests.http.conftest import Api, serve
from tests.support.live import AUDIENCE, b64url, unsigned
from worker.client.verifier import KeyCache, KeySet, RedisKeys, parse_jwks
from worker.core import keys
from worker.core.errors import InvalidToken
from worker.store.db import make_engine, transaction
from worker.store.models import JwtKey

ADMIN_ISSUER = "https://keyrotor.test/admin"
TOKEN_AUD = "api"
TOKEN_ISS = "https://issuer.test"
ONE_MB = 1024 * 1024


def pem_of(private_key: Any) -> bytes:
    return bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def forged(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    parts = [json.dumps(header).encode(), json.dumps(claims).encode()]
    return ".".join(b64url(part) for part in parts) + "." + b64url(signature)


def hs256_keyed_with(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """HMAC by hand: PyJWT refuses to use a PEM as an HMAC secret, attackers do not."""
    head = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    return head + "." + b64url(hmac.new(secret, head.encode(), hashlib.sha256).digest())


class Attacker:
    """An attacker's own key pair, and a web server that counts requests for its JWKS."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(65537, 2048)
        numbers = self.key.public_key().public_numbers()
        self.jwk = {
            "kty": "RSA",
            "kid": "attacker",
            "use": "sig",
            "alg": "RS256",
            "n": b64url(numbers.n.to_bytes(256, "big")),
            "e": b64url(numbers.e.to_bytes(3, "big")),
        }
        self.hits: list[str] = []
        document = json.dumps({"keys": [self.jwk]}).encode()
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Target:
    """One place tokens are checked, seen the same way by every attack."""

    name: str
    kid: str
    key: rsa.RSAPrivateKey
    """The genuine RS256 signing key behind `kid`."""
    public_pem: str
    es_kid: str
    """A kid the target knows for ES256 (the admin API knows none: only RS256 is tried)."""
    other_kid: str
    other_key: rsa.RSAPrivateKey
    """A genuine key of another realm."""
    claims: Callable[..., dict[str, Any]]
    verdict: Callable[..., str | None]
    """None when the token is accepted, else why it was refused."""
    imports: Callable[[str, dict[str, Any]], bool]
    """Whether a key (as a private PEM, or as a JWKS member) is taken in."""

    def token(self, claims: dict[str, Any] | None = None, **header: Any) -> str:
        return jwt.encode(
            claims or self.claims(), self.key, "RS256", headers={"kid": self.kid, **header}
        )

    def refuses(self, token: str, *, es: bool = False) -> str:
        why = self.verdict(token, es=es)
        assert why is not None, f"{self.name} accepted the forged token"
        return why


@dataclass
class Deployment:
    api: Api
    cache: KeyCache
    rs_realm: str
    es_realm: str
    other_realm: str


@pytest.fixture(scope="module", params=BACKENDS)
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("attacks")
    if request.param == "sqlite":
        shutil.copy(request.getfixturevalue("sqlite_template"), tmp / "keyrotor.db")
        url = f"sqlite:///{tmp / 'keyrotor.db'}"
    else:
        url = request.getfixturevalue("postgres_schema_url")
    try:
        for api in serve(tmp, url, redis_url, admin_issuer=ADMIN_ISSUER):
            service = api.stack.service
            realms = {}
            for name, algo in (("victim", "rs256"), ("victim-es", "es256"), ("other", "rs256")):
                realm_id = service.create_realm(name, algo=algo).id
                api.stack.publisher.publish(service.publication(realm_id))
                realms[name] = realm_id
            cache = KeyCache(RedisKeys(api.stack.redis), clock_skew=api.stack.settings.clock_skew)
            yield Deployment(api, cache, realms["victim"], realms["victim-es"], realms["other"])
    finally:
        if request.param != "sqlite":
            engine = make_engine(url)
            with engine.begin() as connection:
                connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
            engine.dispose()


def _signing_key(deployment: Deployment, realm_id: str) -> tuple[str, Any]:
    active = deployment.api.stack.service.signing_key(realm_id)
    return active.kid, keys.load_signing_key(active.algo, active.secret)


def _key_rows(deployment: Deployment) -> int:
    with transaction(deployment.api.stack.service.sessions, read_only=True) as session:
        return int(session.scalar(select(func.count()).select_from(JwtKey)) or 0)


def admin_target(deployment: Deployment) -> Target:
    api = deployment.api
    private = serialization.load_pem_private_key(api.private_pem.encode(), None)
    assert isinstance(private, rsa.RSAPrivateKey)
    other_kid, other_key = _signing_key(deployment, deployment.other_realm)

    def claims(**changes: Any) -> dict[str, Any]:
        now = int(time.time())
        body = {"aud": [AUDIENCE], "iss": ADMIN_ISSUER, "iat": now, "exp": now + 300}
        return {**body, **changes}

    def verdict(token: str, *, es: bool = False) -> str | None:
        try:
            response = api.anon.get("/v1/jwt_keys", headers={"Authorization": f"Bearer {token}"})
        except httpx.TransportError as error:
            # uvicorn drops a request whose headers exceed 16 KiB before any app code runs
            return f"connection closed by the server ({error.__class__.__name__})"
        if response.status_code == 200:
            return None
        assert response.status_code in (400, 401, 431), response.text
        challenge: str = response.headers.get("WWW-Authenticate", str(response.status_code))
        return challenge

    def imports(private_pem: str, _: dict[str, Any]) -> bool:
        before = _key_rows(deployment)
        body = {"jwt_key": {"realm_id": "victim-es", "algo": "es256", "key": private_pem}}
        response = api.anon.post("/v1/jwt_keys", json=body, headers=_admin_auth(api))
        assert response.status_code in (201, 422), response.text
        assert response.status_code == 201 or _key_rows(deployment) == before
        return response.status_code == 201

    public_pem = api.admin_keys.public_pem(api.kid)
    assert public_pem is not None
    return Target(
        "admin API",
        api.kid,
        private,
        public_pem,
        api.kid,
        other_kid,
        other_key,
        claims,
        verdict,
        imports,
    )


def _admin_auth(api: Api) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.token(extra={'iss': ADMIN_ISSUER})}"}


def verifier_target(deployment: Deployment) -> Target:
    cache = deployment.cache
    kid, key = _signing_key(deployment, deployment.rs_realm)
    es_kid, _ = _signing_key(deployment, deployment.es_realm)
    other_kid, other_key = _signing_key(deployment, deployment.other_realm)
    public_pem = deployment.api.stack.service.get_key(kid).key

    def claims(**changes: Any) -> dict[str, Any]:
        now = int(time.time())
        body = {"sub": "u1", "aud": TOKEN_AUD, "iss": TOKEN_ISS, "iat": now, "exp": now + 300}
        return {**body, **changes}

    def verdict(token: str, *, es: bool = False) -> str | None:
        realm = deployment.es_realm if es else deployment.rs_realm
        try:
            cache.verify(realm, token, audience=TOKEN_AUD, issuer=TOKEN_ISS)
        except InvalidToken as error:
            return str(error)
        return None

    def imports(_: str, member: dict[str, Any]) -> bool:
        class Published:
            def fetch(self, realm: str) -> KeySet:
                return KeySet(parse_jwks({"keys": [member]}))

        forged_cache = KeyCache(Published())
        token = forged(
            {"alg": "ES256", "kid": member["kid"]}, claims(), b"\x01" * 64
        )  # any signature: the key itself must never be taken in
        try:
            forged_cache.key("victim-es", member["kid"])
        except InvalidToken:
            with pytest.raises(InvalidToken, match="unknown key"):
                forged_cache.verify("victim-es", token)
            return False
        return True

    assert isinstance(key, rsa.RSAPrivateKey) and isinstance(other_key, rsa.RSAPrivateKey)
    return Target(
        "token verifier",
        kid,
        key,
        public_pem,
        es_kid,
        other_kid,
        other_key,
        claims,
        verdict,
        imports,
    )


@pytest.fixture(params=["admin API", "token verifier"])
def target(request: pytest.FixtureRequest, deployment: Deployment) -> Target:
    make = admin_target if request.param == "admin API" else verifier_target
    return make(deployment)


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    found = Attacker()
    try:
        yield found
    finally:
        found.close()


# -- the control ---------------------------------------------------------------------------------


def test_a_genuine_token_is_accepted(target: Target) -> None:
    assert target.verdict(target.token()) is None


# -- algorithms ----------------------------------------------------------------------------------


def test_alg_none_is_refused(target: Target) -> None:
    for alg in ("none", "None", "NONE"):
        target.refuses(unsigned({"alg": alg, "typ": "JWT", "kid": target.kid}, target.claims()))


def test_hs256_keyed_with_the_rsa_public_key_is_refused(target: Target) -> None:
    header = {"alg": "HS256", "typ": "JWT", "kid": target.kid}
    for secret in (target.public_pem.encode(), target.public_pem.strip().encode()):
        target.refuses(hs256_keyed_with(secret, header, target.claims()))


def test_a_stripped_signature_is_refused(target: Target) -> None:
    header, payload, _ = target.token().split(".")
    target.refuses(f"{header}.{payload}.")
    target.refuses(f"{header}.{payload}")


# -- kid -----------------------------------------------------------------------------------------


def test_a_kid_with_path_traversal_is_refused(target: Target) -> None:
    for kid in ("../../../../etc/passwd", "/dev/null", "..%2f..%2fetc%2fpasswd"):
        why = target.refuses(target.token(kid=kid))
        assert "passwd" not in why or "unknown" in why


def test_a_kid_with_sql_is_refused(target: Target) -> None:
    for kid in ("' OR '1'='1", f"{target.kid}' OR 1=1 --", "x'; DROP TABLE admin_keys; --"):
        target.refuses(target.token(kid=kid))
    assert target.verdict(target.token()) is None  # and nothing was dropped


def test_a_kid_and_key_of_another_realm_are_refused(target: Target) -> None:
    token = jwt.encode(
        target.claims(), target.other_key, "RS256", headers={"kid": target.other_kid}
    )
    target.refuses(token)


# -- header members that point at other keys -----------------------------------------------------


def test_a_jku_header_is_never_followed(target: Target, attacker: Attacker) -> None:
    for kid in (target.kid, "attacker"):
        token = jwt.encode(
            target.claims(),
            attacker.key,
            "RS256",
            headers={"kid": kid, "jku": f"{attacker.url}/jwks.json"},
        )
        target.refuses(token)
    assert attacker.hits == []


def test_an_x5u_header_is_never_followed(target: Target, attacker: Attacker) -> None:
    for kid in (target.kid, "attacker"):
        token = jwt.encode(
            target.claims(),
            attacker.key,
            "RS256",
            headers={"kid": kid, "x5u": f"{attacker.url}/cert.pem"},
        )
        target.refuses(token)
    assert attacker.hits == []


def test_an_embedded_jwk_header_is_never_trusted(target: Target, attacker: Attacker) -> None:
    for kid in (target.kid, "attacker"):
        token = jwt.encode(
            target.claims(), attacker.key, "RS256", headers={"kid": kid, "jwk": attacker.jwk}
        )
        target.refuses(token)


# -- time ----------------------------------------------------------------------------------------


def test_an_expired_token_is_refused(target: Target) -> None:
    now = int(time.time())
    why = target.refuses(target.token(target.claims(iat=now - 1000, exp=now - 700)))
    assert "expired" in why


def test_a_token_not_yet_valid_is_refused(target: Target) -> None:
    now = int(time.time())
    why = target.refuses(target.token(target.claims(nbf=now + 600, exp=now + 900)))
    assert "not valid yet" in why


def test_a_token_issued_in_the_future_is_refused(target: Target) -> None:
    now = int(time.time())
    why = target.refuses(target.token(target.claims(iat=now + 600, exp=now + 900)))
    assert "future" in why


# -- audience and issuer -------------------------------------------------------------------------


def test_a_wrong_audience_is_refused(target: Target) -> None:
    for aud in ("someone-else", ["someone-else"], [], f"{AUDIENCE} ", TOKEN_AUD.upper()):
        target.refuses(target.token(target.claims(aud=aud)))


def test_a_wrong_issuer_is_refused(target: Target) -> None:
    for iss in ("https://attacker.test", "", f"{TOKEN_ISS}/", f"{ADMIN_ISSUER}/"):
        why = target.refuses(target.token(target.claims(iss=iss)))
        assert "iss" in why or "issuer" in why
    claims = target.claims()
    del claims["iss"]
    target.refuses(target.token(claims))


# -- size ----------------------------------------------------------------------------------------


def test_a_one_megabyte_token_is_refused_quickly(target: Target) -> None:
    token = target.token(target.claims(padding="x" * ONE_MB))
    started = time.perf_counter()
    target.refuses(token)
    assert time.perf_counter() - started < 0.5
    assert target.verdict(target.token()) is None  # and the target is none the worse


# -- ECDSA ---------------------------------------------------------------------------------------


def test_an_es256_signature_of_zeros_is_refused(target: Target) -> None:
    """CVE-2022-21449, "psychic signatures": r = s = 0 must never verify."""
    for signature in (bytes(64), bytes(32) + (1).to_bytes(32, "big")):
        token = forged(
            {"alg": "ES256", "typ": "JWT", "kid": target.es_kid}, target.claims(), signature
        )
        target.refuses(token, es=True)


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = bytes([size]) if size < 128 else bytes([0x81, size])
    return bytes([tag]) + length + body


def p256_key(*, off_curve: bool) -> tuple[str, dict[str, Any]]:
    """A P-256 private key as a SEC 1 PEM, and the same public point as a JWKS member; with
    `off_curve`, the point is moved off the curve (y + 1)."""
    numbers = ec.generate_private_key(ec.SECP256R1()).private_numbers()
    x, y = numbers.public_numbers.x, numbers.public_numbers.y + off_curve
    point = b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")
    body = (
        _der(0x02, b"\x01")
        + _der(0x04, numbers.private_value.to_bytes(32, "big"))
        + _der(0xA0, bytes.fromhex("06082a8648ce3d030107"))  # prime256v1
        + _der(0xA1, _der(0x03, b"\x00" + point))
    )
    lines = base64.encodebytes(_der(0x30, body)).decode()
    pem = f"-----BEGIN EC PRIVATE KEY-----\n{lines}-----END EC PRIVATE KEY-----\n"
    member = {
        "kty": "EC",
        "crv": "P-256",
        "kid": "jky_0ffcurve000000000000",
        "use": "sig",
        "alg": "ES256",
        "x": b64url(x.to_bytes(32, "big")),
        "y": b64url(y.to_bytes(32, "big")),
    }
    return pem, member


def test_a_key_whose_point_is_off_the_curve_is_not_taken_in(target: Target) -> None:
    """Invalid-curve attacks start from such a point: an import (admin API) or a JWKS member
    (verifier) carrying one is refused, and nothing is stored."""
    pem, member = p256_key(off_curve=True)
    assert not target.imports(pem, member)


def test_the_same_key_with_its_true_point_is_taken_in() -> None:
    """The control for the test above: only the point makes the difference."""
    pem, member = p256_key(off_curve=False)
    assert keys.import_key("es256", pem).public_pem
    assert list(parse_jwks({"keys": [member]})) == [member["kid"]]
