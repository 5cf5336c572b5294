"""`RemoteSigner` and `keyrotor token sign --remote` against a real served keyrotor: tokens that
verify with the realm's published keys, one admin token reused, and every refusal one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from keyrotor_client import (
    InvalidInput,
    KeyCache,
    NotFound,
    RemoteError,
    RemoteSigner,
    SignedToken,
)

from tests.http.conftest import Api, serve
from tests.support.cli import keyrotor_in_process


@pytest.fixture
def api(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[Api]:
    yield from serve(tmp_path, database_url, redis_url)


def jwks_url(api: Api) -> str:
    return api.url + "/realms/{realm}/.well-known/jwks.json"


def one_line(error: pytest.ExceptionInfo[Exception]) -> str:
    text = str(error.value)
    assert text and "\n" not in text
    return text


def test_signs_a_token_that_verifies_with_the_realms_published_keys(api: Api) -> None:
    realm = api.realm("acme", max_token_ttl="1h")
    signer = RemoteSigner(api.url, api.private_pem, api.kid)
    signed = signer.sign("acme", {"sub": "user-1"}, ttl=timedelta(minutes=5), audience="api")
    assert isinstance(signed, SignedToken)
    claims = KeyCache.from_url(jwks_url(api)).verify(realm["id"], signed.token, audience="api")
    assert claims["sub"] == "user-1"
    assert claims["iss"] == f"{api.stack.settings.issuer_base}/realms/acme"
    assert claims["exp"] - claims["iat"] == 300
    assert signed.expires_at == datetime.fromtimestamp(claims["exp"], UTC)
    assert signed.kid == jwt.get_unverified_header(signed.token)["kid"]
    by_id = signer.sign(realm["id"], ttl="1m")
    assert by_id.kid == signed.kid
    assert jwt.decode(by_id.token, options={"verify_signature": False})["exp"] == int(
        by_id.expires_at.timestamp()
    )


def test_the_admin_key_may_be_a_file_and_its_token_is_reused(api: Api, tmp_path: Path) -> None:
    api.realm("acme")
    path = tmp_path / "admin.pem"
    path.write_text(api.private_pem)
    for key in (path, str(path), api.private_pem.encode()):
        signer = RemoteSigner(api.url + "/", key, api.kid)
        first = signer.admin_token()
        assert signer.sign("acme").token
        assert signer.sign("acme").token
        assert signer.admin_token() == first  # minted once, not per token
        header = jwt.get_unverified_header(first)
        assert header == {"alg": "RS256", "kid": api.kid, "typ": "JWT"}


def test_a_wrong_admin_key_is_a_one_line_error(api: Api) -> None:
    api.realm("acme")
    other = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(RemoteError) as wrong_key:
        RemoteSigner(api.url, other, api.kid).sign("acme")
    assert wrong_key.value.status == 401
    assert one_line(wrong_key) == (
        "keyrotor refused to sign for 'acme': Unauthorized: signature verification failed"
    )
    with pytest.raises(RemoteError) as unknown:
        RemoteSigner(api.url, api.private_pem, "aky_0v1zTHXhtNgmDaXaDYSAqx").sign("acme")
    assert "unknown kid" in one_line(unknown)
    with pytest.raises(RemoteError) as other_audience:
        RemoteSigner(api.url, api.private_pem, api.kid, audience="elsewhere").sign("acme")
    assert "aud does not include" in one_line(other_audience)


def test_refusals_are_the_servers_one_line(api: Api) -> None:
    realm = api.realm("acme", max_token_ttl="1h")
    signer = RemoteSigner(api.url, api.private_pem, api.kid)
    with pytest.raises(NotFound) as missing:
        signer.sign("nowhere")
    assert one_line(missing) == "Realm 'nowhere' not found"
    with pytest.raises(InvalidInput) as too_long:
        signer.sign("acme", ttl=timedelta(hours=2))
    assert one_line(too_long) == "Ttl (2h) is longer than the realm's max token ttl (1h)"
    with pytest.raises(InvalidInput) as server_claim:
        signer.sign("acme", {"exp": 1})
    assert one_line(server_claim) == "Claims must not set exp: the server does"
    with pytest.raises(InvalidInput) as too_large:
        signer.sign("acme", {"pad": "x" * 9000})
    assert one_line(too_large) == "Body is too large: at most 8 KiB"
    view, private_pem = api.admin_keys.create(scopes=["realms:read"])
    assert private_pem is not None
    with pytest.raises(RemoteError) as forbidden:
        RemoteSigner(api.url, private_pem, view["id"]).sign(realm["id"])
    assert forbidden.value.status == 403
    assert one_line(forbidden) == f"keyrotor refused to sign for {realm['id']!r}: Forbidden"


def test_an_unreachable_server_and_bad_key_material_are_one_line(tmp_path: Path) -> None:
    pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(RemoteError) as unreachable:
        RemoteSigner("http://127.0.0.1:9", pem, "aky_x", timeout=2).sign("acme")
    assert unreachable.value.status is None
    assert "is unreachable" in one_line(unreachable)
    with pytest.raises(InvalidInput) as not_a_url:
        RemoteSigner("file:///etc/passwd", pem, "aky_x")
    assert "http(s) URL" in one_line(not_a_url)
    with pytest.raises(InvalidInput) as missing:
        RemoteSigner("http://127.0.0.1:9", tmp_path / "none.pem", "aky_x")
    assert "Cannot read the admin key" in one_line(missing)
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InvalidInput) as not_rsa:
        RemoteSigner("http://127.0.0.1:9", ec_pem, "aky_x")
    assert one_line(not_rsa) == "The admin key must be an RSA private key (admin tokens are RS256)"
    with pytest.raises(InvalidInput) as garbage:
        RemoteSigner("http://127.0.0.1:9", b"not a key", "aky_x")
    assert one_line(garbage) == "The admin key is not an unencrypted PEM private key"


def test_keyrotor_token_sign_remote_prints_a_token_that_token_verify_accepts(
    api: Api, tmp_path: Path
) -> None:
    realm = api.realm("acme")
    view, private_pem = api.admin_keys.create(scopes=[f"realm:{realm['id']}:sign"])
    assert private_pem is not None
    key = tmp_path / "signer.pem"
    key.write_text(private_pem)
    remote = ["--remote", api.url, "--key", str(key), "--kid", view["id"]]
    claims = json.dumps({"sub": "user-1"})
    signed = keyrotor_in_process(
        "token", "sign", "acme", "--claims", claims, "--aud", "api", "--ttl", "5m", *remote,
        env=api.stack.env, cwd=api.stack.tmp,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    token = signed.stdout.strip()
    verified = keyrotor_in_process(
        "token", "verify", "acme", token, "--aud", "api", env=api.stack.env, cwd=api.stack.tmp
    )
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["sub"] == "user-1"

    refused = keyrotor_in_process(
        "token", "sign", "acme", "--iss", "me", *remote, env=api.stack.env, cwd=api.stack.tmp
    )
    assert refused.returncode == 2
    assert refused.stderr == (
        "error: --iss and --jti cannot be used with --remote: the server sets them\n"
    )
    alone = keyrotor_in_process(
        "token", "sign", "acme", "--remote", api.url, env=api.stack.env, cwd=api.stack.tmp
    )
    assert (alone.returncode, alone.stderr) == (2, "error: --remote, --key and --kid go together\n")
