"""Webhook delivery through real workers: the relay hands deliveries to the webhook worker,
beat sweeps up retries and lost ones, and a slow endpoint holds up nobody else."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.conftest import ONE_DATABASE
from tests.support.receiver import Receiver
from tests.support.stack import Stack, make_stack, wait_for
from worker.ops.supervisor import WEBHOOK_WORKER
from worker.service.webhooks import DeliveryView

STACK_SETTINGS = {
    "webhook_allow_http": "true",
    "webhook_allow_private": "true",
    "webhook_retry_schedule": "1s",
    "webhook_timeout": "2s",  # a lost sender holds one delivery for 6 s
}

WEBHOOKS = WEBHOOK_WORKER[:-2]  # the queue, threads and concurrency; tests name their own


def deliveries(stack: Stack, webhook_id: str) -> list[DeliveryView]:
    return list(stack.service.list_deliveries(webhook_id).collection)


@ONE_DATABASE
def test_a_delivery_survives_a_killed_sender_and_an_endpoint_failing_three_times(
    stack: Stack,
) -> None:
    with Receiver([500, 500, 500, 500]) as receiver:
        receiver.hang = 5.0  # the first request hangs until its sender is killed
        hook, _ = stack.service.create_webhook(receiver.url, reasons=["realm.created"])
        stack.worker("worker")
        stack.beat("beat")
        stack.worker("webhooks", *WEBHOOKS)
        realm = stack.service.create_realm("alpha")
        wait_for(lambda: receiver.seen.is_set(), 20, "the first request")
        stack.stop("webhooks", signal.SIGKILL)
        receiver.hang = 0.0
        stack.worker("webhooks-2", *WEBHOOKS)
        (delivery,) = wait_for(
            lambda: [d for d in deliveries(stack, hook.id) if d.state == "delivered"],
            60,
            "the delivery to succeed after the endpoint recovers",
        )
    ids = [d.headers["webhook-id"] for d in receiver.received()]
    assert [d.status for d in receiver.received()][-1] == 200
    assert len(ids) == 5 and set(ids) == {delivery.event_id}  # the same event every time
    assert receiver.received()[-1].event["realm_id"] == realm.id
    assert delivery.attempts == 4  # the killed attempt was never recorded


@ONE_DATABASE
def test_an_endpoint_that_hangs_delays_no_other_endpoint_and_no_rotation(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    stack = make_stack(
        tmp_path, database_url, redis_url, **{**STACK_SETTINGS, "webhook_timeout": "10s"}
    )
    try:
        with Receiver(hang=9.0) as stuck, Receiver() as healthy:
            stack.service.create_webhook(stuck.url)
            stack.service.create_webhook(healthy.url)
            stack.worker("worker")
            stack.beat("beat")
            stack.worker("webhooks", *WEBHOOKS)
            realm = stack.service.create_realm("alpha")
            wait_for(lambda: stuck.seen.is_set(), 20, "the stuck endpoint's first request")
            started = time.monotonic()
            for _ in range(3):
                stack.send("keyrotor.rotate_realm", realm.id, True)
            wait_for(
                lambda: sum(d.event["reason"] == "key.rotated" for d in healthy.received()) >= 3,
                5,
                "three rotations at the healthy endpoint while the other hangs",
            )
            assert time.monotonic() - started < 5
            assert stuck.received() == []  # still hanging on the first delivery
    finally:
        stack.close()
