"""What every request handler shares: settings, the service, admin keys, Redis, the clock,
and a way to queue tasks."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, cast

import redis
from fastapi import Request

from worker import runtime
from worker.core.bounded import BoundedDict
from worker.core.clock import Clock
from worker.core.errors import NotFound
from worker.http.auth import AdminAuthenticator
from worker.publish.relay import Relay
from worker.service import Service
from worker.service.actors import current_actor
from worker.settings import Settings
from worker.store.admin_keys import AdminKeys

if TYPE_CHECKING:
    pass  # made on first use: a web process that queues nothing never loads it

log = logging.getLogger("keyrotor.http")

MAX_REF_CHARS = 100
NAME_TTL_SECONDS = 60.0
NAME_CACHE_SIZE = 10_000
REDIS_TIMEOUT = 2.0
REDIS_REST = 5.0
RECENT_SECONDS = 0.02
RECENT_SIZE = 10_000


def clean_ref(value: str) -> str:
    """A realm or key reference from a URL; anything no id or name could be is simply not
    found (and never reaches the database, which refuses NUL bytes with an error)."""
    if not value or len(value) > MAX_REF_CHARS or not value.isprintable():
        raise NotFound(f"{value[:40]!r} not found")
    return value


class RedisHandle:
    """The Redis this process talks to: the one given, or the configured or embedded one,
    looked up again until it is known (a web process may start before the embedded Valkey).

    Its own client fails fast (one attempt, short timeouts): a request that can do without
    Redis should not wait out redis-py's retries; and after a failure, `reader()` rests for a
    few seconds so an outage costs JWKS requests nothing.
    """

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self._client = client
        self._relay: Relay | None = None
        self._resting_until = 0.0

    def client(self) -> redis.Redis | None:
        if self._client is None:
            url = runtime.redis_url(self.settings)
            if url is not None:
                self._client = runtime.redis_client(url, timeout=REDIS_TIMEOUT, fail_fast=True)
        return self._client

    def reader(self) -> redis.Redis | None:
        """The client for reads that have another source, or None while resting."""
        return None if time.monotonic() < self._resting_until else self.client()

    def failed(self) -> None:
        self._resting_until = time.monotonic() + REDIS_REST

    def relay(self, service: Service) -> Relay | None:
        """The relay on this handle's client, once Redis is known."""
        client = self.client()
        if client is None:
            return None
        if self._relay is None:
            self._relay = runtime.relay(self.settings, service, client)
        return self._relay


@dataclass
class NameCache:
    """Realm name -> id, for JWKS requests by name: names never change, but a realm may be
    deleted and its name reused, so entries live `ttl` seconds and are checked against the
    name stored with the published copy."""

    ttl: float = NAME_TTL_SECONDS
    _entries: BoundedDict[str, tuple[str, float]] = field(
        default_factory=lambda: BoundedDict(NAME_CACHE_SIZE)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, name: str) -> str | None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry[1] < time.monotonic():
                self._entries.pop(name, None)
                return None
            return entry[0]

    def put(self, name: str, realm_id: str) -> None:
        with self._lock:
            self._entries[name] = (realm_id, time.monotonic() + self.ttl)

    def forget(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)


CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "ETag, Cache-Control",
}


@dataclass(frozen=True)
class Document:
    """A realm's JWKS as the route serves it, with the headers that do not change encoded once
    (for a 304, and for a 200: the same plus the content's). `realm_name` is what the discovery
    document's issuer needs; None from a Redis copy that does not say."""

    body: bytes
    etag: str
    next_change_at: datetime | None
    realm_name: str | None = None
    headers_304: list[tuple[bytes, bytes]] = field(init=False, repr=False, compare=False)
    headers_200: list[tuple[bytes, bytes]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fixed = {"etag": self.etag, **CORS}
        headers = [(name.lower().encode(), value.encode()) for name, value in fixed.items()]
        content = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(self.body)),
        ]
        object.__setattr__(self, "headers_304", headers)
        object.__setattr__(self, "headers_200", content + headers)


@dataclass
class Recent:
    """The documents this process read in the last `seconds`, by the reference asked for.

    `generation` moves on every `clear`, and a read begun before it is not kept, so after a
    change through this process no answer comes from an older read."""

    seconds: float = RECENT_SECONDS
    generation: int = 0
    _entries: BoundedDict[str, tuple[Document, float]] = field(
        default_factory=lambda: BoundedDict(RECENT_SIZE)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, ref: str) -> Document | None:
        entry = self._entries.get(ref)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, ref: str, document: Document, generation: int) -> None:
        """Keep `document`, read during `generation`, unless a change came since."""
        if self.seconds <= 0:
            return
        with self._lock:
            if generation != self.generation:
                return
            self._entries[ref] = (document, time.monotonic() + self.seconds)

    def clear(self) -> None:
        """After a change through this process: the next request reads the new copy."""
        with self._lock:
            self.generation += 1
            self._entries.clear()


@dataclass
class HttpContext:
    settings: Settings
    service: Service
    admin_keys: AdminKeys
    authenticator: AdminAuthenticator
    redis: RedisHandle
    clock: Clock
    names: NameCache = field(default_factory=NameCache)
    recent: Recent = field(default_factory=Recent)
    reading: dict[tuple[str, int], asyncio.Future[Document]] = field(default_factory=dict)
    """JWKS reads in progress, by reference and `Recent` generation (jwks_route.py)."""

    def send_task(self, name: str, *args: str) -> None:
        """Queue a task for the workers, by name, on the configured (or embedded) broker (the
        process's sending app, `runtime.task_sender`); a broker away is a Redis error. A task
        that records who asked gets the request's actor (the admin key), so the changes it
        makes on the workers are that key's."""
        from kombu.exceptions import OperationalError

        from worker.jobs.app import ACTOR_TASKS

        tasks = runtime.task_sender(self.settings)
        try:
            kwargs = {"actor": current_actor()} if name in ACTOR_TASKS else {}
            tasks.send_task(name, args=list(args), kwargs=kwargs)
        except OperationalError as error:  # kombu's: the broker does not answer
            raise redis.ConnectionError(str(error)) from error

    def published(self, realm_id: str) -> None:
        """After a commit: publish the realm's JWKS, then relay its events. The change is
        committed whatever happens here; `reconcile_jwks` and `relay_events` catch up."""
        try:
            self.recent.clear()
            relay = self.redis.relay(self.service)
            if relay is not None:
                relay.after_commit(realm_id)
        except Exception:
            log.exception("publishing %s after a commit failed; the sweeps will retry", realm_id)


def context(request: Request) -> HttpContext:
    return cast(HttpContext, request.app.state.keyrotor)
