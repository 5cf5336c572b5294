"""Follow `realm.updated` events from a thread or from asyncio, missing none across disconnects.

The subscriber reads stream `keyrotor:events` with a blocking XREAD: it wakes as soon as the
relay appends (as fast as the pub/sub channel), and every entry carries its position, so after
a reconnect it reads on from the last entry it saw and nothing published meanwhile is lost.
Repeats (a relay re-adding an event Redis forgot it had sent) are dropped by event id. If the
last entry seen is no longer in the stream (trimmed, or Redis lost its data) events may have
been missed, and `on_gap` is called so a cache can reload everything.

    sub = Subscriber("redis://localhost:6379/0", print, realm="rl_...")
    sub.start()            # a daemon thread; sub.stop() ends it
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import re
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from keyrotor_client.errors import InvalidInput
from keyrotor_client.events import STREAM, STREAM_FIELD, decode, redis_client

log = logging.getLogger("keyrotor.subscriber")

Callback = Callable[[dict[str, Any]], object]
GapHandler = Callable[[], object]

ENTRY_ID = re.compile(r"\d+(-\d+)?")
START = "0-0"
BLOCK_SECONDS = 5.0
READ_COUNT = 100
REMEMBER = 10_000
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
CLIENT_NAME = "keyrotor-subscriber"


def check_since(since: str | None) -> str | None:
    """A stream entry id to read after, `0` for everything the stream holds, or None / `$`
    for only what comes next."""
    if since is None or since == "$":
        return None
    if since == "0":
        return START
    if not ENTRY_ID.fullmatch(since):
        raise InvalidInput(f"Since must be a stream entry id like 1700000000000-0, not {since!r}")
    return since


class Position:
    """Where a subscriber is in the stream and which events it has delivered: no I/O here."""

    def __init__(self, realm: str | None, since: str | None, remember: int = REMEMBER) -> None:
        self.realm = realm
        self.last_id: str | None = check_since(since)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    def read(self, reply: Any) -> list[dict[str, Any]]:
        """Advance past an XREAD reply; the new events of our realm in it, in stream order."""
        events = []
        streams = reply.items() if isinstance(reply, dict) else reply or []  # RESP3 or RESP2
        for _stream, entries in streams:
            for entry_id, fields in entries:
                event = self.take(entry_id, fields)
                if event is not None:
                    events.append(event)
        return events

    def take(
        self, entry_id: str | bytes, fields: Mapping[str, str] | Mapping[bytes, bytes]
    ) -> dict[str, Any] | None:
        """Advance past one entry; the event if it is new and for our realm, else None."""
        entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        self.last_id = entry_id
        text = {_text(k): v for k, v in fields.items()}.get(STREAM_FIELD, "")
        event = decode(text)
        if event is None:
            log.warning("skipped stream entry %s: not a realm.updated event", entry_id)
            return None
        if event["id"] in self._seen:
            self._seen.move_to_end(event["id"])
            return None
        self._seen[event["id"]] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        if self.realm is not None and event["realm_id"] != self.realm:
            return None
        return event


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _latest(reply: Any) -> str:
    return _text(reply[0][0]) if reply else START


def history(
    client: redis.Redis, *, realm: str | None = None, since: str = "0"
) -> Iterator[dict[str, Any]]:
    """The events the stream holds after `since`, without waiting for more."""
    position = Position(realm, since)
    while position.last_id is not None:  # None: `$`, nothing held is wanted
        reply = client.xread({STREAM: position.last_id}, count=READ_COUNT)
        if not reply:
            return
        yield from position.read(reply)


def _missing(last_id: str, reply: Any) -> bool:
    """True when the last entry seen is gone from the stream, so later ones may be gone too."""
    return last_id != START and not reply


def _backoff(delay: float) -> float:
    """Jittered exponential backoff, so many subscribers cut off at once do not reconnect in
    step."""
    return delay / 2 + random.uniform(0, delay / 2)


class Subscriber:
    """Calls `callback(event)` for every `realm.updated` event, in stream order, in a thread.

    `since` is a stream entry id (as `last_id` reports, to resume after a restart of your
    process), `0` for all the stream holds, or None for events from now on. A callback that
    raises is logged and the event counts as delivered.
    """

    def __init__(
        self,
        redis_url: str,
        callback: Callback,
        *,
        realm: str | None = None,
        since: str | None = None,
        on_gap: GapHandler | None = None,
        block: float = BLOCK_SECONDS,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.redis_url = redis_url
        self.callback = callback
        self.on_gap = on_gap
        self.block = block
        self.backoff_max = backoff_max
        self.position = Position(realm, since)
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._client: redis.Redis | None = None
        self._thread: threading.Thread | None = None
        self._delay = BACKOFF_FIRST

    @property
    def last_id(self) -> str | None:
        """The last stream entry read: pass it as `since` to resume from here later."""
        return self.position.last_id

    def start(self) -> Subscriber:
        """Follow in a daemon thread; every event relayed after this returns is delivered
        (when Redis answers now; else from wherever the stream is when it first does)."""
        if self.position.last_id is None:
            try:
                client = self._connect()
                try:
                    self._resume(client)
                finally:
                    client.close()
            except (redis.RedisError, OSError):
                pass
        self._thread = threading.Thread(target=self.run, name="keyrotor-subscriber", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop following; a blocked read is cut short by closing its connection."""
        self._stopping.set()
        client = self._client
        if client is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                client.connection_pool.disconnect()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def run(self) -> None:
        """Follow the stream until `stop()`, reconnecting with backoff; blocks the caller."""
        self._delay = BACKOFF_FIRST
        while not self._stopping.is_set():
            try:
                self._client = self._connect()
                self._resume(self._client)
                self.connected.set()
                self._follow(self._client)
            except Exception as error:  # whatever broke the connection, follow on
                self.connected.clear()
                if self._stopping.is_set():
                    break  # stop() closed the connection under the read
                wait = _backoff(self._delay)
                if isinstance(error, redis.RedisError | OSError):
                    log.warning("event stream unavailable (%s); reconnecting in %.1fs", error, wait)
                else:
                    log.exception("subscriber failed; reconnecting in %.1fs", wait)
                self._stopping.wait(wait)
                self._delay = min(self._delay * 2, self.backoff_max)
            finally:
                if self._client is not None:
                    self._client.close()
                    self._client = None
        self.connected.clear()

    def _connect(self) -> redis.Redis:
        client = redis_client(
            self.redis_url,
            read_timeout=self.block + 5,
            fail_fast=True,  # our own backoff decides when to try again
            decode_responses=True,
            client_name=CLIENT_NAME,
        )
        client.ping()
        return client

    def _resume(self, client: redis.Redis) -> None:
        last_id = self.position.last_id
        if last_id is None:
            self.position.last_id = _latest(client.xrevrange(STREAM, count=1))
        elif _missing(last_id, client.xrange(STREAM, min=last_id, max=last_id, count=1)):
            log.warning("stream entry %s is gone: events may have been missed", last_id)
            if self.on_gap is not None:
                _call(self.on_gap, "gap handler")

    def _follow(self, client: redis.Redis) -> None:
        block = int(self.block * 1000)
        while not self._stopping.is_set():
            assert self.position.last_id is not None
            reply = client.xread({STREAM: self.position.last_id}, count=READ_COUNT, block=block)
            self._delay = BACKOFF_FIRST  # a read worked: the next outage starts backing off anew
            for event in self.position.read(reply):
                _call(self.callback, f"callback on {event['id']}", event)


def _call(function: Callable[..., object], what: str, *args: Any) -> object:
    try:
        return function(*args)
    except Exception:
        log.exception("subscriber %s failed", what)
        return None


async def events(
    redis_url: str,
    *,
    realm: str | None = None,
    since: str | None = None,
    on_gap: GapHandler | None = None,
    block: float = BLOCK_SECONDS,
    backoff_max: float = BACKOFF_MAX,
    position: Position | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """The same stream as an async iterator, for asyncio services; runs until cancelled.

    Pass your own `position` to read `position.last_id` (where to resume) from outside.
    """
    position = position or Position(realm, since)
    delay = BACKOFF_FIRST
    while True:
        client = redis.asyncio.Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=block + 5,
            client_name=CLIENT_NAME,
            retry=AsyncRetry(NoBackoff(), 0),
        )
        try:
            await client.ping()
            last_id = position.last_id
            if last_id is None:
                position.last_id = _latest(await client.xrevrange(STREAM, count=1))
            elif _missing(last_id, await client.xrange(STREAM, last_id, last_id, count=1)):
                log.warning("stream entry %s is gone: events may have been missed", last_id)
                if on_gap is not None:
                    await _acall(on_gap, "gap handler")
            while True:
                assert position.last_id is not None
                reply = await client.xread(
                    {STREAM: position.last_id}, count=READ_COUNT, block=int(block * 1000)
                )
                delay = BACKOFF_FIRST
                for event in position.read(reply):
                    yield event
        except (redis.RedisError, OSError) as error:
            wait = _backoff(delay)
            log.warning("event stream unavailable (%s); reconnecting in %.1fs", error, wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, backoff_max)
        finally:
            await client.aclose()


async def subscribe(
    redis_url: str,
    callback: Callable[[dict[str, Any]], object | Awaitable[object]],
    **options: Any,
) -> None:
    """Call `callback(event)` (a function or a coroutine function) for every event, until
    cancelled; a callback that raises is logged and the next event still comes."""
    async for event in events(redis_url, **options):
        await _acall(callback, f"callback on {event['id']}", event)


async def _acall(function: Callable[..., object], what: str, *args: Any) -> None:
    try:
        result = function(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("subscriber %s failed", what)
