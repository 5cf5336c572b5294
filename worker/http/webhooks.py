"""The webhook routes of the admin API: `/v1/webhooks` and each webhook's delivery log.

Handlers translate HTTP into service calls and nothing more: the rules (which URLs may be
called, which reasons exist) live in the service, and its refusals reach the client through
the error mapping in `worker.http.app`. What an admin key may do is `worker.core.scopes`'s; a
handler only says what it needs, on the webhook's realm, or for a webhook that hears every
realm (`realm_id` null) on no realm in particular, which only `admin` (or, to read,
`realms:read`) covers. Plain `def`s: checking a URL resolves its host, which blocks, so FastAPI
runs them in its thread pool.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from worker.core.errors import InvalidInput, NotFound
from worker.core.scopes import Action, Need
from worker.http.admin import (
    NOT_FOUND,
    UNAUTHORIZED,
    After,
    Direction,
    MaxResults,
    Principal,
    checked_after,
    listing,
    require_admin,
    scoped,
)
from worker.http.context import clean_ref, context
from worker.http.models import (
    NewWebhookEnvelope,
    Webhook,
    WebhookChangesEnvelope,
    WebhookDelivery,
    WebhookDeliveryPage,
    WebhookPage,
    WebhookWithSecret,
)
from worker.service import MAX_RESULTS
from worker.service.wire import delivery_json, webhook_json, webhook_page_json

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)], responses=UNAUTHORIZED)


def _realm(request: Request, ref: str | None) -> str | None:
    """The id of a realm named in a body (empty or None: every realm, None); an unknown one is
    invalid input."""
    if not ref:
        return None
    try:
        return context(request).service.get_realm(clean_ref(ref)).id
    except NotFound:
        raise InvalidInput("Realm not found") from None


# -- webhooks ------------------------------------------------------------------------------------


@router.get("/webhooks", response_model=WebhookPage, tags=["webhooks"], **listing(Action.READ))
def list_webhooks(
    request: Request,
    principal: Principal,
    after: After = None,
    max_results: MaxResults = MAX_RESULTS,
    direction: Direction = "desc",
) -> dict[str, Any]:
    """List the webhooks the admin key may read, newest id first unless `direction=asc`;
    secrets are never listed."""
    page = context(request).service.list_webhooks(
        after=checked_after(after),
        max_results=max_results,
        direction=direction,
        only=principal.readable(),
    )
    return webhook_page_json(page)


def _allowed(request: Request, principal: Principal, action: Action, ref: str) -> str:
    """A webhook's id once the admin key may do `action` on its realm (404 first if unknown)."""
    webhook_id = clean_ref(ref)
    principal.allow(Need(action, context(request).service.webhook(webhook_id).realm_id))
    return webhook_id


@router.get(
    "/webhooks/{webhook_id}",
    response_model=Webhook,
    tags=["webhooks"],
    **scoped(Action.READ, NOT_FOUND),
)
def get_webhook(request: Request, principal: Principal, webhook_id: str) -> dict[str, Any]:
    """One webhook, without its secret."""
    view = context(request).service.webhook(clean_ref(webhook_id))
    principal.allow(Need(Action.READ, view.realm_id))
    return webhook_json(view)


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookWithSecret,
    tags=["webhooks"],
    **scoped(Action.MANAGE),
)
def create_webhook(
    request: Request, principal: Principal, body: NewWebhookEnvelope
) -> dict[str, Any]:
    """Create a webhook; the answer carries its `secret`, which is never shown again.

    The URL is refused with 422 when it is not https (unless KEYROTOR_WEBHOOK_ALLOW_HTTP) or
    its host resolves to a loopback, private, link-local or metadata address (unless
    KEYROTOR_WEBHOOK_ALLOW_PRIVATE). An unknown realm is refused with 422 too.
    """
    fields = body.webhook
    realm = _realm(request, fields.realm_id)
    principal.allow(Need(Action.MANAGE, realm))
    try:
        view, secret = context(request).service.create_webhook(
            fields.url,
            realm_id=realm,
            reasons=fields.reasons,
            enabled=fields.enabled,
        )
    except NotFound:
        raise InvalidInput("Realm not found") from None
    return webhook_json(view, secret)


def _update(
    request: Request, principal: Principal, webhook_id: str, body: WebhookChangesEnvelope
) -> dict[str, Any]:
    """Moving a webhook to another realm needs that realm too."""
    service = context(request).service
    ref = _allowed(request, principal, Action.MANAGE, webhook_id)
    changes = {name: getattr(body.webhook, name) for name in body.webhook.model_fields_set}
    if "realm_id" in changes:
        changes["realm_id"] = _realm(request, changes["realm_id"])
        principal.allow(Need(Action.MANAGE, changes["realm_id"]))
    try:
        return webhook_json(service.update_webhook(ref, changes))
    except NotFound:
        if not changes.get("realm_id"):
            raise
        service.webhook(ref)  # the webhook itself is gone: 404
        raise InvalidInput("Realm not found") from None


@router.put(
    "/webhooks/{webhook_id}",
    response_model=Webhook,
    tags=["webhooks"],
    **scoped(Action.MANAGE, NOT_FOUND),
)
def update_webhook(
    request: Request, principal: Principal, webhook_id: str, body: WebhookChangesEnvelope
) -> dict[str, Any]:
    """Change the fields given (`url`, `realm_id`, `reasons`, `enabled`); the rest are kept.
    `realm_id: null` hears every realm, `reasons: null` every reason. Re-enabling a webhook
    gives it a fresh retry window."""
    return _update(request, principal, webhook_id, body)


@router.patch(
    "/webhooks/{webhook_id}",
    response_model=Webhook,
    tags=["webhooks"],
    **scoped(Action.MANAGE, NOT_FOUND),
)
def patch_webhook(
    request: Request, principal: Principal, webhook_id: str, body: WebhookChangesEnvelope
) -> dict[str, Any]:
    """The same as PUT: only the fields given change."""
    return _update(request, principal, webhook_id, body)


@router.delete(
    "/webhooks/{webhook_id}",
    status_code=202,
    response_model=Webhook,
    tags=["webhooks"],
    **scoped(Action.MANAGE, NOT_FOUND),
)
def delete_webhook(request: Request, principal: Principal, webhook_id: str) -> dict[str, Any]:
    """Delete a webhook and its delivery log; nothing more is sent. Answers with the webhook."""
    ref = _allowed(request, principal, Action.MANAGE, webhook_id)
    return webhook_json(context(request).service.delete_webhook(ref))


@router.post(
    "/webhooks/{webhook_id}/rotate_secret",
    response_model=WebhookWithSecret,
    tags=["webhooks"],
    **scoped(Action.MANAGE, NOT_FOUND),
)
def rotate_webhook_secret(
    request: Request, principal: Principal, webhook_id: str
) -> dict[str, Any]:
    """A new secret, in this answer only. The old one keeps signing beside it for
    KEYROTOR_WEBHOOK_SECRET_OVERLAP, so receivers can switch without missing a delivery."""
    ref = _allowed(request, principal, Action.MANAGE, webhook_id)
    view, secret = context(request).service.rotate_webhook_secret(ref)
    return webhook_json(view, secret)


# -- the delivery log ----------------------------------------------------------------------------


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=WebhookDeliveryPage,
    tags=["webhooks"],
    **scoped(Action.MANAGE, NOT_FOUND),
)
def list_deliveries(
    request: Request,
    principal: Principal,
    webhook_id: str,
    after: After = None,
    max_results: MaxResults = MAX_RESULTS,
    direction: Direction = "desc",
) -> dict[str, Any]:
    """A webhook's delivery log, newest first unless `direction=asc`."""
    ref = _allowed(request, principal, Action.MANAGE, webhook_id)
    page = context(request).service.list_deliveries(
        ref, after=checked_after(after), max_results=max_results, direction=direction
    )
    return webhook_page_json(page)


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=202,
    response_model=WebhookDelivery,
    tags=["webhooks"],
    **scoped(Action.MANAGE, NOT_FOUND),
)
def retry_delivery(
    request: Request, principal: Principal, webhook_id: str, delivery_id: str
) -> dict[str, Any]:
    """Send a delivery again within seconds, whatever its state (delivered ones too): it is
    `pending` again, with a fresh retry window, and its attempts go on counting."""
    ref = _allowed(request, principal, Action.MANAGE, webhook_id)
    view = context(request).service.retry_delivery(ref, clean_ref(delivery_id))
    return delivery_json(view)
