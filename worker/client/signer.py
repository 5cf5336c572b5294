"""Sign tokens with a realm's active key, kept loaded in memory and swapped on its events.

Opening and loading a private key costs milliseconds (about 30 ms to validate RSA-2048), so
it happens once per key, not per token. Feed the signer events
(`Subscriber(redis_url, signer.on_event)`) and a rotation or revocation takes effect at once,
without a restart; a revocation drops the old key before the new one is even loaded.

Given `issuer_base` (keyrotor's own signers pass `Settings.issuer_base`: KEYROTOR_PUBLIC_URL),
tokens carry the realm's issuer, `<issuer_base>/realms/<name>`: a verifier that knows only that
URL finds the keys through the realm's discovery document, and tells one realm's tokens from
another's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import jwt

from worker.core import keys
from worker.core.clock import Clock, utcnow
from worker.core.durations import format_duration
from worker.core.errors import InvalidInput, NotFound

RESERVED = ("exp", "iat")
NO_TIME = timedelta(0)


@dataclass(frozen=True)
class LoadedKey:
    """A realm's active key as loaded: what signing needs, and when it was read."""

    realm_id: str
    realm_name: str
    kid: str
    alg: str
    key: keys.SigningKey = field(repr=False)
    max_token_ttl: timedelta
    header: dict[str, str]  # {"kid": kid}, built once (PyJWT copies it)
    issuer: str | None  # stamped as `iss` unless the caller sets one
    jwks_version: int = -1  # the realm's, read with the key (`ActiveKey.jwks_version`)
    read_at: float = field(default_factory=time.monotonic, compare=False)


class SigningKeys(Protocol):
    def signing_key(self, realm: str) -> keys.ActiveKey:
        """The realm's active key, opened; NotFound when there is none."""
        ...


class Signer:
    """Signs for many realms from one process; safe to share between threads."""

    def __init__(
        self, service: SigningKeys, *, clock: Clock = utcnow, issuer_base: str | None = None
    ) -> None:
        self.service = service
        self.clock = clock
        self.issuer_base = issuer_base.rstrip("/") if issuer_base is not None else None
        # The default clock's timestamp, without building a datetime per token.
        self._now = time.time if clock is utcnow else lambda: clock().timestamp()
        self._loaded: dict[str, LoadedKey] = {}  # by realm id
        self._ids: dict[str, str] = {}  # realm id or name -> realm id
        self._lock = threading.Lock()

    def sign(
        self,
        realm: str,
        claims: Mapping[str, Any] | None = None,
        ttl: timedelta | None = None,
        *,
        aud: str | list[str] | None = None,
        iss: str | None = None,
        nbf: datetime | None = None,
        jti: str | None = None,
    ) -> str:
        """A JWT with `kid`, `iat` and `exp` (now + `ttl`, at most the realm's max token ttl;
        the max when not given), and `aud`, `iss`, `nbf`, `jti` when given. With `issuer_base`,
        `iss` is the realm's issuer unless `iss` or the claims say otherwise."""
        loaded = self.loaded(realm)
        ttl = loaded.max_token_ttl if ttl is None else ttl
        # Plain statements on purpose: an HS256 encode takes ~20 µs, so each helper dict or
        # comprehension here showed in the signing benchmark (bench/README.md).
        if ttl <= NO_TIME:
            raise InvalidInput("Ttl must be positive")
        if ttl > loaded.max_token_ttl:
            raise InvalidInput(
                f"Ttl ({format_duration(ttl)}) is longer than the realm's max token ttl"
                f" ({format_duration(loaded.max_token_ttl)})"
            )
        body = dict(claims) if claims else {}
        if "exp" in body or "iat" in body:
            clashing = [name for name in RESERVED if name in body]
            raise InvalidInput(f"Claims must not set {', '.join(clashing)}: the signer does")
        now = self._now()
        body["iat"] = int(now)
        body["exp"] = int(now + ttl.total_seconds())
        if aud is not None:
            body["aud"] = aud
        if iss is not None:
            body["iss"] = iss
        elif loaded.issuer is not None and "iss" not in body:
            body["iss"] = loaded.issuer
        if jti is not None:
            body["jti"] = jti
        if nbf is not None:
            body["nbf"] = int(nbf.timestamp())
        try:
            return jwt.encode(body, loaded.key, algorithm=loaded.alg, headers=loaded.header)
        except TypeError:
            raise InvalidInput("Claims must be JSON values") from None

    def loaded(self, realm: str) -> LoadedKey:
        """The realm's signing key, loading it on first use. (Reads take no lock: a dict read
        is atomic, and writers replace entries whole.)"""
        realm_id = self._ids.get(realm)
        loaded = self._loaded.get(realm_id) if realm_id is not None else None
        return loaded if loaded is not None else self.refresh(realm)

    def cached(self, realm: str) -> LoadedKey | None:
        """The realm's signing key if loaded (by realm id or name), without loading it."""
        realm_id = self._ids.get(realm)
        return self._loaded.get(realm_id) if realm_id is not None else None

    def refresh(self, realm: str) -> LoadedKey:
        """Reload a realm's active key from the database (reusing the key object when the
        active kid did not change)."""
        active = self.service.signing_key(realm)
        with self._lock:
            current = self._loaded.get(active.realm_id)
        if current is not None and current.kid == active.kid:
            key = current.key
        else:
            key = keys.load_signing_key(active.algo, active.secret)
        loaded = LoadedKey(
            realm_id=active.realm_id,
            realm_name=active.realm_name,
            kid=active.kid,
            alg=keys.JWT_ALG[active.algo],
            key=key,
            max_token_ttl=active.max_token_ttl,
            header={"kid": active.kid},
            jwks_version=active.jwks_version,
            issuer=(
                keys.issuer(self.issuer_base, active.realm_name)
                if self.issuer_base is not None
                else None
            ),
        )
        with self._lock:
            newer = self._loaded.get(active.realm_id)
            if newer is not None and newer.jwks_version > loaded.jwks_version:
                return newer  # a racing reload read a later version: never go back to ours
            self._loaded[active.realm_id] = loaded
            self._ids[active.realm_id] = self._ids[active.realm_name] = active.realm_id
        return loaded

    def forget(self, realm_id: str) -> None:
        with self._lock:
            dropped = self._loaded.pop(realm_id, None)
            if dropped is not None:
                self._ids.pop(dropped.realm_name, None)
                self._ids.pop(realm_id, None)

    def on_event(self, event: Mapping[str, Any]) -> None:
        """Reload a realm this signer uses when its keys change.

        A revocation first forgets the realm, so if the reload fails nothing signs with the
        revoked key; the next `sign` loads afresh (or fails loudly).
        """
        realm_id = event.get("realm_id")
        if not isinstance(realm_id, str):
            return
        with self._lock:
            if realm_id not in self._loaded:
                return
        if event.get("reason") == "key.revoked":
            self.forget(realm_id)
        try:
            self.refresh(realm_id)
        except NotFound:
            self.forget(realm_id)  # the realm (or its last key) is gone
