"""Webhook tasks: `keyrotor.deliver_webhook` sends one leased dispatch, on its own queue, and
`keyrotor.send_webhooks` (beat) leases the deliveries whose retry time has come.

Deliveries run on the `keyrotor.webhooks` queue, which the rotation worker does not consume:
a webhook worker (a pool of threads, since sending is waiting) serves it, so a slow or dead
endpoint never holds up rotations, the relay or other endpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache

from worker.celery import app
from worker.jobs.app import WEBHOOK_QUEUE
from worker.jobs.tasks import RETRY, context
from worker.publish.webhooks import Sender
from worker.service.webhooks import Dispatch

log = logging.getLogger("keyrotor.webhooks")


@cache
def sender() -> Sender:
    ctx = context()
    return Sender(
        ctx.service, ctx.relay.redis, timeout=ctx.settings.webhook_timeout.total_seconds()
    )


@app.task(name="keyrotor.deliver_webhook", **RETRY)
def deliver_webhook(webhook_id: str, delivery_ids: list[str], lease: str) -> None:
    """Send a webhook's leased deliveries, oldest first, and record the outcomes."""
    sender().send(Dispatch(webhook_id, delivery_ids, lease))


@app.task(name="keyrotor.send_webhooks", **RETRY)
def send_webhooks() -> int:
    """Hand the deliveries that are due (retries, and any whose sender was lost) to the
    webhook worker; returns how many."""
    dispatches = context().service.lease_due()
    hand_over(dispatches)
    count = sum(len(d.delivery_ids) for d in dispatches)
    if count:
        log.info("sent %d due webhook deliveries to the senders", count)
    return count


def hand_over(dispatches: Sequence[Dispatch]) -> None:
    for dispatch in dispatches:
        deliver_webhook.apply_async(
            args=[dispatch.webhook_id, dispatch.delivery_ids, dispatch.lease], queue=WEBHOOK_QUEUE
        )
