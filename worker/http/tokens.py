"""`POST /v1/realms/<id or name>/tokens`: sign a token with the realm's active key, so an
application holds an admin key with the realm's `sign` scope instead of the master keys.

Each web process keeps the realms' active keys opened (a `Signer`'s) and checks the one it is
about to use against the realm's published `jwks_version` (the JWKS route's Redis copy: one
`HGET`). A copy newer than the version the key was read at means a change committed since, by
any process (a rotation, a revocation, a policy change), and the key is read again before
signing. Every process that changes a realm publishes that copy before it answers, so a
revocation takes effect from the next request on. Where no copy answers (Redis away or not
configured, a realm not yet published) the database is read instead; and a key read over
`REREAD_SECONDS` ago is read again anyway, so a change whose publication failed reaches the
signer that much later at most, not at the next reconcile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any

import jwt
import redis
from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from starlette.exceptions import HTTPException

from worker.client.signer import LoadedKey, Signer
from worker.core import ids
from worker.core.clock import rfc3339
from worker.core.errors import NotFound
from worker.core.scopes import Action, Need
from worker.core.tokens import MAX_BODY_BYTES, Stamp, token_claims
from worker.http.admin import NOT_FOUND, UNAUTHORIZED, require_admin, scoped
from worker.http.auth import AdminPrincipal
from worker.http.context import HttpContext, clean_ref, context
from worker.http.models import Errors, Timestamp
from worker.publish import jwks

log = logging.getLogger("keyrotor.http")

REREAD_SECONDS = 1.0

# -- bodies ---------------------------------------------------------------------------------------

# Checked by `worker.core.tokens.token_claims`, which says in one line what is wrong; pydantic's
# own refusals of a union name its members ("Str must be a string").
Ttl = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "description": "Seconds, or a duration such as `5m` or `1h`; at most the realm's"
            " max token ttl, which is the default.",
        }
    ),
]
Audience = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
            ],
            "description": "The token's `aud`. Or give `aud` in the claims; not both.",
        }
    ),
]


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    claims: dict[str, Any] = Field(
        default_factory=dict,
        description="The token's claims, a JSON object; `exp`, `iat`, `nbf`, `iss` and `jti`"
        " are refused: the server sets them (`nbf` excepted).",
        examples=[{"sub": "user-1", "scope": "orders:read"}],
    )
    ttl: Ttl = None
    audience: Audience = None


class NewTokenEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: NewToken


class SignedToken(BaseModel):
    token: str = Field(description="The signed JWT (compact form).")
    kid: str = Field(description="The key that signed it, also in the token's header.")
    expires_at: Timestamp = Field(description="Its `exp`.")


# -- the keys each process signs with -------------------------------------------------------------


class ActiveKeys:
    """The realms' active keys this web process signs with, each checked before use."""

    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx
        self.signer = Signer(ctx.service, clock=ctx.clock, issuer_base=ctx.settings.issuer_base)

    def current(self, ref: str) -> LoadedKey:
        """The realm's active key as of now, by realm id or name; NotFound for no realm (or
        none with an active key)."""
        loaded = self.signer.cached(ref)
        if loaded is None:
            return self.signer.refresh(ref)
        if time.monotonic() - loaded.read_at < REREAD_SECONDS:
            published = self._published_version(loaded.realm_id)
            if published is not None and published <= loaded.jwks_version:
                return loaded
        return self._reread(ref, loaded)

    def _reread(self, ref: str, loaded: LoadedKey) -> LoadedKey:
        """Read the key again, by realm id: a realm deleted is forgotten, and its name, when
        that was the reference, looked up afresh (names are free again once a realm is gone)."""
        try:
            return self.signer.refresh(loaded.realm_id)
        except NotFound:
            self.signer.forget(loaded.realm_id)
            if ref == loaded.realm_id:
                raise
        return self.signer.refresh(ref)

    def _published_version(self, realm_id: str) -> int | None:
        """The `jwks_version` of the realm's Redis copy; None when there is none to read."""
        client = self.ctx.redis.reader()
        if client is None:
            return None
        try:
            value = client.hget(jwks.redis_key(realm_id), "jwks_version")
        except redis.RedisError as error:
            self.ctx.redis.failed()  # the next few seconds' requests read the database
            log.warning(
                "signing reads the database: Redis is unavailable (%s)", error.__class__.__name__
            )
            return None
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None


_making = threading.Lock()


def active_keys(request: Request) -> ActiveKeys:
    """This app's `ActiveKeys`, made on the first signing request."""
    state = request.app.state
    made: ActiveKeys | None = getattr(state, "active_keys", None)
    if made is None:
        with _making:
            made = getattr(state, "active_keys", None)
            if made is None:
                made = state.active_keys = ActiveKeys(context(request))
    return made


# -- the route ------------------------------------------------------------------------------------

TOO_LARGE_LINE = f"Body is too large: at most {MAX_BODY_BYTES // 1024} KiB"
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": Errors, "description": f'`{{"errors": ["{TOO_LARGE_LINE}"]}}`'}
}


class SmallBody(APIRoute):
    """A route whose body is refused (413) past MAX_BODY_BYTES before it is read whole: by its
    Content-Length, or, streamed without one, as soon as it passes the limit."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            length = request.headers.get("content-length")
            if length is not None:
                if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                    raise HTTPException(413, TOO_LARGE_LINE)
            else:
                body = bytearray()
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        raise HTTPException(413, TOO_LARGE_LINE)
                request._body = bytes(body)  # what `request.body()` returns from now on
            return await handler(request)

        return limited


router = APIRouter(prefix="/v1", responses=UNAUTHORIZED, route_class=SmallBody)


@router.post(
    "/realms/{realm}/tokens",
    status_code=201,
    response_model=SignedToken,
    tags=["tokens"],
    **scoped(Action.SIGN, NOT_FOUND, TOO_LARGE),
)
def sign_token(
    request: Request,
    realm: str,
    body: NewTokenEnvelope,
    principal: AdminPrincipal = Depends(require_admin),
) -> dict[str, Any]:
    """Sign a token with the realm's active key (by realm id or name). The server sets `iat`,
    `exp` (`ttl` from now), `iss` (the realm's issuer) and `jti`.

    Needs `admin` or `realm:<realm id>:sign`. A rotation or revocation made anywhere applies
    from the next request on.
    """
    ctx = context(request)
    active = active_keys(request).current(clean_ref(realm))
    principal.allow(Need(Action.SIGN, active.realm_id))
    fields = body.token
    assert active.issuer is not None  # `ActiveKeys` gives its signer the issuer base
    stamp = Stamp(active.issuer, now=int(ctx.clock().timestamp()), jti=ids.new_id("tok"))
    claims = token_claims(
        fields.claims,
        ttl=fields.ttl,
        audience=fields.audience,
        max_ttl=active.max_token_ttl,
        stamp=stamp,
    )
    token = jwt.encode(claims, active.key, algorithm=active.alg, headers=active.header)
    expires_at = datetime.fromtimestamp(claims["exp"], UTC)
    return {"token": token, "kid": active.kid, "expires_at": rfc3339(expires_at)}
