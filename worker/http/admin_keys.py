"""`/v1/admin_keys`: admin API keys for automation, under the `admin-keys` scope.

Registration only: the caller makes the key pair and sends the public half, so no private key
ever crosses the API. A key with `admin-keys` can register a key of any scope, `admin`
included, which is why that scope is as strong as `admin` (worker.core.scopes).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from worker.core.scopes import Action, Need
from worker.http.admin import (
    NOT_FOUND,
    UNAUTHORIZED,
    After,
    Direction,
    MaxResults,
    Principal,
    checked_after,
    require_admin,
    scoped,
)
from worker.http.context import clean_ref, context
from worker.http.models import AdminKey, AdminKeyPage, NewAdminKeyEnvelope
from worker.service import MAX_RESULTS

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)], responses=UNAUTHORIZED)


@router.get(
    "/admin_keys", response_model=AdminKeyPage, tags=["admin_keys"], **scoped(Action.ADMIN_KEYS)
)
def list_admin_keys(
    request: Request,
    principal: Principal,
    after: After = None,
    max_results: MaxResults = MAX_RESULTS,
    direction: Direction = "desc",
) -> dict[str, Any]:
    """List admin keys, newest id first unless `direction=asc`."""
    principal.allow(Need(Action.ADMIN_KEYS))
    more, views = context(request).admin_keys.page(
        after=checked_after(after), max_results=max_results, direction=direction
    )
    return {"more_results": more, "collection": views}


@router.get(
    "/admin_keys/{admin_key_id}",
    response_model=AdminKey,
    tags=["admin_keys"],
    **scoped(Action.ADMIN_KEYS, NOT_FOUND),
)
def get_admin_key(request: Request, principal: Principal, admin_key_id: str) -> dict[str, Any]:
    """One admin key."""
    principal.allow(Need(Action.ADMIN_KEYS))
    return context(request).admin_keys.get(clean_ref(admin_key_id))


@router.post(
    "/admin_keys",
    status_code=201,
    response_model=AdminKey,
    tags=["admin_keys"],
    **scoped(Action.ADMIN_KEYS),
)
def register_admin_key(
    request: Request, principal: Principal, body: NewAdminKeyEnvelope
) -> dict[str, Any]:
    """Register the public half of an RSA key pair made elsewhere, with its scopes (default
    `admin`); its tokens work from the next request. An invalid key or scope is 422."""
    principal.allow(Need(Action.ADMIN_KEYS))
    fields = body.admin_key
    view, _ = context(request).admin_keys.create(fields.public_key, fields.scopes)
    return view


@router.delete(
    "/admin_keys/{admin_key_id}",
    status_code=202,
    response_model=AdminKey,
    tags=["admin_keys"],
    **scoped(Action.ADMIN_KEYS, NOT_FOUND),
)
def delete_admin_key(request: Request, principal: Principal, admin_key_id: str) -> dict[str, Any]:
    """Delete an admin key: its tokens are refused from the next request on, in every web
    process (the key making this request included). Answers with the key as it was."""
    principal.allow(Need(Action.ADMIN_KEYS))
    return context(request).admin_keys.delete(clean_ref(admin_key_id))
