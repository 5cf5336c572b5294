"""Admin API authentication, Authgear style: `Authorization: Bearer <JWT>` signed with RS256
by a current admin API key named in the header's `kid`.

Only RS256 is ever tried, with the public key stored for that `kid`; header members that
point elsewhere for a key (`jku`, `x5u`, `jwk`, `x5c`) are never read. The signature is
checked before any claim, so an unsigned or forged token learns nothing about the rules.
The clock is a parameter, so the time checks are testable without patching.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from worker.core.clock import Clock, utcnow
from worker.core.durations import format_duration
from worker.core.errors import InvalidToken, Unauthenticated

ALGORITHM = "RS256"
MAX_TOKEN_CHARS = 8 * 1024


class PublicKeys(Protocol):
    def public_pem(self, kid: str) -> str | None: ...


@dataclass(frozen=True)
class AdminPrincipal:
    """Who made an admin request: the admin key that signed its token, and the claims."""

    kid: str
    claims: dict[str, Any]


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
        clock: Clock = utcnow,
        issuer: str | None = None,
    ) -> None:
        self.keys = keys
        self.audience = audience
        self.issuer = issuer
        self.max_ttl = max_ttl
        self.clock_skew = clock_skew
        self.clock = clock
        self._parsed: dict[str, rsa.RSAPublicKey] = {}
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
        key = self._key(kid)
        try:
            # Only the signature here: the claims are checked below, against our own clock.
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise InvalidToken("signature verification failed") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidToken("malformed token") from None
        self._check_claims(claims)
        return AdminPrincipal(kid, claims)

    def _key(self, kid: str) -> rsa.RSAPublicKey:
        pem = self.keys.public_pem(kid)
        if pem is None:
            raise InvalidToken("unknown kid: not a current admin API key")
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
                if len(self._parsed) > 1000:
                    self._parsed.clear()
                self._parsed[pem] = key
        return key

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        exp = _number(claims, "exp")
        iat = _number(claims, "iat")
        self._check_audience(claims)
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise InvalidToken("iss is not this service's admin issuer")
        now = self.clock().timestamp()
        skew = self.clock_skew.total_seconds()
        if iat > now + skew:
            raise InvalidToken("iat is in the future")
        if exp <= iat:
            raise InvalidToken("exp must be later than iat")
        if exp - iat > self.max_ttl.total_seconds():
            limit = format_duration(self.max_ttl)
            raise InvalidToken(f"token lifetime (exp - iat) is longer than {limit}")
        if exp <= now - skew:
            raise InvalidToken("token has expired")
        if "nbf" in claims and _number(claims, "nbf") > now + skew:
            raise InvalidToken("token is not valid yet (nbf)")

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        if "aud" not in claims:
            raise InvalidToken("aud claim is required")
        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise InvalidToken("aud claim must be a string or a list of strings")
        if self.audience not in audiences:
            raise InvalidToken("aud does not include this service's admin audience")


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


def _number(claims: Mapping[str, Any], name: str) -> float:
    if name not in claims:
        raise InvalidToken(f"{name} claim is required")
    value = claims[name]
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # a JSON integer of hundreds of digits
            number = float(value)
    if not math.isfinite(number):
        raise InvalidToken(f"{name} claim must be a number (seconds since the epoch)")
    return number


def challenge(error: InvalidToken | Unauthenticated) -> str:
    """The `WWW-Authenticate` value for a refusal (RFC 6750 section 3)."""
    if isinstance(error, Unauthenticated):
        return 'Bearer realm="keyrotor-admin"'
    description = "".join(c for c in str(error) if c.isprintable() and c not in '"\\')
    return f'Bearer error="invalid_token", error_description="{description}"'
