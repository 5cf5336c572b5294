"""The sender against a real HTTP receiver: Standard Webhooks signatures a reference receiver
accepts (through a secret rotation), targets checked again at send, redirects not followed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.receiver import Receiver
from tests.support.replies import xrange
from worker.core.webhooks import WebhookPolicy
from worker.publish.relay import Relay
from worker.publish.webhooks import Sender
from worker.service import Service
from worker.service.webhooks import Dispatch
from worker.store.db import transaction
from worker.store.models import WebhookDelivery

LAPTOP = WebhookPolicy(allow_http=True, allow_private=True)


@pytest.fixture
def relay(service: Service, redis_url: str) -> Relay:
    service.webhook_policy = LAPTOP
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return Relay(service, client, maxlen=1000)


@pytest.fixture
def sender(service: Service) -> Iterator[Sender]:
    sender = Sender(service, timeout=1.0)
    yield sender
    sender.http.close()


def send_all(relay: Relay, sender: Sender) -> list[Dispatch]:
    """Relay the outbox and send what it queued, as the webhook worker would."""
    handed: list[Dispatch] = []
    relay.dispatch = handed.extend
    relay.relay_all()
    for dispatch in handed:
        sender.send(dispatch)
    return handed


def test_a_reference_receiver_accepts_deliveries_before_and_after_a_secret_rotation(
    service: Service, relay: Relay, sender: Sender
) -> None:
    """The receiver knows one secret at a time, as a real one does while it switches."""
    known: list[str] = []

    def verify(headers: dict[str, str], body: bytes) -> int:
        try:
            Webhook(known[-1]).verify(body, headers)
        except WebhookVerificationError:
            return 401
        return 204

    with Receiver(verify=verify) as receiver:
        hook, secret = service.create_webhook(receiver.url)
        known.append(secret)
        realm = service.create_realm("alpha", algo="es256")
        send_all(relay, sender)
        _, rotated = service.rotate_webhook_secret(hook.id)
        service.rotate(realm.id, force=True)
        send_all(relay, sender)  # signed by both: the receiver still holds the old secret
        known.append(rotated)
        service.rotate(realm.id, force=True)
        send_all(relay, sender)  # and now it holds the new one
        statuses = [d.status for d in receiver.received()]
        assert statuses == [204, 204, 204]
        first, _, after = receiver.received()
        assert first.event["reason"] == "realm.created"
        assert len(after.headers["webhook-signature"].split()) == 2
        assert after.headers["user-agent"].startswith("keyrotor/")
        assert after.headers["content-type"] == "application/json"
        stream = xrange(relay.redis, "keyrotor:events")
        assert [json.loads(e[b"event"]) for _, e in stream] == [
            d.event for d in receiver.received()
        ]  # exactly the JSON the stream carries, event ids as webhook-id
        assert receiver.delivered_ids() == [d.event["id"] for d in receiver.received()]
        tampered = dict(after.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(rotated).verify(after.body.replace(b"alpha", b"omega") + b" ", tampered)
    assert {d.state for d in service.list_deliveries(hook.id).collection} == {"delivered"}


def test_a_host_that_starts_resolving_to_a_private_address_is_refused_at_send(
    service: Service, relay: Relay, sender: Sender
) -> None:
    with Receiver() as receiver:
        service.webhook_policy = WebhookPolicy(allow_http=True)
        port = receiver.url.split(":")[2].split("/")[0]
        service.resolve = lambda host, p: ["93.184.216.34"]
        hook, _ = service.create_webhook(f"http://hooks.example.com:{port}/hook")
        service.resolve = lambda host, p: ["127.0.0.1"]
        service.create_realm("alpha", algo="es256")
        send_all(relay, sender)
        assert receiver.received() == []
    (delivery,) = service.list_deliveries(hook.id).collection
    assert delivery.state == "pending" and delivery.attempts == 1
    assert delivery.last_error is not None and "loopback" in delivery.last_error


def test_redirects_are_not_followed_and_a_failure_leaves_the_rest_for_later(
    service: Service, relay: Relay, sender: Sender
) -> None:
    with Receiver([302, 500]) as receiver:
        hook, _ = service.create_webhook(receiver.url)
        realm = service.create_realm("alpha", algo="es256")
        service.rotate(realm.id, force=True)
        send_all(relay, sender)  # two events: the first is redirected, the second not tried
        assert [d.status for d in receiver.received()] == [302]
        log = service.list_deliveries(hook.id, direction="asc").collection
        assert sorted((d.attempts, d.last_status) for d in log) == [(0, None), (1, 302)]
        assert {d.state for d in log} == {"pending"}


def test_an_endpoint_that_hangs_times_out_and_keeps_at_most_a_kib_of_an_answer(
    service: Service, relay: Relay, sender: Sender
) -> None:
    with Receiver(hang=1.5) as receiver:
        hook, _ = service.create_webhook(receiver.url)
        service.create_realm("alpha", algo="es256")
        send_all(relay, sender)
    (delivery,) = service.list_deliveries(hook.id).collection
    assert delivery.last_error == "timed out after 1s" and delivery.last_status is None
    with Receiver([500]) as receiver:
        service.update_webhook(hook.id, {"url": receiver.url})
        service.rotate("alpha", force=True)
        send_all(relay, sender)
    with transaction(service.sessions) as session:
        kept = [row.last_response for row in session.query(WebhookDelivery)]
    assert sorted(len(k or "") for k in kept) == [0, 1024]
