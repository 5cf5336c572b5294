"""The discovery route over real HTTP: a realm's issuer (always by name), its JWKS URL and
algorithms, cached like the JWKS; and the proof that matters, verifiers that know nothing but a
realm's issuer URL (PyJWT's `PyJWKClient`, and Node's own crypto) accepting what keyrotor's
signer made, against a real web process."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import jwt
import pytest

from tests.http.conftest import PLAIN, Api, serve
from tests.support.live import b64url
from tests.support.processes import free_port
from tests.support.stack import Stack, make_stack, wait_for
from worker.client.signer import Signer
from worker.http.discovery_route import NO_PUBLIC_KEYS
from worker.http.models import OpenIdConfiguration

KEYROTOR = Path(sys.executable).parent / "keyrotor"
PUBLIC_URL = "https://keys.example.com"
ALGS = {"rs256": "RS256", "ps256": "PS256", "es256": "ES256", "eddsa": "EdDSA"}


def discovery_path(realm: str) -> str:
    return f"/realms/{realm}/.well-known/openid-configuration"


def cache_seconds(response: httpx.Response) -> int:
    control = response.headers["Cache-Control"]
    found = re.fullmatch(r"public, max-age=(\d+)", control)
    assert found, control
    return int(found.group(1))


@pytest.fixture
def public(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[Api]:
    """A deployment behind https://keys.example.com (written with a trailing slash)."""
    yield from serve(tmp_path, database_url, redis_url, public_url=PUBLIC_URL + "/")


def test_the_issuer_names_the_realm_by_name_whether_asked_by_id_or_name(public: Api) -> None:
    realm = public.realm("acme")
    by_id = public.anon.get(discovery_path(realm["id"]))
    by_name = public.anon.get(discovery_path("acme"))
    for response in (by_id, by_name):
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == {
            "issuer": f"{PUBLIC_URL}/realms/acme",
            "jwks_uri": f"{PUBLIC_URL}/realms/acme/.well-known/jwks.json",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        }
        OpenIdConfiguration.model_validate(response.json())  # what /openapi.json says
    assert by_id.content == by_name.content
    assert by_id.headers["ETag"] == by_name.headers["ETag"]


def test_without_a_public_url_the_issuer_is_the_servers_own_address(api: Api) -> None:
    settings = api.stack.settings
    assert settings.public_url is None
    api.realm("acme")
    document = api.anon.get(discovery_path("acme")).json()
    base = f"http://{settings.http_host}:{settings.http_port}"
    assert base == "http://127.0.0.1:8080"
    assert document["issuer"] == f"{base}/realms/acme"
    assert document["jwks_uri"] == f"{base}/realms/acme/.well-known/jwks.json"


@pytest.mark.parametrize("algo", ["rs256", "ps256", "eddsa"])
def test_the_algorithm_is_the_realms(api: Api, algo: str) -> None:
    api.realm("acme", algo=algo)
    document = api.anon.get(discovery_path("acme")).json()
    assert document["id_token_signing_alg_values_supported"] == [ALGS[algo]]


def test_hs256_and_unknown_realms_are_404(api: Api) -> None:
    shared = api.realm("shared", algo="hs256")
    for ref in (shared["id"], "shared"):
        response = api.anon.get(discovery_path(ref))
        assert response.status_code == 404, ref
        assert response.json() == {"errors": [NO_PUBLIC_KEYS]}
    for ref in ["nope", "rl_0v1zTHXhtNgmDaXaDYSAqx", "a%00b", "x" * 300, "%E2%80%8B"]:
        response = api.anon.get(discovery_path(ref))
        assert response.status_code == 404, ref
        assert response.json() == {"errors": ["Not found"]}


def test_cached_like_the_jwks_with_an_etag_304_and_cors(api: Api) -> None:
    realm = api.realm("acme")
    path = discovery_path(realm["id"])
    got = api.anon.get(path)
    tag = got.headers["ETag"]
    assert tag.startswith('"')
    assert tag != api.anon.get(f"/realms/{realm['id']}/.well-known/jwks.json").headers["ETag"]
    assert cache_seconds(got) == 300
    assert got.headers["Access-Control-Allow-Origin"] == "*"
    for header in [tag, f"W/{tag}", f'"other", {tag}', "*"]:
        response = api.anon.get(path, headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["ETag"] == tag
        assert cache_seconds(response) == 300
    assert api.anon.get(path, headers={"If-None-Match": '"stale"'}).status_code == 200
    head = api.anon.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["ETag"] == tag
    assert head.headers["Content-Length"] == str(len(got.content))
    preflight = api.anon.options(
        path, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"


def test_max_age_never_outlives_the_realms_next_scheduled_jwks_change(api: Api) -> None:
    # The pending key is due 100 s after creation: rotation 1h, prepublish 1h - 100s.
    api.realm("soon", rotation_period="1h", prepublish=3500)
    assert 0 < cache_seconds(api.anon.get(discovery_path("soon"))) <= 100


def test_a_key_of_another_algo_is_listed_once_published_and_the_etag_moves(api: Api) -> None:
    api.realm("acme")
    before = api.anon.get(discovery_path("acme")).headers["ETag"]
    created = api.http.post("/v1/jwt_keys", json={"jwt_key": {"realm_id": "acme", "algo": "rs256"}})
    assert created.status_code == 201, created.text
    after = api.anon.get(discovery_path("acme"), headers={"If-None-Match": before})
    assert after.status_code == 200
    assert after.headers["ETag"] != before
    assert after.json()["id_token_signing_alg_values_supported"] == ["ES256", "RS256"]


def test_the_route_is_in_the_openapi_document(api: Api) -> None:
    paths = api.anon.get("/openapi.json").json()["paths"]
    operation = paths["/realms/{realm}/.well-known/openid-configuration"]["get"]
    assert set(operation["responses"]) == {"200", "304", "404"}
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/OpenIdConfiguration"}


# -- a verifier's view: nothing but the issuer URL, against a real web process --


@pytest.fixture
def web(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[Stack]:
    """`python -m worker.http` on a free port, with no public URL: the issuer base is then the
    server's own address, http://127.0.0.1:<port>, which the verifiers can reach."""
    port = free_port()
    stack = make_stack(
        tmp_path, database_url, redis_url, **PLAIN, http_host="127.0.0.1", http_port=str(port)
    )
    try:
        stack.spawn("web", [sys.executable, "-m", "worker.http"])
        wait_for(lambda: _answers(f"{stack.settings.issuer_base}/healthz"), 30, "the web process")
        yield stack
    finally:
        stack.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def pyjwt_verifies(issuer: str, token: str) -> dict[str, object]:
    """What a Python service does that was told only `issuer`."""
    document = httpx.get(f"{issuer}/.well-known/openid-configuration").json()
    assert document["issuer"] == issuer
    key = jwt.PyJWKClient(document["jwks_uri"]).get_signing_key_from_jwt(token)
    claims: dict[str, object] = jwt.decode(
        token,
        key.key,
        algorithms=document["id_token_signing_alg_values_supported"],
        issuer=document["issuer"],
        audience="api",
    )
    return claims


# Node's built-ins only (fetch, crypto): a verifier that shares no code with keyrotor or PyJWT.
NODE_VERIFIER = r"""
const crypto = require("node:crypto");
const [issuer, token] = process.argv.slice(1);
const part = (text) => Buffer.from(text, "base64url");
(async () => {
  const config = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
  if (config.issuer !== issuer) throw new Error(`issuer is ${config.issuer}`);
  const { keys } = await (await fetch(config.jwks_uri)).json();
  const [head, body, signature] = token.split(".");
  const header = JSON.parse(part(head));
  const claims = JSON.parse(part(body));
  if (!config.id_token_signing_alg_values_supported.includes(header.alg)) throw new Error("alg");
  const jwk = keys.find((k) => k.kid === header.kid);
  if (!jwk) throw new Error("no key with that kid");
  const key = crypto.createPublicKey({ key: jwk, format: "jwk" });
  const options = {
    ES256: ["sha256", { key, dsaEncoding: "ieee-p1363" }],
    RS256: ["sha256", key],
    PS256: ["sha256", { key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }],
    EdDSA: [null, key],
  }[header.alg];
  const signed = Buffer.from(`${head}.${body}`);
  if (!crypto.verify(options[0], signed, options[1], part(signature))) throw new Error("signature");
  if (claims.iss !== config.issuer) throw new Error(`iss is ${claims.iss}`);
  if (!(claims.exp > Date.now() / 1000)) throw new Error("expired");
  process.stdout.write(JSON.stringify(claims));
})().catch((error) => { process.stderr.write(error.message); process.exit(1); });
"""


def node_verifies(issuer: str, token: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node is not None, "node is missing: install Debian's nodejs"
    return subprocess.run(
        [node, "-e", NODE_VERIFIER, issuer, token],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_verifier_that_knows_only_the_issuer_accepts_the_signers_tokens(web: Stack) -> None:
    base = web.settings.issuer_base
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base), base  # the real server's address
    signer = Signer(web.service, issuer_base=base)
    for algo in ALGS:
        web.service.create_realm(f"realm-{algo}", algo=algo)
        issuer = f"{base}/realms/realm-{algo}"
        token = signer.sign(f"realm-{algo}", {"sub": "u1"}, timedelta(minutes=5), aud="api")
        assert pyjwt_verifies(issuer, token)["iss"] == issuer
        node = node_verifies(issuer, token)
        assert node.returncode == 0, f"{algo}: {node.stderr}"
        assert json.loads(node.stdout)["sub"] == "u1"
        head, body, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        forged = f"{head}.{b64url(json.dumps({**claims, 'sub': 'admin'}).encode())}.{signature}"
        refused = node_verifies(issuer, forged)
        assert (refused.returncode, refused.stderr) == (1, "signature"), algo
        with pytest.raises(jwt.InvalidSignatureError):
            pyjwt_verifies(issuer, forged)
    told = signer.sign("realm-es256", {"iss": "https://id.example"}, aud="api")
    with pytest.raises(jwt.InvalidIssuerError):  # kept as given, so not this realm's
        pyjwt_verifies(f"{base}/realms/realm-es256", told)


def test_keyrotor_token_sign_stamps_the_issuer_and_token_verify_accepts_it(web: Stack) -> None:
    web.service.create_realm("acme", algo="es256")
    issuer = f"{web.settings.issuer_base}/realms/acme"

    def keyrotor(*args: str) -> str:
        result = subprocess.run(
            [str(KEYROTOR), *args],
            cwd=web.tmp,
            env=web.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{args}: {result.stderr}"
        return result.stdout

    token = keyrotor("token", "sign", "acme", "--aud", "api", "--ttl", "5m").strip()
    assert pyjwt_verifies(issuer, token)["iss"] == issuer
    claims = json.loads(keyrotor("token", "verify", "acme", token, "--aud", "api", "--iss", issuer))
    assert claims["iss"] == issuer
