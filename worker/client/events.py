"""`realm.updated` on the wire: names, the payload, and how an event is found in the stream.

Kept free of the database stack so that subscribers and verifiers import it cheaply; the relay
that writes these lives in `worker.publish.relay`.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import redis

STREAM = "keyrotor:events"
CHANNEL = "keyrotor:realm.updated"
EVENT_TYPE = "realm.updated"
STREAM_FIELD = "event"
REASONS: tuple[str, ...] = (
    "realm.created",
    "realm.policy_changed",
    "key.created",
    "key.activated",
    "key.rotated",
    "key.expired",
    "key.deleted",
    "key.revoked",
)
FIELDS: tuple[str, ...] = (
    "id",
    "event_type",
    "realm_id",
    "event_at",
    "reason",
    "key_ids",
    "jwks_version",
)
# How long Redis remembers that an event was relayed, and as which stream entry.
RELAYED_TTL = timedelta(days=7)


def encode(event: dict[str, Any]) -> str:
    """Compact JSON in payload order: the exact text on the channel and in the stream."""
    return json.dumps(event, separators=(",", ":"))


def decode(text: str | bytes) -> dict[str, Any] | None:
    """A payload read back from Redis, or None when it is not a `realm.updated` event."""
    try:
        event = json.loads(text)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event_type") != EVENT_TYPE:
        return None
    if not isinstance(event.get("id"), str) or not isinstance(event.get("realm_id"), str):
        return None
    return event


def relayed_key(event_id: str) -> str:
    """Marks an event as relayed; its value is the stream entry id the event got."""
    return f"keyrotor:relayed:{event_id}"


def entry_id_of(client: redis.Redis, event_id: str) -> str | None:
    """The stream entry an event was relayed as, while Redis remembers it (`RELAYED_TTL`)."""
    value = client.get(relayed_key(event_id))
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
