"""The relay side of event tests (service, Redis, publisher, relay) and a recording callback."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select

from tests.support.replies import xrange
from tests.support.stack import wait_for
from worker.publish.jwks import Publisher
from worker.publish.relay import Relay
from worker.service import Service
from worker.store.db import transaction
from worker.store.models import Event


@dataclass
class Events:
    """A service whose commits a test relays by hand, on a Redis flushed for the test."""

    service: Service
    redis: redis.Redis
    url: str
    publisher: Publisher
    relay: Relay

    def send(self) -> int:
        return self.relay.relay_all()

    def stream(self) -> list[dict[str, Any]]:
        """Every event in the stream, in stream order."""
        return [json.loads(fields[b"event"]) for _, fields in xrange(self.redis)]

    def outbox(self, realm_id: str | None = None) -> list[Event]:
        """The outbox rows, in commit order."""
        query = select(Event).order_by(Event.seq)
        if realm_id is not None:
            query = query.where(Event.realm_id == realm_id)
        with transaction(self.service.sessions, read_only=True) as session:
            return list(session.scalars(query))

    def outbox_ids(self, realm_id: str | None = None) -> list[str]:
        return outbox_ids(self.service, realm_id)


def outbox_ids(service: Service, realm_id: str | None = None) -> list[str]:
    """The ids of the outbox rows, in commit order: every event that must arrive."""
    query = select(Event.id).order_by(Event.seq)
    if realm_id is not None:
        query = query.where(Event.realm_id == realm_id)
    with transaction(service.sessions, read_only=True) as session:
        return list(session.scalars(query))


def make_events(service: Service, redis_url: str, tmp: Path) -> Events:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()  # the stream and channel names are fixed: start from an empty Redis
    publisher = Publisher(client, tmp / "jwks")
    relay = Relay(service, client, maxlen=1000, publisher=publisher)
    return Events(service, client, redis_url, publisher, relay)


@dataclass
class Collector:
    """A subscriber callback that records what arrives (from any thread)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    also: Callable[[dict[str, Any]], object] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)
        if self.also is not None:
            self.also(event)

    def ids(self) -> list[str]:
        with self._lock:
            return [event["id"] for event in self.events]

    def wait_for_ids(self, wanted: list[str], timeout: float = 10) -> None:
        try:
            wait_for(lambda: self.ids() == wanted or None, timeout, "the events")
        except AssertionError:
            raise AssertionError(f"received {self.ids()}, wanted {wanted}") from None
