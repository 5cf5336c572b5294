"""Redis replies typed as the tests' clients get them.

redis-py (8) types a reply for either decoding mode (`bytes | str`) and a stream read as possibly
`None`; the tests' clients never decode responses and `XRANGE` always answers a list, so these
say so once instead of a cast at every read.
"""

from __future__ import annotations

from typing import cast

import redis

from worker.client.events import STREAM

StreamEntry = tuple[bytes, dict[bytes, bytes]]


def xrange(
    client: redis.Redis,
    name: str = STREAM,
    min: str = "-",
    max: str = "+",
    count: int | None = None,
) -> list[StreamEntry]:
    """`client.xrange(...)`, its entries as (id, fields) in bytes."""
    return cast("list[StreamEntry]", client.xrange(name, min=min, max=max, count=count))


def hget(client: redis.Redis, name: str, key: str) -> bytes | None:
    """`client.hget(name, key)`, in bytes."""
    return cast("bytes | None", client.hget(name, key))


def hmget(client: redis.Redis, name: str, keys: list[str]) -> list[bytes | None]:
    """`client.hmget(name, keys)`, in bytes."""
    return cast("list[bytes | None]", client.hmget(name, keys))
