"""The subscriber library: every event once, across disconnects, from a thread or asyncio."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from keyrotor_client.events import STREAM, encode
from keyrotor_client.subscriber import CLIENT_NAME, Subscriber, events, subscribe

from tests.support.events import Collector, Events, make_events
from tests.support.replies import xrange
from tests.support.stack import wait_for
from worker.service import Service


@pytest.fixture
def wire(service: Service, redis_url: str, tmp_path: Path) -> Events:
    return make_events(service, redis_url, tmp_path)


class Unplugged(Subscriber):
    """A subscriber whose Redis a test can make unreachable (the server itself stays up)."""

    reachable = threading.Event()

    def _connect(self) -> redis.Redis:
        if not self.reachable.is_set():
            raise redis.ConnectionError("unplugged by the test")
        return super()._connect()


def cut_off(client: redis.Redis) -> None:
    """Close the subscriber's connection from the server side (and any an earlier test's
    subscriber process left behind on the shared server)."""
    subscribers = [c for c in client.client_list() if c["name"] == CLIENT_NAME]
    assert subscribers
    for subscriber in subscribers:
        client.client_kill_filter(_id=subscriber["id"])


def test_a_subscriber_cut_off_while_events_are_sent_reconnects_and_misses_nothing(
    wire: Events, service: Service
) -> None:
    got = Collector()
    Unplugged.reachable.set()
    with Unplugged(wire.url, got, backoff_max=0.2) as subscriber:
        wait_for(subscriber.connected.is_set, 5, "the subscriber to connect")
        service.create_realm("acme", algo="es256")
        wire.send()
        got.wait_for_ids(wire.outbox_ids())

        Unplugged.reachable.clear()
        cut_off(wire.redis)
        wait_for(lambda: not subscriber.connected.is_set(), 5, "the subscriber to notice")
        service.rotate("acme", force=True)
        service.create_key("acme")
        service.update_realm("acme", grace=timedelta(hours=12))
        assert wire.send() == 3  # sent while the subscriber is away
        Unplugged.reachable.set()
        got.wait_for_ids(wire.outbox_ids())


def test_a_subscriber_started_again_from_its_last_id_resumes_where_it_stopped(
    wire: Events, service: Service
) -> None:
    first = Collector()
    with Subscriber(wire.url, first) as subscriber:
        service.create_realm("acme", algo="es256")
        wire.send()
        first.wait_for_ids(wire.outbox_ids())
    resume_from = subscriber.last_id
    service.rotate("acme", force=True)
    service.rotate("acme", force=True)
    wire.send()

    second = Collector()
    with Subscriber(wire.url, second, since=resume_from):
        second.wait_for_ids(wire.outbox_ids()[1:])


def test_repeats_are_dropped_by_event_id_and_other_realms_filtered_out(
    wire: Events, service: Service
) -> None:
    acme = service.create_realm("acme", algo="es256")
    service.create_realm("beta", algo="es256")
    wire.send()
    (created, _) = wire.stream()
    # A relay that re-adds an event Redis forgot it had sent (its marker expired or was lost).
    wire.redis.xadd(STREAM, {"event": encode(created)})
    service.rotate("acme", force=True)
    wire.send()

    everything, only_acme = Collector(), Collector()
    with (
        Subscriber(wire.url, everything, since="0"),
        Subscriber(wire.url, only_acme, since="0", realm=acme.id),
    ):
        everything.wait_for_ids(wire.outbox_ids())
        only_acme.wait_for_ids(wire.outbox_ids(acme.id))
    assert len(wire.stream()) == 4


def test_a_callback_that_raises_is_logged_and_the_next_event_still_comes(
    wire: Events, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    got = Collector()

    def flaky(event: dict[str, Any]) -> None:
        got(event)
        if len(got.events) == 1:
            raise RuntimeError("the callback broke")

    with caplog.at_level(logging.ERROR, "keyrotor.subscriber"), Subscriber(wire.url, flaky):
        service.create_realm("acme", algo="es256")
        wire.send()
        service.rotate("acme", force=True)
        wire.send()
        got.wait_for_ids(wire.outbox_ids())
    (failure,) = [r for r in caplog.records if "failed" in r.getMessage()]
    assert got.events[0]["id"] in failure.getMessage() and failure.exc_info


def test_a_gap_is_reported_when_the_last_entry_seen_is_gone(wire: Events, service: Service) -> None:
    service.create_realm("acme", algo="es256")
    wire.send()
    ((seen, _),) = xrange(wire.redis, STREAM)
    wire.redis.xtrim(STREAM, maxlen=0)  # trimmed away (or Redis lost its data)
    gaps = []
    got = Collector()
    with Subscriber(wire.url, got, since=seen.decode(), on_gap=lambda: gaps.append(1)):
        service.rotate("acme", force=True)
        wire.send()
        got.wait_for_ids(wire.outbox_ids()[1:])
    assert gaps == [1]


def test_from_asyncio_events_and_a_coroutine_callback_that_raises(
    wire: Events, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    service.create_realm("acme", algo="es256")
    service.rotate("acme", force=True)
    wire.send()
    wanted = wire.outbox_ids()

    async def follow() -> tuple[list[str], list[str]]:
        iterated: list[str] = []
        async for event in events(wire.url, since="0"):
            iterated.append(event["id"])
            if len(iterated) == len(wanted):
                break
        called: list[str] = []
        done = asyncio.Event()

        async def callback(event: dict[str, Any]) -> None:
            called.append(event["id"])
            if len(called) == len(wanted):
                done.set()
            raise ValueError("a broken handler")

        task = asyncio.create_task(subscribe(wire.url, callback, since="0"))
        await asyncio.wait_for(done.wait(), 10)
        task.cancel()
        return iterated, called

    with caplog.at_level(logging.ERROR, "keyrotor.subscriber"):
        iterated, called = asyncio.run(asyncio.wait_for(follow(), 20))
    assert iterated == called == wanted
    assert sum("a broken handler" in str(r.exc_info) for r in caplog.records) == len(wanted)
