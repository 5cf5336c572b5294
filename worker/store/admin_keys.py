"""Admin API keys: RSA key pairs whose private half leaves once and is never stored.

Each operation is its own short transaction on `admin_keys`. The HTTP layer looks a token's
`kid` up here on every request (a primary-key read of the public key and its scopes), so a
deleted key is refused at once by every web process, with no cache to invalidate.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from worker.core import ids, keys
from worker.core.clock import Clock, rfc3339, utcnow
from worker.core.errors import InvalidInput, NotFound
from worker.core.scopes import ADMIN, check_scopes
from worker.store.db import keyset_page, transaction
from worker.store.models import AdminKey

MAX_KID_CHARS = 32
Views = list[dict[str, Any]]  # named out here: `AdminKeys.list` hides the builtin in its body
Scopes = list[str]


def fingerprint(public_pem: str) -> str:
    """`SHA256:<base64>` of the DER public key, as ssh prints one: a key named without its PEM."""
    loaded = serialization.load_pem_public_key(public_pem.encode("ascii"))
    der = loaded.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = base64.b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")
    return f"SHA256:{digest}"


def admin_key_view(row: AdminKey) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "admin_key",
        "fingerprint": fingerprint(row.public_pem),
        "public_key": row.public_pem,
        "scopes": stored_scopes(row.scopes),
        "created_at": rfc3339(row.created_at),
    }


def stored_scopes(value: object) -> list[str]:
    """A row's scopes as written by `create` (or the migration's `["admin"]`); anything else in
    the column grants nothing rather than failing every request of that key."""
    if not isinstance(value, list):
        return []
    return [scope for scope in value if isinstance(scope, str)]


def is_admin_key_id(value: str) -> bool:
    """Cheap shape check, so garbage `kid`s never reach the database."""
    return len(value) <= MAX_KID_CHARS and ids.looks_like("aky", value)


class AdminKeys:
    """Create, list and delete admin API keys; `admin_key(kid)` is what authentication reads."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock = utcnow) -> None:
        self.sessions = sessions
        self.clock = clock

    def create(
        self, public_pem: str | None = None, scopes: Sequence[str] | None = None
    ) -> tuple[dict[str, Any], str | None]:
        """A new key pair (returns its view and the private PEM, which is not kept), or, given
        `public_pem`, the registration of a key pair made elsewhere (no private PEM). Scopes
        default to `admin`; they are checked before any key is made."""
        checked = check_scopes([ADMIN] if scopes is None else scopes)
        private_pem: str | None = None
        if public_pem is None:
            material = keys.generate("rs256", keys.MIN_RSA_BITS)
            private_pem, public_pem = material.secret.decode("ascii"), material.public_pem
            assert public_pem is not None
        else:
            public_pem = _checked_public_pem(public_pem)
        row = AdminKey(
            id=ids.admin_key_id(), public_pem=public_pem, scopes=checked, created_at=self.clock()
        )
        with transaction(self.sessions) as session:
            session.add(row)
        return admin_key_view(row), private_pem

    def list(self) -> list[dict[str, Any]]:
        with transaction(self.sessions, read_only=True) as session:
            rows = session.scalars(select(AdminKey).order_by(AdminKey.created_at, AdminKey.id))
            return [admin_key_view(row) for row in rows]

    def page(
        self, *, after: str | None = None, max_results: int = 100, direction: str = "desc"
    ) -> tuple[bool, Views]:
        """One page in id order from just past `after`, and whether more follow: the admin
        API's listing, paged like its others."""
        with transaction(self.sessions, read_only=True) as session:
            more, rows = keyset_page(
                session,
                select(AdminKey),
                AdminKey.id,
                after=after,
                max_results=max_results,
                direction=direction,
            )
            return more, [admin_key_view(row) for row in rows]

    def get(self, kid: str) -> dict[str, Any]:
        with transaction(self.sessions, read_only=True) as session:
            return admin_key_view(self._row(session, kid))

    def delete(self, kid: str) -> dict[str, Any]:
        """Remove a key; the next request signed with it is refused, in every process."""
        with transaction(self.sessions) as session:
            row = self._row(session, kid)
            view = admin_key_view(row)
            session.delete(row)
            return view

    def admin_key(self, kid: str) -> tuple[str, Scopes] | None:
        """The public PEM and scopes of a current admin key, or None: one primary-key read."""
        if not is_admin_key_id(kid):
            return None
        with transaction(self.sessions, read_only=True) as session:
            found = session.execute(
                select(AdminKey.public_pem, AdminKey.scopes).where(AdminKey.id == kid)
            ).one_or_none()
            return None if found is None else (found[0], stored_scopes(found[1]))

    def public_pem(self, kid: str) -> str | None:
        """The public PEM of a current admin key, or None (for callers that need no scopes)."""
        found = self.admin_key(kid)
        return None if found is None else found[0]

    def _row(self, session: Session, kid: str) -> AdminKey:
        row = session.get(AdminKey, kid) if is_admin_key_id(kid) else None
        if row is None:
            raise NotFound(f"Admin key {kid!r} not found")
        return row


def _pem(public_key: rsa.RSAPublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _checked_public_pem(text: str) -> str:
    """Only RSA public keys of at least `MIN_RSA_BITS`: admin tokens are RS256 and nothing else."""
    if len(text) > keys.MAX_IMPORT_CHARS:
        raise InvalidInput("Public key is too large")
    try:
        loaded = serialization.load_pem_public_key(text.strip().encode("utf-8"))
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError):
        raise InvalidInput("Public key is not a valid PEM public key") from None
    if not isinstance(loaded, rsa.RSAPublicKey):
        raise InvalidInput("Public key must be an RSA key (admin tokens are RS256)")
    if loaded.key_size < keys.MIN_RSA_BITS:
        raise InvalidInput(
            f"Public key is too short: RSA keys need at least {keys.MIN_RSA_BITS} bits"
        )
    return _pem(loaded)
