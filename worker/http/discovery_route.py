"""`GET /realms/<id or name>/.well-known/openid-configuration`: a realm's discovery document.

A gateway or verifier configured with nothing but a realm's issuer URL (`<KEYROTOR_PUBLIC_URL>
/realms/<name>`, the `iss` keyrotor's signers stamp) appends this path, reads `jwks_uri` and the
algorithms, and verifies tokens from there. Only what a verifier needs is said: keyrotor issues
tokens but is no OpenID provider, so there are no endpoints to list.

The document is made from the realm's JWKS as the JWKS route reads it (`jwks_route._read_once`:
this process's 20 ms copy, else Redis, else the database), so it costs about what the JWKS
costs and changes when the JWKS does. It is cached the same way: max-age never past the realm's
next scheduled JWKS change, an ETag of the exact bytes, 304, CORS. The algorithms are those of
the keys the JWKS lists (so a realm whose algo changed lists the old one while its keys still
verify); a realm with no public key, an hs256 one, has nothing to discover and is a 404.
"""

from __future__ import annotations

import json

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from worker.core import keys
from worker.http import jwks_route
from worker.http.context import Document, HttpContext, clean_ref, context
from worker.http.models import Errors, OpenIdConfiguration
from worker.publish import jwks

PATH = "/realms/{realm}/.well-known/openid-configuration"
NO_PUBLIC_KEYS = "Not found: the realm has no public keys to discover (it signs with hs256)"


def document_for(published: Document, issuer_base: str) -> Document | None:
    """The discovery document for a realm's JWKS, cached like it; None when the JWKS lists no
    key (or does not name its realm). Keys are listed in `created_at` order, so the algorithms
    keep one order and an unchanged set gives the same bytes and ETag."""
    if published.realm_name is None:
        return None
    algs: list[str] = []
    for key in json.loads(published.body).get("keys", []):
        alg = key.get("alg")
        if isinstance(alg, str) and alg not in algs:
            algs.append(alg)
    if not algs:
        return None
    issuer = keys.issuer(issuer_base, published.realm_name)
    body = jwks.body(
        {
            "issuer": issuer,
            "jwks_uri": f"{issuer}/.well-known/jwks.json",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
        }
    )
    return Document(body, jwks.etag(body), published.next_change_at, published.realm_name)


async def realm_discovery(request: Request) -> Response:
    """A realm's discovery document, by realm id or name (the issuer always names the realm by
    name); open to every origin."""
    ctx: HttpContext = context(request)
    ref = clean_ref(request.path_params["realm"])
    published = await jwks_route._read_once(ctx, ref)
    if published.realm_name is None:  # a Redis copy that does not say: the database does
        published = await run_in_threadpool(jwks_route._from_database, ctx, ref)
    found = document_for(published, ctx.settings.issuer_base)
    if found is None:
        return JSONResponse({"errors": [NO_PUBLIC_KEYS]}, status_code=404)
    status, headers, body = jwks_route.answer(ctx, found, request.headers.get("if-none-match"))
    response = Response(body, status)
    response.raw_headers = headers
    return response


# GET also answers HEAD (the GET's headers; the server sends no body).
ROUTES = [
    Route(PATH, realm_discovery, methods=["GET"]),
    Route(PATH, jwks_route.realm_jwks_preflight, methods=["OPTIONS"]),
]


def _documented(realm: str) -> None:
    """A realm's OpenID Connect discovery document, by realm id or name: its issuer, where its
    JWKS is, and the algorithms its keys sign with. Open to every origin."""


DOCUMENTED = APIRoute(
    PATH,
    _documented,
    methods=["GET"],
    name="realm_discovery",
    tags=["jwks"],
    response_class=Response,
    responses={
        200: {
            "model": OpenIdConfiguration,
            "description": "Where the realm's tokens come from and where their keys are.",
            "headers": {
                "ETag": {"schema": {"type": "string"}},
                "Cache-Control": {
                    "description": "`public, max-age=N`, N as for the realm's JWKS.",
                    "schema": {"type": "string"},
                },
                "Access-Control-Allow-Origin": {"schema": {"type": "string", "enum": ["*"]}},
            },
        },
        304: {"description": "Not modified: `If-None-Match` names the current ETag."},
        404: {"model": Errors, "description": "No such realm, or one with no public keys (hs256)."},
    },
)
