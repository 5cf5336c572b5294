"""A key cache for verifiers: parsed public keys per realm that follow `realm.updated` events.

Keys come from the published JWKS (the Redis copy, an HTTP JWKS URL for services that only
see HTTP, or the JWKS an issuer's OpenID configuration points to) and are parsed once. An
event refreshes its realm; `key.revoked` drops the keys it names at once, before the refetch,
and a key found revoked never comes back from a stale copy.
An unknown `kid` triggers one refetch per realm per cooldown, so a flood of made-up kids
cannot become a flood of fetches (PyJWT's `PyJWKClient` refetches on every one). A fetch that
failed (Redis away for a moment), or a copy an event has announced newer keys than, is tried
again after `retry_after` (1 s) instead: made-up kids cannot cause either.

Verification pins the algorithm to the key's own `alg`, so a token cannot choose how it is
checked (no `none`, no RS256 key used as an HMAC secret).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import jwt
import redis

from keyrotor_client.bounded import BoundedDict
from keyrotor_client.discovery import discover
from keyrotor_client.errors import InvalidInput, InvalidToken, KeyrotorError, NotFound
from keyrotor_client.events import redis_client

log = logging.getLogger("keyrotor.verifier")

MAX_TOKEN_BYTES = 8 * 1024
MAX_JWKS_BYTES = 1024 * 1024
HEADERS_REMEMBERED = 1024
REFETCH_COOLDOWN = timedelta(seconds=5)
RETRY_AFTER = timedelta(seconds=1)
CLOCK_SKEW = timedelta(seconds=60)
ISSUERS_REMEMBERED = 1024
PUBLIC_ALGS: frozenset[str] = frozenset({"RS256", "PS256", "ES256", "EdDSA"})
"""The JWT `alg` of the keys a JWKS publishes: asymmetric only, as HMAC keys stay secret.
The server's `worker.core.keys.PUBLIC_ALGS` says the same (a test holds them equal)."""


@dataclass(frozen=True)
class VerifyingKey:
    """One key ready for `jwt.decode`, with the only algorithm it verifies."""

    kid: str
    alg: str
    key: Any = field(repr=False)


@dataclass(frozen=True)
class KeySet:
    """A realm's keys as one source saw them; `jwks_version` when the source knows it."""

    keys: dict[str, VerifyingKey]
    jwks_version: int | None = None


class KeySource(Protocol):
    def fetch(self, realm: str) -> KeySet:
        """The realm's current keys; NotFound when it publishes none."""
        ...


def parse_jwks(document: str | bytes | Mapping[str, Any]) -> dict[str, VerifyingKey]:
    """Parse a JWKS once; members that are not asymmetric signing keys are skipped, and a
    document that is no JWKS at all is InvalidInput."""
    try:
        data = json.loads(document) if isinstance(document, str | bytes) else document
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested beyond reason
        raise InvalidInput("JWKS document is not JSON") from None
    members = data.get("keys") if isinstance(data, Mapping) else None
    if not isinstance(members, list):
        raise InvalidInput("not a JWKS document")
    parsed = {}
    for member in members:
        kid = member.get("kid") if isinstance(member, Mapping) else None
        alg = member.get("alg") if isinstance(member, Mapping) else None
        # isinstance first: `[] in frozenset()` is a TypeError, and one odd member must not
        # make a whole realm unverifiable
        if not isinstance(kid, str) or not isinstance(alg, str) or alg not in PUBLIC_ALGS:
            log.warning("skipped a JWKS member without kid or with alg %r", alg)
            continue
        try:
            jwk = jwt.PyJWK(dict(member))
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            log.warning("skipped JWKS member %s: not a valid %s key", kid, alg)
            continue
        parsed[kid] = VerifyingKey(kid, str(alg), jwk.key)
    return parsed


class RedisKeys:
    """The JWKS the publisher keeps in Redis (`keyrotor:jwks:<realm_id>`), with its version."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @classmethod
    def from_url(cls, redis_url: str) -> RedisKeys:
        return cls(redis_client(redis_url))

    def fetch(self, realm: str) -> KeySet:
        document, version = self.redis.hmget(f"keyrotor:jwks:{realm}", ["document", "jwks_version"])
        if document is None:
            raise NotFound(f"Realm {realm} publishes no JWKS")
        return KeySet(parse_jwks(document), int(version) if version is not None else None)


class HttpKeys:
    """A JWKS over HTTP; `url` may hold `{realm}`, e.g.
    `https://keys.example/realms/{realm}/.well-known/jwks.json`."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout

    def fetch(self, realm: str) -> KeySet:
        return fetch_jwks(self.url.replace("{realm}", realm), realm, timeout=self.timeout)


class IssuerKeys:
    """The JWKS an issuer's OpenID configuration names; `issuer` may hold `{realm}`, e.g.
    `https://keys.example/realms/{realm}` (keyrotor's issuers hold the realm's name).

    Discovery runs on a realm's first fetch, not at start, so an issuer that is down while
    this service starts delays only the first verification; it runs again after a failed
    JWKS fetch, so keys that moved are followed.
    """

    def __init__(self, issuer: str, *, timeout: float = 5.0) -> None:
        self.issuer = issuer
        self.timeout = timeout
        self._jwks_uris: BoundedDict[str, str] = BoundedDict(ISSUERS_REMEMBERED)

    def jwks_uri(self, realm: str) -> str:
        """The realm's JWKS URL, discovered once and remembered."""
        issuer = self.issuer.replace("{realm}", realm)
        uri = self._jwks_uris.get(issuer)
        if uri is None:
            uri = str(discover(issuer, timeout=self.timeout)["jwks_uri"])
            self._jwks_uris[issuer] = uri
        return uri

    def fetch(self, realm: str) -> KeySet:
        uri = self.jwks_uri(realm)
        try:
            return fetch_jwks(uri, realm, timeout=self.timeout)
        except Exception:
            self._jwks_uris.pop(self.issuer.replace("{realm}", realm), None)
            raise


def fetch_jwks(url: str, realm: str, *, timeout: float) -> KeySet:
    """One JWKS over HTTP, size-capped; NotFound on a 404."""
    request = urllib.request.Request(
        url,
        # Ask caches on the way to revalidate: after an event, a stale copy is useless.
        headers={"Accept": "application/json", "Cache-Control": "no-cache"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            document = response.read(MAX_JWKS_BYTES + 1)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            raise NotFound(f"Realm {realm} publishes no JWKS") from None
        raise
    if len(document) > MAX_JWKS_BYTES:
        raise InvalidInput("JWKS document is too large")
    return KeySet(parse_jwks(document))


@dataclass
class _Realm:
    keys: dict[str, VerifyingKey]
    jwks_version: int | None
    fetched_at: float
    wanted_version: int = -1
    """The highest `jwks_version` an event announced: a copy older than that is stale."""
    suspects: set[str] = field(default_factory=set)
    """Kids a `key.revoked` event named, kept out until a fresh enough copy says which stay."""


class KeyCache:
    """Verifies tokens of many realms against cached, parsed keys that events keep current.

    Feed it events with `Subscriber(redis_url, cache.on_event, on_gap=cache.refresh_all)`.
    Without events, `max_age` bounds how long a realm's keys are trusted.
    """

    def __init__(
        self,
        source: KeySource,
        *,
        clock_skew: timedelta = CLOCK_SKEW,
        refetch_cooldown: timedelta = REFETCH_COOLDOWN,
        retry_after: timedelta = RETRY_AFTER,
        max_age: timedelta | None = None,
        max_token_bytes: int = MAX_TOKEN_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.clock_skew = clock_skew
        self.cooldown = refetch_cooldown.total_seconds()
        self.retry_after = min(retry_after, refetch_cooldown).total_seconds()
        self.max_age = max_age.total_seconds() if max_age is not None else None
        self.max_token_bytes = max_token_bytes
        self.clock = clock
        self._realms: dict[str, _Realm] = {}
        self._revoked: dict[str, set[str]] = {}
        self._last_fetch: dict[str, float] = {}
        self._failed: set[str] = set()  # realms whose last fetch failed
        self._lock = threading.Lock()
        # Header segment -> (kid, alg): every token of a key has the same header, and parsing
        # it was most of what verify added to `jwt.decode` (bench/README.md, verifying).
        self._headers: BoundedDict[str, tuple[object, object]] = BoundedDict(HEADERS_REMEMBERED)

    @classmethod
    def from_redis(cls, redis_url: str, **options: Any) -> KeyCache:
        return cls(RedisKeys.from_url(redis_url), **options)

    @classmethod
    def from_url(cls, jwks_url: str, **options: Any) -> KeyCache:
        return cls(HttpKeys(jwks_url), **options)

    @classmethod
    def from_issuer(cls, issuer_url: str, **options: Any) -> KeyCache:
        """Keys found through the issuer's OpenID configuration: all a service that knows
        only the issuer URL needs. The URL may hold `{realm}` (see `IssuerKeys`)."""
        return cls(IssuerKeys(issuer_url), **options)

    # -- verification -------------------------------------------------------------------

    def verify(
        self,
        realm: str,
        token: str,
        *,
        audience: str | list[str] | None = None,
        issuer: str | None = None,
    ) -> dict[str, Any]:
        """The token's claims, or InvalidToken with a one-line reason."""
        if len(token) > self.max_token_bytes:
            raise InvalidToken(f"token is too large (over {self.max_token_bytes} bytes)")
        if not token.isascii():  # a JWT is base64url and dots; PyJWT cannot even encode some
            raise InvalidToken("token is malformed")
        kid, alg = self._kid_and_alg(token)
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token header has no kid")
        key = self.key(realm, kid)
        if alg != key.alg:
            raise InvalidToken(f"token alg {alg!r} does not match key {kid} ({key.alg})")
        return decode(token, key, audience=audience, issuer=issuer, leeway=self.clock_skew)

    def _kid_and_alg(self, token: str) -> tuple[object, object]:
        head = token.partition(".")[0]
        known = self._headers.get(head)
        if known is None:
            header = unverified_header(token)
            known = (header.get("kid"), header.get("alg"))
            self._headers[head] = known
        return known

    def key(self, realm: str, kid: str) -> VerifyingKey:
        """The cached key, refetching the realm once per cooldown when it is unknown or stale."""
        now = self.clock()
        with self._lock:
            cached = self._realms.get(realm)
            key = cached.keys.get(kid) if cached else None
            if key is not None and not self._stale(cached, now):
                return key
            if kid in self._revoked.get(realm, ()):
                raise InvalidToken(f"key {kid} is revoked")
            # Soon again after a failed fetch, or when an event announced newer keys; else only
            # once per cooldown, which is all that made-up kids can cause.
            soon = realm in self._failed or (cached is not None and _behind(cached))
            wait = self.retry_after if soon else self.cooldown
            if now - self._last_fetch.get(realm, float("-inf")) < wait:
                if key is not None:
                    return key  # stale but not disowned: better than refusing every token
                raise InvalidToken(f"unknown key {kid} in realm {realm}")
            self._last_fetch[realm] = now
        self.refresh(realm)
        with self._lock:
            cached = self._realms.get(realm)
            key = cached.keys.get(kid) if cached else None
        if key is None:
            raise InvalidToken(f"unknown key {kid} in realm {realm}")
        return key

    def _stale(self, cached: _Realm | None, now: float) -> bool:
        if cached is None:
            return True
        if _behind(cached):
            return True
        return self.max_age is not None and now - cached.fetched_at > self.max_age

    # -- following events -----------------------------------------------------------------

    def on_event(self, event: Mapping[str, Any]) -> None:
        """A `realm.updated` event: drop what it revokes at once, then refetch the realm.

        Realms this cache never loaded are skipped; their first verify loads them fresh.
        """
        realm = event.get("realm_id")
        if not isinstance(realm, str):
            return
        with self._lock:
            cached = self._realms.get(realm)
            if cached is None:
                return
            version = event.get("jwks_version")
            if isinstance(version, int):
                cached.wanted_version = max(cached.wanted_version, version)
            if event.get("reason") == "key.revoked":
                named = {k for k in event.get("key_ids", []) if isinstance(k, str)}
                cached.suspects |= named
                cached.keys = {k: v for k, v in cached.keys.items() if k not in named}
        self.refresh(realm)

    def refresh(self, realm: str) -> bool:
        """Refetch one realm now; a failure keeps what is cached, is logged, and is False."""
        try:
            fetched = self.source.fetch(realm)
        except NotFound:
            with self._lock:
                self._realms.pop(realm, None)
                self._failed.discard(realm)
            return True
        except (KeyrotorError, redis.RedisError, OSError, ValueError) as error:
            log.warning("keys of realm %s not refreshed (%s)", realm, error)
            with self._lock:
                self._failed.add(realm)
            return False
        now = self.clock()
        with self._lock:
            self._failed.discard(realm)
            cached = self._realms.get(realm)
            if cached is None:
                cached = self._realms[realm] = _Realm({}, None, now)
            elif _older(fetched.jwks_version, cached.jwks_version):
                return True  # never step back to an older copy than the one held
            fresh = fetched.jwks_version is None or fetched.jwks_version >= cached.wanted_version
            revoked = self._revoked.setdefault(realm, set())
            if fresh:
                revoked |= cached.suspects - fetched.keys.keys()
                cached.suspects = set()
            kept_out = revoked | cached.suspects
            cached.keys = {k: v for k, v in fetched.keys.items() if k not in kept_out}
            cached.jwks_version = fetched.jwks_version
            cached.fetched_at = now
        return True

    def refresh_all(self) -> None:
        """Refetch every cached realm: after a gap in the event stream."""
        with self._lock:
            realms = list(self._realms)
        for realm in realms:
            self.refresh(realm)

    def kids(self, realm: str) -> list[str]:
        """The kids cached for a realm (for health checks and tests)."""
        with self._lock:
            cached = self._realms.get(realm)
            return sorted(cached.keys) if cached else []


def _behind(cached: _Realm) -> bool:
    """An event announced a newer `jwks_version` than the copy held."""
    return cached.jwks_version is not None and cached.jwks_version < cached.wanted_version


def unverified_header(token: str) -> dict[str, Any]:
    """The token's header alone, to pick its key; `jwt.decode` checks it again, strictly.

    PyJWT's `get_unverified_header` decodes every segment and checks each character in Python:
    for an RS256 token as slow as the signature check, and `jwt.decode` repeats it
    (bench/README.md, verifying).
    """
    head, dot, rest = token.partition(".")
    if not dot or rest.count(".") != 1:
        raise InvalidToken("token is malformed")
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, RecursionError):
        raise InvalidToken("token is malformed") from None
    if not isinstance(header, dict):
        raise InvalidToken("token is malformed")
    return header


def _older(fetched: int | None, held: int | None) -> bool:
    return fetched is not None and held is not None and fetched < held


def decode(
    token: str,
    key: VerifyingKey,
    *,
    audience: str | list[str] | None = None,
    issuer: str | None = None,
    leeway: timedelta = CLOCK_SKEW,
) -> dict[str, Any]:
    """Check signature (with the key's one algorithm), `exp`, `nbf`, `iat` within `leeway`,
    and `aud` / `iss` when asked; InvalidToken says which check failed."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[key.alg],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={
                "require": ["exp", "iat"],
                "verify_aud": audience is not None,
                "verify_iss": issuer is not None,
            },
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token has expired") from None
    except jwt.ImmatureSignatureError:
        raise InvalidToken("token is not valid yet (nbf or iat in the future)") from None
    except jwt.MissingRequiredClaimError as error:
        raise InvalidToken(f"token has no {error.claim} claim") from None
    except jwt.InvalidAudienceError:
        raise InvalidToken("token audience does not match") from None
    except jwt.InvalidIssuerError:
        raise InvalidToken("token issuer does not match") from None
    except jwt.InvalidSignatureError:
        raise InvalidToken("token signature does not verify") from None
    except jwt.InvalidTokenError as error:
        raise InvalidToken(f"token is invalid ({error})") from None
    return claims
