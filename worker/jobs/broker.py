"""A guard against one kombu bug: a worker whose Redis restarts may exit instead of reconnecting.

When the broker connection drops, Celery closes the old kombu connection. Closing its channel
puts the unacknowledged messages back, which takes a Redis client, and kombu builds that client
from `channel.connection.client`: `None` once the transport has been detached, so
`_connparams` raises AttributeError, which nothing along that path expects, and the worker
process exits (kombu 5.7; found by the chaos run, about one Redis restart in five). Raised as
the connection error it is, kombu's own `maybe_close_channel` ignores it and Celery reconnects.
The messages it could not put back are redelivered after the visibility timeout; a due realm is
queued again by beat within three ticks anyway.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_GUARD = "_keyrotor_detached_guard"


def guard_detached_channels() -> None:
    """Install the guard once per process (idempotent)."""
    channel: Any = kombu_redis.Channel
    original = channel._connparams
    if getattr(original, _GUARD, False):
        return

    def _connparams(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection this channel belonged to is closed")
        return original(self, *args, **kwargs)

    setattr(_connparams, _GUARD, True)
    _connparams.__wrapped__ = original  # type: ignore[attr-defined]
    channel._connparams = _connparams
