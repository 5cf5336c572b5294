"""Beat's heartbeat in Redis: written by the scheduler (`worker.jobs.beat`), read by
`keyrotor doctor` and `/metrics`. Free of Celery imports, so readers stay light."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis

HEARTBEAT_KEY = "keyrotor:beat:last"
HEARTBEAT_EVERY = 5.0  # seconds between writes; beat ticks at least every relay sweep (2 s)
HEARTBEAT_TTL = timedelta(days=7)  # a beat gone for good leaves no key behind forever


@dataclass(frozen=True)
class Heartbeat:
    """When a beat last ticked, and which one (two beats share the key: either proves life)."""

    at: datetime
    host: str
    pid: int


def record_heartbeat(client: redis.Redis, beat: Heartbeat) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.hset(
        HEARTBEAT_KEY,
        mapping={"at": f"{beat.at.timestamp():.3f}", "host": beat.host, "pid": str(beat.pid)},
    )
    pipe.expire(HEARTBEAT_KEY, HEARTBEAT_TTL)
    pipe.execute()


def last_heartbeat(client: redis.Redis) -> Heartbeat | None:
    """The last heartbeat any beat wrote, or None when no beat ever ticked (or it is long gone)."""
    return parse_heartbeat(client.hgetall(HEARTBEAT_KEY))  # type: ignore[arg-type]


def parse_heartbeat(found: dict[bytes, bytes]) -> Heartbeat | None:
    """The heartbeat from its hash as read (`/metrics` reads it within a pipeline of its own)."""
    try:
        return Heartbeat(
            at=datetime.fromtimestamp(float(found[b"at"]), UTC),
            host=found.get(b"host", b"?").decode(errors="replace"),
            pid=int(found.get(b"pid", b"0")),
        )
    except (KeyError, ValueError):
        return None
