"""AuthRocket's JSON for realms, keys, pages, rotations and webhooks, and the event payload:
the one producer of each shape.

The HTTP admin API answers with it and the CLI prints it for `--json`; `worker.http.models`
describes the same shape for OpenAPI. Timestamps are RFC 3339 in UTC, durations whole seconds.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from worker.core.clock import rfc3339
from worker.service.views import (
    EventView,
    KeyView,
    Page,
    RealmView,
    RotationProgress,
    RotationView,
)
from worker.service.webhooks import DeliveryView, WebhookView


def realm_json(view: RealmView) -> dict[str, Any]:
    policy = view.policy
    return {
        "id": view.id,
        "name": view.name,
        "algo": policy.algo,
        "rsa_bits": policy.rsa_bits,
        "rotation_period": _seconds(policy.rotation_period),
        "prepublish": _seconds(policy.prepublish),
        "grace": _seconds(policy.grace),
        "max_token_ttl": _seconds(policy.max_token_ttl),
        "jwks_version": view.jwks_version,
        "next_rotation_at": rfc3339(view.next_rotation_at),
        "created_at": rfc3339(view.created_at),
        "updated_at": rfc3339(view.updated_at),
    }


def key_json(view: KeyView) -> dict[str, Any]:
    return {
        "id": view.id,
        "object": "jwt_key",
        "realm_id": view.realm_id,
        "algo": view.algo,
        "use": view.use,
        "state": view.state.value,
        "expired": view.expired,
        "key": view.key,
        "created_at": rfc3339(view.created_at),
        "activated_at": rfc3339(view.activated_at),
        "expired_at": rfc3339(view.expired_at),
        "delete_after": rfc3339(view.delete_after),
    }


def view_json(view: RealmView | KeyView) -> dict[str, Any]:
    return realm_json(view) if isinstance(view, RealmView) else key_json(view)


def page_json(page: Page[RealmView] | Page[KeyView]) -> dict[str, Any]:
    return {
        "more_results": page.more_results,
        "collection": [view_json(v) for v in page.collection],
    }


def event_json(view: EventView) -> dict[str, Any]:
    """The event payload: what the stream, the channel and webhooks carry, and what
    `GET /v1/events` lists, so a consumer reads both the same way."""
    return {
        "id": view.id,
        "event_type": view.event_type,
        "realm_id": view.realm_id,
        "event_at": rfc3339(view.event_at),
        "reason": view.reason,
        "key_ids": list(view.key_ids),
        "jwks_version": view.jwks_version,
        "actor": view.actor,
    }


def event_page_json(page: Page[EventView]) -> dict[str, Any]:
    return {"more_results": page.more_results, "collection": list(map(event_json, page.collection))}


def rotation_json(view: RotationView, progress: RotationProgress) -> dict[str, Any]:
    """A `rotate --all` record with how far its batches have got."""
    return {
        "id": view.id,
        "object": "rotation",
        "algo": view.algo,
        "realm_prefix": view.realm_prefix,
        "before": rfc3339(view.before),
        "total": view.total,
        "rotated": progress.rotated,
        "skipped": progress.skipped,
        "failed": progress.failed,
        "failed_realm_ids": list(progress.failed_realm_ids),
        "state": view.state(progress),
        "created_at": rfc3339(view.created_at),
    }


def webhook_json(view: WebhookView, secret: str | None = None) -> dict[str, Any]:
    """A webhook; its `secret` only in the answer that made it (creation, rotation)."""
    found = {
        "id": view.id,
        "object": "webhook",
        "url": view.url,
        "realm_id": view.realm_id,
        "reasons": view.reasons,
        "enabled": view.enabled,
        "created_at": rfc3339(view.created_at),
    }
    return found if secret is None else {**found, "secret": secret}


def delivery_json(view: DeliveryView) -> dict[str, Any]:
    return {
        "id": view.id,
        "object": "webhook_delivery",
        "webhook_id": view.webhook_id,
        "event_id": view.event_id,
        "state": view.state,
        "attempts": view.attempts,
        "last_status": view.last_status,
        "last_error": view.last_error,
        "next_attempt_at": rfc3339(view.next_attempt_at),
        "delivered_at": rfc3339(view.delivered_at),
        "created_at": rfc3339(view.created_at),
    }


def webhook_page_json(page: Page[WebhookView] | Page[DeliveryView]) -> dict[str, Any]:
    return {
        "more_results": page.more_results,
        "collection": [
            webhook_json(v) if isinstance(v, WebhookView) else delivery_json(v)
            for v in page.collection
        ],
    }


def _seconds(span: timedelta) -> int:
    return int(span.total_seconds())
