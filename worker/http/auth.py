"""Admin API authentication: `Authorization: Bearer <JWT>`, an RS256 token signed by a current
admin API key named in the header's `kid`, with an `aud` list, `iat` and `exp`.

Only RS256 is ever tried, with the public key stored for that `kid`; header members that
point elsewhere for a key (`jku`, `x5u`, `jwk`, `x5c`) are never read. PyJWT checks the
signature before any claim, so an unsigned or forged token learns nothing about the rules,
and then `exp`, `nbf`, `iat`, `aud` and `iss` against the wall clock with the skew as leeway;
the lifetime cap (`exp - iat`) is ours.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from worker.core import scopes
from worker.core.bounded import BoundedDict
from worker.core.durations import format_duration
from worker.core.errors import Forbidden, InvalidToken, KeyrotorError, Unauthenticated
from worker.core.scopes import Need
from worker.store.admin_keys import is_admin_key_id

ALGORITHM = "RS256"
MAX_TOKEN_CHARS = 8 * 1024
PARSED_KEYS = 1000
TIMES = ("exp", "iat", "nbf")


class PublicKeys(Protocol):
    def admin_key(self, kid: str) -> tuple[str, Sequence[str]] | None:
        """The public PEM and scopes of a current admin key, or None: one read."""


@dataclass(frozen=True)
class AdminPrincipal:
    """Who made an admin request: the admin key that signed its token, the claims, and what
    the key may do (worker.core.scopes)."""

    kid: str
    claims: dict[str, Any]
    scopes: tuple[str, ...] = (scopes.ADMIN,)

    def allow(self, need: Need) -> None:
        """Go on, or Forbidden (403) when the key's scopes do not cover `need`; the message
        (logged, never sent) names the key and what it asked."""
        if not scopes.allows(self.scopes, need):
            on = f" on {need.realm_id}" if need.realm_id is not None else ""
            raise Forbidden(f"{self.kid} lacks the scope for {need.action.value}{on}")

    def readable(self) -> set[str] | None:
        """The realms a listing may show this key: None for every realm."""
        return scopes.readable_realms(self.scopes)


class AdminAuthenticator:
    """Checks admin bearer tokens; `kid` is looked up on every request, so a deleted admin
    key stops working at once in every process (parsed keys are cached by their PEM only)."""

    def __init__(
        self,
        keys: PublicKeys,
        *,
        audience: str,
        max_ttl: timedelta,
        clock_skew: timedelta,
        issuer: str | None = None,
    ) -> None:
        self.keys = keys
        self.audience = audience
        self.issuer = issuer
        self.max_ttl = max_ttl
        self.clock_skew = clock_skew
        self._parsed: BoundedDict[str, rsa.RSAPublicKey] = BoundedDict(PARSED_KEYS)
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> AdminPrincipal:
        """The principal of a valid `Authorization` header; InvalidToken (or Unauthenticated
        when there is no bearer token at all) otherwise."""
        token = bearer_token(authorization)
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("token is too large")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidToken("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("algorithm not allowed: only RS256 is accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("kid header is required")
        key, held = self._key(kid)
        try:
            claims = _ADMIN_JWT.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.clock_skew,
            )
        except (jwt.PyJWTError, ValueError, TypeError) as error:
            raise InvalidToken(_reason(error)) from None
        exp, iat = claims["exp"], claims["iat"]
        if exp <= iat:
            raise InvalidToken("exp must be later than iat")
        if exp - iat > self.max_ttl.total_seconds():
            limit = format_duration(self.max_ttl)
            raise InvalidToken(f"token lifetime (exp - iat) is longer than {limit}")
        return AdminPrincipal(kid, claims, tuple(held))

    def _key(self, kid: str) -> tuple[rsa.RSAPublicKey, Sequence[str]]:
        """The parsed public key of `kid` and its scopes, read together."""
        found = self.keys.admin_key(kid)
        if found is None:
            raise InvalidToken("unknown kid: not a current admin API key")
        pem, held = found
        with self._lock:
            key = self._parsed.get(pem)
        if key is None:
            try:
                loaded = serialization.load_pem_public_key(pem.encode("ascii"))
            except (ValueError, TypeError, UnsupportedAlgorithm):
                loaded = None
            if not isinstance(loaded, rsa.RSAPublicKey):
                raise InvalidToken("unknown kid: not a current admin API key")
            key = loaded
            with self._lock:
                self._parsed[pem] = key
        return key, held


class _AdminJWT(jwt.PyJWT):
    """PyJWT, refusing claims of the wrong type before its own checks read them: it takes
    `"123"` or a 400-digit integer for a time and reports a bad `aud` like a wrong one."""

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        claims = super()._decode_payload(decoded)  # after the signature check
        for name in TIMES:
            if name in claims and not _is_time(claims[name]):
                raise InvalidToken(f"{name} claim must be a number (seconds since the epoch)")
        aud = claims.get("aud")
        if "aud" in claims and not (isinstance(aud, str) or _strings(aud)):
            raise InvalidToken("aud claim must be a string or a list of strings")
        return claims


# `sub` and `jti` mean nothing to the admin API, so their types are not checked either.
_ADMIN_JWT = _AdminJWT({"require": ["exp", "iat"], "verify_sub": False, "verify_jti": False})


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _reason(error: Exception) -> str:
    """PyJWT's refusal as the one line the 401 carries."""
    match error:
        case jwt.InvalidSignatureError():
            return "signature verification failed"
        case jwt.MissingRequiredClaimError(claim=claim):
            return f"{claim} claim is required"
        case jwt.ExpiredSignatureError():
            return "token has expired"
        case jwt.ImmatureSignatureError():
            return "token is not valid yet (nbf or iat is in the future)"
        case jwt.InvalidAudienceError():
            return "aud does not include this service's admin audience"
        case jwt.InvalidIssuerError():
            return "iss is not this service's admin issuer"
        case _:
            return "malformed token"


def claimed_kid(authorization: str | None) -> str | None:
    """The `kid` a refused token names, for the log line, if it has the shape of an admin key
    id (unverified: it says which key the caller claims, nothing more); never raises."""
    try:
        token = bearer_token(authorization)
        if len(token) > MAX_TOKEN_CHARS:
            return None
        kid = jwt.get_unverified_header(token).get("kid")
    except (KeyrotorError, jwt.PyJWTError, ValueError, TypeError):
        return None
    return kid if isinstance(kid, str) and is_admin_key_id(kid) else None


def bearer_token(authorization: str | None) -> str:
    """The token of a `Bearer` credential; no header, or another scheme, is Unauthenticated."""
    if authorization is None:
        raise Unauthenticated("a bearer token is required")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("a bearer token is required")
    token = token.strip()
    if not token:
        raise InvalidToken("malformed token")
    return token


def _is_time(value: object) -> bool:
    """A finite JSON number: not a bool, a string, or an integer of hundreds of digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def challenge(error: InvalidToken | Unauthenticated) -> str:
    """The `WWW-Authenticate` value for a refusal (RFC 6750 section 3)."""
    if isinstance(error, Unauthenticated):
        return 'Bearer realm="keyrotor-admin"'
    description = "".join(c for c in str(error) if c.isprintable() and c not in '"\\')
    return f'Bearer error="invalid_token", error_description="{description}"'
