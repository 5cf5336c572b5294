"""Standard Webhooks (standardwebhooks.com) signatures: the server signs deliveries with
`sign`, receivers check them with `verify_webhook`.

A delivery carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`:
space-separated `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per secret in
use, so a receiver keeps verifying while a secret is rotated. The timestamp is part of what
is signed, and a delivery outside the tolerance is refused, so a captured one cannot be
replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from keyrotor_client.errors import InvalidInput, InvalidWebhook

SECRET_PREFIX = "whsec_"
VERSION = "v1"
TOLERANCE = timedelta(minutes=5)
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"

Secret = str | bytes
"""`whsec_<base64 key>`, the base64 key alone, or the key's raw bytes."""


def secret_key(secret: Secret) -> bytes:
    """The HMAC key a secret stands for."""
    if isinstance(secret, bytes):
        key = secret
    else:
        text = secret.removeprefix(SECRET_PREFIX)
        try:
            key = _unbase64(text)
        except (binascii.Error, ValueError):
            raise InvalidInput("Webhook secret is not whsec_ followed by base64") from None
    if not key:
        raise InvalidInput("Webhook secret is empty")
    return key


def sign(secret: Secret, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The `v1,<base64>` signature of one delivery, for the `webhook-signature` header."""
    return f"{VERSION},{_digest(secret_key(secret), msg_id, timestamp, _bytes(body))}"


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    return base64.b64encode(_mac(key, msg_id, timestamp, body)).decode()


def _mac(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def _unbase64(text: str) -> bytes:
    """Standard base64, padding optional (as the reference implementation accepts)."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body


def verify_webhook(
    secret_or_secrets: Secret | Iterable[Secret],
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance: timedelta = TOLERANCE,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The delivery's JSON event, when its timestamp is within `tolerance` of `now` (either
    way) and one of its `v1` signatures matches one of the secrets; else InvalidWebhook.

    Pass the body exactly as received: parsing and re-encoding it changes the bytes signed.
    """
    secrets = (
        [secret_or_secrets]
        if isinstance(secret_or_secrets, str | bytes)
        else list(secret_or_secrets)
    )
    if not secrets:
        raise InvalidInput("No webhook secret given")
    keys = [secret_key(secret) for secret in secrets]
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id, stamp, signatures = (
        _header(lowered, name) for name in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
    )
    timestamp = _timestamp(stamp, tolerance, time.time() if now is None else now.timestamp())
    raw = _bytes(body)
    offered = [
        value
        for version, _, value in (part.partition(",") for part in signatures.split())
        if version == VERSION and value
    ]
    if not offered:
        raise InvalidWebhook(f"{SIGNATURE_HEADER} header has no {VERSION} signature")
    expected = [_mac(key, msg_id, timestamp, raw) for key in keys]
    # Every pair is compared, in constant time each, so timing says nothing of which matched.
    matched = False
    for value in offered:
        try:
            mac = _unbase64(value)
        except (binascii.Error, ValueError):
            continue  # not base64: matches nothing
        for digest in expected:
            matched |= hmac.compare_digest(mac, digest)
    if not matched:
        raise InvalidWebhook("webhook signature does not match")
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidWebhook("webhook body is not JSON") from None
    if not isinstance(event, dict):
        raise InvalidWebhook("webhook body is not a JSON object")
    return event


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value or not value.strip():
        raise InvalidWebhook(f"{name} header is missing")
    return value.strip()


def _timestamp(stamp: str, tolerance: timedelta, now: float) -> int:
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise InvalidWebhook(f"{TIMESTAMP_HEADER} header is not Unix seconds")
    timestamp = int(stamp)
    if timestamp < now - tolerance.total_seconds():
        raise InvalidWebhook("webhook timestamp is too old")
    if timestamp > now + tolerance.total_seconds():
        raise InvalidWebhook("webhook timestamp is too far in the future")
    return timestamp
