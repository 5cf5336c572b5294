"""Signing keys: generate, import, export as JWK, load for PyJWT. No I/O, no storage."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import timedelta

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from worker.core import ids
from worker.core.errors import InvalidInput

ALGOS: tuple[str, ...] = ("hs256", "rs256", "ps256", "es256", "eddsa")
JWT_ALG: dict[str, str] = {
    "hs256": "HS256",
    "rs256": "RS256",
    "ps256": "PS256",
    "es256": "ES256",
    "eddsa": "EdDSA",
}
RSA_BITS: tuple[int, ...] = (2048, 3072, 4096)
RSA_PUBLIC_EXPONENT = 65537
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
MIN_HMAC_BYTES = 32
MAX_IMPORT_CHARS = 16 * 1024
_RSA_ALGOS = ("rs256", "ps256")

AsymmetricPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
AsymmetricPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
SigningKey = bytes | AsymmetricPrivateKey
"""What `jwt.encode` takes: the HMAC secret itself, or a private key object."""


@dataclass(frozen=True)
class KeyMaterial:
    """A key as keyrotor stores it; `secret` is sealed at rest, so it stays out of repr."""

    algo: str
    secret: bytes = field(repr=False)
    public_pem: str | None


def check_algo(algo: str) -> str:
    """Normalize an algo name, refusing anything keyrotor does not sign with."""
    normalized = algo.strip().lower()
    if not normalized:
        raise InvalidInput("Algo can't be blank")
    if normalized not in ALGOS:
        raise InvalidInput(f"Algo must be one of {', '.join(ALGOS)}")
    return normalized


def generate(algo: str, rsa_bits: int = 2048) -> KeyMaterial:
    """Make a fresh key for `algo`; `rsa_bits` only matters for rs256 and ps256."""
    algo = check_algo(algo)
    if algo == "hs256":
        return KeyMaterial(algo, ids.hmac_secret().encode("utf-8"), None)
    private_key: AsymmetricPrivateKey
    if algo in _RSA_ALGOS:
        if rsa_bits not in RSA_BITS:
            raise InvalidInput(f"RSA key size must be one of {', '.join(map(str, RSA_BITS))}")
        private_key = rsa.generate_private_key(RSA_PUBLIC_EXPONENT, rsa_bits)
    elif algo == "es256":
        private_key = ec.generate_private_key(ec.SECP256R1())
    else:
        private_key = ed25519.Ed25519PrivateKey.generate()
    return _material(algo, private_key)


def import_key(algo: str, text: str) -> KeyMaterial:
    """Accept a key brought from elsewhere, refusing weak, mismatched or malformed ones."""
    algo = check_algo(algo)
    if len(text) > MAX_IMPORT_CHARS:
        raise InvalidInput("Key is too large: at most 16 KiB is accepted")
    if algo == "hs256":
        secret = text.encode("utf-8")
        if len(secret) < MIN_HMAC_BYTES:
            raise InvalidInput("Key is too short: an hs256 secret needs at least 256 bits")
        return KeyMaterial(algo, secret, None)

    pem = text.encode("utf-8")
    # Load unvalidated first so an oversized RSA key is refused before its costly check.
    private_key = _private_for(algo, _load_private_pem(pem, validate=False))
    if isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size < MIN_RSA_BITS:
            raise InvalidInput("Key is too short: RSA keys need at least 2048 bits")
        if private_key.key_size > MAX_RSA_BITS:
            raise InvalidInput("Key is too long: RSA keys above 4096 bits are not supported")
        private_key = _private_for(algo, _load_private_pem(pem, validate=True))
    return _material(algo, private_key)


def public_jwk(algo: str, kid: str, public_pem: str) -> dict[str, str]:
    """The JWKS member for a key: public parameters only, base64url without padding."""
    algo = check_algo(algo)
    if algo == "hs256":
        raise InvalidInput("hs256 keys are secret and never appear in a JWKS")
    public_key = load_verifying_key(algo, public_pem)
    head = {"kid": kid, "use": "sig", "alg": JWT_ALG[algo]}
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {"kty": "RSA", **head, "n": _b64_uint(numbers.n), "e": _b64_uint(numbers.e)}
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        point = public_key.public_numbers()
        x, y = _b64(point.x.to_bytes(32, "big")), _b64(point.y.to_bytes(32, "big"))
        return {"kty": "EC", **head, "crv": "P-256", "x": x, "y": y}
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", **head, "crv": "Ed25519", "x": _b64(raw)}


def load_signing_key(algo: str, secret: bytes) -> SigningKey:
    """The key object for `jwt.encode`, from the bytes that were sealed at rest."""
    algo = check_algo(algo)
    if algo == "hs256":
        return secret
    # The AES-GCM seal already guarantees integrity, and RSA validation costs ~30 ms per key.
    return _private_for(algo, _load_private_pem(secret, validate=algo not in _RSA_ALGOS))


def load_verifying_key(algo: str, public_pem: str) -> AsymmetricPublicKey:
    """The key object for `jwt.decode` of an asymmetric key; hs256 verifies with its secret."""
    algo = check_algo(algo)
    if algo == "hs256":
        raise InvalidInput("hs256 keys have no public key: verify with the secret")
    try:
        loaded = serialization.load_pem_public_key(public_pem.encode("utf-8"))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidInput("Key is not a valid PEM public key") from None
    return _public_for(algo, loaded)


def _material(algo: str, private_key: AsymmetricPrivateKey) -> KeyMaterial:
    secret = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyMaterial(algo, secret, public_pem.decode("ascii"))


def _load_private_pem(pem: bytes, *, validate: bool) -> PrivateKeyTypes:
    # `from None`: the library's message may quote parts of the key.
    try:
        return serialization.load_pem_private_key(
            pem, password=None, unsafe_skip_rsa_key_validation=not validate
        )
    except TypeError:
        raise InvalidInput("Key is encrypted: import it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput("Key is not a valid PEM private key") from None


def _private_for(algo: str, key: PrivateKeyTypes) -> AsymmetricPrivateKey:
    if algo in _RSA_ALGOS and isinstance(key, rsa.RSAPrivateKey):
        return key
    if algo == "es256" and isinstance(key, ec.EllipticCurvePrivateKey) and _is_p256(key.curve):
        return key
    if algo == "eddsa" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise InvalidInput(f"Key does not match algo {algo}")


def _public_for(algo: str, key: PublicKeyTypes) -> AsymmetricPublicKey:
    if algo in _RSA_ALGOS and isinstance(key, rsa.RSAPublicKey):
        return key
    if algo == "es256" and isinstance(key, ec.EllipticCurvePublicKey) and _is_p256(key.curve):
        return key
    if algo == "eddsa" and isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise InvalidInput(f"Key does not match algo {algo}")


def _is_p256(curve: ec.EllipticCurve) -> bool:
    return isinstance(curve, ec.SECP256R1)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64_uint(value: int) -> str:
    """RFC 7518 integers: big-endian, shortest form."""
    return _b64(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


@dataclass(frozen=True)
class ActiveKey:
    """A realm's signing key, opened, for an in-process signer; the secret stays out of repr."""

    realm_id: str
    realm_name: str
    kid: str
    algo: str
    secret: bytes = field(repr=False)
    max_token_ttl: timedelta
