"""What a token signed over HTTP (`POST /v1/realms/<realm>/tokens`) carries, and what the caller
may not choose.

The server stamps `iat`, `exp`, `iss` and `jti`, so a caller holding only a sign scope cannot
mint a token that outlives the realm's max token ttl, claims another issuer, or reuses an id;
`nbf` is refused too, since a token valid only later is a token whose lifetime the caller
stretched. The audience is the caller's, given once: as `audience` or as the `aud` claim.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from worker.core.durations import format_duration, parse_duration
from worker.core.errors import InvalidInput

MAX_BODY_BYTES = 8 * 1024
SERVER_CLAIMS = ("exp", "iat", "nbf", "iss", "jti")
"""Claims the caller may not set (`nbf` is not set by the server either)."""
NO_TIME = timedelta(0)


@dataclass(frozen=True)
class Stamp:
    """What the server adds: the realm's issuer, the time, a fresh token id."""

    issuer: str
    now: int  # seconds since the epoch
    jti: str


def token_claims(
    claims: object,
    *,
    ttl: object = None,
    audience: object = None,
    max_ttl: timedelta,
    stamp: Stamp,
) -> dict[str, Any]:
    """The payload to sign: the caller's claims with `aud` (when given), `iat`, `exp` (now +
    `ttl`, the realm's max when not given), `iss` and `jti`. InvalidInput (one line) for claims
    that are not a JSON object, set a server claim, give the audience twice or badly, or a ttl
    that is not a positive duration within `max_ttl`."""
    if not isinstance(claims, Mapping) or not all(isinstance(name, str) for name in claims):
        raise InvalidInput("Claims must be a JSON object")
    clashing = [name for name in SERVER_CLAIMS if name in claims]
    if clashing:
        raise InvalidInput(f"Claims must not set {', '.join(clashing)}: the server does")
    lifetime = _ttl(ttl, max_ttl)
    body = dict(claims)
    if audience is not None:
        if "aud" in body:
            raise InvalidInput("Give the audience once: as audience or as the aud claim")
        body["aud"] = _audience(audience, "Audience")
    elif "aud" in body:
        body["aud"] = _audience(body["aud"], "The aud claim")
    try:
        json.dumps(body, allow_nan=False)  # what a verifier's JSON parser will accept
    except (ValueError, TypeError, RecursionError):
        raise InvalidInput("Claims must be JSON values (not NaN or Infinity)") from None
    body["iat"] = stamp.now
    body["exp"] = stamp.now + int(lifetime.total_seconds())
    body["iss"] = stamp.issuer
    body["jti"] = stamp.jti
    return body


def _ttl(ttl: object, max_ttl: timedelta) -> timedelta:
    if ttl is None:
        return max_ttl
    try:
        lifetime = parse_duration(ttl)
    except InvalidInput:
        raise InvalidInput("Ttl must be seconds or a duration such as 5m or 1h") from None
    if lifetime <= NO_TIME:
        raise InvalidInput("Ttl must be positive")
    if lifetime > max_ttl:
        raise InvalidInput(
            f"Ttl ({format_duration(lifetime)}) is longer than the realm's max token ttl"
            f" ({format_duration(max_ttl)})"
        )
    return lifetime


def _audience(value: object, label: str) -> str | list[str]:
    """A non-empty string, or a non-empty list of them: what verifiers compare `aud` with."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise InvalidInput(f"{label} must be a non-empty string or a list of them")
