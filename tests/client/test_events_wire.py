"""`realm.updated` on the wire: every documented reason arrives, in the exact payload."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from keyrotor_client.events import CHANNEL, FIELDS, REASONS, STREAM, decode, encode, entry_id_of
from keyrotor_client.subscriber import Subscriber
from sqlalchemy import delete

from tests.conftest import FakeClock
from tests.support.events import Collector, Events, make_events
from tests.support.replies import xrange
from worker.core.lifecycle import State
from worker.publish.relay import payload
from worker.service import Service
from worker.store.db import transaction
from worker.store.models import JwtKey

RFC3339_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@pytest.fixture
def wire(service: Service, redis_url: str, tmp_path: Path) -> Events:
    return make_events(service, redis_url, tmp_path)


def key_in(service: Service, realm: str, state: State) -> str:
    (kid,) = [k.id for k in service.list_keys(realm=realm).collection if k.state == state]
    return kid


def every_reason(service: Service, clock: FakeClock) -> dict[str, str]:
    """Drive two realms through every documented kind of change; returns realm ids."""
    acme = service.create_realm("acme", algo="es256")  # realm.created
    service.update_realm("acme", max_token_ttl=timedelta(minutes=30))  # realm.policy_changed
    service.create_key("acme")  # key.created (pending)
    service.rotate("acme", force=True)  # key.rotated
    clock.advance(hours=7)
    service.purge_expired()  # key.deleted: the rotated-out key's grace is over
    service.create_key("acme")
    service.delete_key(key_in(service, "acme", State.PENDING))  # key.expired
    service.delete_key(key_in(service, "acme", State.ACTIVE), force=True)  # key.revoked
    # A realm whose active key vanished outside keyrotor (a partial restore) gets one back.
    beta = service.create_realm("beta", algo="hs256")
    service.create_key("beta")
    with transaction(service.sessions) as session:
        session.execute(
            delete(JwtKey).where(JwtKey.state == State.ACTIVE, JwtKey.realm_id == beta.id)
        )
    service.rotate("beta")  # key.activated
    service.delete_realm("beta")  # key.deleted, naming every key the realm had
    return {"acme": acme.id, "beta": beta.id}


def test_every_reason_arrives_at_a_subscriber_and_on_the_channel_in_the_exact_payload(
    wire: Events, service: Service, clock: FakeClock
) -> None:
    listener = wire.redis.pubsub()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    listener.subscribe(CHANNEL)
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    got = Collector()
    with Subscriber(wire.url, got):
        realms = every_reason(service, clock)
        assert wire.send() == len(wire.outbox())
        wanted = wire.outbox_ids()
        got.wait_for_ids(wanted)

    assert {event["reason"] for event in got.events} == set(REASONS)
    rows = {row.id: row for row in wire.outbox()}
    versions: dict[str, int] = {}
    for event in got.events:
        assert tuple(event) == FIELDS
        row = rows[event["id"]]
        assert row.published_at is not None
        assert event["id"].startswith("evt_") and event["event_type"] == "realm.updated"
        assert event["realm_id"] in realms.values()
        assert RFC3339_Z.fullmatch(event["event_at"])
        assert event["reason"] == row.reason and event["key_ids"] == row.key_ids
        assert all(k.startswith("jky_") for k in event["key_ids"])
        assert event["jwks_version"] > versions.get(event["realm_id"], 0)
        versions[event["realm_id"]] = event["jwks_version"]

    on_channel = []
    while (message := listener.get_message(timeout=1)) is not None:
        on_channel.append(message["data"].decode())
    assert on_channel == [encode(event) for event in got.events]
    assert wire.stream() == got.events
    listener.close()


def test_no_key_material_in_any_event(wire: Events, service: Service, clock: FakeClock) -> None:
    every_reason(service, clock)
    secrets = [k.key for k in service.list_keys().collection]  # the keys still stored
    wire.send()
    text = b"\n".join(fields[b"event"] for _, fields in xrange(wire.redis, STREAM)).decode()
    assert "jsk_" not in text and "BEGIN" not in text
    assert not any(secret in text for secret in secrets)
    for event in wire.stream():
        assert set(event) == set(FIELDS)


def test_the_relay_remembers_which_stream_entry_each_event_became(
    wire: Events, service: Service
) -> None:
    service.create_realm("acme", algo="es256")
    wire.send()
    (event,) = wire.outbox()
    ((entry_id, fields),) = xrange(wire.redis, STREAM)
    assert entry_id_of(wire.redis, event.id) == entry_id.decode()
    assert decode(fields[b"event"]) == payload(event)
    assert entry_id_of(wire.redis, "evt_unknown") is None


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"id": "evt_1"}', '{"event_type": "other", "id": "e", "realm_id": "r"}'],
)
def test_decode_refuses_what_is_not_a_realm_updated_event(text: str) -> None:
    assert decode(text) is None
