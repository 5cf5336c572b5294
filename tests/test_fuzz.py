"""Hypothesis on every input keyrotor parses: tokens (the verifier), admin bearer tokens, keys
and JWKS documents, durations and settings. Whatever comes in, the answer is a result or one
of keyrotor's own errors (`KeyrotorError`), never a bare Python or library exception; and a
refusal writes nothing (every table is counted before and after).
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.conftest import TABLES
from worker.client.verifier import KeyCache, KeySet, parse_jwks
from worker.core import keys
from worker.core.durations import parse_duration
from worker.core.errors import (
    ConfigError,
    InvalidInput,
    InvalidToken,
    KeyrotorError,
    NotFound,
    Unauthenticated,
)
from worker.http.auth import AdminAuthenticator
from worker.service import Service
from worker.settings import Settings, load_settings
from worker.store.admin_keys import AdminKeys
from worker.store.db import transaction
from worker.store.models import (
    AdminKey,
    Event,
    JwtKey,
    MassRotation,
    PooledKey,
    Realm,
    Webhook,
    WebhookDelivery,
)

FUZZ = settings(
    max_examples=int(os.environ.get("KEYROTOR_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MODELS = {
    "realms": Realm,
    "jwt_keys": JwtKey,
    "events": Event,
    "admin_keys": AdminKey,
    "key_pool": PooledKey,
    "rotations": MassRotation,
    "webhook_deliveries": WebhookDelivery,
    "webhooks": Webhook,
}
assert set(MODELS) == set(TABLES)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rows(service: Service) -> dict[str, int]:
    with transaction(service.sessions, read_only=True) as session:
        return {
            name: int(session.scalar(select(func.count()).select_from(model)) or 0)
            for name, model in MODELS.items()
        }


# -- strategies -----------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ALGS = ["none", "HS256", "RS256", "PS256", "ES256", "EdDSA", "ES384", "RS512", "", "es256", None]


NOW = int(time.time())  # fixed: a strategy must not change between runs


def now_ish() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(min_value=NOW - 10**6, max_value=NOW + 10**6),
        st.floats(allow_nan=True, allow_infinity=True),
        json_values,
    )


def claim_sets(audience: str) -> st.SearchStrategy[dict[str, Any]]:
    """Claims near the valid ones: each registered claim present or not, right or wrong."""
    return st.fixed_dictionaries(
        {},
        optional={
            "iat": now_ish(),
            "exp": now_ish(),
            "nbf": now_ish(),
            "aud": st.one_of(st.just(audience), st.just([audience, "x"]), json_values),
            "iss": json_values,
            "sub": json_values,
        },
    )


@st.composite
def token_shapes(draw: st.DrawFn, kids: list[str], audience: str) -> str:
    """Three dotted parts: a header and claims that are JSON (or not), and any signature."""
    header = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "alg": st.sampled_from(ALGS) | json_values,
                "kid": st.sampled_from(kids) | json_values,
                "typ": json_values,
                "crit": json_values,
                "jku": json_values,
                "jwk": json_values,
                "b64": json_values,
            },
        )
    )
    claims = draw(claim_sets(audience) | json_values)
    parts = [
        draw(st.sampled_from([json.dumps(header).encode(), b"{", b"", b"\xff\xfe"])),
        draw(st.sampled_from([json.dumps(claims).encode(), b"[]", b"null", b"\x00"])),
    ]
    signature = draw(st.binary(max_size=300))
    text = ".".join(b64(part) for part in parts) + "." + b64(signature)
    return draw(st.sampled_from([text, text.rstrip("="), text + ".", text.replace(".", "..", 1)]))


def mutated(token: str) -> st.SearchStrategy[str]:
    """A genuine token with characters changed, cut or added."""
    return st.one_of(
        st.tuples(st.integers(0, len(token) - 1), st.characters()).map(
            lambda edit: token[: edit[0]] + edit[1] + token[edit[0] + 1 :]
        ),
        st.integers(0, len(token)).map(lambda cut: token[:cut]),
        st.text(max_size=40).map(lambda extra: token + extra),
    )


# -- the token verifier ---------------------------------------------------------------------------


class StaticKeys:
    """The published keys of one realm, one of each asymmetric algorithm."""

    def __init__(self) -> None:
        self.signing: dict[str, tuple[str, Any]] = {}
        members = []
        for algo, private in (
            ("rs256", rsa.generate_private_key(65537, 2048)),
            ("es256", ec.generate_private_key(ec.SECP256R1())),
            ("eddsa", ed25519.Ed25519PrivateKey.generate()),
        ):
            kid = f"jky_{algo}0000000000000000000"[:26]
            public_pem = (
                private.public_key()
                .public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                .decode()
            )
            members.append(keys.public_jwk(algo, kid, public_pem))
            self.signing[kid] = (keys.JWT_ALG[algo], private)
        self.document = {"keys": members}

    def fetch(self, realm: str) -> KeySet:
        if realm != "rl_fuzz":
            raise NotFound(realm)
        return KeySet(parse_jwks(self.document), 1)


VERIFIER_KEYS = StaticKeys()


def _verify_or_refuse(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except KeyrotorError as error:
        assert isinstance(error, InvalidToken), repr(error)
        return None


@FUZZ
@given(token=token_shapes(list(VERIFIER_KEYS.signing), "api") | st.text(max_size=300))
def test_the_verifier_refuses_any_token_shape_with_invalid_token_only(token: str) -> None:
    cache = KeyCache(VERIFIER_KEYS)
    _verify_or_refuse(lambda: cache.verify("rl_fuzz", token, audience="api", issuer="me"))


@FUZZ
@given(data=st.data())
def test_the_verifier_refuses_genuinely_signed_odd_claims_with_invalid_token_only(
    data: st.DataObject,
) -> None:
    kid = data.draw(st.sampled_from(sorted(VERIFIER_KEYS.signing)))
    alg, private = VERIFIER_KEYS.signing[kid]
    claims = data.draw(claim_sets("api"))
    try:
        token = jwt.encode(claims, private, alg, headers={"kid": kid})
    except (TypeError, ValueError, OverflowError):
        return  # PyJWT cannot even write these claims
    cache = KeyCache(VERIFIER_KEYS)
    audience = data.draw(st.sampled_from([None, "api", ["api", "other"]]))
    _verify_or_refuse(lambda: cache.verify("rl_fuzz", token, audience=audience))
    for changed in (data.draw(mutated(token)), token.replace(kid, "jky_x", 1)):
        _verify_or_refuse(lambda: cache.verify("rl_fuzz", changed, audience=audience))  # noqa: B023


# -- admin authentication -------------------------------------------------------------------------


@pytest.fixture
def admin(service: Service) -> tuple[AdminAuthenticator, str, rsa.RSAPrivateKey, Service]:
    private = rsa.generate_private_key(65537, 2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    admin_keys = AdminKeys(service.sessions)
    view, _ = admin_keys.create(public_pem)
    authenticator = AdminAuthenticator(
        admin_keys,
        audience="keyrotor-admin",
        max_ttl=timedelta(hours=1),
        clock_skew=timedelta(seconds=60),
    )
    return authenticator, view["id"], private, service


def _authenticate_or_refuse(authenticator: AdminAuthenticator, header: str | None) -> None:
    try:
        authenticator.authenticate(header)
    except KeyrotorError as error:
        assert isinstance(error, InvalidToken | Unauthenticated), repr(error)


@FUZZ
@given(data=st.data())
def test_admin_authentication_refuses_anything_with_its_own_errors_and_writes_nothing(
    admin: tuple[AdminAuthenticator, str, rsa.RSAPrivateKey, Service], data: st.DataObject
) -> None:
    authenticator, kid, private, service = admin
    before = rows(service)
    shape = data.draw(st.sampled_from(["text", "shape", "signed", "mutated"]))
    if shape == "text":
        header = data.draw(st.none() | st.text(max_size=200))
    elif shape == "shape":
        header = "Bearer " + data.draw(token_shapes([kid, "aky_x", "../etc"], "keyrotor-admin"))
    else:
        claims = data.draw(claim_sets("keyrotor-admin"))
        extra = data.draw(
            st.dictionaries(st.sampled_from(["jku", "x5u", "jwk", "crit"]), json_values)
        )
        try:
            token = jwt.encode(claims, private, "RS256", headers={"kid": kid, **extra})
        except (TypeError, ValueError, OverflowError):
            return
        if shape == "mutated":
            token = data.draw(mutated(token))
        header = data.draw(st.sampled_from(["Bearer ", "bearer ", "Bearer  ", "Basic "])) + token
    _authenticate_or_refuse(authenticator, header)
    assert rows(service) == before


# -- keys and JWKS documents ----------------------------------------------------------------------


def _pem(private: Any) -> str:
    return str(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


GENUINE_PEMS = {
    "rs256": _pem(rsa.generate_private_key(65537, 2048)),
    "es256": _pem(ec.generate_private_key(ec.SECP256R1())),
    "eddsa": _pem(ed25519.Ed25519PrivateKey.generate()),
}


@st.composite
def key_texts(draw: st.DrawFn) -> tuple[str, str]:
    algo = draw(st.sampled_from(["hs256", "rs256", "ps256", "es256", "eddsa", "md5", " ES256 "]))
    pem = GENUINE_PEMS[draw(st.sampled_from(sorted(GENUINE_PEMS)))]
    body = "".join(pem.splitlines()[1:-1])
    text = draw(
        st.one_of(
            st.text(max_size=200),
            st.binary(max_size=300).map(
                lambda raw: (
                    "-----BEGIN PRIVATE KEY-----\n"
                    + base64.encodebytes(raw).decode()
                    + "-----END PRIVATE KEY-----\n"
                )
            ),
            mutated(pem),
            st.integers(0, len(body) - 1).map(
                lambda cut: pem.replace(body[cut : cut + 8], "AAAAAAAA", 1)
            ),
        )
    )
    return algo, text


@FUZZ
@given(case=key_texts())
def test_key_import_refuses_anything_with_invalid_input(case: tuple[str, str]) -> None:
    algo, text = case
    try:
        keys.import_key(algo, text)
    except KeyrotorError as error:
        assert isinstance(error, InvalidInput), repr(error)


@FUZZ
@given(case=key_texts(), activate=st.booleans())
def test_a_refused_key_import_writes_nothing(
    service: Service, case: tuple[str, str], activate: bool
) -> None:
    if not service.list_realms(max_results=1).collection:
        service.create_realm("acme", algo="es256")
    before = rows(service)
    algo, text = case
    try:
        service.create_key("acme", algo, key_text=text, activate=activate)
    except KeyrotorError as error:
        assert isinstance(error, InvalidInput), repr(error)
        assert rows(service) == before
    else:
        assert rows(service)["jwt_keys"] == before["jwt_keys"] + 1


jwk_members = st.fixed_dictionaries(
    {},
    optional={
        "kty": st.sampled_from(["RSA", "EC", "OKP", "oct", ""]) | json_values,
        "kid": st.text(max_size=10) | json_values,
        "alg": st.sampled_from(["RS256", "ES256", "EdDSA", "PS256", "HS256"]) | json_values,
        "use": st.sampled_from(["sig", "enc"]) | json_values,
        "crv": st.sampled_from(["P-256", "Ed25519", "P-384", "secp256k1"]) | json_values,
        "x": st.binary(max_size=66).map(b64) | json_values,
        "y": st.binary(max_size=66).map(b64) | json_values,
        "n": st.binary(max_size=300).map(b64) | json_values,
        "e": st.sampled_from(["AQAB", "Aw", "", "AA"]) | json_values,
        "d": st.binary(max_size=40).map(b64),
        "k": st.binary(max_size=40).map(b64),
    },
)


@FUZZ
@given(
    document=st.one_of(
        st.fixed_dictionaries({"keys": st.lists(jwk_members, max_size=4)}),
        json_values,
        st.text(max_size=100),
        st.binary(max_size=100),
    )
)
def test_jwks_documents_parse_or_are_refused_with_invalid_input(document: Any) -> None:
    try:
        parsed = parse_jwks(document)
    except KeyrotorError as error:
        assert isinstance(error, InvalidInput), repr(error)
        return
    for kid, key in parsed.items():
        assert isinstance(kid, str) and key.alg in ("RS256", "PS256", "ES256", "EdDSA")


# -- durations and settings -----------------------------------------------------------------------


@FUZZ
@given(
    value=st.one_of(
        st.text(max_size=30),
        st.text(alphabet="0123456789dhms ", max_size=30),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.timedeltas(),
        st.booleans(),
    )
)
def test_durations_parse_or_are_refused_with_invalid_input(value: Any) -> None:
    try:
        parsed = parse_duration(value)
    except KeyrotorError as error:
        assert isinstance(error, InvalidInput), repr(error)
        return
    assert timedelta(0) <= parsed <= timedelta(days=3650)


setting_values = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="0123456789dhms", max_size=8),
    st.sampled_from(["production", "development", "json", "1", "0", "-1", "99999999999999999999"]),
)


@FUZZ
@given(
    overrides=st.dictionaries(
        st.sampled_from(sorted(Settings.model_fields)), setting_values, max_size=6
    )
)
def test_settings_load_or_are_refused_with_config_error_and_create_nothing(
    overrides: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(f"KEYROTOR_{name.upper()}", raising=False)
    before = sorted(tmp_path.rglob("*"))
    try:
        load_settings(**overrides)
    except KeyrotorError as error:
        assert isinstance(error, ConfigError), repr(error)
        assert "\n" not in str(error)
    assert sorted(tmp_path.rglob("*")) == before
