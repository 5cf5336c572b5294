"""The admin API in AuthRocket's shapes: `/v1/jwt_keys`, `/v1/realms` and `/v1/rotations`.

Handlers translate HTTP into service calls and publish each committed change; the rules live
in the service, and what an admin key may do in `worker.core.scopes`: a handler only states
what it needs (`principal.allow(Need(...))`, after loading the object whose realm decides) and
lists what the key may read. Handlers are plain `def`s: FastAPI runs them in its thread pool,
where the blocking database and Redis calls belong.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from worker.core.clock import parse_rfc3339
from worker.core.durations import field_problem, parse_duration
from worker.core.errors import InvalidInput, NotFound
from worker.core.scopes import Action, Need, describe
from worker.http.auth import AdminPrincipal
from worker.http.context import clean_ref, context
from worker.http.models import (
    DURATION_FIELDS,
    Errors,
    JwtKey,
    JwtKeyPage,
    NewJwtKeyEnvelope,
    NewRealmEnvelope,
    NewRotationEnvelope,
    Realm,
    RealmPage,
    RealmPolicy,
    RealmPolicyEnvelope,
    Rotation,
)
from worker.publish.progress import read_progress
from worker.service import MAX_RESULTS, RotationProgress
from worker.service.actors import name_actor
from worker.service.wire import key_json, page_json, realm_json, rotation_json

bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description=(
        "An RS256 JWT signed by a current admin API key (`keyrotor admin-keys create`): header"
        " `kid` is the admin key id; `aud` (string or list) contains KEYROTOR_ADMIN_AUDIENCE;"
        " `iat` and `exp` are required and `exp - iat` is at most KEYROTOR_ADMIN_TOKEN_MAX_TTL."
        " `keyrotor admin-token` makes one."
    ),
)


def require_admin(
    request: Request,
    _credentials: HTTPAuthorizationCredentials | None = Security(bearer),
) -> AdminPrincipal:
    """Every `/v1` request: the raw header is checked (the scheme object only documents it);
    the request's changes are then recorded as the admin key's."""
    principal = context(request).authenticator.authenticate(request.headers.get("authorization"))
    name_actor(principal.kid)
    return principal


Principal = Annotated[AdminPrincipal, Depends(require_admin)]
"""The admin key of the request (the router's own `require_admin`, run once per request)."""


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {
        "model": Errors,
        "description": "No admin token, or one that is refused.",
        "headers": {
            "WWW-Authenticate": {
                "description": 'Bearer error="invalid_token", error_description="<why>"',
                "schema": {"type": "string"},
            }
        },
    },
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Errors, "description": '`{"errors": ["Not found"]}`'}
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Errors, "description": "The name is already taken."}
}
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {
        "model": Errors,
        "description": 'The admin key\'s scopes do not cover this: `{"errors": ["Forbidden"]}`',
    }
}


def scoped(action: Action, *responses: dict[int | str, dict[str, Any]]) -> dict[str, Any]:
    """A route's keyword arguments for the scope it needs: the scope in the OpenAPI document
    (`x-required-scope`), and its 403 with any other `responses` given."""
    merged: dict[int | str, dict[str, Any]] = {**FORBIDDEN}
    for response in responses:
        merged.update(response)
    return {"openapi_extra": {"x-required-scope": describe(action)}, "responses": merged}


def listing(action: Action) -> dict[str, Any]:
    """The same for a listing that shows only what the key may read, and so never says 403."""
    return {"openapi_extra": {"x-required-scope": describe(action)}}


router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)], responses=UNAUTHORIZED)

After = Annotated[
    str | None, Query(max_length=100, description="Start after this id (the last one seen).")
]
MaxResults = Annotated[int, Query(ge=1, le=MAX_RESULTS, description="Page size, 1-100.")]
Sort = Annotated[Literal["id"], Query(description="Sort field.")]
Direction = Annotated[Literal["asc", "desc"], Query(description="Sort direction.")]


def checked_after(value: str | None) -> str | None:
    """A listing's `after`: an id, so never a control character."""
    if value is not None and not value.isprintable():
        raise InvalidInput("After must be an id")
    return value


def _policy(fields: RealmPolicy) -> dict[str, Any]:
    """The policy fields given, durations parsed; every bad one is named at once."""
    given = fields.model_dump(exclude_none=True, include=set(RealmPolicy.model_fields))
    problems = []
    for name in DURATION_FIELDS:
        if name in given:
            try:
                given[name] = parse_duration(given[name])
            except InvalidInput:
                problems.append(field_problem(name.replace("_", " ").capitalize()))
    if problems:
        raise InvalidInput(*problems)
    return given


# -- jwt keys ------------------------------------------------------------------------------------


@router.get(
    "/jwt_keys", response_model=JwtKeyPage, tags=["jwt_keys"], **scoped(Action.READ, NOT_FOUND)
)
def list_jwt_keys(
    request: Request,
    principal: Principal,
    realm_id: Annotated[str | None, Query(description="Only this realm (id or name).")] = None,
    after: After = None,
    max_results: MaxResults = MAX_RESULTS,
    sort: Sort = "id",
    direction: Direction = "desc",
) -> dict[str, Any]:
    """List keys, newest id first unless `direction=asc`; an unknown `realm_id` is 404, one the
    admin key may not read 403. Without `realm_id`: the keys of every realm it may read."""
    service = context(request).service
    realm = None
    if realm_id is not None:
        realm = service.get_realm(clean_ref(realm_id)).id
        principal.allow(Need(Action.READ, realm))
    page = service.list_keys(
        realm=realm,
        after=checked_after(after),
        max_results=max_results,
        direction=direction,
        sort=sort,
        only=principal.readable(),
    )
    return page_json(page)


@router.get(
    "/jwt_keys/{key_id}", response_model=JwtKey, tags=["jwt_keys"], **scoped(Action.READ, NOT_FOUND)
)
def get_jwt_key(request: Request, principal: Principal, key_id: str) -> dict[str, Any]:
    """One key."""
    view = context(request).service.get_key(clean_ref(key_id))
    principal.allow(Need(Action.READ, view.realm_id))
    return key_json(view)


@router.post(
    "/jwt_keys", status_code=201, response_model=JwtKey, tags=["jwt_keys"], **scoped(Action.MANAGE)
)
def create_jwt_key(
    request: Request, principal: Principal, body: NewJwtKeyEnvelope
) -> dict[str, Any]:
    """Create (or import) a key: pending, the next to sign, unless `activate`.

    The key is generated while the request waits: tens of milliseconds, for RSA sometimes a
    few hundred. An unknown realm is refused with 422.
    """
    ctx = context(request)
    fields = body.jwt_key
    try:
        realm = ctx.service.get_realm(clean_ref(fields.realm_id)).id
        principal.allow(Need(Action.MANAGE, realm))
        view = ctx.service.create_key(
            realm, fields.algo, key_text=fields.key, activate=fields.activate
        )
    except NotFound:
        raise InvalidInput("Realm not found") from None
    ctx.published(view.realm_id)
    return key_json(view)


@router.delete(
    "/jwt_keys/{key_id}",
    status_code=202,
    response_model=JwtKey,
    tags=["jwt_keys"],
    **scoped(Action.MANAGE, NOT_FOUND),
)
def delete_jwt_key(
    request: Request,
    principal: Principal,
    key_id: str,
    force: Annotated[
        bool,
        Query(description="Revoke: remove from storage and the JWKS at once."),
    ] = False,
) -> dict[str, Any]:
    """Expire a key (it keeps verifying for the realm's grace), or revoke it with `force`.

    An active key is replaced at once. Answers with the key as it was before.
    """
    ctx = context(request)
    ref = clean_ref(key_id)
    principal.allow(Need(Action.MANAGE, ctx.service.get_key(ref).realm_id))  # keys never move
    original = ctx.service.delete_key(ref, force=force)
    ctx.published(original.realm_id)
    return key_json(original)


# -- realms --------------------------------------------------------------------------------------


@router.get("/realms", response_model=RealmPage, tags=["realms"], **listing(Action.READ))
def list_realms(
    request: Request,
    principal: Principal,
    after: After = None,
    max_results: MaxResults = MAX_RESULTS,
    sort: Sort = "id",
    direction: Direction = "desc",
) -> dict[str, Any]:
    """List the realms the admin key may read, newest id first unless `direction=asc`."""
    page = context(request).service.list_realms(
        after=checked_after(after),
        max_results=max_results,
        direction=direction,
        sort=sort,
        only=principal.readable(),
    )
    return page_json(page)


@router.get(
    "/realms/{realm}", response_model=Realm, tags=["realms"], **scoped(Action.READ, NOT_FOUND)
)
def get_realm(request: Request, principal: Principal, realm: str) -> dict[str, Any]:
    """One realm, by id or name."""
    view = context(request).service.get_realm(clean_ref(realm))
    principal.allow(Need(Action.READ, view.id))
    return realm_json(view)


@router.post(
    "/realms",
    status_code=201,
    response_model=Realm,
    tags=["realms"],
    **scoped(Action.ADMIN, CONFLICT),
)
def create_realm(request: Request, principal: Principal, body: NewRealmEnvelope) -> dict[str, Any]:
    """Create a realm with its policy (defaults for what is left out) and one active key."""
    principal.allow(Need(Action.ADMIN))
    ctx = context(request)
    name = body.realm.name
    view = ctx.service.create_realm(name, **_policy(body.realm))
    ctx.published(view.id)
    return realm_json(view)


def _update(
    request: Request, principal: AdminPrincipal, realm: str, body: RealmPolicyEnvelope
) -> dict[str, Any]:
    """By the realm's id once allowed: a name freed and taken again meanwhile names another."""
    ctx = context(request)
    realm_id = ctx.service.get_realm(clean_ref(realm)).id
    principal.allow(Need(Action.MANAGE, realm_id))
    view = ctx.service.update_realm(realm_id, **_policy(body.realm))
    ctx.published(view.id)
    return realm_json(view)


@router.put(
    "/realms/{realm}", response_model=Realm, tags=["realms"], **scoped(Action.MANAGE, NOT_FOUND)
)
def update_realm(
    request: Request, principal: Principal, realm: str, body: RealmPolicyEnvelope
) -> dict[str, Any]:
    """Change a realm's policy; fields left out keep their value, keys already made stay."""
    return _update(request, principal, realm, body)


@router.patch(
    "/realms/{realm}", response_model=Realm, tags=["realms"], **scoped(Action.MANAGE, NOT_FOUND)
)
def patch_realm(
    request: Request, principal: Principal, realm: str, body: RealmPolicyEnvelope
) -> dict[str, Any]:
    """The same as PUT: a partial policy update."""
    return _update(request, principal, realm, body)


@router.delete(
    "/realms/{realm}",
    status_code=202,
    response_model=Realm,
    tags=["realms"],
    **scoped(Action.ADMIN, NOT_FOUND),
)
def delete_realm(request: Request, principal: Principal, realm: str) -> dict[str, Any]:
    """Delete a realm and every key in it; its JWKS is withdrawn. Answers with the realm."""
    principal.allow(Need(Action.ADMIN))
    ctx = context(request)
    view = ctx.service.delete_realm(clean_ref(realm))
    ctx.published(view.id)
    return realm_json(view)


# -- rotations -----------------------------------------------------------------------------------


def _redis(request: Request) -> redis.Redis:
    client = context(request).redis.client()
    if client is None:
        raise redis.ConnectionError("no Redis is configured")
    return client


@router.post(
    "/rotations",
    status_code=202,
    response_model=Rotation,
    tags=["rotations"],
    **scoped(Action.ADMIN),
)
def start_rotation(
    request: Request, principal: Principal, body: NewRotationEnvelope
) -> dict[str, Any]:
    """Rotate every realm that matches `algo` and `realm_prefix` and whose active key began
    signing before `before` (default: now), in batches on the workers; for an emergency.

    Answers at once, `state` `queued`; `GET /v1/rotations/<id>` follows it. A realm rotated
    since the cut-off is never rotated again, so the same `before` sent again queues only
    what is left.
    """
    principal.allow(Need(Action.ADMIN))
    ctx = context(request)
    fields = body.rotation
    before = None if fields.before is None else parse_rfc3339(fields.before)
    _redis(request).ping()  # Redis away: 503 before anything is recorded
    view = ctx.service.start_rotation(fields.algo, fields.realm_prefix, before)
    if view.total == 0:
        ctx.service.mark_queued(view.id, 0)  # nothing to do: done already
        view = ctx.service.rotation(view.id)
    else:
        ctx.send_task("keyrotor.rotate_all", view.id)
    return rotation_json(view, RotationProgress())


@router.get(
    "/rotations/{rotation_id}",
    response_model=Rotation,
    tags=["rotations"],
    **scoped(Action.ADMIN, NOT_FOUND),
)
def get_rotation(request: Request, principal: Principal, rotation_id: str) -> dict[str, Any]:
    """A rotation with its progress so far; `state` is `done` once every batch has reported."""
    principal.allow(Need(Action.ADMIN))
    view = context(request).service.rotation(clean_ref(rotation_id))
    return rotation_json(view, read_progress(_redis(request), view.id))
