"""`realm.updated` on the wire: names, the payload, and how an event is found in the stream.

Kept free of the database stack so that subscribers and verifiers import it cheaply; the relay
that writes these lives in the server (`worker.publish.relay`).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

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
    "actor",
)
# How long Redis remembers that an event was relayed, and as which stream entry.
RELAYED_TTL = timedelta(days=7)


def redis_client(
    url: str,
    *,
    timeout: float = 5.0,
    read_timeout: float | None = None,
    fail_fast: bool = False,
    **options: Any,
) -> redis.Redis:
    """A client for `url` that never waits forever (redis-py's default): `timeout` for
    connecting and reading, `read_timeout` instead for reads that block longer. `fail_fast`
    makes one attempt, for callers with another source or a backoff of their own."""
    if fail_fast:
        options["retry"] = Retry(NoBackoff(), 0)
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout if read_timeout is None else read_timeout,
        **options,
    )


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
