"""The JWT attack catalogue: every attack once against the admin API (over real HTTP) and once
against the token verifier (`KeyCache` on a realm's published JWKS). Each must be refused; a
genuine token must pass on both, so no refusal here is an accident of a broken set-up.

The admin API takes RS256 tokens of an admin key; the verifier is shown an rs256 realm (and
an es256 realm for the ECDSA attacks). "Another realm" is a second rs256 realm whose own,
genuine key signs the forged token.

The second part attacks with genuine tokens of scoped admin keys: a realm's admin key against
another realm, a sign key against every admin route, a signer choosing what the server sets, a
deleted key's token in two web processes, and scopes that are not scopes. Each is refused, and
nothing changes: every table's rows and the events stream are compared before and after.
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
from dataclasses import dataclass, field, replace
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import func, select, text

from tests.conftest import BACKENDS, TABLES
from tests.http.conftest import Api, admin_key_pair, serve
from tests.http.test_scopes import FORBIDDEN, HOOK, ROUTES, World, allowed, make_world
from tests.support.cli import KEYROTOR, keyrotor_in_process
from tests.support.live import AUDIENCE, admin_token, b64url, free_port, unsigned
from tests.support.stack import wait_for
from worker.client.events import STREAM
from worker.client.verifier import KeyCache, KeySet, RedisKeys, parse_jwks
from worker.core import keys
from worker.core.errors import InvalidInput, InvalidToken
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
        # webhooks to http:// on this machine, as in development: the scoped section makes some
        for api in serve(
            tmp,
            url,
            redis_url,
            admin_issuer=ADMIN_ISSUER,
            webhook_allow_http="true",
            webhook_allow_private="true",
        ):
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


# == scoped admin keys and the signing endpoint: refused, and nothing changes =====================
#
# Realms A and B and everything around them (keys, webhooks, deliveries, a rotation, an admin
# key, a key of each scope) come from the scope matrix's `make_world`, made once per backend on
# this module's deployment. Every attack below is refused, and every table (each row of it, not
# only their number) and the events stream are the same afterwards.


@dataclass(frozen=True)
class Snapshot:
    """The deployment's state: rows per table, a digest of each table's rows, stream length."""

    rows: dict[str, int]
    digests: dict[str, str]
    stream: int


def plain(value: object) -> object:
    """A column's value as its repr can be compared: a driver's buffer as the bytes in it."""
    return bytes(value) if isinstance(value, memoryview) else value


def snapshot(api: Api) -> Snapshot:
    rows: dict[str, int] = {}
    digests: dict[str, str] = {}
    with transaction(api.stack.service.sessions, read_only=True) as session:
        for table in TABLES:
            result = session.execute(text(f"SELECT * FROM {table}"))
            found = sorted(repr([plain(value) for value in row]) for row in result)
            rows[table] = len(found)
            digests[table] = hashlib.sha256("\n".join(found).encode()).hexdigest()
    return Snapshot(rows, digests, int(api.stack.redis.xlen(STREAM)))


def changes(before: Snapshot, after: Snapshot) -> str | None:
    """What differs between two snapshots, in words; None when nothing does."""
    said = [
        f"{table}: {before.rows[table]} -> {after.rows[table]} rows"
        if before.rows[table] != after.rows[table]
        else f"{table}: rows changed"
        for table in TABLES
        if before.digests[table] != after.digests[table]
    ]
    if before.stream != after.stream:
        said.append(f"stream {STREAM}: {before.stream} -> {after.stream} entries")
    return "; ".join(said) or None


def one_line(response: httpx.Response) -> str | None:
    """Why an error body is not `{"errors": [one line]}`; None when it is."""
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
    match body:
        case {"errors": [str(line)]} if len(body) == 1 and line and "\n" not in line:
            return None
    return f"not one line: {response.text[:300]}"


@cache
def shared_private_key() -> rsa.RSAPrivateKey:
    """The private half of `admin_key_pair`, loaded once: loading it checks the RSA key, some
    40 ms, which PyJWT would otherwise pay for every token made from the PEM."""
    loaded = serialization.load_pem_private_key(admin_key_pair()[0].encode(), None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    return loaded


def issued_bearer(kid: str) -> dict[str, str]:
    """A fresh admin token of `kid` (a key of the shared pair), with this module's issuer."""
    token = admin_token(shared_private_key(), kid, extra={"iss": ADMIN_ISSUER})
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Scoped:
    """The module's deployment with realms A and B around it, asked as each kind of key."""

    deployment: Deployment
    world: World
    failures: list[str] = field(default_factory=list)

    @property
    def api(self) -> Api:
        return self.deployment.api

    def realm_id(self, label: str) -> str:
        found = self.world.id(label)
        assert found is not None
        return found

    def bearer(self, kid: str) -> dict[str, str]:
        """A fresh token of `kid` (of the shared key pair), with this deployment's issuer."""
        return issued_bearer(kid)

    def as_scope(self, scope: str) -> dict[str, str]:
        return self.bearer(self.world.kids[scope])

    def attack(
        self,
        what: str,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        status: int = 403,
        words: str = "",
        **request: Any,
    ) -> httpx.Response:
        """Send one attack; note a failure unless it is refused (`status`, one-line body, a
        403 exactly `Forbidden`) and nothing changed. Failures are asserted together, by
        `verdict`, so one run names every attack that got through."""
        before = snapshot(self.api)
        response = self.api.anon.request(method, url, headers=headers, **request)
        changed = changes(before, snapshot(self.api))
        shown = f"{what}: {method} {url}"
        if response.status_code != status:
            self.failures.append(f"{shown}: {response.status_code} {response.text[:200]}")
        elif response.status_code == 403 and response.json() != FORBIDDEN:
            self.failures.append(f"{shown}: 403 body {response.text[:200]}")
        elif (why := one_line(response)) is not None:
            self.failures.append(f"{shown}: {why}")
        elif words not in response.json()["errors"][0]:
            self.failures.append(f"{shown}: {response.text[:200]} does not say {words!r}")
        if changed:
            self.failures.append(f"{shown}: changed {changed}")
        return response

    def verdict(self) -> None:
        failures, self.failures = self.failures, []
        assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def scoped_world(deployment: Deployment) -> Iterator[Scoped]:
    """`make_world` on this deployment: its `admin` client sends tokens with the issuer."""
    api = deployment.api

    def with_issuer(request: httpx.Request) -> httpx.Request:
        request.headers.update(issued_bearer(api.kid))
        return request

    with httpx.Client(base_url=api.url, timeout=30, auth=with_issuer) as client:
        yield Scoped(deployment, make_world(replace(api, http=client)))


@pytest.fixture
def scoped(scoped_world: Scoped) -> Scoped:
    """The world, checked unchanged by the previous test too (failures collected per test)."""
    scoped_world.failures.clear()
    return scoped_world


def sign_body(**token: Any) -> dict[str, Any]:
    return {"token": {"claims": {"sub": "u1"}, **token}}


# -- 1. a realm's admin key against another realm ------------------------------------------------


def test_a_realm_admin_key_changes_nothing_of_another_realm(scoped: Scoped) -> None:
    w, s = scoped.world, scoped
    a, b = s.realm_id("A"), s.realm_id("B")
    as_a = s.as_scope("realm:A:admin")
    b_active = s.api.stack.service.signing_key(b).kid
    new_admin_key = {"public_key": admin_key_pair()[1]}
    for ref in (b, w.realms["B"]["name"]):  # B by id and by name
        body = {"jwt_key": {"realm_id": ref, "algo": "es256", "activate": True}}
        s.attack("create B's key", "POST", "/v1/jwt_keys", json=body, headers=as_a)
        for verb in ("PUT", "PATCH"):
            policy = {"realm": {"rotation_period": "1d", "max_token_ttl": "24h"}}
            s.attack("B's policy", verb, f"/v1/realms/{ref}", json=policy, headers=as_a)
        s.attack("delete B", "DELETE", f"/v1/realms/{ref}", headers=as_a)
        s.attack("sign for B", "POST", f"/v1/realms/{ref}/tokens", json=sign_body(), headers=as_a)
    for key in (w.keys["B"], b_active):
        for params in ({}, {"force": "true"}):
            s.attack("delete B's key", "DELETE", f"/v1/jwt_keys/{key}", params=params, headers=as_a)
    for realm_id, whose in ((b, "B's"), (None, "a global")):
        body = {"webhook": {"url": HOOK, "realm_id": realm_id}}
        s.attack(f"create {whose} webhook", "POST", "/v1/webhooks", json=body, headers=as_a)
    s.attack(
        "create a webhook without a realm",
        "POST",
        "/v1/webhooks",
        json={"webhook": {"url": HOOK}},
        headers=as_a,
    )
    for label, whose in (("B", "B's"), (None, "the global")):
        hook = f"/v1/webhooks/{w.hooks[label]}"
        evil = {"webhook": {"url": "http://127.0.0.1:9/evil", "enabled": False}}
        for verb in ("PUT", "PATCH"):
            s.attack(f"update {whose} webhook", verb, hook, json=evil, headers=as_a)
            to_a = {"webhook": {"realm_id": a}}
            s.attack(f"move {whose} webhook to A", verb, hook, json=to_a, headers=as_a)
        s.attack(f"delete {whose} webhook", "DELETE", hook, headers=as_a)
        s.attack(f"rotate {whose} secret", "POST", f"{hook}/rotate_secret", headers=as_a)
        retry = f"{hook}/deliveries/{w.deliveries[label]}/retry"
        s.attack(f"retry {whose} delivery", "POST", retry, headers=as_a)
    own = f"/v1/webhooks/{w.hooks['A']}"
    for verb in ("PUT", "PATCH"):
        for target in (b, None):  # to B, or to every realm
            away = {"webhook": {"realm_id": target}}
            s.attack("move A's webhook away", verb, own, json=away, headers=as_a)
    s.attack("create a realm", "POST", "/v1/realms", json={"realm": {"name": "mine"}}, headers=as_a)
    for rotation in ({}, {"realm_prefix": "realm-"}):
        s.attack(
            "rotate realms", "POST", "/v1/rotations", json={"rotation": rotation}, headers=as_a
        )
    for scopes in (["admin"], ["admin-keys"], [f"realm:{b}:admin"], [f"realm:{a}:admin"]):
        body = {"admin_key": {**new_admin_key, "scopes": scopes}}
        s.attack(f"register a {scopes} key", "POST", "/v1/admin_keys", json=body, headers=as_a)
    for kid in (w.admin_key, s.api.kid, w.kids["admin"]):
        s.attack("delete an admin key", "DELETE", f"/v1/admin_keys/{kid}", headers=as_a)
    s.verdict()
    # the control: the same kind of token is genuine, and reads its own realm
    for path in (f"/v1/realms/{a}", f"/v1/webhooks/{w.hooks['A']}/deliveries"):
        assert s.api.anon.get(path, headers=as_a).status_code == 200, path


# -- 2. a sign key against every admin route -----------------------------------------------------


def test_a_sign_key_may_only_sign_for_its_realm(scoped: Scoped) -> None:
    w, s = scoped.world, scoped
    as_sign = s.as_scope("realm:A:sign")
    swept = 0
    for (method, route), cases in ROUTES.items():
        for one in cases:
            if "realm:A:sign" in allowed(one.needs):
                continue  # listings (checked below) and signing for A
            url, params, body = one.send(w, False)
            s.attack(f"{route} {one.needs}", method, url, params=params, json=body, headers=as_sign)
            swept += 1
    a = s.realm_id("A")
    a_active = s.api.stack.service.signing_key(a).kid
    for key in (w.keys["A"], a_active):
        for params in ({}, {"force": "true"}):
            s.attack(
                "revoke A's key", "DELETE", f"/v1/jwt_keys/{key}", params=params, headers=as_sign
            )
    for ref in (a, w.realms["A"]["name"]):
        policy = {"realm": {"max_token_ttl": "30d"}}  # what a signer would like
        s.attack("lengthen A's max ttl", "PATCH", f"/v1/realms/{ref}", json=policy, headers=as_sign)
    for ref in (s.realm_id("B"), w.realms["B"]["name"], s.deployment.rs_realm):
        s.attack(
            "sign for another realm",
            "POST",
            f"/v1/realms/{ref}/tokens",
            json=sign_body(),
            headers=as_sign,
        )
    s.verdict()
    assert swept > 40  # every route of the matrix, A's own included
    for path in ("/v1/realms", "/v1/jwt_keys", "/v1/webhooks", "/v1/events"):
        listing = s.api.anon.get(path, headers=as_sign)
        assert (listing.status_code, listing.json()["collection"]) == (200, []), path
    # the control: it signs for A, and signing writes nothing either
    before = snapshot(s.api)
    signed = s.api.anon.post(f"/v1/realms/{a}/tokens", json=sign_body(), headers=as_sign)
    assert signed.status_code == 201, signed.text
    assert changes(before, snapshot(s.api)) is None


# -- 3. what a signer may not choose -------------------------------------------------------------

NOW = int(time.time())
SERVER_CLAIMS = {
    "exp": NOW + 10**8,
    "iat": NOW - 10,
    "iss": "https://attacker.test",
    "nbf": NOW + 3600,
    "jti": "tok_replayed",
}
HUGE_TTLS = ["100000d", "9999999999s", "-5m", "0s", 0, -1, "2h", "1h1s", 10**30, 9999999999]
WRONG_TTLS = [[], {}, [60], True, False, "", "abc", "1.5h", "5 minutes", "1h-1s", "5m; DROP"]
# bodies Python's JSON writes only when asked: a number that is not one, or overflows to one
NAN_ISH = [
    '{"token": {"claims": {"sub": "u1"}, "ttl": NaN}}',
    '{"token": {"claims": {"sub": "u1"}, "ttl": Infinity}}',
    '{"token": {"claims": {"sub": "u1"}, "ttl": -Infinity}}',
    '{"token": {"claims": {"sub": "u1"}, "ttl": 1e999}}',
    '{"token": {"claims": {"sub": "u1", "n": NaN}}}',
    '{"token": {"claims": {"sub": "u1", "n": [Infinity]}}}',
    '{"token": {"claims": {"sub": "u1", "n": {"m": -1e999}}}}',
    '{"token": {"claims": {"sub": "u1"}, "ttl": "NaN"}}',
    '{"token": {"claims": {"sub": "u1"}, "ttl": "inf"}}',
]
NINE_KIB = 9 * 1024


def test_a_signer_cannot_choose_what_the_server_sets(scoped: Scoped) -> None:
    s = scoped
    a = s.realm_id("A")
    url = f"/v1/realms/{a}/tokens"
    as_sign = s.as_scope("realm:A:sign")

    def refused(what: str, words: str, status: int = 422, **request: Any) -> None:
        """Refused in one line saying `words`, so no token in the answer; nothing written."""
        headers = {**as_sign, "Content-Type": "application/json"}
        s.attack(what, "POST", url, headers=headers, status=status, words=words, **request)

    for name, value in SERVER_CLAIMS.items():
        body = sign_body(claims={"sub": "u1", name: value})
        refused(f"claims set {name}", f"must not set {name}:", json=body)
    every = sign_body(claims={"sub": "u1", **SERVER_CLAIMS})
    refused("claims set them all", "must not set exp, iat, nbf, iss, jti", json=every)
    for ttl in [*HUGE_TTLS, *WRONG_TTLS]:
        refused(f"ttl {ttl!r}", "Ttl ", json=sign_body(ttl=ttl))
    for raw in NAN_ISH:
        words = "Ttl " if '"ttl"' in raw else "Claims must be JSON values"
        refused(raw, words, content=raw.encode())
    not_objects: list[Any] = [[], "sub", 5, None, [["sub", "u1"]]]
    for claims in not_objects:
        refused(f"claims {claims!r}", "Claims must be", json=sign_body(claims=claims))
    for audience in ("", [], [""], ["api", 5], {"aud": "api"}):
        refused(f"audience {audience!r}", "Audience must be", json=sign_body(audience=audience))
    twice = sign_body(claims={"aud": "api"}, audience="api")
    refused("the audience twice", "Give the audience once", json=twice)
    refused("a field of its own", "not a known field", json={**sign_body(), "kid": "jky_mine"})
    header = sign_body(header={"kid": "jky_mine", "alg": "none"})
    refused("a header of its own", "not a known field", json=header)
    padded = sign_body(claims={"sub": "u1", "pad": "x" * NINE_KIB})
    refused("a 9 KiB body", "Body is too large", status=413, json=padded)
    data = json.dumps(padded).encode()
    chunks = iter([data[i : i + 1024] for i in range(0, len(data), 1024)])  # no Content-Length
    refused("a 9 KiB body, streamed", "Body is too large", status=413, content=chunks)
    s.verdict()
    # the control: at most the realm's max token ttl, and the server's stamps
    signed = s.api.anon.post(url, json=sign_body(ttl="1h", audience="api"), headers=as_sign)
    assert signed.status_code == 201, signed.text
    stamped = jwt.decode(signed.json()["token"], options={"verify_signature": False})
    assert stamped["exp"] - stamped["iat"] == 3600 and stamped["jti"].startswith("tok_")
    assert stamped["iss"] != SERVER_CLAIMS["iss"] and "nbf" not in stamped


# -- 4. a deleted admin key, mid-session, in every web process -----------------------------------


@pytest.fixture(scope="module")
def second_web(deployment: Deployment) -> Iterator[str]:
    """`keyrotor web`: a second web process on this deployment's database and Redis (one that
    caches admin keys would keep a deleted one there unless the deletion reaches it)."""
    stack = deployment.api.stack
    port = free_port()
    argv = [str(KEYROTOR), "web", "--host", "127.0.0.1", "--port", str(port)]
    proc = stack.spawn("web-2", argv)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            assert proc.poll() is None, stack.log("web-2")
            return False

    try:
        wait_for(healthy, 30, "a second keyrotor web")
        yield url
    finally:
        stack.stop("web-2")


@pytest.mark.parametrize("deleted", ["through this process", "through the other", "in the store"])
def test_a_deleted_admin_key_is_refused_at_once_by_every_web_process(
    scoped: Scoped, second_web: str, deleted: str
) -> None:
    s = scoped
    a = s.realm_id("A")
    kid = s.api.admin_keys.create(admin_key_pair()[1], [f"realm:{a}:sign"])[0]["id"]
    token = s.bearer(kid)  # one token, valid for minutes: it outlives its key
    sign = f"/v1/realms/{a}/tokens"
    webs = {"this web process": s.api.url, "the other web process": second_web}
    for name, url in webs.items():
        for _ in range(2):  # a process that caches admin keys has this one by now
            signed = s.api.anon.post(f"{url}{sign}", json=sign_body(), headers=token)
            assert signed.status_code == 201, f"{name}: {signed.text}"
    if deleted == "in the store":
        s.api.admin_keys.delete(kid)
    else:
        url = s.api.url if deleted == "through this process" else second_web
        gone = s.api.anon.delete(f"{url}/v1/admin_keys/{kid}", headers=s.as_scope("admin"))
        assert gone.status_code == 202, gone.text
    for name, url in webs.items():  # the very next request of each process
        for method, path, body in (("POST", sign, sign_body()), ("GET", "/v1/realms", None)):
            refused = s.attack(
                f"{name}, key deleted {deleted}",
                method,
                f"{url}{path}",
                json=body,
                headers=token,
                status=401,
                words="unknown kid",
            )
            challenge = refused.headers.get("WWW-Authenticate", "")
            if refused.status_code == 401 and "unknown kid" not in challenge:
                s.failures.append(f"{name}: {method} {path}: challenge {challenge!r}")
    s.verdict()


# -- 5. scopes that are not scopes ---------------------------------------------------------------


def bad_scopes(realm_id: str) -> list[str]:
    """Scope strings an attacker would try: SQL, a realm id of the wrong shape, a newline, the
    wrong case, one part too many, a trailing space, 10 KiB, a homoglyph, a wildcard."""
    return [
        "admin; DROP TABLE admin_keys",
        "realm:rl_x:admin",
        "realm:' OR 1=1 --:admin",
        "admin\n",
        "ADMIN",
        f"realm:{realm_id}:admin:extra",
        "realms:read ",
        "realms:read" + " " * (10 * 1024),
        "x" * (10 * 1024),
        "",
        " admin",
        "admin\r\nrealms:read",
        f"realm:{realm_id}:sign\n",
        "realm:*:admin",
        "realm:%:admin",
        "\u0430dmin",  # a Cyrillic a
    ]


NOT_SCOPE_LISTS: list[Any] = [[], [1], [None], [["admin"]], [{"admin": True}], "admin", 5]


def scope_lists(realm_id: str) -> list[Any]:
    """Every refused `scopes` value: each bad scope alone and beside a good one, non-lists."""
    bad = bad_scopes(realm_id)
    return [[scope] for scope in bad] + [["realms:read", scope] for scope in bad] + NOT_SCOPE_LISTS


def test_a_scope_that_is_not_one_is_refused_in_the_store(scoped: Scoped) -> None:
    s = scoped
    public_pem = admin_key_pair()[1]
    before = snapshot(s.api)
    for scopes in scope_lists(s.realm_id("A")):
        for pem in (public_pem, None):  # registered, or made here (refused before any RSA work)
            with pytest.raises(InvalidInput) as refused:
                s.api.admin_keys.create(pem, scopes)
            said = str(refused.value)
            assert "\n" not in said and len(said) < 300 and len(refused.value.messages) == 1, said
    assert changes(before, snapshot(s.api)) is None


def test_a_scope_that_is_not_one_is_refused_over_http(scoped: Scoped) -> None:
    s = scoped
    public_pem = admin_key_pair()[1]
    for scopes in [*scope_lists(s.realm_id("A")), None]:
        body = {"admin_key": {"public_key": public_pem, "scopes": scopes}}
        for scope in ("admin", "admin-keys"):
            s.attack(
                f"scopes {scopes!r:.80}",
                "POST",
                "/v1/admin_keys",
                json=body,
                headers=s.as_scope(scope),
                status=422,
                words="Scope",
            )
    s.verdict()


def test_a_scope_that_is_not_one_is_refused_by_the_cli(scoped: Scoped, tmp_path: Path) -> None:
    s = scoped
    (tmp_path / "key.pub").write_text(admin_key_pair()[1])
    before = snapshot(s.api)
    for scope in bad_scopes(s.realm_id("A")):
        for made in (["--out", "made.pem"], ["--public-key", "key.pub"]):
            args = ["admin-keys", "create", "--scope", "realms:read", "--scope", scope, *made]
            result = keyrotor_in_process(*args, env=s.api.stack.env, cwd=tmp_path)
            said = result.stderr
            assert result.returncode == 2, (scope, result)
            assert said.startswith("error: ") and said.count("\n") == 1, (scope, said)
            assert "is not one of admin, realms:read" in said, (scope, said)
            assert result.stdout == "" and not (tmp_path / "made.pem").exists()
    assert changes(before, snapshot(s.api)) is None
