"""Signing keys: generate, import, export as JWK, load for PyJWT. No I/O, no storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, get_args

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from jwt import get_algorithm_by_name

from worker.core import ids
from worker.core.errors import InvalidInput

Algo = Literal["hs256", "rs256", "ps256", "es256", "eddsa"]
"""What keyrotor signs with, as operators write it: settings, API enums and help read this."""
RsaBits = Literal[2048, 3072, 4096]
PublicAlg = Literal["RS256", "PS256", "ES256", "EdDSA"]
"""The JWT `alg` of the keys a JWKS publishes: every algo but hs256, whose key is secret."""
ALGOS: tuple[Algo, ...] = get_args(Algo)
RSA_BITS: tuple[RsaBits, ...] = get_args(RsaBits)
PUBLIC_ALGS: frozenset[str] = frozenset(get_args(PublicAlg))
JWT_ALG: dict[str, str] = {
    "hs256": "HS256",
    "rs256": "RS256",
    "ps256": "PS256",
    "es256": "ES256",
    "eddsa": "EdDSA",
}
RSA_PUBLIC_EXPONENT = 65537
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
MIN_HMAC_BYTES = 32
MAX_IMPORT_CHARS = 16 * 1024
_RSA_ALGOS = ("rs256", "ps256")
POOLED_ALGOS: frozenset[str] = frozenset(_RSA_ALGOS)
"""The algos whose keys are made ahead of need: RSA generation takes 40 ms to over a second,
every other algo's well under a millisecond."""
POOL_REALM = "pool"
"""The realm id a pooled key's secret is sealed with until a realm takes it (no realm id looks
like it: those start `rl_`)."""
# What a JWKS member carries besides kty, kid, use and alg: public parameters, nothing else.
_PUBLIC_PARAMETERS = ("crv", "n", "e", "x", "y")

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
    """The JWKS member for a key: PyJWT's export of the public parameters (it adds `key_ops`
    to RSA keys, which is left out), with `kid`, `use` and `alg`."""
    algo = check_algo(algo)
    if algo == "hs256":
        raise InvalidInput("hs256 keys are secret and never appear in a JWKS")
    alg = JWT_ALG[algo]
    exported: dict[str, Any] = get_algorithm_by_name(alg).to_jwk(
        load_verifying_key(algo, public_pem), as_dict=True
    )
    member = {"kty": str(exported["kty"]), "kid": kid, "use": "sig", "alg": alg}
    return member | {name: str(exported[name]) for name in _PUBLIC_PARAMETERS if name in exported}


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
    """A private key matches `algo` when its public half does."""
    if not isinstance(key, AsymmetricPrivateKey):
        raise InvalidInput(f"Key does not match algo {algo}")
    _public_for(algo, key.public_key())
    return key


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


@dataclass(frozen=True)
class ActiveKey:
    """A realm's signing key, opened, for an in-process signer; the secret stays out of repr."""

    realm_id: str
    realm_name: str
    kid: str
    algo: str
    secret: bytes = field(repr=False)
    max_token_ttl: timedelta
    jwks_version: int = -1
    """The realm's `jwks_version` when the key was read: a published copy newer than it means
    the key may have changed since (-1: unknown)."""


def issuer(issuer_base: str, realm_name: str) -> str:
    """A realm's `iss`, and the URL its discovery document lives under: by name, since names
    never change and are what an operator types into a gateway's configuration."""
    return f"{issuer_base}/realms/{realm_name}"
