"""Sign tokens through a running keyrotor (`POST /v1/realms/<realm>/tokens`), so an application
holds an admin key with the realm's sign scope (`realm:<realm id>:sign`) and never the master
keys or a realm's private key.

    signer = RemoteSigner("https://keys.example", "signer-key.pem", "aky_...")
    signed = signer.sign("acme", {"sub": "user-1"}, ttl=timedelta(minutes=5))

The admin token each request carries (RS256, `kid`, `aud`, `iat`, `exp`) is minted here and
reused until shortly before it expires: one RSA signature every few minutes, not per token.
HTTP is the standard library's (urllib), so nothing beyond PyJWT and cryptography is needed.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyrotor_client.discovery import is_http_url
from keyrotor_client.errors import InvalidInput, NotFound, RemoteError

ADMIN_TOKEN_TTL = timedelta(minutes=5)
RENEW_BEFORE = 60  # seconds before its `exp` an admin token is replaced
MAX_ANSWER_BYTES = 64 * 1024
SHOWN_CHARS = 200


@dataclass(frozen=True)
class SignedToken:
    """A token the server signed, the key that signed it, and when it expires."""

    token: str
    kid: str
    expires_at: datetime


class RemoteSigner:
    """Signs through keyrotor's HTTP API with an admin key; safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        key_pem_or_path: str | bytes | os.PathLike[str],
        kid: str,
        audience: str = "keyrotor-admin",
        *,
        issuer: str | None = None,
        token_ttl: timedelta = ADMIN_TOKEN_TTL,
        timeout: float = 10.0,
    ) -> None:
        """`key_pem_or_path`: the admin private key as PEM text or bytes, or a file holding it.
        `audience` and `issuer` are the server's KEYROTOR_ADMIN_AUDIENCE and
        KEYROTOR_ADMIN_ISSUER; `token_ttl` must not exceed its KEYROTOR_ADMIN_TOKEN_MAX_TTL."""
        if not is_http_url(base_url):
            raise InvalidInput(f"Base URL must be an http(s) URL, not {_shown(base_url)}")
        if token_ttl.total_seconds() < 1:
            raise InvalidInput("Token ttl must be at least 1s")
        self.base_url = base_url.rstrip("/")
        self.kid = kid
        self.audience = audience
        self.issuer = issuer
        self.token_ttl = int(token_ttl.total_seconds())
        self.timeout = timeout
        self._key = load_admin_key(key_pem_or_path)
        self._admin_token: tuple[str, float] | None = None  # (token, renew at)
        self._lock = threading.Lock()

    def sign(
        self,
        realm: str,
        claims: dict[str, Any] | None = None,
        ttl: timedelta | int | str | None = None,
        audience: str | list[str] | None = None,
    ) -> SignedToken:
        """A token signed with the realm's (id or name) active key; the server sets `iat`,
        `exp` (`ttl` from now, at most the realm's max token ttl, the default), `iss` and `jti`.
        NotFound for an unknown realm, InvalidInput for claims or a ttl it refuses, RemoteError
        for anything else (a refused admin key, a server that does not answer)."""
        fields: dict[str, Any] = {"claims": dict(claims or {})}
        if ttl is not None:
            fields["ttl"] = int(ttl.total_seconds()) if isinstance(ttl, timedelta) else ttl
        if audience is not None:
            fields["audience"] = audience
        url = f"{self.base_url}/v1/realms/{quote(realm, safe='')}/tokens"
        answer = self._post(url, {"token": fields}, realm)
        try:
            return SignedToken(
                token=answer["token"],
                kid=answer["kid"],
                expires_at=datetime.fromisoformat(answer["expires_at"]),
            )
        except (KeyError, TypeError, ValueError):
            raise RemoteError(f"{url} answered without a signed token", 201) from None

    def admin_token(self) -> str:
        """The admin token requests carry, minted again shortly before it expires."""
        with self._lock:
            now = time.time()
            if self._admin_token is None or now >= self._admin_token[1]:
                issued = int(now)
                payload: dict[str, Any] = {
                    "aud": [self.audience],
                    "iat": issued,
                    "exp": issued + self.token_ttl,
                }
                if self.issuer is not None:
                    payload["iss"] = self.issuer
                token = jwt.encode(payload, self._key, "RS256", headers={"kid": self.kid})
                renew_at = issued + max(self.token_ttl - RENEW_BEFORE, self.token_ttl / 2)
                self._admin_token = (token, renew_at)
            return self._admin_token[0]

    def _post(self, url: str, body: dict[str, Any], realm: str) -> dict[str, Any]:
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.admin_token()}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as error:
            try:
                lines = _error_lines(error.read(MAX_ANSWER_BYTES))
            finally:
                error.close()
            _refused(error.code, lines, realm)
        except OSError as error:  # URLError, timeouts, refused connections
            reason = error.reason if isinstance(error, urllib.error.URLError) else error
            raise RemoteError(f"keyrotor at {self.base_url} is unreachable ({reason})") from None
        try:
            answer = json.loads(data)
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict) or len(data) > MAX_ANSWER_BYTES:
            raise RemoteError(f"{url} answered with no JSON object", 201)
        return answer


def _refused(status: int, lines: list[str], realm: str) -> NoReturn:
    """Raise the client error for a refusal: the server's own line(s), said once."""
    said = "; ".join(lines) or f"HTTP {status}"
    if status == 404:
        raise NotFound(f"Realm {_shown(realm)} not found")
    if status in (413, 422):
        raise InvalidInput(*lines) if lines else InvalidInput(said)
    raise RemoteError(f"keyrotor refused to sign for {_shown(realm)}: {said}", status)


def _error_lines(body: bytes) -> list[str]:
    """The `{"errors": [...]}` lines of a refusal, printable and short; none if it has none."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return []
    found = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(found, list):
        return []
    return [_printable(line) for line in found if isinstance(line, str)][:5]


def load_admin_key(key_pem_or_path: str | bytes | os.PathLike[str]) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM text or bytes, or from the file a path names."""
    pem: bytes
    if isinstance(key_pem_or_path, bytes):
        pem = key_pem_or_path
    elif isinstance(key_pem_or_path, str) and "-----BEGIN" in key_pem_or_path:
        pem = key_pem_or_path.encode()
    else:
        path = Path(key_pem_or_path)
        try:
            pem = path.read_bytes()
        except OSError as error:
            raise InvalidInput(
                f"Cannot read the admin key {path}: {error.strerror or type(error).__name__}"
            ) from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise InvalidInput("The admin key is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidInput("The admin key must be an RSA private key (admin tokens are RS256)")
    return key


def _printable(text: str) -> str:
    shown = "".join(c if c.isprintable() else " " for c in text)
    return shown if len(shown) <= SHOWN_CHARS else shown[:SHOWN_CHARS] + "..."


def _shown(value: object) -> str:
    return _printable(repr(value))
