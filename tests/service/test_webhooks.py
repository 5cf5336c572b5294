"""Webhooks in the service: who may be called, which events each webhook gets, how failed
deliveries are retried and given up, and the secret that keeps signing through a rotation."""

from __future__ import annotations

import base64
import secrets
import threading
from datetime import timedelta

import pytest
import redis
from sqlalchemy import Engine

from tests.conftest import FakeClock
from worker.core.errors import InvalidInput, NotFound
from worker.core.sealing import MasterKeys
from worker.core.webhooks import WebhookPolicy
from worker.publish.relay import Relay
from worker.service import Limits, Service
from worker.service.webhooks import Dispatch, Outcome
from worker.store.db import session_factory

PUBLIC = "93.184.216.34"
SECOND = timedelta(seconds=1)
POLICY = WebhookPolicy(retry_schedule=(SECOND, 2 * SECOND), retry_for=timedelta(minutes=1))


@pytest.fixture
def hooks(service: Service) -> Service:
    service.webhook_policy = POLICY
    service.resolve = lambda host, port: [PUBLIC]
    return service


@pytest.fixture
def relay(hooks: Service, redis_url: str) -> Relay:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return Relay(hooks, client, maxlen=1000)


def queued(relay: Relay) -> list[Dispatch]:
    """What the relay hands to the senders when it sends the outbox."""
    handed: list[Dispatch] = []
    relay.dispatch = handed.extend
    relay.relay_all()
    return handed


def test_a_new_webhook_gets_a_standard_secret_shown_once(hooks: Service) -> None:
    view, secret = hooks.create_webhook("https://hooks.example.com/in")
    assert view.id.startswith("whk_") and len(view.id) == 26
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert hooks.webhook(view.id) == view and "secret" not in repr(view)
    assert [w.id for w in hooks.list_webhooks().collection] == [view.id]


@pytest.mark.parametrize(
    ("url", "addresses", "refused"),
    [
        ("http://hooks.example.com/", [PUBLIC], "must start with https://"),
        ("ftp://hooks.example.com/", [PUBLIC], "must start with https://"),
        ("https://user:pw@hooks.example.com/", [PUBLIC], "user name or password"),
        ("https://hooks.example.com/", ["127.0.0.1"], "loopback"),
        ("https://hooks.example.com/", [PUBLIC, "10.1.2.3"], "private"),
        ("https://hooks.example.com/", ["169.254.169.254"], "metadata"),
        ("https://hooks.example.com/", ["::ffff:192.168.0.1"], "private"),
        ("https://hooks.example.com/", ["fd00:ec2::254"], "metadata"),
        ("https://hooks.example.com/", [], "does not resolve"),
        ("not a url", [PUBLIC], "not a valid URL"),
    ],
)
def test_unsafe_targets_are_refused_in_one_line_and_nothing_is_made(
    hooks: Service, url: str, addresses: list[str], refused: str
) -> None:
    hooks.resolve = lambda host, port: addresses
    with pytest.raises(InvalidInput) as error:
        hooks.create_webhook(url)
    assert refused in str(error.value) and "\n" not in str(error.value)
    assert hooks.list_webhooks().collection == []


def test_http_and_private_targets_only_when_allowed(hooks: Service) -> None:
    hooks.webhook_policy = WebhookPolicy(allow_http=True, allow_private=True)
    hooks.resolve = lambda host, port: ["127.0.0.1"]
    view, _ = hooks.create_webhook("http://127.0.0.1:9999/hook")
    assert view.url == "http://127.0.0.1:9999/hook"


def test_each_event_is_queued_once_for_each_webhook_that_wants_it(
    hooks: Service, relay: Relay
) -> None:
    realm = hooks.create_realm("alpha", algo="es256")
    other = hooks.create_realm("beta", algo="es256")
    everything, _ = hooks.create_webhook("https://a.example.com/")
    alpha_only, _ = hooks.create_webhook("https://b.example.com/", realm_id="alpha")
    rotations, _ = hooks.create_webhook("https://c.example.com/", reasons=["key.rotated"])
    disabled, _ = hooks.create_webhook("https://d.example.com/", enabled=False)
    queued(relay)  # the realms' creation, before the webhooks: nothing for them
    hooks.rotate(realm.id, force=True)
    hooks.rotate(other.id, force=True)
    handed = queued(relay)
    per_webhook = {d.webhook_id: len(d.delivery_ids) for d in handed}
    assert per_webhook == {everything.id: 2, alpha_only.id: 1, rotations.id: 2}
    assert disabled.id not in per_webhook
    assert queued(relay) == []  # sent events are not queued again
    log = hooks.list_deliveries(everything.id).collection
    assert {d.state for d in log} == {"pending"} and all(d.event_id for d in log)


def test_two_sweeps_at_once_never_lease_the_same_delivery(
    hooks: Service, relay: Relay, clock: FakeClock
) -> None:
    hooks.create_webhook("https://a.example.com/")
    hooks.create_realm("alpha", algo="es256")
    for _ in range(5):
        hooks.rotate("alpha", force=True)
    queued(relay)
    clock.advance(hours=1)  # the relay's leases have run out: the sweep takes them again
    taken: list[list[Dispatch]] = []
    threads = [threading.Thread(target=lambda: taken.append(hooks.lease_due())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for dispatches in taken for d in dispatches for i in d.delivery_ids]
    assert len(ids) == len(set(ids)) == 6
    assert hooks.lease_due() == []  # leased: not due again until the lease ends


def test_failed_attempts_are_retried_on_the_schedule_then_delivered(
    hooks: Service, relay: Relay, clock: FakeClock
) -> None:
    hook, _ = hooks.create_webhook("https://a.example.com/")
    hooks.create_realm("alpha", algo="es256")
    (dispatch,) = queued(relay)
    (delivery_id,) = dispatch.delivery_ids
    for attempt, status in enumerate([500, 503, 500], start=1):
        recorded = hooks.record(dispatch, [Outcome(delivery_id, status=status, error="HTTP 5xx")])
        assert recorded.retrying == 1
        (view,) = hooks.list_deliveries(hook.id).collection
        assert (view.state, view.attempts, view.last_status) == ("pending", attempt, status)
        wait = view.next_attempt_at - clock.now  # type: ignore[operator]
        expected = POLICY.retry_schedule[min(attempt, 2) - 1]
        assert 0.8 * expected <= wait <= 1.2 * expected  # the schedule, with jitter
        assert hooks.lease_due() == []
        clock.advance(seconds=3)
        (dispatch,) = hooks.lease_due()
    assert hooks.record(dispatch, [Outcome(delivery_id, status=204)]).delivered == 1
    (view,) = hooks.list_deliveries(hook.id).collection
    assert (view.state, view.attempts, view.delivered_at) == ("delivered", 4, clock.now)
    assert hooks.lease_due() == []


def test_a_stale_lease_records_nothing(hooks: Service, relay: Relay, clock: FakeClock) -> None:
    hook, _ = hooks.create_webhook("https://a.example.com/")
    hooks.create_realm("alpha", algo="es256")
    (first,) = queued(relay)
    clock.advance(hours=1)
    (second,) = hooks.lease_due()  # the first sender was lost; another took over
    hooks.record(first, [Outcome(first.delivery_ids[0], status=500)])
    (view,) = hooks.list_deliveries(hook.id).collection
    assert view.attempts == 0
    assert hooks.outgoing(first) is None and hooks.outgoing(second) is not None


def test_an_endpoint_failing_for_the_whole_window_is_disabled_with_an_entry_in_its_log(
    hooks: Service, relay: Relay, clock: FakeClock
) -> None:
    hook, _ = hooks.create_webhook("https://a.example.com/")
    hooks.create_realm("alpha", algo="es256")
    (dispatch,) = queued(relay)
    while True:
        recorded = hooks.record(dispatch, [Outcome(dispatch.delivery_ids[0], error="timed out")])
        if recorded.disabled:
            break
        clock.advance(seconds=3)
        (dispatch,) = hooks.lease_due()
    assert recorded.failed == 1 and not hooks.webhook(hook.id).enabled
    log = hooks.list_deliveries(hook.id).collection
    states = sorted((d.event_id is None, d.state, (d.last_error or "")[:16]) for d in log)
    assert states == [(False, "failed", "timed out"), (True, "failed", "webhook.disabled")]
    hooks.rotate("alpha", force=True)
    assert queued(relay) == []  # a disabled webhook gets nothing new
    hooks.update_webhook(hook.id, {"enabled": True})
    hooks.rotate("alpha", force=True)
    assert len(queued(relay)) == 1


def test_a_delivery_retried_by_hand_is_sent_again(
    hooks: Service, relay: Relay, clock: FakeClock
) -> None:
    hook, _ = hooks.create_webhook("https://a.example.com/")
    hooks.create_realm("alpha", algo="es256")
    (dispatch,) = queued(relay)
    hooks.record(dispatch, [Outcome(dispatch.delivery_ids[0], status=200)])
    retried = hooks.retry_delivery(hook.id, dispatch.delivery_ids[0])
    assert retried.state == "pending"
    (again,) = hooks.lease_due()
    assert again.delivery_ids == dispatch.delivery_ids
    with pytest.raises(NotFound):
        hooks.retry_delivery(hook.id, "whd_0000000000000000000000")


def test_after_a_secret_rotation_both_secrets_sign_until_the_overlap_ends(
    hooks: Service, relay: Relay, clock: FakeClock
) -> None:
    hook, first = hooks.create_webhook("https://a.example.com/")
    hooks.create_realm("alpha", algo="es256")
    _, second = hooks.rotate_webhook_secret(hook.id)
    assert second != first
    (dispatch,) = queued(relay)
    outgoing = hooks.outgoing(dispatch)
    assert outgoing is not None and outgoing.secrets == [second, first]
    clock.advance(hours=25)
    hooks.rotate("alpha", force=True)
    (later,) = queued(relay)
    outgoing = hooks.outgoing(later)
    assert outgoing is not None and outgoing.secrets == [second]


def test_updates_change_only_what_is_given_and_deleting_takes_the_log_along(
    hooks: Service, relay: Relay
) -> None:
    hooks.create_realm("alpha", algo="es256")
    hook, _ = hooks.create_webhook("https://a.example.com/", realm_id="alpha")
    changed = hooks.update_webhook(hook.id, {"reasons": ["key.revoked"]})
    assert (changed.realm_id, changed.reasons) == (hook.realm_id, ["key.revoked"])
    assert hooks.update_webhook(hook.id, {"realm_id": None}).realm_id is None
    with pytest.raises(InvalidInput, match="unknown reason"):
        hooks.update_webhook(hook.id, {"reasons": ["key.stolen"]})
    with pytest.raises(NotFound):
        hooks.update_webhook(hook.id, {"realm_id": "nowhere"})
    hooks.rotate("alpha", force=True)
    hooks.rotate("alpha", force=False)
    queued(relay)
    hooks.delete_webhook(hook.id)
    with pytest.raises(NotFound):
        hooks.list_deliveries(hook.id)


def test_rewrap_reseals_webhook_secrets_and_both_keep_signing(
    engine: Engine, clock: FakeClock, redis_url: str
) -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)

    def service_with(*keys: bytes) -> Service:
        found = Service(session_factory(engine), MasterKeys(keys), Limits(), clock, POLICY)
        found.resolve = lambda host, port: [PUBLIC]
        return found

    before = service_with(old)
    hook, first = before.create_webhook("https://a.example.com/")
    _, second = before.rotate_webhook_secret(hook.id)
    assert service_with(new, old).rewrap() == 1
    after = service_with(new)
    after.create_realm("alpha", algo="es256")
    (dispatch,) = queued(Relay(after, redis.Redis.from_url(redis_url), maxlen=1000))
    outgoing = after.outgoing(dispatch)
    assert outgoing is not None and outgoing.secrets == [second, first]


def test_a_failing_endpoint_holds_one_sender_at_a_time(
    hooks: Service, relay: Relay, clock: FakeClock
) -> None:
    hook, _ = hooks.create_webhook("https://a.example.com/")
    hooks.create_realm("alpha", algo="es256")
    (dispatch,) = queued(relay)
    hooks.record(dispatch, [Outcome(dispatch.delivery_ids[0], error="timed out")])
    for _ in range(25):  # a burst of changes while the endpoint is down
        hooks.rotate("alpha", force=True)
    assert queued(relay) == []  # not handed to a new sender each: the sweep paces them
    clock.advance(seconds=3)
    (first,) = hooks.lease_due()
    assert len(first.delivery_ids) == 10  # one task of the oldest
    assert hooks.lease_due() == []  # while its sender works, no other task for it
    hooks.record(first, [Outcome(i, status=204) for i in first.delivery_ids])
    (second,) = hooks.lease_due()
    assert second.webhook_id == hook.id and set(second.delivery_ids).isdisjoint(first.delivery_ids)


def test_disabling_a_webhook_by_hand_fails_what_waits(hooks: Service, relay: Relay) -> None:
    hook, _ = hooks.create_webhook("https://a.example.com/")
    hooks.create_realm("alpha", algo="es256")
    queued(relay)
    hooks.update_webhook(hook.id, {"enabled": False})
    (delivery,) = hooks.list_deliveries(hook.id).collection
    assert (delivery.state, delivery.last_error) == ("failed", "webhook disabled")
    assert hooks.lease_due() == []
