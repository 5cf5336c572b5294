"""Prefixed random identifiers: `rl_`, `jky_`, `evt_`, `aky_`, `kpl_`, `rot_`, `whk_`, `whd_`,
and `jsk_` and `whsec_` secrets."""

from __future__ import annotations

import base64
import secrets

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def random_base62(length: int) -> str:
    """Uniform base62 from the OS's random bytes: a byte below 248 (4 x 62) picks a character,
    the rest are dropped so no character is likelier. One read, not one per character (an id
    per new key and event made `secrets.choice` a tenth of a batch rotation's time)."""
    chars: list[str] = []
    while len(chars) < length:
        chars += [BASE62[b % 62] for b in secrets.token_bytes(length + 8) if b < 248]
    return "".join(chars[:length])


def new_id(prefix: str, length: int = 22) -> str:
    """22 base62 chars carry 130 bits: unguessable and collision-free in practice."""
    return f"{prefix}_{random_base62(length)}"


def realm_id() -> str:
    return new_id("rl")


def key_id() -> str:
    return new_id("jky")


def event_id() -> str:
    return new_id("evt")


def admin_key_id() -> str:
    return new_id("aky")


def pooled_key_id() -> str:
    return new_id("kpl")


def rotation_id() -> str:
    return new_id("rot")


def webhook_id() -> str:
    return new_id("whk")


def delivery_id() -> str:
    return new_id("whd")


def webhook_secret() -> str:
    """Standard Webhooks' form: `whsec_` and the standard base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def hmac_secret() -> str:
    """43 base62 chars carry 256 bits, the floor for an HS256 secret."""
    return new_id("jsk", 43)


def looks_like(prefix: str, value: str) -> bool:
    return value.startswith(f"{prefix}_") and all(c in BASE62 for c in value[len(prefix) + 1 :])
