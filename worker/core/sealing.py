"""Private keys and HMAC secrets at rest: AES-256-GCM under master keys, MultiFernet-shaped.

The first master key seals; every configured key opens, so a new key can be put in front,
`keyrotor rewrap` run, and the old key dropped afterwards.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import pathlib
import re
import secrets
import time
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from worker.core.errors import ConfigError, SealError

VERSION = b"\x01"
KEY_BYTES = 32
FINGERPRINT_BYTES = 8
NONCE_BYTES = 12
TAG_BYTES = 16
_HEADER_BYTES = len(VERSION) + FINGERPRINT_BYTES + NONCE_BYTES
_BASE64 = re.compile(r"[A-Za-z0-9+/\-_]*={0,2}")


def generate_master_key() -> str:
    """A new master key as base64url without padding, ready for KEYROTOR_MASTER_KEYS."""
    return _b64url(secrets.token_bytes(KEY_BYTES))


def parse_master_keys(text: str) -> list[bytes]:
    """Comma-separated keys, primary first; errors name the entry's position, never its value."""
    entries = [entry.strip() for entry in text.split(",")]
    if entries == [""]:
        raise ConfigError("No master keys configured")
    keys = []
    for position, entry in enumerate(entries, start=1):
        if not entry:
            raise ConfigError(f"Master key #{position} is blank")
        key = _decode_base64(entry)
        if key is None:
            raise ConfigError(f"Master key #{position} is not valid base64")
        if len(key) != KEY_BYTES:
            raise ConfigError(
                f"Master key #{position} decodes to {len(key)} bytes; it must be {KEY_BYTES}"
            )
        keys.append(key)
    return keys


def load_or_create_key_file(path: pathlib.Path) -> tuple[str, bool]:
    """The development master key: read it, or create it once with mode 0600.

    Returns the key text and whether this call created the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key_file(path), False
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            text = generate_master_key()
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)  # never leave a half-written key behind
        raise
    return text, True


def _read_key_file(path: pathlib.Path) -> str:
    # Another process may have just created the file and not yet written it: wait briefly.
    for _ in range(50):
        text = path.read_text(encoding="ascii").strip()
        if text:
            return text
        time.sleep(0.01)
    raise ConfigError(f"Master key file {path} is empty")


class MasterKeys:
    """The configured master keys: the first seals, every one opens."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ConfigError("At least one master key is needed")
        for position, key in enumerate(keys, start=1):
            if len(key) != KEY_BYTES:
                raise ConfigError(f"Master key #{position} must be {KEY_BYTES} bytes")
        self._primary = _fingerprint(keys[0])
        self._ciphers: dict[bytes, AESGCM] = {}
        for key in keys:
            self._ciphers.setdefault(_fingerprint(key), AESGCM(key))

    @classmethod
    def from_text(cls, text: str) -> MasterKeys:
        return cls(parse_master_keys(text))

    def seal(self, plaintext: bytes, *, realm_id: str, key_id: str) -> bytes:
        """Encrypt under the primary key, bound to its row so it cannot be moved."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        body = self._ciphers[self._primary].encrypt(nonce, plaintext, _row(realm_id, key_id))
        return VERSION + self._primary + nonce + body

    def open(self, sealed: bytes, *, realm_id: str, key_id: str) -> bytes:
        """Decrypt with whichever configured key sealed it; any mismatch is a SealError."""
        cipher = None
        if len(sealed) >= _HEADER_BYTES + TAG_BYTES and sealed[:1] == VERSION:
            cipher = self._ciphers.get(sealed[1 : 1 + FINGERPRINT_BYTES])
        if cipher is not None:
            nonce = sealed[1 + FINGERPRINT_BYTES : _HEADER_BYTES]
            try:
                return cipher.decrypt(nonce, sealed[_HEADER_BYTES:], _row(realm_id, key_id))
            except InvalidTag:
                pass
        raise SealError(f"key {key_id} does not open with the configured master keys")

    def is_current(self, sealed: bytes) -> bool:
        """Sealed under the primary key, so `rewrap` can skip it."""
        return sealed[:1] == VERSION and sealed[1 : 1 + FINGERPRINT_BYTES] == self._primary

    def rewrap(self, sealed: bytes, *, realm_id: str, key_id: str) -> bytes:
        """Open with any configured key and seal again under the primary."""
        plaintext = self.open(sealed, realm_id=realm_id, key_id=key_id)
        return self.seal(plaintext, realm_id=realm_id, key_id=key_id)


def _fingerprint(key: bytes) -> bytes:
    return hashlib.sha256(b"keyrotor-master-key" + key).digest()[:FINGERPRINT_BYTES]


def _row(realm_id: str, key_id: str) -> bytes:
    return b"keyrotor/v1|" + realm_id.encode("utf-8") + b"|" + key_id.encode("utf-8")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_base64(text: str) -> bytes | None:
    """Standard or url-safe alphabet, padding optional; None when it is not base64 at all."""
    if not _BASE64.fullmatch(text):
        return None
    unpadded = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except binascii.Error:
        return None
