from __future__ import annotations

import base64
import functools
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core import ids, keys
from worker.core.errors import InvalidInput
from worker.core.keys import JWT_ALG, KeyMaterial

ASYMMETRIC = ("rs256", "ps256", "es256", "eddsa")
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}
CLAIMS = {"sub": "user_1", "aud": "tests"}


@functools.cache
def generated(algo: str) -> KeyMaterial:
    """One key per algo for the whole module: RSA generation is the slow part of these tests."""
    return keys.generate(algo)


def pem_of(
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed448.Ed448PrivateKey,
    fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
) -> str:
    raw = private_key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return raw.decode("ascii")


def b64url_decode(text: str) -> bytes:
    assert "=" not in text
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(material: KeyMaterial, kid: str) -> str:
    signing_key = keys.load_signing_key(material.algo, material.secret)
    return jwt.encode(CLAIMS, signing_key, algorithm=JWT_ALG[material.algo], headers={"kid": kid})


def verify_with_jwk(token: str, jwk: dict[str, str]) -> dict[str, object]:
    public = jwt.PyJWK(jwk)
    claims: dict[str, object] = jwt.decode(
        token, public.key, algorithms=[jwk["alg"]], audience="tests"
    )
    return claims


# --- algo names ---------------------------------------------------------------------------


def test_check_algo_normalizes_case() -> None:
    assert keys.check_algo("RS256") == "rs256"
    assert keys.check_algo("EdDSA") == "eddsa"


@pytest.mark.parametrize("algo", ["", "   "])
def test_check_algo_refuses_blank(algo: str) -> None:
    with pytest.raises(InvalidInput, match=r"^Algo can't be blank$"):
        keys.check_algo(algo)


@pytest.mark.parametrize("algo", ["hs512", "none", "RS384"])
def test_check_algo_refuses_unknown(algo: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        keys.check_algo(algo)
    assert str(raised.value) == "Algo must be one of hs256, rs256, ps256, es256, eddsa"


# --- generated keys sign and verify ---------------------------------------------------------


@pytest.mark.parametrize("algo", ASYMMETRIC)
def test_generated_key_signs_and_verifies_through_its_jwk(algo: str) -> None:
    material = generated(algo)
    kid = ids.key_id()
    assert material.public_pem is not None
    jwk = keys.public_jwk(algo, kid, material.public_pem)

    token = sign(material, kid)

    assert jwt.get_unverified_header(token)["kid"] == kid
    assert jwt.get_unverified_header(token)["alg"] == JWT_ALG[algo]
    assert verify_with_jwk(token, jwk) == CLAIMS


@pytest.mark.parametrize("algo", ASYMMETRIC)
def test_generated_key_verifies_with_load_verifying_key(algo: str) -> None:
    material = generated(algo)
    assert material.public_pem is not None
    token = sign(material, ids.key_id())
    public = keys.load_verifying_key(algo, material.public_pem)
    assert jwt.decode(token, public, algorithms=[JWT_ALG[algo]], audience="tests") == CLAIMS


@pytest.mark.parametrize("algo", ASYMMETRIC)
def test_generated_secret_is_pkcs8_pem(algo: str) -> None:
    material = generated(algo)
    assert material.secret.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert material.public_pem is not None
    assert material.public_pem.startswith("-----BEGIN PUBLIC KEY-----\n")


def test_generated_hs256_is_a_jsk_secret_that_signs_and_verifies() -> None:
    material = keys.generate("hs256")
    assert material.public_pem is None
    assert ids.looks_like("jsk", material.secret.decode("utf-8"))
    token = sign(material, ids.key_id())
    assert jwt.decode(token, material.secret, algorithms=["HS256"], audience="tests") == CLAIMS


def test_each_generated_key_is_new() -> None:
    assert keys.generate("eddsa").secret != keys.generate("eddsa").secret
    assert keys.generate("hs256").secret != keys.generate("hs256").secret


def test_generate_rsa_3072() -> None:
    material = keys.generate("ps256", rsa_bits=3072)
    assert material.public_pem is not None
    public = keys.load_verifying_key("ps256", material.public_pem)
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 3072
    assert public.public_numbers().e == 65537
    token = sign(material, "jky_x")
    assert verify_with_jwk(token, keys.public_jwk("ps256", "jky_x", material.public_pem)) == CLAIMS


@pytest.mark.parametrize("bits", [1024, 2047, 8192])
def test_generate_refuses_unsupported_rsa_sizes(bits: int) -> None:
    with pytest.raises(InvalidInput, match="RSA key size must be one of 2048, 3072, 4096"):
        keys.generate("rs256", rsa_bits=bits)


def test_key_material_repr_hides_the_secret() -> None:
    material = keys.generate("hs256")
    assert material.secret.decode() not in repr(material)


# --- JWK export -----------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ASYMMETRIC)
def test_jwk_has_public_members_only(algo: str) -> None:
    material = generated(algo)
    assert material.public_pem is not None
    jwk = keys.public_jwk(algo, "jky_abc", material.public_pem)
    assert not PRIVATE_MEMBERS & jwk.keys()
    assert jwk["kid"] == "jky_abc"
    assert jwk["use"] == "sig"
    assert jwk["alg"] == JWT_ALG[algo]
    assert all("=" not in value for value in jwk.values())
    json.dumps(jwk)


@pytest.mark.parametrize("algo", ["rs256", "ps256"])
def test_rsa_jwk_members(algo: str) -> None:
    material = generated(algo)
    assert material.public_pem is not None
    jwk = keys.public_jwk(algo, "jky_abc", material.public_pem)
    assert set(jwk) == {"kty", "kid", "use", "alg", "n", "e"}
    assert jwk["kty"] == "RSA"
    assert jwk["e"] == "AQAB"
    n = b64url_decode(jwk["n"])
    assert len(n) == 256 and n[0] != 0
    public = keys.load_verifying_key(algo, material.public_pem)
    assert isinstance(public, rsa.RSAPublicKey)
    assert int.from_bytes(n, "big") == public.public_numbers().n


def test_es256_jwk_members() -> None:
    material = generated("es256")
    assert material.public_pem is not None
    jwk = keys.public_jwk("es256", "jky_abc", material.public_pem)
    assert set(jwk) == {"kty", "kid", "use", "alg", "crv", "x", "y"}
    assert (jwk["kty"], jwk["crv"]) == ("EC", "P-256")
    assert len(b64url_decode(jwk["x"])) == 32
    assert len(b64url_decode(jwk["y"])) == 32


def test_es256_jwk_keeps_leading_zero_bytes() -> None:
    """x and y are fixed 32 bytes; PyJWT refuses a shorter coordinate."""
    for _ in range(20_000):
        private_key = ec.generate_private_key(ec.SECP256R1())
        if private_key.public_key().public_numbers().x < 2**248:
            break
    else:
        pytest.fail("no P-256 key with a short x coordinate found")
    material = keys.import_key("es256", pem_of(private_key))
    assert material.public_pem is not None
    jwk = keys.public_jwk("es256", "jky_abc", material.public_pem)
    assert b64url_decode(jwk["x"])[0] == 0
    assert len(b64url_decode(jwk["x"])) == 32
    assert verify_with_jwk(sign(material, "jky_abc"), jwk) == CLAIMS


def test_eddsa_jwk_members() -> None:
    material = generated("eddsa")
    assert material.public_pem is not None
    jwk = keys.public_jwk("eddsa", "jky_abc", material.public_pem)
    assert set(jwk) == {"kty", "kid", "use", "alg", "crv", "x"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "EdDSA")
    assert len(b64url_decode(jwk["x"])) == 32


def test_hs256_never_becomes_a_jwk() -> None:
    with pytest.raises(InvalidInput):
        keys.public_jwk("hs256", "jky_abc", "whatever")


def test_jwk_refuses_a_public_key_of_another_family() -> None:
    material = generated("eddsa")
    assert material.public_pem is not None
    with pytest.raises(InvalidInput, match=r"^Key does not match algo es256$"):
        keys.public_jwk("es256", "jky_abc", material.public_pem)


# --- import ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ASYMMETRIC)
def test_import_round_trip_keeps_the_public_key(algo: str) -> None:
    material = generated(algo)
    imported = keys.import_key(algo, material.secret.decode("ascii"))
    assert imported == material


def test_import_accepts_traditional_rsa_pem_and_normalizes_to_pkcs8() -> None:
    material = generated("rs256")
    private_key = serialization.load_pem_private_key(material.secret, None)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    text = pem_of(private_key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert text.startswith("-----BEGIN RSA PRIVATE KEY-----")

    imported = keys.import_key("RS256", text)

    assert imported.algo == "rs256"
    assert imported.secret.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert imported.public_pem == material.public_pem


def test_import_accepts_traditional_ec_pem() -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())
    text = pem_of(private_key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert text.startswith("-----BEGIN EC PRIVATE KEY-----")
    imported = keys.import_key("es256", text)
    assert imported.secret.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert imported.public_pem is not None
    jwk = keys.public_jwk("es256", "jky_abc", imported.public_pem)
    assert verify_with_jwk(sign(imported, "jky_abc"), jwk) == CLAIMS


def test_import_refuses_short_rsa_key() -> None:
    short = rsa.generate_private_key(65537, 1024)
    with pytest.raises(InvalidInput) as raised:
        keys.import_key("rs256", pem_of(short))
    assert str(raised.value) == "Key is too short: RSA keys need at least 2048 bits"


def test_import_refuses_rsa_key_above_4096_bits() -> None:
    long = rsa.generate_private_key(65537, 4160)
    with pytest.raises(InvalidInput, match="RSA keys above 4096 bits are not supported"):
        keys.import_key("ps256", pem_of(long))


@pytest.mark.parametrize(
    ("algo", "private_key"),
    [
        ("rs256", ec.generate_private_key(ec.SECP256R1())),
        ("es256", ec.generate_private_key(ec.SECP384R1())),
        ("eddsa", ed448.Ed448PrivateKey.generate()),
        ("eddsa", ec.generate_private_key(ec.SECP256R1())),
    ],
)
def test_import_refuses_key_of_another_type(
    algo: str, private_key: ec.EllipticCurvePrivateKey | ed448.Ed448PrivateKey
) -> None:
    with pytest.raises(InvalidInput) as raised:
        keys.import_key(algo, pem_of(private_key))
    assert str(raised.value) == f"Key does not match algo {algo}"


def test_import_refuses_rsa_key_for_es256() -> None:
    with pytest.raises(InvalidInput, match=r"^Key does not match algo es256$"):
        keys.import_key("es256", generated("rs256").secret.decode("ascii"))


def test_import_hs256_takes_any_long_string_even_a_pem() -> None:
    """hs256 takes any long-enough string, even one that looks like a PEM."""
    text = generated("eddsa").secret.decode("ascii")
    assert keys.import_key("hs256", text).secret == text.encode("ascii")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a key at all",
        "-----BEGIN PRIVATE KEY-----\nAAAAnotbase64!!\n-----END PRIVATE KEY-----\n",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    ],
)
def test_import_refuses_garbage(text: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        keys.import_key("es256", text)
    assert str(raised.value) == "Key is not a valid PEM private key"


def test_import_refuses_public_key_in_place_of_private() -> None:
    public_pem = generated("rs256").public_pem
    assert public_pem is not None
    with pytest.raises(InvalidInput) as raised:
        keys.import_key("rs256", public_pem)
    assert str(raised.value) == "Key is not a valid PEM private key"


def test_import_refuses_encrypted_pem() -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())
    text = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode("ascii")
    with pytest.raises(InvalidInput, match=r"^Key is encrypted"):
        keys.import_key("es256", text)


@pytest.mark.parametrize("algo", ["hs256", "rs256"])
def test_import_refuses_oversized_input(algo: str) -> None:
    with pytest.raises(InvalidInput, match=r"^Key is too large"):
        keys.import_key(algo, "A" * (16 * 1024 + 1))


def test_import_hs256_accepts_any_secret_of_32_bytes() -> None:
    secret = "x" * 32
    material = keys.import_key("hs256", secret)
    assert material == KeyMaterial("hs256", secret.encode(), None)
    assert keys.import_key("hs256", "é" * 16).secret == "é".encode() * 16  # counts bytes


def test_import_hs256_accepts_a_jsk_secret() -> None:
    secret = ids.hmac_secret()
    assert keys.import_key("hs256", secret).secret == secret.encode()


def test_import_hs256_refuses_short_secret_without_echoing_it() -> None:
    secret = "s3cr3t-but-only-31-bytes-long!!"
    assert len(secret) == 31
    with pytest.raises(InvalidInput) as raised:
        keys.import_key("hs256", secret)
    assert str(raised.value) == "Key is too short: an hs256 secret needs at least 256 bits"


def test_refusal_messages_never_quote_the_key() -> None:
    text = generated("es256").secret.decode("ascii")
    body = text.splitlines()[1]
    with pytest.raises(InvalidInput) as raised:
        keys.import_key("rs256", text)
    assert body not in str(raised.value)
    broken = text.replace(body, body[:-4] + "!!!!")
    with pytest.raises(InvalidInput) as raised:
        keys.import_key("es256", broken)
    assert body[:20] not in str(raised.value)
    assert raised.value.__cause__ is None


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=3000))
def test_import_of_arbitrary_text_fails_only_with_invalid_input(text: str) -> None:
    for algo in ("es256", "eddsa", "rs256"):
        with pytest.raises(InvalidInput):
            keys.import_key(algo, text)


@settings(max_examples=100, deadline=None)
@given(body=st.binary(min_size=1, max_size=2000))
def test_import_of_random_pem_body_fails_with_invalid_input(body: bytes) -> None:
    encoded = base64.encodebytes(body).decode("ascii")
    for label in ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"):
        text = f"-----BEGIN {label}-----\n{encoded}-----END {label}-----\n"
        with pytest.raises(InvalidInput):
            keys.import_key("es256", text)


# --- loading --------------------------------------------------------------------------------


def test_load_signing_key_for_hs256_is_the_secret() -> None:
    material = keys.generate("hs256")
    assert keys.load_signing_key("hs256", material.secret) == material.secret


@pytest.mark.parametrize("algo", ASYMMETRIC)
def test_load_signing_key_returns_a_private_key_object(algo: str) -> None:
    key = keys.load_signing_key(algo, generated(algo).secret)
    assert isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    )


def test_load_signing_key_refuses_a_key_of_another_algo() -> None:
    with pytest.raises(InvalidInput, match=r"^Key does not match algo rs256$"):
        keys.load_signing_key("rs256", generated("es256").secret)


def test_load_verifying_key_refuses_hs256_and_garbage() -> None:
    with pytest.raises(InvalidInput):
        keys.load_verifying_key("hs256", "x")
    with pytest.raises(InvalidInput, match=r"^Key is not a valid PEM public key$"):
        keys.load_verifying_key("es256", "garbage")


def test_the_algo_tables_agree() -> None:
    """One list of algos: each has a JWT `alg`, and a JWKS publishes all but hs256's."""
    assert set(JWT_ALG) == set(keys.ALGOS)
    assert {JWT_ALG[algo] for algo in keys.ALGOS if algo != "hs256"} == keys.PUBLIC_ALGS
