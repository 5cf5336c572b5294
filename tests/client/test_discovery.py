"""Discovery: an issuer's OpenID configuration is read, checked against the issuer asked for,
and leads `KeyCache.from_issuer` to the keys, from a real (tiny) HTTP server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from keyrotor_client import DiscoveryError, InvalidToken, KeyCache, NotFound, discover
from keyrotor_client.discovery import MAX_DISCOVERY_BYTES
from keyrotor_client.errors import InvalidInput

WELL_KNOWN = "/.well-known/openid-configuration"


class Issuer:
    """A web server whose documents a test sets: path -> body (dict as JSON, or bytes)."""

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.hits: list[str] = []
        documents, hits = self.documents, self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                document = documents.get(self.path)
                if document is None:
                    self.send_error(404)
                    return
                body = document if isinstance(document, bytes) else json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def realm(self, name: str, key: ec.EllipticCurvePrivateKey, kid: str) -> str:
        """Publish a realm as keyrotor does; its issuer URL."""
        issuer = f"{self.url}/realms/{name}"
        jwks_path = f"/realms/{name}/.well-known/jwks.json"
        self.documents[f"/realms/{name}{WELL_KNOWN}"] = {
            "issuer": issuer,
            "jwks_uri": self.url + jwks_path,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        }
        self.documents[jwks_path] = jwks(key, kid)
        return issuer


def jwks(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    member = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {"keys": [{**member, "kid": kid, "alg": "ES256", "use": "sig"}]}


def token(key: ec.EllipticCurvePrivateKey, kid: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "u1", "iat": now, "exp": now + 60, **claims}
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": kid})


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    served = Issuer()
    served.thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_discover_reads_the_configuration_of_the_issuer_asked_for(
    issuer: Issuer, key: ec.EllipticCurvePrivateKey
) -> None:
    url = issuer.realm("acme", key, "jky_1")
    document = discover(url)
    assert document["issuer"] == url
    assert document["jwks_uri"] == f"{url}/.well-known/jwks.json"
    assert issuer.hits == [f"/realms/acme{WELL_KNOWN}"]


def test_a_configuration_for_another_issuer_is_refused(
    issuer: Issuer, key: ec.EllipticCurvePrivateKey
) -> None:
    url = issuer.realm("acme", key, "jky_1")
    issuer.documents[f"/realms/evil{WELL_KNOWN}"] = issuer.documents[f"/realms/acme{WELL_KNOWN}"]
    with pytest.raises(DiscoveryError, match=r"is for issuer .*/realms/acme', not .*/realms/evil"):
        discover(f"{issuer.url}/realms/evil")
    # the trailing slash is dropped to find the document, but its issuer must be the URL asked
    with pytest.raises(DiscoveryError, match="is for issuer"):
        discover(url + "/")
    assert issuer.hits[-1] == f"/realms/acme{WELL_KNOWN}"


ISSUER = "<the issuer asked for>"


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"<html>", "is not JSON"),
        (b"[]", "is not a JSON object"),
        (b"x" * (MAX_DISCOVERY_BYTES + 1), "is too large"),
        ({"jwks_uri": "http://127.0.0.1/jwks.json"}, "is for issuer None"),
        ({"issuer": ISSUER, "jwks_uri": "file:///etc/passwd"}, "has no http.s. jwks_uri"),
        ({"issuer": ISSUER}, "has no http.s. jwks_uri"),
    ],
    ids=["html", "list", "huge", "no issuer", "file jwks_uri", "no jwks_uri"],
)
def test_a_configuration_that_is_no_good_is_refused_in_one_line(
    issuer: Issuer, document: bytes | dict[str, str], reason: str
) -> None:
    url = f"{issuer.url}/realms/acme"
    if isinstance(document, dict):
        document = {name: url if value == ISSUER else value for name, value in document.items()}
    issuer.documents[f"/realms/acme{WELL_KNOWN}"] = document
    with pytest.raises(DiscoveryError, match=reason) as refused:
        discover(url)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 500


def test_no_configuration_is_not_found_and_no_server_a_discovery_error(issuer: Issuer) -> None:
    with pytest.raises(NotFound, match="no OpenID configuration"):
        discover(f"{issuer.url}/realms/nobody")
    issuer.server.shutdown()
    issuer.server.server_close()
    with pytest.raises(DiscoveryError, match="is unreachable"):
        discover(f"{issuer.url}/realms/acme", timeout=2)


def test_only_http_issuers_are_fetched() -> None:
    for url in ("file:///etc", "ftp://keys.example/realms/acme", "realms/acme", ""):
        with pytest.raises(InvalidInput, match="Issuer must be an http"):
            discover(url)


def test_a_key_cache_from_the_issuer_alone_verifies_its_tokens(
    issuer: Issuer, key: ec.EllipticCurvePrivateKey
) -> None:
    url = issuer.realm("acme", key, "jky_1")
    cache = KeyCache.from_issuer(url)
    claims = cache.verify("acme", token(key, "jky_1", iss=url), issuer=url)
    assert claims["sub"] == "u1"
    cache.verify("acme", token(key, "jky_1"))
    # discovered once, then only the JWKS is fetched
    assert issuer.hits == [f"/realms/acme{WELL_KNOWN}", "/realms/acme/.well-known/jwks.json"]
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidToken, match="signature does not verify"):
        cache.verify("acme", token(other, "jky_1"))


def test_an_issuer_with_a_realm_placeholder_serves_many_realms(
    issuer: Issuer, key: ec.EllipticCurvePrivateKey
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    issuer.realm("acme", key, "jky_a")
    issuer.realm("globex", other, "jky_g")
    cache = KeyCache.from_issuer(f"{issuer.url}/realms/{{realm}}")
    assert cache.verify("acme", token(key, "jky_a"))["sub"] == "u1"
    assert cache.verify("globex", token(other, "jky_g"))["sub"] == "u1"
    with pytest.raises(InvalidToken, match="unknown key jky_a in realm globex"):
        cache.verify("globex", token(key, "jky_a"))


def test_keys_that_moved_are_found_by_discovering_again(
    issuer: Issuer, key: ec.EllipticCurvePrivateKey
) -> None:
    now = [1000.0]
    url = issuer.realm("acme", key, "jky_1")
    cache = KeyCache.from_issuer(url, clock=lambda: now[0])
    cache.verify("acme", token(key, "jky_1"))

    new = ec.generate_private_key(ec.SECP256R1())
    del issuer.documents["/realms/acme/.well-known/jwks.json"]
    issuer.documents["/keys/acme.json"] = jwks(new, "jky_2")
    issuer.documents[f"/realms/acme{WELL_KNOWN}"]["jwks_uri"] = f"{issuer.url}/keys/acme.json"
    now[0] += 10  # past the refetch cooldown
    with pytest.raises(InvalidToken, match="unknown key jky_2"):
        cache.verify("acme", token(new, "jky_2"))  # the old JWKS URL answers 404
    now[0] += 10
    assert cache.verify("acme", token(new, "jky_2"))["sub"] == "u1"
    assert issuer.hits.count(f"/realms/acme{WELL_KNOWN}") == 2


def test_a_key_cache_refuses_the_keys_of_an_issuer_that_is_not_the_one_named(
    issuer: Issuer, key: ec.EllipticCurvePrivateKey
) -> None:
    issuer.realm("acme", key, "jky_1")
    issuer.documents[f"/realms/evil{WELL_KNOWN}"] = issuer.documents[f"/realms/acme{WELL_KNOWN}"]
    cache = KeyCache.from_issuer(f"{issuer.url}/realms/evil")
    with pytest.raises(InvalidToken, match="unknown key jky_1"):
        cache.verify("evil", token(key, "jky_1"))
    assert "/realms/acme/.well-known/jwks.json" not in issuer.hits
